"""One error hierarchy, mapped to HTTP statuses here and rendered in each flavour's shape.

Routes raise these; a flavour's route class (`flavour_route_class`) catches them, and also
request validation and Redis failures, and hands them to that flavour's renderer. The same
route class observes every request (api/observe.py): an error whose class names a
`rejection` reason is counted as a rejection with that reason.
"""

import logging
from collections.abc import Callable, Coroutine
from enum import StrEnum
from typing import Any

from fastapi import Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import StreamingResponse
from fastapi.routing import APIRoute
from redis.exceptions import RedisError

from api import observe
from shared.events import ErrorCode, ErrorEvent, TerminalEvent
from shared.job import Flavour
from shared.metrics import CLIENT_CLOSED, RejectReason

log = logging.getLogger(__name__)


class ErrorKind(StrEnum):
    """The flavour-neutral class of an error; each flavour names these its own way."""

    INVALID_REQUEST = "invalid_request"
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
        problems = [_describe(e) for e in exc.errors()]
        first = problems[0] if problems else ("", "invalid request body")
        message = "; ".join(f"{loc}: {msg}" if loc else msg for loc, msg in problems)
        return cls(message or first[1], param=first[0] or None)


class ContextLengthExceededError(InvalidRequestError):
    code = "context_length_exceeded"


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


class BackendUnavailableError(ApiError):
    status, kind, code = 503, ErrorKind.UNAVAILABLE, "backend_unavailable"


class DeadlineExceededError(ApiError):
    status, kind, code = 504, ErrorKind.TIMEOUT, "deadline_exceeded"
    rejection = RejectReason.DEADLINE


class WorkerError(ApiError):
    status, kind, code = 502, ErrorKind.INTERNAL, "worker_error"


_FROM_EVENT: dict[ErrorCode, type[ApiError]] = {
    ErrorCode.CONTEXT_LENGTH_EXCEEDED: ContextLengthExceededError,
    ErrorCode.INVALID_REQUEST: InvalidRequestError,
    ErrorCode.DEADLINE_EXCEEDED: DeadlineExceededError,
    ErrorCode.WORKER_LOST: WorkerError,
    ErrorCode.INTERNAL: WorkerError,
}


def from_event(event: ErrorEvent) -> ApiError:
    """The API error for a worker's error event."""
    return _FROM_EVENT[event.code](event.message)


ErrorRenderer = Callable[[ApiError], Response]


def flavour_route_class(render: ErrorRenderer, flavour: Flavour) -> type[APIRoute]:
    """A route class whose errors all come out in one flavour's shape, and whose requests
    are observed (metrics, request log) under that flavour."""

    class FlavourRoute(APIRoute):
        def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
            handler = super().get_route_handler()
            counted = self.body_field is not None

            async def route(request: Request) -> Response:
                metrics = request.app.state.tokenq.metrics
                with observe.observing(metrics, flavour, counted=counted) as observation:
                    try:
                        response = await handler(request)
                    except Exception as exc:
                        error = _as_api_error(exc, request)
                        observation.close(
                            error.status,
                            error.rejection,
                            model_known=not isinstance(error, ModelNotFoundError),
                        )
                        return render(error)
                    except BaseException:  # cancelled: the client went away
                        observation.close(CLIENT_CLOSED)
                        raise
                if isinstance(response, StreamingResponse):  # over once its body is sent
                    return observe.UntilSent(
                        response, lambda: observation.close(_status(observation.terminal))
                    )
                observation.close(response.status_code)
                return response

            return route

    return FlavourRoute


def _as_api_error(exc: Exception, request: Request) -> ApiError:
    if isinstance(exc, ApiError):
        return exc
    if isinstance(exc, RequestValidationError):
        return InvalidRequestError.from_validation(exc)
    if isinstance(exc, RedisError):
        log.warning("redis unavailable: %s", exc)
        return BackendUnavailableError("the queue backend is unavailable")
    log.exception("unhandled error on %s", request.url.path)
    return ApiError("internal server error")


def _status(terminal: TerminalEvent | None) -> int:
    """A streamed request's status: 200, its in-stream error's, or 499 if it never ended."""
    if terminal is None:
        return CLIENT_CLOSED
    return 200 if terminal.type == "done" else from_event(terminal).status


def _describe(error: Any) -> tuple[str, str]:
    loc = ".".join(str(p) for p in error.get("loc", ()) if p != "body")
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
