"""One engine thread driving a batched engine for many consumer threads.

The thread owns the engine and loops: free the slots of sequences that ended or were closed,
admit the sequences opened since the last step, `step()`, and hand each sampled token to its
sequence's consumer. A sequence opened while others decode joins at the next step.

Consumers (the slot threads) only touch `Sequence`s: iterate one for its tokens, `close()` it
to cancel. Slots are counted by a semaphore taken in `open` and given back once the engine
thread has released the slot, so `open` waits while every slot is taken (up to its timeout,
then EngineBusyError). With one consumer thread per slot that wait is at most one step: a
consumer's previous sequence is freed at the step after its `close()`.

Every sequence ends exactly once: with its end-of-generation token, by `close()`, or with an
error (a failed start, a failed step, the scheduler stopping) that its consumer's iteration
raises. `llama_decode` releases the GIL, so consumers run while the model computes.

Embedding jobs (`embed`) wait in line for the engine thread too: each turn of its loop runs
one embedding round (the waiting inputs that fit one batch, of one job or several, in order)
before the generation step, so running streams keep going while a long list is embedded.
"""

import contextlib
import logging
import queue
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from types import TracebackType

from shared.job import GenerationJob, SamplingParams
from worker.embedding import Vector
from worker.engine import (
    CanEmbed,
    Engine,
    EngineBusyError,
    EngineInfo,
    KVCacheFullError,
    Sampled,
)

log = logging.getLogger(__name__)

# How long a blocked call waits before looking again at what may have changed (a close, a stop).
_POLL_S = 0.1


class SchedulerStoppedError(RuntimeError):
    """The scheduler stopped (or is not running) before the sequence could end."""


class EngineStepError(RuntimeError):
    """The engine failed a step this sequence was in; the cause is chained."""


class SequenceEndedError(RuntimeError):
    """A token was asked of a sequence that has ended (closed, or past its last token)."""


class EndReason(StrEnum):
    END_OF_GENERATION = "end_of_generation"
    CLOSED = "closed"
    ERROR = "error"


@dataclass(frozen=True)
class _End:
    error: BaseException | None


class Sequence:
    """One generation running in the scheduler: iterate it for its tokens, in order.

    Iteration blocks until the next token (looking every 0.1 s whether the sequence was
    closed), yields the end-of-generation token last, and raises the sequence's error if it
    failed. `close()` cancels; it may be called from any thread, any number of times.
    """

    def __init__(
        self,
        prompt: list[int],
        sampling: SamplingParams,
        seed: int,
        siblings: "list[Sequence] | None" = None,
    ) -> None:
        self.prompt = prompt
        self.sampling = sampling
        self.seed = seed
        # n > 1: the other sequences of this prompt, started with it in one engine call.
        self.siblings = siblings or []
        self.slot: int | None = None  # set once the engine has started it
        self.end_reason: EndReason | None = None  # set once, when the sequence ends
        self._tokens: queue.SimpleQueue[Sampled | _End] = queue.SimpleQueue()
        self._started = threading.Event()  # started in a slot, or ended before
        self._start_error: BaseException | None = None
        self._closed = threading.Event()
        self._lock = threading.Lock()
        self._consumed_end = False
        self._wake: threading.Event | None = None  # the scheduler's, set by `open`

    @property
    def closed(self) -> bool:
        return self._closed.is_set()

    def close(self) -> None:
        """Cancel: no more tokens are handed out; the slot is freed at the next step."""
        self._closed.set()
        if self._wake is not None:
            self._wake.set()

    def wait_started(self, timeout: float | None = None) -> int:
        """Block until the engine has started the sequence; its slot. Raises the start's
        error (EngineBusyError, a bad prompt, SchedulerStoppedError), or TimeoutError."""
        if not self._started.wait(timeout):
            raise TimeoutError("the sequence has not started yet")
        if self._start_error is not None:
            raise self._start_error
        if self.slot is None:  # ended (closed) before it started
            raise SequenceEndedError("the sequence ended before it started")
        return self.slot

    def get(self, timeout: float | None = None) -> Sampled | None:
        """The next token; None when none came within `timeout` seconds (None: wait).

        Raises SequenceEndedError once the sequence has ended (after its last token, or
        closed), or the sequence's error if it failed.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            if self._consumed_end or self.closed:
                raise SequenceEndedError("the sequence has ended")
            wait = _POLL_S if deadline is None else min(_POLL_S, deadline - time.monotonic())
            try:
                item = self._tokens.get(timeout=max(0.0, wait))
            except queue.Empty:
                if deadline is not None and time.monotonic() >= deadline:
                    return None
                continue
            if isinstance(item, _End):
                self._consumed_end = True
                if item.error is not None:
                    raise item.error
                raise SequenceEndedError("the sequence has ended")
            return item

    def __iter__(self) -> "Sequence":
        return self

    def __next__(self) -> Sampled:
        try:
            sampled = self.get()
        except SequenceEndedError:
            raise StopIteration from None
        assert sampled is not None  # get() without a timeout waits for a token or the end
        return sampled

    # The engine thread's side.

    def _deliver(self, sampled: Sampled) -> None:
        self._tokens.put(sampled)

    def _admitted(self, slot: int) -> None:
        self.slot = slot
        self._started.set()

    def _end(self, reason: EndReason, error: BaseException | None = None) -> bool:
        """End the sequence unless it already has; True if this call ended it."""
        with self._lock:
            if self.end_reason is not None:
                return False
            self.end_reason = reason
        if self.slot is None and error is not None:
            self._start_error = error  # never started: `wait_started` raises it
        self._tokens.put(_End(error))
        self._started.set()
        return True

    @property
    def _ended(self) -> bool:
        return self.end_reason is not None


class Embedding:
    """One job's embedding inputs waiting for the engine thread: `wait` for their vectors.

    `close()` (any thread) withdraws what is not embedded yet.
    """

    def __init__(self, inputs: list[list[int]]) -> None:
        self.inputs = inputs
        self.vectors: list[Vector] = []  # the engine thread's, in the inputs' order
        self._ended = threading.Event()
        self._error: BaseException | None = None
        self._closed = threading.Event()

    @property
    def closed(self) -> bool:
        return self._closed.is_set()

    def close(self) -> None:
        self._closed.set()

    def wait(self, timeout: float) -> list[Vector] | None:
        """The vectors once all are in; None while not within `timeout` seconds. Raises the
        embedding's error (a failed decode, the scheduler stopping)."""
        if not self._ended.wait(timeout):
            return None
        if self._error is not None:
            raise self._error
        return self.vectors

    # The engine thread's side.

    @property
    def _remaining(self) -> list[list[int]]:
        return self.inputs[len(self.vectors) :]

    def _end(self, error: BaseException | None = None) -> None:
        self._error = error
        self._ended.set()


class Scheduler:
    """Runs an `Engine` on its own thread for any number of consumer threads."""

    def __init__(
        self,
        engine: Engine,
        *,
        name: str = "engine",
        on_step: Callable[[], None] = lambda: None,
    ) -> None:
        """`on_step` is called on the engine thread after every step that ran (metrics)."""
        self.engine = engine
        self._on_step = on_step
        self.steps = 0  # engine steps run, for metrics
        self._free_slots = threading.Semaphore(engine.info.slots)
        self._held = 0  # slots taken from `_free_slots` (what a Semaphore does not tell)
        self._count_lock = threading.Lock()
        self._submitted: queue.SimpleQueue[Sequence] = queue.SimpleQueue()
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._accepting = False
        self._lock = threading.Lock()  # `_accepting` and what is in `_submitted`
        self._gathering = threading.Lock()  # held by the group gathering its slots
        self._active: dict[int, Sequence] = {}  # slot -> sequence; the engine thread's only
        self._embeddings: deque[Embedding] = deque()  # under `_lock`
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    @property
    def info(self) -> EngineInfo:
        return self.engine.info

    @property
    def running(self) -> int:
        """Sequences holding a slot."""
        return len(self._active)

    @property
    def free_slots(self) -> int:
        """Slots no sequence holds or waits to hold: a job taken now would start at once."""
        return self.info.slots - self._held

    def _give(self, n: int) -> None:
        with self._count_lock:
            self._held -= n
        self._free_slots.release(n)

    def start(self) -> None:
        with self._lock:
            self._accepting = True
        self._thread.start()

    def stop(self, timeout: float | None = None) -> None:
        """End the thread; sequences still running end with SchedulerStoppedError."""
        self._stopping.set()
        self._wake.set()
        if self._thread.is_alive():
            self._thread.join(timeout)

    def __enter__(self) -> "Scheduler":
        self.start()
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def check_engine(self) -> None:
        """The engine's start-up check; only before `start()`, while nothing else runs."""
        if self._thread.is_alive():
            raise RuntimeError("check the engine before starting its scheduler")
        self.engine.self_check()

    def prompt_tokens(self, job: GenerationJob) -> list[int]:
        """Tokenize on the caller's thread: the engine's tokenizer only reads its vocabulary."""
        return self.engine.prompt_tokens(job)

    def open(
        self, prompt: list[int], sampling: SamplingParams, seed: int, timeout: float | None = None
    ) -> Sequence:
        """Queue a sequence; it starts at the next step. Waits up to `timeout` seconds (None:
        as long as it takes) for a free slot, then raises EngineBusyError."""
        return self.open_group(prompt, sampling, [seed], timeout)[0]

    def open_group(
        self, prompt: list[int], sampling: SamplingParams, seeds: list[int], timeout: float | None
    ) -> list[Sequence]:
        """Queue len(seeds) sequences of one prompt, evaluated once (n > 1), started together
        at the next step; waits for that many free slots as `open` does for one."""
        if not 1 <= len(seeds) <= self.info.slots:
            raise ValueError(f"{len(seeds)} sequences cannot fit {self.info.slots} slots")
        self._acquire(len(seeds), timeout)
        first = Sequence(prompt, sampling, seeds[0])
        first.siblings = [Sequence(prompt, sampling, seed) for seed in seeds[1:]]
        group = [first, *first.siblings]
        for sequence in group:
            sequence._wake = self._wake
        with self._lock:
            if not self._accepting:
                self._give(len(group))
                raise SchedulerStoppedError("the scheduler is not running")
            self._submitted.put(first)
        self._wake.set()
        return group

    def _acquire(self, n: int, timeout: float | None) -> None:
        """Take n slots; one group at a time gathers its slots, so two never hold part each."""
        deadline = None if timeout is None else time.monotonic() + timeout
        taken = 0
        with self._gathering if n > 1 else contextlib.nullcontext():
            try:
                while taken < n:
                    left = None if deadline is None else deadline - time.monotonic()
                    wait = _POLL_S if left is None else min(_POLL_S, left)
                    if self._free_slots.acquire(timeout=max(0.0, wait)):
                        with self._count_lock:
                            self._held += 1
                        taken += 1
                        continue
                    if self._stopping.is_set():
                        raise SchedulerStoppedError("the scheduler has stopped")
                    if deadline is not None and time.monotonic() >= deadline:
                        raise EngineBusyError(
                            f"{n} of the {self.info.slots} slots did not free up in {timeout} s"
                        )
            except BaseException:
                if taken:
                    self._give(taken)
                raise

    def embed(self, inputs: list[list[int]]) -> Embedding:
        """Queue inputs to embed (each fits the context); they go in at the next turn."""
        embedding = Embedding(inputs)
        with self._lock:
            if not self._accepting:
                raise SchedulerStoppedError("the scheduler is not running")
            self._embeddings.append(embedding)
        self._wake.set()
        return embedding

    def _run(self) -> None:
        try:
            while not self._stopping.is_set():
                self._wake.clear()
                self._free()
                self._admit()
                embedded = self._embed_round()
                if self._active:
                    self._step()
                elif not embedded:
                    self._wake.wait(_POLL_S)
        except BaseException:
            log.exception("the engine thread failed")
        finally:
            self._shut_down()

    def _free(self) -> None:
        """Release the slots of sequences that ended or were closed since the last step."""
        for slot, sequence in list(self._active.items()):
            if sequence.closed:
                sequence._end(EndReason.CLOSED)
            if sequence._ended:
                del self._active[slot]
                try:
                    self.engine.release(slot)
                except Exception:
                    log.exception("releasing slot %d failed", slot)
                self._give(1)

    def _admit(self) -> None:
        while True:
            try:
                sequence = self._submitted.get_nowait()
            except queue.Empty:
                return
            group = [sequence, *sequence.siblings]
            if any(s.closed for s in group):
                for member in group:
                    member._end(EndReason.CLOSED)
                self._give(len(group))
                continue
            try:
                if sequence.siblings:
                    slots = self.engine.start_group(
                        sequence.prompt, sequence.sampling, [s.seed for s in group]
                    )
                else:
                    slots = [self.engine.start(sequence.prompt, sequence.sampling, sequence.seed)]
            except Exception as exc:
                for member in group:
                    member._end(EndReason.ERROR, exc)
                self._give(len(group))
                continue
            for member, slot in zip(group, slots, strict=True):
                assert slot not in self._active, f"the engine started slot {slot} twice"
                self._active[slot] = member
                member._admitted(slot)

    def _step(self) -> None:
        try:
            sampled = self.engine.step()
        except KVCacheFullError as exc:
            # Nothing was computed: only the sequences named end; the others step again.
            named = [slot for slot in exc.slots if slot in self._active]
            for slot in named or list(self._active):
                self._active[slot]._end(EndReason.ERROR, KVCacheFullError((slot,), str(exc)))
            return
        except Exception as exc:
            log.exception("an engine step failed; its %d sequences end", len(self._active))
            for sequence in self._active.values():
                error = EngineStepError(f"the engine failed: {type(exc).__name__}: {exc}")
                error.__cause__ = exc
                sequence._end(EndReason.ERROR, error)
            return
        self.steps += 1
        try:
            self._on_step()
        except Exception:
            log.exception("the step observer failed")
        for token in sampled:
            receiver = self._active.get(token.slot)
            if receiver is None or receiver._ended or receiver.closed:
                continue  # a cancelled sequence's last tokens: nobody reads them
            receiver._deliver(token)
            if token.end_of_generation:
                receiver._end(EndReason.END_OF_GENERATION)

    def _embed_round(self) -> bool:
        """One embedding round for the inputs waiting, oldest first; False if none were."""
        with self._lock:
            while self._embeddings and self._embeddings[0].closed:
                self._embeddings.popleft()._end(SequenceEndedError("the embedding was closed"))
            waiting = [e for e in self._embeddings if not e.closed]
        if not waiting:
            return False
        head = waiting[0]
        owners = [(e, len(e.vectors) + i) for e in waiting for i in range(len(e._remaining))]
        try:
            if not isinstance(self.engine, CanEmbed):
                raise EngineBusyError("this engine does not embed")
            vectors = self.engine.embed([owner.inputs[i] for owner, i in owners])
        except Exception as exc:  # the oldest job's inputs failed; the others try again
            log.warning("an embedding round failed: %s: %s", type(exc).__name__, exc)
            self._finish(head, exc)
            return True
        for (owner, _), vector in zip(owners, vectors, strict=False):
            owner.vectors.append(vector)
        for embedding in waiting:
            if not embedding._remaining:
                self._finish(embedding)
        return True

    def _finish(self, embedding: Embedding, error: BaseException | None = None) -> None:
        with self._lock:
            if embedding in self._embeddings:
                self._embeddings.remove(embedding)
        embedding._end(error)

    def _shut_down(self) -> None:
        with self._lock:
            self._accepting = False
            embeddings = list(self._embeddings)
            self._embeddings.clear()
        for embedding in embeddings:
            embedding._end(SchedulerStoppedError("the scheduler stopped"))
        self._free()  # the closed and the ended first: they end as they would have
        for sequence in self._active.values():
            sequence._end(EndReason.ERROR, SchedulerStoppedError("the scheduler stopped"))
        self._free()
        while True:
            try:
                sequence = self._submitted.get_nowait()
            except queue.Empty:
                break
            for member in (sequence, *sequence.siblings):
                member._end(EndReason.ERROR, SchedulerStoppedError("the scheduler stopped"))
                self._give(1)
