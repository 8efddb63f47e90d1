"""Test doubles shared by the unit tests: scripted engines and a recording publisher."""

import threading
import time
from dataclasses import dataclass, field

from api.tokenizers import Tokenizers
from shared.events import Event
from shared.job import GenerationJob, SamplingParams
from worker.engine import EngineBusyError, EngineInfo, KVCacheFullError, Sampled

EOS = -1
FAKE_N_VOCAB = 49152  # SmolLM2's


# How long a paused FakeEngine waits to be resumed before it fails its job.
PAUSE_LIMIT_S = 30.0


@dataclass
class FakeEngine:
    """Plays back `pieces` (bytes per token; EOS ends the sequence; an exception is raised).

    With `pause_at` set, the step that would produce piece number `pause_at` (0: the first)
    waits until `resume` is set, with `paused` set meanwhile: a job caught mid-run, for a
    test to act on (cancel it, drop its worker) while its worker thread is blocked.
    """

    pieces: list[bytes | int | Exception]
    prompt_len: int = 4
    n_ctx: int = 64
    started_with: list[tuple[SamplingParams, int]] = field(default_factory=list)
    seen: list[GenerationJob] = field(default_factory=list)  # jobs whose prompt it was asked
    pause_at: int | None = None
    paused: threading.Event = field(default_factory=threading.Event)
    resume: threading.Event = field(default_factory=threading.Event)
    steps: int = 0  # calls of step(), over all jobs
    _position: int | None = None

    @property
    def info(self) -> EngineInfo:
        return EngineInfo(n_ctx=self.n_ctx, backend="cpu", slots=1, load_seconds=0.0)

    def prompt_tokens(self, job: GenerationJob) -> list[int]:
        self.seen.append(job)
        if job.prompt == "":  # raw text with nothing in it: no tokens, as llama.cpp
            return []
        return list(range(self.prompt_len))

    def start(self, prompt: list[int], sampling: SamplingParams, seed: int) -> int:
        assert prompt, "llama.cpp cannot evaluate an empty prompt"
        if self._position is not None:
            raise EngineBusyError("busy")
        self.started_with.append((sampling, seed))
        self._position = 0
        return 0

    def start_group(
        self, prompt: list[int], sampling: SamplingParams, seeds: list[int]
    ) -> list[int]:
        assert len(seeds) == 1, "a FakeEngine holds one sequence"
        return [self.start(prompt, sampling, seeds[0])]

    def step(self) -> list[Sampled]:
        assert self._position is not None
        self.steps += 1
        if self._position == self.pause_at and not self.resume.is_set():
            self.paused.set()
            if not self.resume.wait(PAUSE_LIMIT_S):
                raise TimeoutError(f"paused at piece {self.pause_at}; never resumed")
        piece = self.pieces[self._position] if self._position < len(self.pieces) else EOS
        self._position += 1
        if isinstance(piece, Exception):
            raise piece
        if piece == EOS:
            return [Sampled(slot=0, token=0, piece=b"", end_of_generation=True)]
        assert isinstance(piece, bytes)
        return [Sampled(slot=0, token=self._position, piece=piece, end_of_generation=False)]

    def release(self, slot: int) -> None:
        self._position = None

    def self_check(self) -> None:
        pass


def script(name: int, length: int, prefill_steps: int = 0) -> list[int]:
    """A prompt for FakeBatchEngine: tokens `name * 1000 + i` for i < length, then the end."""
    return [name, length, prefill_steps]


def expected_tokens(prompt: list[int]) -> list[int]:
    name, length, _ = prompt
    return [name * 1000 + i for i in range(length)]


@dataclass
class _FakeSequence:
    prompt: list[int]
    prefill_left: int
    emitted: int = 0


@dataclass
class FakeBatchEngine:
    """N slots stepped together. A prompt `script(name, length, prefill_steps)` waits
    `prefill_steps` steps, then gives one token a step, then an end-of-generation token (the
    fake, like llama.cpp, goes on past it until released). Records what the scheduler did.

    `fail_next` is raised by the next step; `full_next` names slots for a KVCacheFullError
    raised by the next step; a start with name -1 is refused with ValueError.
    """

    slots: int = 4
    step_delay_s: float = 0.0
    fail_next: Exception | None = None
    full_next: tuple[int, ...] = ()
    steps: int = 0
    started: list[tuple[int, list[int]]] = field(default_factory=list)
    released: list[tuple[int, int]] = field(default_factory=list)  # (slot, steps done then)
    emitted: list[tuple[int, int, int]] = field(default_factory=list)  # (step, slot, token)
    max_batch: int = 0
    _running: dict[int, _FakeSequence] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def info(self) -> EngineInfo:
        return EngineInfo(n_ctx=4096, backend="cpu", slots=self.slots, load_seconds=0.0)

    def prompt_tokens(self, job: GenerationJob) -> list[int]:
        return script(7, 3)

    def start(self, prompt: list[int], sampling: SamplingParams, seed: int) -> int:
        if prompt[0] == -1:
            raise ValueError("refused")
        with self._lock:
            free = [slot for slot in range(self.slots) if slot not in self._running]
            if not free:
                raise EngineBusyError("busy")
            self._running[free[0]] = _FakeSequence(prompt, prefill_left=prompt[2])
            self.started.append((free[0], prompt))
        return free[0]

    def start_group(
        self, prompt: list[int], sampling: SamplingParams, seeds: list[int]
    ) -> list[int]:
        """Every sequence of the group plays the same script."""
        with self._lock:
            if len(self._running) + len(seeds) > self.slots:
                raise EngineBusyError("busy")
        return [self.start(prompt, sampling, seed) for seed in seeds]

    def step(self) -> list[Sampled]:
        if self.step_delay_s:
            time.sleep(self.step_delay_s)
        if self.fail_next is not None:
            error, self.fail_next = self.fail_next, None
            raise error
        if self.full_next:
            slots, self.full_next = self.full_next, ()
            raise KVCacheFullError(slots, "full")
        out: list[Sampled] = []
        with self._lock:
            self.steps += 1
            self.max_batch = max(self.max_batch, len(self._running))
            for slot, sequence in sorted(self._running.items()):
                if sequence.prefill_left:
                    sequence.prefill_left -= 1
                    continue
                name, length, _ = sequence.prompt
                done = sequence.emitted >= length
                token = EOS if done else name * 1000 + sequence.emitted
                sequence.emitted += 1
                out.append(
                    Sampled(
                        slot=slot, token=token, piece=b"" if done else b"t ", end_of_generation=done
                    )
                )
                self.emitted.append((self.steps, slot, token))
        return out

    def release(self, slot: int) -> None:
        with self._lock:
            assert slot in self._running, f"slot {slot} released twice"
            del self._running[slot]
            self.released.append((slot, self.steps))

    def self_check(self) -> None:
        pass


@dataclass
class RecordingPublisher:
    events: list[tuple[str, Event]] = field(default_factory=list)

    def publish(self, job_id: str, event: Event) -> None:
        self.events.append((job_id, event))


class FakeTokenizers(Tokenizers):
    """Counts every prompt as `prompt_len` tokens, as FakeEngine does.

    Its text is encoded as UTF-8 first, as the real tokenizer does: text it cannot encode
    fails here as it would there.
    """

    def __init__(self, prompt_len: int) -> None:
        self.prompt_len = prompt_len

    async def n_vocab(self, model: str) -> int:
        return FAKE_N_VOCAB

    async def count(self, job: GenerationJob, n_ctx: int | None = None) -> int:
        for text in [job.prompt or "", *(m.content for m in job.messages or [])]:
            text.encode("utf-8")
        return self.prompt_len
