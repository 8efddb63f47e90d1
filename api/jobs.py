"""Submitting a neutral job and reading its events back.

The API subscribes to the job's channel, waits for the subscription to be confirmed, and only
then enqueues, so not even the first token can be published before anyone listens.
"""

import math
import time
from collections.abc import AsyncIterator
from types import TracebackType

import anyio
from redis.asyncio.client import PubSub

from api import observe
from api.errors import BackendUnavailableError, ModelNotFoundError, NoWorkerError
from api.observe import RequestObservation
from api.state import AppState
from shared import keys, registry
from shared.events import ErrorCode, ErrorEvent, Event, parse_event
from shared.job import GenerationJob
from shared.queues import GENERATE_TASK, model_queue
from shared.registry import WorkerInfo

_RESULT_TTL_S = 300
_FAILURE_TTL_S = 3600


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


class JobStream:
    """The events of one submitted job, ending with exactly one terminal event.

    If the worker falls silent the stream ends with a synthesized error event instead of
    waiting forever: every wait here has a deadline.
    """

    def __init__(
        self,
        pubsub: PubSub,
        job: GenerationJob,
        event_timeout_s: float,
        observation: RequestObservation | None = None,
    ) -> None:
        self.job = job
        self._pubsub = pubsub
        self._event_timeout_s = event_timeout_s
        self._observation = observation

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
        with anyio.CancelScope(shield=True):
            await self._pubsub.aclose()  # type: ignore[no-untyped-call]

    async def events(self) -> AsyncIterator[Event]:
        # The first event may wait for the whole queue deadline plus the prompt's evaluation.
        wait_until = max(self.job.deadline, time.time()) + self._event_timeout_s
        seen_any = False
        while True:
            message = await self._next_message(wait_until)
            event = parse_event(message) if message is not None else self._silence_error(seen_any)
            if self._observation is not None:
                self._observation.event(event)
            yield event
            if event.type != "token":
                return
            seen_any = True
            wait_until = time.time() + self._event_timeout_s

    async def _next_message(self, wait_until: float) -> bytes | None:
        while (left := wait_until - time.time()) > 0:
            message = await self._pubsub.get_message(
                ignore_subscribe_messages=True, timeout=min(left, 1.0)
            )
            if message is not None and message["type"] == "message":
                data: bytes = message["data"]
                return data
        return None

    def _silence_error(self, seen_any: bool) -> ErrorEvent:
        if seen_any:
            return ErrorEvent(code=ErrorCode.WORKER_LOST, message="the worker stopped responding")
        return ErrorEvent(
            code=ErrorCode.DEADLINE_EXCEEDED,
            message="no worker started the job before its deadline",
        )


async def submit(state: AppState, job: GenerationJob) -> JobStream:
    """Check the model is served, subscribe to the job's events, then enqueue it."""
    observation = observe.current()
    if observation is not None:
        observation.submitted(job)
    await require_live_worker(state, job.model)
    pubsub = state.redis.pubsub()
    try:
        await pubsub.subscribe(keys.events_channel(job.id))
        await _confirm_subscription(pubsub, state.settings.redis_timeout_s)
        await anyio.to_thread.run_sync(_enqueue, state, job)
    except BaseException:
        with anyio.CancelScope(shield=True):
            await pubsub.aclose()  # type: ignore[no-untyped-call]
        raise
    return JobStream(pubsub, job, state.settings.event_timeout_s, observation)


async def _confirm_subscription(pubsub: PubSub, timeout_s: float) -> None:
    with anyio.move_on_after(timeout_s):
        while True:
            message = await pubsub.get_message(timeout=timeout_s)
            if message is not None and message["type"] == "subscribe":
                return
    raise BackendUnavailableError("the queue backend did not confirm the subscription")


def _enqueue(state: AppState, job: GenerationJob) -> None:
    model_queue(state.sync_redis, job.model).enqueue_call(
        func=GENERATE_TASK,
        args=(job.model_dump(mode="json"),),
        job_id=job.id,
        timeout=state.settings.job_timeout_s,
        ttl=max(1, math.ceil(job.deadline - time.time())),
        result_ttl=_RESULT_TTL_S,
        failure_ttl=_FAILURE_TTL_S,
    )


async def count_prompt(state: AppState, job: GenerationJob) -> int:
    """The job's prompt in tokens, as its worker will count them (404/503 as `submit`)."""
    await require_live_worker(state, job.model)
    return await state.tokenizers.count(job)
