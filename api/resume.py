"""Coming back to a job: a stream resumed after a dropped connection, a request retried with
its Idempotency-Key, and each request's choice of what its disconnect does.

Headers a generation POST may carry (any flavour):
- `Idempotency-Key` (1 to 255 printable ASCII characters): the first request with a key
  runs; another with the same key from the same tenant (api/tenant.py) while the key is kept
  (`idempotency_ttl_s`) joins that job instead of running it again: streamed, it gets the
  stream from the start (or after `Last-Event-ID`); not streamed, the whole answer once it is
  there. The same key with another request (method, path or body) gets 422.
- `Last-Event-ID` (SSE flavours; an integer): with the `Idempotency-Key` of the request it
  resumes, the stream continues after the events the client has (api/relay.py's ids).
- `X-Disconnect-Grace` (seconds, 0 to `events_retention_s`): how long the job may go on
  without a client once this request's connection is gone, waiting for a client to come
  back; default `disconnect_grace_s`; 0 cancels it at once.
"""

import hashlib
import json
from dataclasses import dataclass
from typing import Annotated

import anyio
from fastapi import Depends, Request

from api.errors import InvalidRequestError, JobNotFoundError
from api.formats import JobSpec
from api.inbox import Inbox
from api.observe import RequestObservation
from api.state import AppState
from api.stream import JobStream
from api.tenant import tenant_of
from shared import keys
from shared.eventlog import read_log

MAX_KEY_LENGTH = 255


@dataclass(frozen=True)
class Idempotency:
    """A request's Idempotency-Key as kept in Redis: its key there and the request's
    fingerprint (a digest of its method, path and body)."""

    redis_key: str
    fingerprint: str


@dataclass(frozen=True)
class Resumption:
    """What a request's headers say about coming back to a job."""

    idempotency: Idempotency | None
    last_event_id: int | None
    grace_s: float


async def _resumption(request: Request) -> Resumption:
    settings = request.app.state.tokenq.settings
    return Resumption(
        idempotency=await _idempotency(request),
        last_event_id=last_event_id(request),
        grace_s=_grace(request, settings.disconnect_grace_s, settings.events_retention_s),
    )


ResumptionDep = Annotated[Resumption, Depends(_resumption)]


async def _idempotency(request: Request) -> Idempotency | None:
    key = request.headers.get("idempotency-key")
    if key is None:
        return None
    if not 1 <= len(key) <= MAX_KEY_LENGTH or not key.isprintable() or not key.isascii():
        raise InvalidRequestError(
            f"Idempotency-Key must be 1 to {MAX_KEY_LENGTH} printable ASCII characters",
            param="Idempotency-Key",
        )
    body = await request.body()
    try:  # the same JSON sent again with its keys in another order is the same request
        canonical = json.dumps(json.loads(body), sort_keys=True, separators=(",", ":")).encode()
    except ValueError:
        canonical = body
    request_digest = hashlib.sha256(
        f"{request.method} {request.url.path}\n".encode() + canonical
    ).hexdigest()
    key_digest = hashlib.sha256(key.encode()).hexdigest()[:32]
    return Idempotency(keys.idempotency_key(tenant_of(request), key_digest), request_digest)


def last_event_id(request: Request) -> int | None:
    """The `Last-Event-ID` header, or the `after` query parameter: events the client has."""
    raw = request.headers.get("last-event-id")
    param = "Last-Event-ID"
    if raw is None:
        raw, param = request.query_params.get("after"), "after"
    if raw is None or raw == "":
        return None
    if not raw.isdigit() or len(raw) > 9:
        raise InvalidRequestError(
            f"{param} must be an event id this API sent (a non-negative integer)", param=param
        )
    return int(raw)


def _grace(request: Request, default_s: float, max_s: int) -> float:
    raw = request.headers.get("x-disconnect-grace")
    if raw is None:
        return default_s
    try:
        grace = float(raw)
    except ValueError:
        grace = -1.0
    if not 0 <= grace <= max_s:
        raise InvalidRequestError(
            f"X-Disconnect-Grace must be a number of seconds from 0 to {max_s}",
            param="X-Disconnect-Grace",
        )
    return grace


async def attach(
    state: AppState,
    job_id: str,
    *,
    after: int | None,
    grace_s: float,
    observation: RequestObservation | None = None,
) -> tuple[JobStream, JobSpec]:
    """A stream of an admitted job, on any replica: what its log holds from position `after`
    (None: from the start, start frames included), then its live events. 404 when the job is
    unknown or no longer kept."""
    raw = await state.redis.get(keys.job_spec(job_id))
    if raw is None:
        raise JobNotFoundError(f"no job '{job_id}' is kept", param="job_id")
    spec = JobSpec.model_validate_json(raw)
    if observation is not None:
        observation.submitted(spec.job)
    inbox = Inbox()
    await state.hub.subscribe(job_id, inbox)  # before reading the log: nothing falls between
    try:
        inbox.put_replayed(await read_log(state.redis, job_id, after or 0))
        await state.jobs.attach(job_id)  # last: a listener counted is one that listens
    except BaseException:
        with anyio.CancelScope(shield=True):
            await state.hub.unsubscribe(job_id, inbox)
        raise
    state.watchdog.watch(job_id, inbox)
    stream = JobStream(
        state, inbox, spec.job, spec.prompt_tokens, observation, after=after, grace_s=grace_s
    )
    return stream, spec
