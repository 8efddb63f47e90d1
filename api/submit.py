"""Submitting a neutral job: room in the queue, a live worker, a prompt that fits; then
subscribe and admit.

The API subscribes to the job's channel (api/hub.py), waits for the subscription to be
confirmed, and only then admits and enqueues, so not even the first token can be published
before anyone listens.
"""

import anyio

from api.errors import ContextLengthExceededError, InvalidRequestError, QueueFullError
from api.inbox import Inbox
from api.models import require_live_worker
from api.observe import RequestObservation
from api.state import AppState
from api.stream import JobStream
from shared.context import ContextOverflowError, caps_max_tokens, effective_context, output_room
from shared.job import AnyJob, EmbeddingJob, GenerationJob
from shared.lifecycle.admission import admit
from shared.lifecycle.queue import QueueDepth, queue_depth
from shared.registry import WorkerInfo


async def submit(
    state: AppState, job: GenerationJob, observation: RequestObservation | None = None
) -> JobStream:
    """Check the model has room and is served, the prompt fits; subscribe; admit the job.

    The cheap queue check comes first: under overload most requests end there. The request's
    `observation` (metrics, log line) learns the job and then its events.
    """
    if observation is not None:
        observation.submitted(job)
    await _refuse_if_full(state, job.model)
    workers = await require_live_worker(state, job.model)
    prompt_tokens = await _check_context(state, job, workers)
    return await _enqueue(state, job, prompt_tokens, observation)


async def submit_embedding(
    state: AppState, job: EmbeddingJob, observation: RequestObservation | None = None
) -> JobStream:
    """As `submit`, for an embedding job: 400 when no live worker of the model embeds, or
    when `dimensions` asks for another length than its vectors have. Each input's length is
    checked by the worker, which tokenizes it."""
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


async def _enqueue(
    state: AppState, job: AnyJob, prompt_tokens: int, observation: RequestObservation | None
) -> JobStream:
    inbox = Inbox()
    await state.hub.subscribe(job.id, inbox)  # returns once Redis confirmed it
    try:
        refused = await anyio.to_thread.run_sync(admit, state.sync_redis, job, state.settings)
        if refused is not None:  # another replica filled the queue since the early check
            depth = await queue_depth(state.redis, job.model, state.settings.drain_window_s)
            raise queue_full(job.model, depth, state.settings.retry_after_max_s)
    except BaseException:
        with anyio.CancelScope(shield=True):
            await state.hub.unsubscribe(job.id)
        raise
    state.watchdog.watch(job.id, inbox)
    return JobStream(state, inbox, job, prompt_tokens, observation)


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
        output_room(n_ctx, prompt, job.sampling.max_tokens, cap=caps_max_tokens(job.flavour))
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
