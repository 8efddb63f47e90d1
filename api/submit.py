"""Submitting a neutral job: room in the queue, a live worker, a prompt that fits; then
subscribe and admit. Or, for a request retried with its Idempotency-Key, join the job the
key already admitted (api/resume.py).

The API subscribes to the job's channel (api/hub.py), waits for the subscription to be
confirmed, and only then admits and enqueues, so not even the first token can be published
before anyone listens.
"""

import anyio

from api.errors import ContextLengthExceededError, IdempotencyKeyReusedError, QueueFullError
from api.formats import Format, JobSpec
from api.inbox import Inbox
from api.models import require_live_worker
from api.observe import RequestObservation
from api.resume import Resumption, attach
from api.state import AppState
from api.stream import JobStream
from shared.context import ContextOverflowError, effective_context, output_room
from shared.job import GenerationJob
from shared.lifecycle.admission import Extras, KeyTaken, admit, holder
from shared.lifecycle.queue import QueueDepth, queue_depth
from shared.registry import WorkerInfo


async def submit(
    state: AppState,
    job: GenerationJob,
    observation: RequestObservation | None,
    fmt: Format,
    via: Resumption,
) -> JobStream:
    """Check the model has room and is served, the prompt fits; subscribe; admit the job.

    The cheap queue check comes first: under overload most requests end there. The request's
    `observation` (metrics, log line) learns the job and then its events; `fmt` (how the
    request wants its answer) is kept with the job so that any replica can resume its stream.
    """
    idempotency = via.idempotency
    if idempotency is not None:  # a retry: join its job, wherever the queue stands
        taken = holder(await state.redis.hgetall(idempotency.redis_key))
        if taken is not None:
            return await _join(state, job, taken, via, observation)
    if observation is not None:
        observation.submitted(job)
    await _refuse_if_full(state, job.model)
    workers = await require_live_worker(state, job.model)
    prompt_tokens = await _check_context(state, job, workers)
    extras = Extras(
        spec=JobSpec(job=job, prompt_tokens=prompt_tokens, format=fmt).model_dump_json(),
        idempotency_key=idempotency.redis_key if idempotency else None,
        fingerprint=idempotency.fingerprint if idempotency else "",
        idempotency_ttl_s=state.settings.idempotency_ttl_s,
    )
    inbox = Inbox()
    await state.hub.subscribe(job.id, inbox)  # returns once Redis confirmed it
    try:
        refused = await anyio.to_thread.run_sync(
            admit, state.sync_redis, job, state.settings, extras
        )
        if refused is not None:  # another replica filled the queue since the early check
            depth = await queue_depth(state.redis, job.model, state.settings.drain_window_s)
            raise queue_full(job.model, depth, state.settings.retry_after_max_s)
    except KeyTaken as taken:  # the same request, admitted meanwhile by another replica
        with anyio.CancelScope(shield=True):
            await state.hub.unsubscribe(job.id, inbox)
        return await _join(state, job, taken, via, observation)
    except BaseException:
        with anyio.CancelScope(shield=True):
            await state.hub.unsubscribe(job.id, inbox)
        raise
    state.watchdog.watch(job.id, inbox)
    return JobStream(state, inbox, job, prompt_tokens, observation, grace_s=via.grace_s)


async def _join(
    state: AppState,
    job: GenerationJob,
    taken: KeyTaken,
    via: Resumption,
    observation: RequestObservation | None,
) -> JobStream:
    """The stream of the job an Idempotency-Key admitted, for a retry of its request:
    streamed, after `Last-Event-ID` if given; not streamed, all of it."""
    assert via.idempotency is not None
    if taken.fingerprint != via.idempotency.fingerprint:
        raise IdempotencyKeyReusedError(
            "this Idempotency-Key was used with a different request; use a new key",
            param="Idempotency-Key",
        )
    after = via.last_event_id if job.stream else None
    stream, _ = await attach(
        state, taken.job_id, after=after, grace_s=via.grace_s, observation=observation
    )
    return stream


async def _refuse_if_full(state: AppState, model: str) -> None:
    """429 when the model's queue is at its limit: a cheap early check before the atomic one."""
    settings = state.settings
    depth = await queue_depth(state.redis, model, settings.drain_window_s)
    if depth.waiting >= settings.limits(model).max_queued:
        raise queue_full(model, depth, settings.retry_after_max_s)


def queue_full(model: str, depth: QueueDepth, max_s: int) -> QueueFullError:
    return QueueFullError(
        f"the queue for model '{model}' is full ({depth.waiting} waiting); retry later",
        retry_after_s=depth.retry_after_s(max_s),
    )


async def _check_context(state: AppState, job: GenerationJob, workers: list[WorkerInfo]) -> int:
    """400 before enqueueing when the prompt plus max_tokens cannot fit the job's context
    (shared/context.py, the rule the worker applies too); returns the prompt's token count.

    Counted with the model's own vocabulary (api/tokenizers.py), as the worker counts it.
    """
    n_ctx = effective_context(min(w.n_ctx for w in workers), job.n_ctx)
    prompt = await state.tokenizers.count(job, n_ctx)
    try:
        output_room(n_ctx, prompt, job.sampling.max_tokens)
    except ContextOverflowError as exc:
        blamed = "prompt" if job.prompt is not None else "messages"
        raise ContextLengthExceededError(
            str(exc), param=blamed if exc.prompt_too_long else "max_tokens"
        ) from exc
    return prompt


async def count_prompt(state: AppState, job: GenerationJob) -> int:
    """The job's prompt in tokens, as its worker will count them (404/503 as `submit`)."""
    await require_live_worker(state, job.model)
    return await state.tokenizers.count(job)
