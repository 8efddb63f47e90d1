"""Job routes any API replica answers: `GET /v1/jobs/{id}` (state, queue position),
`DELETE /v1/jobs/{id}` (cancel) and `GET /v1/jobs/{id}/events` (its stream, resumed). Errors
come in the OpenAI shape, as the rest of `/v1`.

`{id}` is the job id, or any response id that ends in it (`chatcmpl-<id>`, `cmpl-<id>`), so
a streaming client can cancel from the id of its first chunk or its `X-Job-Id` header.
"""

import re
import time
from typing import Literal

from fastapi import APIRouter, Request, Response
from pydantic import BaseModel

from api.deps import StateDep
from api.errors import JobNotCancellableError, JobNotFoundError
from api.openai.serving import render_error
from api.pipeline import flavour_route_class
from api.relay import stream_response
from api.resume import attach, last_event_id
from api.state import AppState
from shared.job import Flavour
from shared.lifecycle import JobRecord, JobStatus

router = APIRouter(prefix="/v1/jobs", route_class=flavour_route_class(render_error, Flavour.OPENAI))

_JOB_ID = re.compile(r"([0-9a-f]{32})$")


class JobView(BaseModel):
    id: str
    object: Literal["job"] = "job"
    model: str
    status: JobStatus
    position: int | None = None  # while queued: 1 is the next job to start
    attempt: int
    created_at: float
    deadline: float
    started_at: float | None = None
    ended_at: float | None = None
    cancel_requested_at: float | None = None
    worker: str | None = None
    error: str | None = None


@router.get("/{job_id}")
async def get_job(job_id: str, state: StateDep) -> JobView:
    """A job's state, and its place in line while it waits."""
    return await _view(state, await _record(state, job_id))


@router.get("/{job_id}/events", response_model=None)
async def job_events(job_id: str, state: StateDep, request: Request) -> Response:
    """The job's stream in the format of the request that submitted it (SSE for OpenAI and
    Anthropic, NDJSON for Ollama), from the start or after the events the client has
    (`Last-Event-ID` header or `?after=N`); the job then has this client as a listener."""
    match = _JOB_ID.search(job_id)
    if match is None:
        raise JobNotFoundError(f"no job '{job_id}'", param="job_id")
    after = last_event_id(request)
    grace_s = state.settings.disconnect_grace_s
    stream, spec = await attach(state, match.group(1), after=after, grace_s=grace_s)
    return await stream_response(stream, lambda: spec.format.encoder(spec.job, spec.prompt_tokens))


@router.delete("/{job_id}")
async def cancel_job(job_id: str, state: StateDep) -> JobView:
    """Cancel a queued job (it never runs) or a running one (its worker stops within ~100 ms)."""
    record = await _record(state, job_id)
    before = await state.jobs.cancel(record.id)
    if before is None:
        raise JobNotFoundError(f"no job '{job_id}'", param="job_id")
    if before.terminal:
        raise JobNotCancellableError(f"the job has already ended ({before})", param="job_id")
    return await _view(state, await _record(state, job_id))


async def _record(state: AppState, job_id: str) -> JobRecord:
    match = _JOB_ID.search(job_id)
    record = await state.jobs.record(match.group(1)) if match else None
    if record is None:
        raise JobNotFoundError(f"no job '{job_id}'", param="job_id")
    return record


async def _view(state: AppState, record: JobRecord) -> JobView:
    position = None
    if record.status is JobStatus.QUEUED and record.deadline <= time.time():
        await state.jobs.expire(record)  # nobody may have looked since its deadline
        record = await _record(state, record.id)
    if record.status is JobStatus.QUEUED:
        ahead = await state.jobs.position(record)
        position = None if ahead is None else ahead + 1
    return JobView(position=position, **record.model_dump(exclude={"streamed", "rq_id"}))
