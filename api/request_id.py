"""`X-Request-ID`: taken from the client (or made up), returned, and logged on both sides.

The middleware writes the id into the request's own headers when the client sent none, so a
route reading the header (it goes into `GenerationJob.request_id`, and from there into the
worker's log lines) always finds one.
"""

import re
import uuid

from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from shared import logs

HEADER = "X-Request-ID"
_ACCEPTED = re.compile(r"[\x21-\x7e]{1,128}")  # printable ASCII, no spaces, bounded


class RequestIdMiddleware:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = MutableHeaders(scope=scope)
        request_id = headers.get(HEADER)
        if request_id is None or not _ACCEPTED.fullmatch(request_id):
            request_id = uuid.uuid4().hex
            headers[HEADER] = request_id

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                MutableHeaders(scope=message)[HEADER] = request_id
            await send(message)

        with logs.log_context(request_id=request_id):
            await self.app(scope, receive, send_with_id)
