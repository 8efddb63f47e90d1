"""Submitting a neutral job and reading its events back.

The API subscribes to the job's channel, waits for the subscription to be confirmed, and only
then admits and enqueues, so not even the first token can be published before anyone listens.
While it waits, it watches the job's record: a job still queued at its deadline is expired,
a job whose worker died is requeued or failed (api/admission.py), and a stream that ends
before its job did cancels the job (client gone, server shutting down, error).
"""

import contextlib
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from types import TracebackType

import anyio
from redis.asyncio.client import PubSub
from redis.exceptions import RedisError

from api import admission, observe
from api.admission import Reclaimed
from api.errors import (
    BackendUnavailableError,
    ContextLengthExceededError,
    ModelNotFoundError,
    NoWorkerError,
)
from api.observe import RequestObservation
from api.state import AppState
from shared import keys, registry
from shared.events import DoneEvent, ErrorCode, ErrorEvent, Event, parse_event
from shared.job import GenerationJob
from shared.lifecycle import JobRecord, JobStatus, queue_state
from shared.registry import WorkerInfo

log = logging.getLogger(__name__)

# A stream still queued sends a position notice at least this often (a keep-alive).
_NOTICE_EVERY_S = 10.0


async def require_live_worker(state: AppState, model: str) -> list[WorkerInfo]:
    """The model's live workers; 404 for a model nobody knows, 503 for one with none up."""
    workers = await registry.live_workers(state.redis, model)
    if workers:
        return workers
    known = set(state.settings.models) | await registry.registered_models(state.redis)
    if model not in known:
        raise ModelNotFoundError(f"the model '{model}' does not exist", param="model")
    raise NoWorkerError(f"no worker is serving the model '{model}' right now")


async def live_models(state: AppState) -> dict[str, list[WorkerInfo]]:
    """Every known model that has at least one live worker, with those workers."""
    known = set(state.settings.models) | await registry.registered_models(state.redis)
    found = {m: await registry.live_workers(state.redis, m) for m in sorted(known)}
    return {model: workers for model, workers in found.items() if workers}


@dataclass(frozen=True)
class Queued:
    """Not an event of the job: a notice that it is still waiting in line.

    `position` is 1 for the next job to start (None: not known at this moment).
    """

    position: int | None


class JobStream:
    """The events of one submitted job, ending with exactly one terminal event.

    Every wait here has a deadline: a worker that falls silent, a job that outlives its queue
    deadline, a worker that dies and Redis going away all end the stream with an error event.
    Closing the stream before its terminal event cancels the job.
    """

    def __init__(
        self,
        state: AppState,
        pubsub: PubSub,
        job: GenerationJob,
        prompt_tokens: int,
        observation: RequestObservation | None = None,
    ) -> None:
        self.job = job
        self._state = state
        self._pubsub = pubsub
        self.prompt_tokens = prompt_tokens  # counted by the API, as the worker will count them
        self._observation = observation
        self._submitted_at = time.time()
        # The first event may wait for the whole queue deadline plus the prompt's evaluation.
        self._silent_until = max(job.deadline, time.time()) + state.settings.event_timeout_s
        self._next_watch = time.time() + state.settings.watch_interval_s
        self._seen_any = False
        self._ended = False
        self._closed = False
        self._notice: tuple[int | None, float] | None = None  # last position sent, when
        self._terminal_noticed_at: float | None = None

    async def __aenter__(self) -> "JobStream":
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Stop listening; cancel the job unless it has ended."""
        if self._closed:
            return
        self._closed = True
        with anyio.CancelScope(shield=True):
            if not self._ended:
                try:
                    before = await self._state.tracker.cancel(self.job.id)
                    log.info("job %s cancelled by its request (was %s)", self.job.id, before)
                except RedisError as exc:
                    log.warning("could not cancel job %s: %s", self.job.id, exc)
            with contextlib.suppress(RedisError):
                await self._pubsub.aclose()  # type: ignore[no-untyped-call]

    async def events(self, positions: bool = False) -> AsyncIterator[Event | Queued]:
        """The job's events; with `positions`, also `Queued` notices while it waits."""
        while not self._ended:
            try:
                item = await self._next(positions)
            except RedisError as exc:
                log.warning("job %s: redis unavailable: %s", self.job.id, exc)
                item = ErrorEvent(
                    code=ErrorCode.BACKEND_UNAVAILABLE, message="the queue backend is unavailable"
                )
            if isinstance(item, DoneEvent | ErrorEvent):
                self._ended = True
            if self._observation is not None and not isinstance(item, Queued):
                self._observation.event(item)
            yield item

    async def _next(self, positions: bool) -> Event | Queued:
        while True:
            now = time.time()
            if now >= self._silent_until:
                return self._silence_error()
            message = await self._read(min(self._next_watch, self._silent_until) - now)
            if message is not None:
                self._seen_any = True
                self._silent_until = time.time() + self._state.settings.event_timeout_s
                return parse_event(message)
            if time.time() >= self._next_watch:
                item = await self._watch(positions)
                self._next_watch = time.time() + self._state.settings.watch_interval_s
                if item is not None:
                    return item

    async def _read(self, wait_s: float) -> bytes | None:
        until = time.time() + wait_s
        while (left := until - time.time()) > 0:
            message = await self._pubsub.get_message(ignore_subscribe_messages=True, timeout=left)
            if message is not None and message["type"] == "message":
                data: bytes = message["data"]
                return data
        return None

    async def _watch(self, positions: bool) -> ErrorEvent | Queued | None:
        """Look at the job's record: act on expiry and dead workers, report the position."""
        tracker, now = self._state.tracker, time.time()
        record = await tracker.record(self.job.id)
        if record is None:
            return ErrorEvent(
                code=ErrorCode.BACKEND_UNAVAILABLE, message="the queue backend lost the job"
            )
        notice_due = now - self._submitted_at >= self._state.settings.queue_notice_after_s
        if record.status is JobStatus.QUEUED:
            if now > record.deadline:
                if await tracker.expire(record) is JobStatus.EXPIRED:
                    return _deadline_error()
            elif positions and notice_due:
                return await self._position_notice(record, now)
        elif record.status is JobStatus.RUNNING:
            if record.worker and not await registry.is_alive(self._state.redis, record.worker):
                return await self._reclaim(record.worker)
        elif self._terminal_noticed_at is None:
            self._terminal_noticed_at = now  # its terminal event should be on its way
        elif now - self._terminal_noticed_at > self._state.settings.watch_interval_s:
            return _from_record(record)
        return None

    async def _position_notice(self, record: JobRecord, now: float) -> Queued | None:
        ahead = await self._state.tracker.position(record)
        position = None if ahead is None else ahead + 1
        if self._notice is not None:
            last, at = self._notice
            if last == position and now - at < _NOTICE_EVERY_S:
                return None
        self._notice = (position, now)
        return Queued(position)

    async def _reclaim(self, worker: str) -> ErrorEvent | None:
        outcome, self.job = await anyio.to_thread.run_sync(
            admission.reclaim, self._state.sync_redis, self.job, worker, self._state.settings
        )
        log.warning("job %s: worker %s died; %s", self.job.id, worker, outcome)
        if outcome is Reclaimed.FAILED:  # it had streamed, or had no attempt left
            return ErrorEvent(code=ErrorCode.WORKER_LOST, message="the worker running the job died")
        if outcome is Reclaimed.REQUEUED:
            self._silent_until = self.job.deadline + self._state.settings.event_timeout_s
        return None

    def _silence_error(self) -> ErrorEvent:
        if self._seen_any:
            return ErrorEvent(code=ErrorCode.WORKER_LOST, message="the worker stopped responding")
        return _deadline_error()


def _deadline_error() -> ErrorEvent:
    return ErrorEvent(
        code=ErrorCode.DEADLINE_EXCEEDED, message="no worker started the job before its deadline"
    )


def _from_record(record: JobRecord) -> ErrorEvent:
    """The terminal event of a job that ended without its event reaching this stream."""
    if record.status is JobStatus.CANCELLED:
        return ErrorEvent(code=ErrorCode.CANCELLED, message="the job was cancelled")
    if record.status is JobStatus.EXPIRED:
        return _deadline_error()
    if record.status is JobStatus.FAILED and record.error == ErrorCode.WORKER_LOST:
        return ErrorEvent(code=ErrorCode.WORKER_LOST, message="the worker running the job died")
    return ErrorEvent(code=ErrorCode.INTERNAL, message="the job's output was lost")


async def submit(state: AppState, job: GenerationJob) -> JobStream:
    """Check the model has room and is served, the prompt fits; subscribe; admit the job.

    The cheap queue check comes first: under overload most requests end there.
    """
    observation = observe.current()
    if observation is not None:
        observation.submitted(job)
    await _refuse_if_full(state, job.model)
    workers = await require_live_worker(state, job.model)
    prompt_tokens = await _check_context(state, job, workers)
    pubsub = state.redis.pubsub()
    try:
        await pubsub.subscribe(keys.events_channel(job.id))
        await _confirm_subscription(pubsub, state.settings.redis_timeout_s)
        refused = await anyio.to_thread.run_sync(
            admission.admit, state.sync_redis, job, state.settings
        )
        if refused is not None:  # another replica filled the queue since the early check
            depth = await queue_state(state.redis, job.model, state.settings.drain_window_s)
            raise admission.queue_full(job.model, depth, state.settings.retry_after_max_s)
    except BaseException:
        with anyio.CancelScope(shield=True):
            await pubsub.aclose()  # type: ignore[no-untyped-call]
        raise
    return JobStream(state, pubsub, job, prompt_tokens, observation)


async def _refuse_if_full(state: AppState, model: str) -> None:
    """429 when the model's queue is at its limit: a cheap early check before the atomic one."""
    settings = state.settings
    depth = await queue_state(state.redis, model, settings.drain_window_s)
    if depth.waiting >= settings.limits(model).max_queued:
        raise admission.queue_full(model, depth, settings.retry_after_max_s)


async def _check_context(state: AppState, job: GenerationJob, workers: list[WorkerInfo]) -> int:
    """400 before enqueueing when the prompt plus max_tokens cannot fit the model's context.

    Counted with the model's own vocabulary (api/tokenizers.py), as the worker counts it;
    returns the count.
    """
    n_ctx = min(w.n_ctx for w in workers)
    prompt = await state.tokenizers.count(job, n_ctx)
    wanted = job.sampling.max_tokens
    if prompt + (wanted or 1) > n_ctx:
        raise ContextLengthExceededError(
            f"this model's context is {n_ctx} tokens; the prompt has {prompt} and "
            f"{wanted or 1} more were asked for",
            param="max_tokens"
            if wanted and prompt < n_ctx
            else ("prompt" if job.prompt is not None else "messages"),
        )
    return prompt


async def _confirm_subscription(pubsub: PubSub, timeout_s: float) -> None:
    with anyio.move_on_after(timeout_s):
        while True:
            message = await pubsub.get_message(timeout=timeout_s)
            if message is not None and message["type"] == "subscribe":
                return
    raise BackendUnavailableError("the queue backend did not confirm the subscription")


async def count_prompt(state: AppState, job: GenerationJob) -> int:
    """The job's prompt in tokens, as its worker will count them (404/503 as `submit`)."""
    await require_live_worker(state, job.model)
    return await state.tokenizers.count(job)
