"""CORS for browser applications on other origins (Starlette's CORSMiddleware).

Only the origins in `TOKENQ_CORS_ORIGINS` (none by default) get `Access-Control-Allow-*`
headers: a preflight `OPTIONS` (on any path) from a listed origin is answered 200 with the
methods, any request headers (`Authorization`, `x-api-key`, the SDKs' own) and credentials
allowed; from any other origin it gets 400 and no allow headers, so the browser refuses the
call. `*` allows every origin, without credentials. The middleware answers preflights before
routing, so the flavour routes' 405 for other methods is untouched.
"""

from fastapi import FastAPI
from starlette.datastructures import Headers
from starlette.middleware.cors import CORSMiddleware
from starlette.responses import PlainTextResponse, Response

# What a browser client may read from a response besides the CORS-safelisted headers.
EXPOSED = [
    "Retry-After",
    "X-Request-ID",
    "X-Job-Id",
    "X-Queue-Position",
    "x-ratelimit-limit-requests",
    "x-ratelimit-remaining-requests",
    "x-ratelimit-reset-requests",
    "x-ratelimit-limit-tokens",
    "x-ratelimit-remaining-tokens",
    "x-ratelimit-reset-tokens",
]


class ListedOriginsCORS(CORSMiddleware):
    """Starlette's CORS, except that a preflight from an origin not listed gets no
    `Access-Control-Allow-*` header at all (Starlette's still names the methods, headers and
    credentials it would allow)."""

    def preflight_response(self, request_headers: Headers) -> Response:
        if not self.is_allowed_origin(origin=request_headers["origin"]):
            return PlainTextResponse(
                "Disallowed CORS origin", status_code=400, headers={"Vary": "Origin"}
            )
        return super().preflight_response(request_headers)


def add_cors(app: FastAPI, origins: list[str]) -> None:
    app.add_middleware(
        ListedOriginsCORS,
        allow_origins=origins,
        allow_credentials="*" not in origins,
        allow_methods=["GET", "POST", "DELETE", "HEAD", "OPTIONS"],
        allow_headers=["*"],  # mirrored, for listed origins only
        expose_headers=EXPOSED,
        max_age=600,
    )
