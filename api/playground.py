"""`GET /playground`: the web playground, one static page shipped with the package
(api/static/playground.html; `GET /` stays Ollama's "Ollama is running")."""

import functools
from importlib.resources import files

from fastapi import APIRouter
from fastapi.responses import HTMLResponse

router = APIRouter()

# The page loads nothing from elsewhere and talks only to the server that served it.
_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; "
        "connect-src 'self'; img-src 'self' blob: data:; base-uri 'none'; form-action 'none'"
    ),
    "Cache-Control": "no-cache",
    "X-Content-Type-Options": "nosniff",
}


@functools.cache
def page() -> str:
    return (files("api") / "static" / "playground.html").read_text(encoding="utf-8")


@router.api_route(
    "/playground", methods=["GET", "HEAD"], response_class=HTMLResponse, include_in_schema=False
)
async def playground() -> HTMLResponse:
    return HTMLResponse(page(), headers=_HEADERS)
