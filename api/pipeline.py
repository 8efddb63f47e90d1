"""The request pipeline of a flavour's routes: body cap, disconnect watch, observation, and
every error rendered in the flavour's shape.

A flavour's router uses `flavour_route_class(render, flavour)`. Each request is observed
(api/observe.py: metrics and the `request finished` line); the observation is on
`request.state` for the route (`ObservationDep`), which hands it to `submit`.
"""

import logging
from collections.abc import Callable, Coroutine
from typing import Annotated, Any

import anyio
from fastapi import Depends, Request, Response
from fastapi.exception_handlers import http_exception_handler
from fastapi.responses import StreamingResponse
from fastapi.routing import APIRoute
from starlette.datastructures import MutableHeaders
from starlette.exceptions import HTTPException

from api import observe
from api.auth import authenticate, is_public
from api.errors import (
    ApiError,
    ModelNotFoundError,
    RequestTooLargeError,
    as_api_error,
    from_event,
    from_http,
)
from api.observe import RequestObservation
from api.ratelimit import rate_limit_headers
from shared.events import TerminalEvent
from shared.job import Flavour
from shared.metrics import CLIENT_CLOSED

log = logging.getLogger(__name__)

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
            open_route = is_public(self.endpoint)

            async def route(request: Request) -> Response:
                if json_whatever_content_type and request.method == "POST":
                    MutableHeaders(scope=request.scope)["content-type"] = "application/json"
                metrics = request.app.state.tokenq.metrics
                observation = RequestObservation(metrics, flavour, counted=counted)
                request.state.observation = observation
                try:
                    if not open_route:  # 401 before a byte of the body is read
                        observation.caller = await authenticate(request)
                    request = CappedRequest(request.scope, request.receive)
                    await request.body()  # all of it, within the cap, before watching
                    response = await until_disconnected(request, handler)
                except Exception as exc:
                    error = as_api_error(exc)
                    observation.close(
                        error.status,
                        error.rejection,
                        model_known=not isinstance(error, ModelNotFoundError),
                    )
                    return _with_rate_limits(render(error), observation)
                except BaseException:  # cancelled: the client went away
                    observation.close(CLIENT_CLOSED)
                    raise
                _with_rate_limits(response, observation)
                if isinstance(response, StreamingResponse):  # over once its body is sent
                    return observe.UntilSent(
                        response, lambda: observation.close(_status(observation.terminal))
                    )
                observation.close(response.status_code)
                return response

            return route

    return FlavourRoute


def _with_rate_limits(response: Response, observation: RequestObservation) -> Response:
    """The key's `x-ratelimit-*` headers, when the request was charged to its quotas."""
    caller = observation.caller
    if caller is not None and caller.rate is not None:
        for name, value in rate_limit_headers(caller.rate).items():
            response.headers.setdefault(name, value)
    return response


def _status(terminal: TerminalEvent | None) -> int:
    """A streamed request's status: 200, its in-stream error's, or 499 if it never ended."""
    if terminal is None:
        return CLIENT_CLOSED
    return from_event(terminal).status if terminal.type == "error" else 200


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


def _observation(request: Request) -> RequestObservation:
    observation: RequestObservation = request.state.observation
    return observation


# The observation of the request being served, opened by the flavour's route class.
ObservationDep = Annotated[RequestObservation, Depends(_observation)]


def unrouted_error_handler(
    flavours: list[tuple[str, Flavour, ErrorRenderer]],
) -> Callable[[Request, Exception], Coroutine[Any, Any, Response]]:
    """The app's handler for what no route answered (404 unknown path, 405 wrong method):
    in the shape of the flavour whose path prefix matches first, observed like any request.

    `flavours` is a list of (path prefix, flavour, renderer); other paths keep Starlette's
    default answer.
    """

    async def handle(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        path = request.url.path
        for prefix, flavour, render in flavours:
            if path.startswith(prefix):
                metrics = request.app.state.tokenq.metrics
                error = from_http(exc)
                if exc.status_code == 404:
                    error.message = f"no route {request.method} {path}"
                RequestObservation(metrics, flavour, counted=True).close(error.status)
                response = render(error)
                if exc.headers:  # 405's Allow
                    response.headers.update(exc.headers)
                return response
        return await http_exception_handler(request, exc)

    return handle
