"""Background responses (`background: true`): answered at once with a `queued` response,
their job run to its end whether or not a client listens, and their end stored by whichever
replica sees it first.

The replica that admitted the job listens to it to the end (a detached task) and stores
the end. If that replica goes away first, the job goes on (a background job's disconnect
grace is `events_retention_s`), and the next request that reads the response on any replica
finishes it from the job's log (`current`); the store keeps the first end written
(api/responses/store.py `finish`). The job keeps what rebuilds the response, its request and
stored turns (`ResponsesFormat`, with the job's spec), so any replica can also stream it
again from the start (`replay`, OpenAI's `GET /v1/responses/{id}?stream=true`).
"""

import logging

from fastapi import Response

from api.errors import ApiError, InvalidRequestError
from api.relay import collect, stream_response
from api.responses.objects import UNFINISHED, ResponseError
from api.responses.serving import ReplayEncoder, ResponseDraft, ResponsesFormat
from api.responses.store import ResponseStore, StoredResponse
from api.resume import attach
from api.state import AppState
from api.stream import JobStream
from shared import keys
from shared.lifecycle import JobStatus

log = logging.getLogger(__name__)


def job_id_of(response_id: str) -> str:
    """`resp_<job id>` (api/responses/serving.py `response_id`)."""
    return response_id.removeprefix("resp_")


async def start(
    state: AppState, store: ResponseStore, draft: ResponseDraft, stream: JobStream
) -> StoredResponse:
    """Store the response as `queued`, and finish it in a detached task."""
    queued = draft.stored(draft.response("queued", []))
    await store.save_response(queued)
    state.background.spawn(_finish(store, draft, stream), name=f"finish {draft.id}")
    return queued


async def _finish(store: ResponseStore, draft: ResponseDraft, stream: JobStream) -> None:
    try:
        out = await collect(stream)
        final = draft.collected(out)
    except ApiError as error:
        final = draft.ended(error)
    await store.finish(draft.stored(final), draft.body.conversation_id, draft.turns(final))


async def current(state: AppState, store: ResponseStore, stored: StoredResponse) -> StoredResponse:
    """The stored response as it stands now: an unfinished one shows its job's state
    (`queued` or `in_progress`), and one whose job has ended is finished here if it was not
    yet (its replica went away)."""
    if stored.response.status not in UNFINISHED:
        return stored
    job_id = job_id_of(stored.response.id)
    record = await state.jobs.record(job_id)
    if record is not None and not record.status.terminal:
        status = "queued" if record.status is JobStatus.QUEUED else "in_progress"
        return stored.model_copy(
            update={"response": stored.response.model_copy(update={"status": status})}
        )
    if record is None or not await state.redis.exists(keys.events_log(job_id)):
        gone = ResponseError(
            code="server_error", message="the response's job and its events are no longer kept"
        )
        ended = stored.response.model_copy(update={"status": "failed", "error": gone})
        return await store.finish(stored.model_copy(update={"response": ended}), None, [])
    stream, spec = await attach(state, job_id, after=None, grace_s=0)
    assert isinstance(spec.format, ResponsesFormat)
    draft = spec.format.draft(spec.job)
    await _finish(store, draft, stream)
    return await store.response(stored.response.id)


async def replay(state: AppState, stored: StoredResponse, starting_after: int | None) -> Response:
    """The response's stream again, from its job's start (its events after
    `starting_after`, by sequence number): finished or still running."""
    if not stored.response.background:
        raise InvalidRequestError(
            "only a background response can be streamed again", param="stream"
        )
    job_id = job_id_of(stored.response.id)
    grace_s = state.settings.events_retention_s
    stream, spec = await attach(state, job_id, after=None, grace_s=grace_s)
    assert isinstance(spec.format, ResponsesFormat)
    draft = spec.format.draft(spec.job)
    after = -1 if starting_after is None else starting_after
    return await stream_response(stream, lambda: ReplayEncoder(draft, after))


async def cancel(state: AppState, store: ResponseStore, stored: StoredResponse) -> StoredResponse:
    """Cancel a background response's job; the response as it then stands (`cancelled`,
    or the end it had already reached)."""
    if not stored.response.background:
        raise InvalidRequestError(
            "only a background response can be cancelled", param="response_id"
        )
    if stored.response.status in UNFINISHED:
        await state.jobs.cancel(job_id_of(stored.response.id))
    return await current(state, store, stored)
