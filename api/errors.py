"""One error hierarchy, mapped to HTTP statuses here and rendered in each flavour's shape.

Routes raise these; a flavour's route class (`flavour_route_class`) catches them, and also
request validation, framework HTTP errors and Redis failures, and hands them to that
flavour's renderer. The route class also caps the request body, ends a request whose client
went away, and observes every request (api/observe.py): an error whose class names a
`rejection` reason is counted as a rejection with that reason.
"""

import logging
from collections.abc import Callable, Coroutine
from enum import StrEnum
from typing import Any

import anyio
from fastapi import Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import StreamingResponse
from fastapi.routing import APIRoute
from redis.exceptions import RedisError
from starlette.datastructures import MutableHeaders
from starlette.exceptions import HTTPException

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


class RequestTooLargeError(InvalidRequestError):
    status, code = 413, "request_too_large"


class JobNotCancellableError(InvalidRequestError):
    status, code = 409, "job_not_cancellable"


class JobCancelledError(ApiError):
    status, kind, code = 409, ErrorKind.INVALID_REQUEST, "job_cancelled"


class JobNotFoundError(ApiError):
    status, kind, code = 404, ErrorKind.NOT_FOUND, "job_not_found"


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


ErrorRenderer = Callable[[ApiError], Response]


def flavour_route_class(
    render: ErrorRenderer, flavour: Flavour, *, json_whatever_content_type: bool = False
) -> type[APIRoute]:
    """A route class whose errors all come out in one flavour's shape, and whose requests
    are observed (metrics, request log) under that flavour.

    With `json_whatever_content_type`, a body is read as JSON whatever Content-Type the client
    declared, as Ollama does (its documented `curl -d '{...}'` sends a form content type).
    """

    class FlavourRoute(APIRoute):
        def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
            handler = super().get_route_handler()
            counted = self.body_field is not None

            async def route(request: Request) -> Response:
                if json_whatever_content_type and request.method == "POST":
                    MutableHeaders(scope=request.scope)["content-type"] = "application/json"
                metrics = request.app.state.tokenq.metrics
                with observe.observing(metrics, flavour, counted=counted) as observation:
                    try:
                        request = CappedRequest(request.scope, request.receive)
                        await request.body()  # all of it, within the cap, before watching
                        response = await until_disconnected(request, handler)
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
    if isinstance(exc, HTTPException):
        return from_http(exc)
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


class CappedRequest(Request):
    """A request whose body may not exceed the app's `max_body_bytes` (413 beyond it)."""

    async def body(self) -> bytes:
        if not hasattr(self, "_body"):
            limit: int = self.app.state.tokenq.settings.max_body_bytes
            declared = self.headers.get("content-length", "")
            if declared.isdigit() and int(declared) > limit:
                raise RequestTooLargeError(f"the request body is over {limit} bytes")
            chunks: list[bytes] = []
            size = 0
            async for chunk in self.stream():  # no Content-Length: count as it arrives
                size += len(chunk)
                if size > limit:
                    raise RequestTooLargeError(f"the request body is over {limit} bytes")
                chunks.append(chunk)
            self._body = b"".join(chunks)
        return self._body


async def until_disconnected(
    request: Request, handler: Callable[[Request], Coroutine[Any, Any, Response]]
) -> Response:
    """Run the handler until it answers or its client disconnects, whichever comes first.

    Starlette notices a disconnect only once a response is streaming; a request waiting for
    its job (queued, or collecting a whole answer) would otherwise hold the job after its
    client left. Cancelling the handler closes its job stream, which cancels the job.
    """
    outcome: Response | Exception | None = None
    async with anyio.create_task_group() as group:

        async def watch() -> None:
            while (await request.receive())["type"] != "http.disconnect":
                pass
            log.info("client went away: %s %s", request.method, request.url.path)
            group.cancel_scope.cancel()

        group.start_soon(watch)
        try:
            outcome = await handler(request)
        except Exception as exc:  # re-raised below, outside the task group's ExceptionGroup
            outcome = exc
        group.cancel_scope.cancel()
    if isinstance(outcome, Exception):
        raise outcome
    return outcome or Response(status_code=CLIENT_CLOSED)  # nobody is left to read it


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
