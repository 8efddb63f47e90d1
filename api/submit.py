"""Submitting a neutral job: room in the queue, a live worker, a prompt that fits; then
subscribe and admit.

The API subscribes to the job's channel (api/hub.py), waits for the subscription to be
confirmed, and only then admits and enqueues, so not even the first token can be published
before anyone listens.
"""

from typing import TypeVar

import anyio

from api.auth import Caller
from api.errors import (
    ContextLengthExceededError,
    IdempotencyKeyReusedError,
    InvalidRequestError,
    KeyQueueFullError,
    PermissionDeniedError,
    QueueFullError,
    RateLimitedError,
)
from api.formats import Format, JobSpec
from api.inbox import Inbox
from api.models import require_live_worker
from api.observe import RequestObservation
from api.ratelimit import rate_limit_headers
from api.resume import Resumption, attach
from api.state import AppState
from api.stream import JobStream
from shared.context import ContextOverflowError, caps_max_tokens, effective_context, output_room
from shared.job import AnyJob, EmbeddingJob, GenerationJob
from shared.lifecycle.admission import Extras, KeyTaken, Refusal, admit, holder
from shared.lifecycle.queue import QueueDepth, queue_depth
from shared.registry import WorkerInfo
from shared.tenancy.quota import Limit

_Job = TypeVar("_Job", GenerationJob, EmbeddingJob)


async def submit(
    state: AppState,
    job: GenerationJob,
    observation: RequestObservation | None = None,
    fmt: Format | None = None,
    via: Resumption | None = None,
) -> JobStream:
    """Check the model has room and is served, the prompt fits; subscribe; admit the job.

    The cheap queue check comes first: under overload most requests end there. The request's
    `observation` (metrics, log line) learns the job and then its events; its `caller` (the
    API key, api/auth.py) decides the job's tenant and priority, the models it may use (403),
    and its quotas (429), charged only once the prompt is known to fit. `fmt` (how the
    request wants its answer) is kept with the job so that any replica can resume its stream;
    `via` (the request's Idempotency-Key, Last-Event-ID, disconnect grace) may join a job
    already admitted instead.
    """
    job = _for_caller(job, observation)
    via = via or Resumption(None, None, state.settings.disconnect_grace_s)
    idempotency = via.idempotency
    if idempotency is not None:  # a retry: join its job, wherever the queue stands
        taken = holder(await state.redis.hgetall(idempotency.redis_key))
        if taken is not None:
            return await _join(state, job, taken, via, observation)
    if observation is not None:
        observation.submitted(job)
    await _refuse_if_full(state, job.model)
    workers = await require_live_worker(state, job.model)
    await _check_sampling(state, job, workers)
    prompt_tokens = await _check_context(state, job, workers)
    spec = JobSpec(job=job, prompt_tokens=prompt_tokens, format=fmt) if fmt else None
    extras = Extras(
        spec=spec.model_dump_json() if spec is not None else None,
        idempotency_key=idempotency.redis_key if idempotency else None,
        fingerprint=idempotency.fingerprint if idempotency else "",
        idempotency_ttl_s=state.settings.idempotency_ttl_s,
    )
    try:
        return await _enqueue(state, job, prompt_tokens, observation, extras, via.grace_s)
    except KeyTaken as taken:  # the same request, admitted meanwhile by another replica
        return await _join(state, job, taken, via, observation)


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


async def submit_embedding(
    state: AppState, job: EmbeddingJob, observation: RequestObservation | None = None
) -> JobStream:
    """As `submit`, for an embedding job: 400 when no live worker of the model embeds, or
    when `dimensions` asks for another length than its vectors have. Each input's length is
    checked by the worker, which tokenizes it (its tokens are not charged to a key's tpm:
    the request counts for its rpm)."""
    job = _for_caller(job, observation)
    if observation is not None:
        observation.submitted(job)
    await _refuse_if_full(state, job.model)
    dims = embedding_dims(await require_live_worker(state, job.model), job.model)
    if job.dimensions is not None and job.dimensions != dims:
        raise InvalidRequestError(
            f"the model '{job.model}' gives vectors of {dims} dimensions; "
            f"{job.dimensions} cannot be honoured",
            param="dimensions",
        )
    return await _enqueue(state, job, 0, observation)


def embedding_dims(workers: list[WorkerInfo], model: str) -> int:
    """The length of the model's embedding vectors; 400 when none of its workers embeds."""
    dims = {w.embedding_dims for w in workers if w.embedding_dims is not None}
    if not dims:
        raise InvalidRequestError(
            f"the model '{model}' does not produce embeddings (its workers do not serve them)",
            param="model",
        )
    return min(dims)


def _for_caller(job: _Job, observation: RequestObservation | None) -> _Job:
    """The job with its caller's tenant and priority; 403 for a model its key may not use."""
    caller = observation.caller if observation is not None else None
    if caller is None:
        return job
    if caller.key is not None and not caller.key.allows(job.model):
        raise PermissionDeniedError(
            f"this API key may not use the model '{job.model}'", param="model"
        )
    return job.model_copy(update={"tenant": caller.name, "priority": caller.priority})


async def _enqueue(
    state: AppState,
    job: AnyJob,
    prompt_tokens: int,
    observation: RequestObservation | None,
    extras: Extras | None = None,
    grace_s: float = 0.0,
) -> JobStream:
    caller = observation.caller if observation is not None else None
    key = caller.key if caller is not None else None
    charged = key is not None and await _charge(state, caller, job, prompt_tokens)
    inbox = Inbox()
    try:
        await state.hub.subscribe(job.id, inbox)  # returns once Redis confirmed it
        try:
            refused = await anyio.to_thread.run_sync(
                admit,
                state.sync_redis,
                job,
                state.settings,
                extras,
                key.max_queued if key else None,
            )
            if refused is not None:  # another replica filled the queue since the early check
                raise await _refusal(state, job, refused)
        except BaseException:
            with anyio.CancelScope(shield=True):
                await state.hub.unsubscribe(job.id, inbox)
            raise
    except BaseException:
        if charged and job.tenant is not None:  # not admitted: the quotas take it back
            with anyio.CancelScope(shield=True):
                await state.quotas.refund(job.tenant, job.id, prompt_tokens)
        raise
    state.watchdog.watch(job.id, inbox)
    return JobStream(state, inbox, job, prompt_tokens, observation, grace_s=grace_s)


async def _charge(state: AppState, caller: Caller | None, job: AnyJob, prompt_tokens: int) -> bool:
    """Count the request and its prompt against its key's quotas (429 when either is used
    up); whether anything was charged (a key without rpm and tpm is not counted)."""
    key = caller.key if caller is not None else None
    if caller is None or key is None or (key.rpm is None and key.tpm is None):
        return False
    rate = await state.quotas.charge(key.name, job.id, prompt_tokens, key.rpm, key.tpm)
    caller.rate = rate
    if rate.exceeded is Limit.REQUESTS:
        raise RateLimitedError(
            f"this API key's requests per minute ({key.rpm}) are used up; retry later",
            headers=rate_limit_headers(rate),
        )
    if rate.exceeded is Limit.TOKENS:
        if rate.retry_after_s is None:
            message = (
                f"the prompt ({prompt_tokens} tokens) is over this API key's tokens per minute "
                f"({key.tpm}): it can never pass"
            )
        else:
            message = f"this API key's tokens per minute ({key.tpm}) are used up; retry later"
        raise RateLimitedError(message, headers=rate_limit_headers(rate))
    return True


async def _refusal(state: AppState, job: AnyJob, refused: Refusal) -> QueueFullError:
    depth = await queue_depth(state.redis, job.model, state.settings.drain_window_s)
    if refused.key_cap is None:
        return queue_full(job.model, depth, state.settings.retry_after_max_s)
    return KeyQueueFullError(
        f"this API key already has {refused.key_waiting} jobs waiting for model '{job.model}' "
        f"(its limit: {refused.key_cap}); retry later",
        retry_after_s=depth.retry_after_s(state.settings.retry_after_max_s),
    )


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


async def _check_sampling(state: AppState, job: GenerationJob, workers: list[WorkerInfo]) -> None:
    """400 before enqueueing for what no worker of the model could honour: more sequences
    (n) than any worker's slots, a logit_bias token id outside the vocabulary."""
    slots = max(w.slots for w in workers)
    if job.n > slots:
        raise InvalidRequestError(
            f"n is {job.n}; the workers of model '{job.model}' decode {slots} sequences at most",
            param="n",
        )
    if job.sampling.logit_bias:
        n_vocab = await state.tokenizers.n_vocab(job.model)
        outside = sorted(t for t in job.sampling.logit_bias if t >= n_vocab)
        if outside:
            raise InvalidRequestError(
                f"token id {outside[0]} is outside the vocabulary (0 to {n_vocab - 1})",
                param="logit_bias",
            )


async def _check_context(state: AppState, job: GenerationJob, workers: list[WorkerInfo]) -> int:
    """400 before enqueueing when the prompt plus max_tokens cannot fit the job's context
    (shared/context.py, the rule the worker applies too); returns the prompt's token count.

    Counted with the model's own vocabulary (api/tokenizers.py), as the worker counts it.
    """
    n_ctx = effective_context(min(w.n_ctx for w in workers), job.n_ctx)
    prompt = await state.tokenizers.count(job, n_ctx)
    try:
        output_room(n_ctx, prompt, job.sampling.max_tokens, cap=caps_max_tokens(job.flavour))
    except ContextOverflowError as exc:
        blamed = "prompt" if job.prompt is not None else "messages"
        raise ContextLengthExceededError(
            str(exc), param=blamed if exc.prompt_too_long else "max_tokens"
        ) from exc
    return prompt


async def check_context(state: AppState, job: GenerationJob) -> int:
    """The job's prompt in tokens; 400 when it and its max_tokens cannot fit the context of
    its model's workers, as `submit` would refuse it (404/503 as `submit` too)."""
    return await _check_context(state, job, await require_live_worker(state, job.model))


async def count_prompt(state: AppState, job: GenerationJob) -> int:
    """The job's prompt in tokens, as its worker will count them (404/503 as `submit`)."""
    await require_live_worker(state, job.model)
    return await state.tokenizers.count(job)
