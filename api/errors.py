"""One error hierarchy, mapped to HTTP statuses here and rendered in each flavour's shape.

Routes raise these; the request pipeline (api/pipeline.py) catches them, and also request
validation, framework HTTP errors and Redis failures (`as_api_error`), and hands them to the
flavour's renderer. An error whose class names a `rejection` reason is counted as a rejection
with that reason.
"""

import logging
from enum import StrEnum
from typing import Any

from fastapi.exceptions import RequestValidationError
from redis.exceptions import RedisError
from starlette.exceptions import HTTPException

from shared.events import ErrorCode, ErrorEvent
from shared.metrics import RejectReason

log = logging.getLogger(__name__)


class ErrorKind(StrEnum):
    """The flavour-neutral class of an error; each flavour names these its own way."""

    INVALID_REQUEST = "invalid_request"
    AUTHENTICATION = "authentication"
    PERMISSION = "permission"
    NOT_FOUND = "not_found"
    RATE_LIMITED = "rate_limited"
    UNAVAILABLE = "unavailable"
    TIMEOUT = "timeout"
    INTERNAL = "internal"


class ApiError(Exception):
    status: int = 500
    kind: ErrorKind = ErrorKind.INTERNAL
    code: str = "internal_error"
    rejection: RejectReason | None = None  # counted as a rejection with this reason

    def __init__(self, message: str, *, param: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param

    def headers(self) -> dict[str, str]:
        return {}


class InvalidRequestError(ApiError):
    status, kind, code = 400, ErrorKind.INVALID_REQUEST, "invalid_request"
    rejection = RejectReason.BAD_REQUEST

    @classmethod
    def from_validation(cls, exc: RequestValidationError) -> "InvalidRequestError":
        problems = [_describe(e, exc.body) for e in exc.errors()]
        first = problems[0] if problems else ("", "invalid request body")
        message = "; ".join(f"{loc}: {msg}" if loc else msg for loc, msg in problems)
        return cls(message or first[1], param=first[0] or None)


class ContextLengthExceededError(InvalidRequestError):
    code = "context_length_exceeded"


class RequestTooLargeError(InvalidRequestError):
    status, code = 413, "request_too_large"


class JobNotCancellableError(InvalidRequestError):
    status, code = 409, "job_not_cancellable"


class AuthenticationError(ApiError):
    """No API key, or none that Redis knows (the message never repeats what was sent)."""

    status, kind, code = 401, ErrorKind.AUTHENTICATION, "invalid_api_key"
    rejection = RejectReason.UNAUTHENTICATED

    def headers(self) -> dict[str, str]:
        return {"WWW-Authenticate": "Bearer"}


class PermissionDeniedError(ApiError):
    """The key may not use the model it asked for."""

    status, kind, code = 403, ErrorKind.PERMISSION, "model_not_allowed"
    rejection = RejectReason.FORBIDDEN


class IdempotencyKeyReusedError(InvalidRequestError):
    """The Idempotency-Key was used before with another request (IETF's idempotency-key
    draft: 422)."""

    status, code = 422, "idempotency_key_reused"


class JobCancelledError(ApiError):
    status, kind, code = 409, ErrorKind.INVALID_REQUEST, "job_cancelled"


class JobNotFoundError(ApiError):
    status, kind, code = 404, ErrorKind.NOT_FOUND, "job_not_found"


class ObjectNotFoundError(ApiError):
    """A stored object (a response, a conversation, an item) that is not there, or expired."""

    status, kind, code = 404, ErrorKind.NOT_FOUND, "not_found"


class StoredStateTooLargeError(InvalidRequestError):
    """What a request would store is over `responses_max_bytes`."""

    code = "stored_state_too_large"


class ModelNotFoundError(ApiError):
    status, kind, code = 404, ErrorKind.NOT_FOUND, "model_not_found"
    rejection = RejectReason.MODEL_NOT_FOUND


class NoWorkerError(ApiError):
    status, kind, code = 503, ErrorKind.UNAVAILABLE, "model_unavailable"
    rejection = RejectReason.NO_WORKER


class QueueFullError(ApiError):
    status, kind, code = 429, ErrorKind.RATE_LIMITED, "rate_limit_exceeded"
    rejection = RejectReason.QUEUE_FULL

    def __init__(self, message: str, *, retry_after_s: int) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s

    def headers(self) -> dict[str, str]:
        return {"Retry-After": str(self.retry_after_s)}


class KeyQueueFullError(QueueFullError):
    """The key already holds its share of the model's waiting places."""

    rejection = RejectReason.KEY_QUEUE_FULL


class RateLimitedError(ApiError):
    """The key's requests or tokens per minute are used up; `headers` carries the
    `x-ratelimit-*` set with `Retry-After`."""

    status, kind, code = 429, ErrorKind.RATE_LIMITED, "rate_limit_exceeded"
    rejection = RejectReason.RATE_LIMITED

    def __init__(self, message: str, *, headers: dict[str, str]) -> None:
        super().__init__(message)
        self._headers = headers

    def headers(self) -> dict[str, str]:
        return self._headers


class BackendUnavailableError(ApiError):
    """Redis does not answer (restarting, failing over): the request may be retried."""

    status, kind, code = 503, ErrorKind.UNAVAILABLE, "backend_unavailable"
    retry_after_s = 1

    def headers(self) -> dict[str, str]:
        return {"Retry-After": str(self.retry_after_s)}


class DeadlineExceededError(ApiError):
    status, kind, code = 504, ErrorKind.TIMEOUT, "deadline_exceeded"
    rejection = RejectReason.DEADLINE


class WorkerError(ApiError):
    status, kind, code = 502, ErrorKind.INTERNAL, "worker_error"


class WorkerLostError(WorkerError):
    """The worker running the job died or fell silent, and the job could not run again."""

    code = "worker_lost"


_FROM_EVENT: dict[ErrorCode, type[ApiError]] = {
    ErrorCode.CONTEXT_LENGTH_EXCEEDED: ContextLengthExceededError,
    ErrorCode.INVALID_REQUEST: InvalidRequestError,
    ErrorCode.DEADLINE_EXCEEDED: DeadlineExceededError,
    ErrorCode.WORKER_LOST: WorkerLostError,
    ErrorCode.CANCELLED: JobCancelledError,
    ErrorCode.BACKEND_UNAVAILABLE: BackendUnavailableError,
    ErrorCode.INTERNAL: WorkerError,
}


def from_event(event: ErrorEvent) -> ApiError:
    """The API error for a worker's error event."""
    return _FROM_EVENT[event.code](event.message)


def from_http(exc: HTTPException) -> ApiError:
    """The API error for an HTTPException raised by the framework (e.g. an unparsable body)."""
    if isinstance(exc.__cause__, RecursionError):
        return InvalidRequestError("the body is not valid JSON (nested too deeply)")
    if exc.status_code < 500:
        error: ApiError = InvalidRequestError(str(exc.detail))
    else:
        error = ApiError(str(exc.detail))
    error.status = exc.status_code
    return error


def as_api_error(exc: Exception) -> ApiError:
    """Any exception a route let through, as the API error its client gets."""
    if isinstance(exc, ApiError):
        return exc
    if isinstance(exc, RequestValidationError):
        return InvalidRequestError.from_validation(exc)
    if isinstance(exc, HTTPException):
        return from_http(exc)
    if isinstance(exc, RedisError):
        log.warning("redis unavailable: %s", exc)
        return BackendUnavailableError("the queue backend is unavailable")
    log.exception("unhandled error", exc_info=exc)
    return ApiError("internal server error")


def _describe(error: Any, body: Any = None) -> tuple[str, str]:
    loc = ".".join(str(p) for p in _as_sent(_without_source(error.get("loc", ())), body))
    kind = error.get("type", "")
    if kind == "extra_forbidden":
        return loc, "this parameter is not supported"
    if kind == "json_invalid":
        return (
            "",
            f"the body is not valid JSON ({error.get('ctx', {}).get('error', 'parse error')})",
        )
    message = str(error.get("msg", "invalid value")).removeprefix("Value error, ")
    return loc, message


def _as_sent(loc: tuple[Any, ...], body: Any) -> tuple[Any, ...]:
    """A body error's location as the client wrote it: without the tag pydantic adds after a
    discriminated union's place (`input.0.message.role` is `input.0.role`) and the member
    labels of other unions (`content.str`). Such a label is a name where the value sent is not
    an object, or is an object without that key: a missing field's name is one too, but it is
    the last part, where a tag is only when it is also a value of that object.
    """
    if body is None:
        return loc
    kept: list[Any] = []
    node = body
    for position, part in enumerate(loc):
        last = position == len(loc) - 1
        if isinstance(part, str) and (
            not isinstance(node, dict) or (part not in node and (not last or part in node.values()))
        ):
            continue
        kept.append(part)
        if isinstance(node, dict):
            node = node.get(part)
        elif isinstance(node, list) and isinstance(part, int) and 0 <= part < len(node):
            node = node[part]
        else:
            node = None
    return tuple(kept)


def _without_source(loc: tuple[Any, ...]) -> tuple[Any, ...]:
    """A request error's location without where FastAPI found it (body, query, path)."""
    return loc[1:] if loc and loc[0] in ("body", "query", "path", "header") else loc
