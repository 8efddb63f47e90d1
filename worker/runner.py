"""Runs one generation job on an engine and publishes its events.

Every job ends with exactly one terminal event (`done` or `error`), whatever happens. A
`JobControl` decides whether the job may start, and is asked between tokens whether it must
stop (cancelled): cancellation is cooperative, and the slot is freed at once.
"""

import logging
import random
import time
from typing import Protocol

from shared import logs
from shared.context import (
    ContextOverflowError,
    caps_max_tokens,
    effective_context,
    output_room,
)
from shared.events import (
    DoneEvent,
    EmbeddingsEvent,
    ErrorCode,
    ErrorEvent,
    FinishReason,
    TerminalEvent,
    Timings,
    Usage,
)
from shared.job import AnyJob, EmbeddingJob, GenerationJob, QueuedJob
from shared.lifecycle.worker_side import StartDecision
from worker.embedding import Vector
from worker.engine import (
    Engine,
    EngineBusyError,
    EngineInfo,
    InvalidSamplingError,
    KVCacheFullError,
)
from worker.output import ChoiceOutput, JobOutput, OutputStopped, Publisher

log = logging.getLogger(__name__)


class JobControl(Protocol):
    def begin(self, job: QueuedJob) -> StartDecision: ...

    def claim_output(self, job: QueuedJob) -> bool:
        """Before the first token is published: False if the job is no longer this run's."""
        ...

    def should_stop(self, job: QueuedJob) -> bool:
        """Asked between tokens: cancelled, or no longer this run's."""
        ...

    def end(self, job: QueuedJob, terminal: TerminalEvent) -> bool:
        """Record the outcome; True if this run still owns the job and publishes its end."""
        ...


class AlwaysRun:
    """A control that lets every job run to its end (no Redis record): tests, benchmarks."""

    def begin(self, job: QueuedJob) -> StartDecision:
        return StartDecision.RUN

    def claim_output(self, job: QueuedJob) -> bool:
        return True

    def should_stop(self, job: QueuedJob) -> bool:
        return False

    def end(self, job: QueuedJob, terminal: TerminalEvent) -> bool:
        return True


class JobError(Exception):
    """A job that cannot run, reported to its client as an error event."""

    def __init__(self, code: ErrorCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class JobObserver(Protocol):
    """Told when each job starts and ends (metrics, log lines); see worker/observe.py."""

    def started(self, job: QueuedJob) -> None: ...

    def finished(self, job: QueuedJob, terminal: TerminalEvent | None) -> None: ...


class PendingEmbedding(Protocol):
    """Inputs handed to the engine thread (worker/scheduler.py's `Embedding`)."""

    def wait(self, timeout: float) -> list[Vector] | None: ...

    def close(self) -> None: ...


class Embedder(Protocol):
    """What runs embedding jobs: worker/slot_engine.py's `SlotEngine`."""

    @property
    def info(self) -> EngineInfo: ...

    def text_tokens(self, text: str) -> list[int]: ...

    def submit_embedding(self, inputs: list[list[int]]) -> PendingEmbedding: ...


# How often a job waiting for its embeddings checks whether it was cancelled.
_EMBED_POLL_S = 0.05


class JobRunner:
    """Runs jobs one after another on one engine."""

    def __init__(
        self,
        engine: Engine,
        publisher: Publisher,
        control: JobControl | None = None,
        observer: JobObserver | None = None,
        job_timeout_s: float | None = None,
        embedder: Embedder | None = None,
    ) -> None:
        """`job_timeout_s`: a running job that takes longer is ended with an error (checked
        between tokens; RQ's SIGALRM timeout cannot work in slot threads). `embedder` runs
        embedding jobs (None: they are refused)."""
        self.engine = engine
        self.embedder = embedder
        self.publisher = publisher
        self.control = control or AlwaysRun()
        self.observer = observer
        self.job_timeout_s = job_timeout_s

    def run(self, job: AnyJob) -> TerminalEvent | None:
        """Run `job` to its end and publish its events; returns the terminal event, or None
        when the job was not this worker's to answer."""
        with logs.log_context(job_id=job.id, request_id=job.request_id, model=job.model):
            begun = self.control.begin(job)
            if begun is StartDecision.SKIP:
                return None
            if self.observer is not None:
                self.observer.started(job)
            terminal: TerminalEvent | None = None
            try:
                terminal = self._outcome(job, begun)
                if begun is StartDecision.EXPIRED or self.control.end(job, terminal):
                    self.publisher.publish(job.id, terminal)
            finally:
                if self.observer is not None:
                    self.observer.finished(job, terminal)
        return terminal

    def _outcome(self, job: AnyJob, begun: StartDecision) -> TerminalEvent:
        try:
            if begun is StartDecision.EXPIRED:
                raise JobError(ErrorCode.DEADLINE_EXCEEDED, "the job waited past its deadline")
            if isinstance(job, EmbeddingJob):
                return self._embed(job)
            return self._generate(job)
        except JobError as exc:
            return ErrorEvent(code=exc.code, message=exc.message)
        except KVCacheFullError as exc:  # other jobs hold the shared context: a retry may fit
            return ErrorEvent(code=ErrorCode.BACKEND_UNAVAILABLE, message=str(exc))
        except EngineBusyError as exc:  # n > 1 sequences waited for slots held by other jobs
            return ErrorEvent(code=ErrorCode.BACKEND_UNAVAILABLE, message=str(exc))
        except Exception:
            log.exception("job %s failed", job.id)
            return ErrorEvent(code=ErrorCode.INTERNAL, message="the worker failed the job")

    def _generate(self, job: GenerationJob) -> DoneEvent:
        started = time.time()
        if started > job.deadline:
            raise JobError(ErrorCode.DEADLINE_EXCEEDED, "the job waited past its deadline")
        if job.n > self.engine.info.slots:
            raise JobError(
                ErrorCode.INVALID_REQUEST,
                f"n={job.n} sequences need {job.n} slots; this worker has {self.engine.info.slots}",
            )
        prompt = self.engine.prompt_tokens(job)
        if not prompt:  # jobs never hold empty text, but a chat template may render nothing
            raise JobError(ErrorCode.INVALID_REQUEST, "the prompt is empty: nothing to evaluate")
        max_tokens = self._max_tokens(job, len(prompt))
        seed = job.sampling.seed if job.sampling.seed is not None else random.getrandbits(32)
        out = JobOutput(job.id, self.publisher, lambda: self.control.claim_output(job))
        try:
            if job.n == 1:
                slots = [self.engine.start(prompt, job.sampling, seed)]
            else:  # each sequence its own seed: seed, seed+1, ...
                seeds = [(seed + i) & 0xFFFFFFFF for i in range(job.n)]
                slots = self.engine.start_group(prompt, job.sampling, seeds)
        except InvalidSamplingError as exc:
            raise JobError(ErrorCode.INVALID_REQUEST, str(exc)) from exc
        asked = job.sampling.logprobs is not None
        choices = [ChoiceOutput(i, job.sampling.stop, out, asked) for i in range(job.n)]
        live = dict(zip(slots, choices, strict=True))
        first_token_at: float | None = None
        try:
            while live:
                if self.control.should_stop(job):
                    raise _stopped()
                self._check_time_limit(started)
                for sampled in self.engine.step():
                    choice = live.get(sampled.slot)
                    if choice is None:
                        continue
                    first_token_at = first_token_at or time.time()
                    finish: FinishReason | None = None
                    if sampled.end_of_generation:
                        finish = FinishReason.STOP
                    elif choice.add(sampled.piece, sampled.logprob):
                        finish = FinishReason.STOP_SEQUENCE
                    elif choice.generated >= max_tokens:
                        finish = FinishReason.LENGTH
                    if finish is not None:
                        del live[sampled.slot]
                        self.engine.release(sampled.slot)
                        choice.end(finish)
                        if job.n > 1:
                            out.choice_end(
                                choice.choice, finish, choice.stop_sequence, choice.generated
                            )
        except OutputStopped:
            raise _stopped() from None
        finally:
            for slot in live:
                self.engine.release(slot)
        ended = time.time()
        first = first_token_at or ended
        assert choices[0].finish is not None
        return DoneEvent(
            finish_reason=choices[0].finish,
            stop_sequence=choices[0].stop_sequence,
            usage=Usage(
                prompt_tokens=len(prompt),
                completion_tokens=sum(choice.generated for choice in choices),
            ),
            timings=Timings(
                queued=max(0.0, started - job.created_at),
                prompt_eval=first - started,
                decode=ended - first,
            ),
        )

    def _embed(self, job: EmbeddingJob) -> EmbeddingsEvent:
        started = time.time()
        if started > job.deadline:
            raise JobError(ErrorCode.DEADLINE_EXCEEDED, "the job waited past its deadline")
        if self.embedder is None or self.embedder.info.embedding_dims is None:
            raise JobError(ErrorCode.INVALID_REQUEST, "this worker's model does not embed")
        inputs = self._embedding_inputs(job, self.embedder)
        pending = self.embedder.submit_embedding(inputs)
        try:
            while (vectors := pending.wait(_EMBED_POLL_S)) is None:
                if self.control.should_stop(job):
                    raise _stopped()
                self._check_time_limit(started)
        finally:
            pending.close()
        return EmbeddingsEvent.of(
            vectors,
            Usage(prompt_tokens=sum(map(len, inputs)), completion_tokens=0),
            Timings(
                queued=max(0.0, started - job.created_at),
                prompt_eval=time.time() - started,
                decode=0.0,
            ),
        )

    def _check_time_limit(self, started: float) -> None:
        if self.job_timeout_s is not None and time.time() - started > self.job_timeout_s:
            raise JobError(
                ErrorCode.DEADLINE_EXCEEDED,
                f"the job ran past its time limit of {self.job_timeout_s:g} s",
            )

    def _embedding_inputs(self, job: EmbeddingJob, embedder: Embedder) -> list[list[int]]:
        """Every input as tokens that fit the context (cut to it with `truncate`)."""
        n_ctx = effective_context(embedder.info.n_ctx, job.n_ctx)
        n_vocab = embedder.info.n_vocab
        inputs: list[list[int]] = []
        for index, given in enumerate(job.inputs):
            tokens = embedder.text_tokens(given) if isinstance(given, str) else given
            if not tokens:
                raise JobError(ErrorCode.INVALID_REQUEST, f"input {index} has no tokens")
            if n_vocab and max(tokens) >= n_vocab:
                raise JobError(
                    ErrorCode.INVALID_REQUEST,
                    f"input {index} has token id {max(tokens)}, not in the model's vocabulary "
                    f"of {n_vocab}",
                )
            if len(tokens) > n_ctx:
                if not job.truncate:
                    raise JobError(
                        ErrorCode.CONTEXT_LENGTH_EXCEEDED,
                        f"input {index} has {len(tokens)} tokens; the context is {n_ctx}",
                    )
                tokens = tokens[:n_ctx]
            inputs.append(tokens)
        return inputs

    def _max_tokens(self, job: GenerationJob, prompt_len: int) -> int:
        n_ctx = effective_context(self.engine.info.n_ctx, job.n_ctx)
        try:
            return output_room(
                n_ctx, prompt_len, job.sampling.max_tokens, cap=caps_max_tokens(job.flavour)
            )
        except ContextOverflowError as exc:
            raise JobError(ErrorCode.CONTEXT_LENGTH_EXCEEDED, str(exc)) from exc


def _stopped() -> JobError:
    return JobError(ErrorCode.CANCELLED, "the job was cancelled")
