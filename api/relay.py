"""From a job's neutral events to a response: collect them, or stream them as frames.

Flavours only say how each event looks on their wire; the order, the error handling and the
clean-up live here once.
"""

from collections.abc import AsyncIterator, Callable

from fastapi.responses import StreamingResponse

from api.errors import ApiError, from_event
from api.jobs import JobStream
from shared.events import DoneEvent, ErrorEvent, Event, TokenEvent


async def collect(stream: JobStream) -> tuple[str, DoneEvent]:
    """The whole output and the done event; a worker error is raised as an ApiError."""
    async with stream:
        parts: list[str] = []
        async for event in stream.events():
            if isinstance(event, TokenEvent):
                parts.append(event.text)
            elif isinstance(event, ErrorEvent):
                raise from_event(event)
            else:
                return "".join(parts), event
    raise AssertionError("a job stream always ends with a terminal event")


class StreamEncoder:
    """A flavour's frames for one streamed job; subclasses fill in each frame."""

    media_type = "text/event-stream"

    def start(self) -> list[bytes]:
        return []

    def token(self, event: TokenEvent) -> list[bytes]:
        raise NotImplementedError

    def done(self, event: DoneEvent) -> list[bytes]:
        raise NotImplementedError

    def error(self, error: ApiError) -> list[bytes]:
        raise NotImplementedError


async def stream_response(
    stream: JobStream, make_encoder: Callable[[], StreamEncoder]
) -> StreamingResponse:
    """Stream the job's frames; the response starts only once its first event is in.

    Waiting for the first event lets an error that comes before any token (context too long,
    deadline) be answered with a real HTTP status instead of an error inside a 200 stream.
    """
    events = stream.events()
    try:
        first = await anext(events)
        if isinstance(first, ErrorEvent):
            raise from_event(first)
    except BaseException:
        await stream.aclose()
        raise
    encoder = make_encoder()
    return StreamingResponse(_frames(stream, first, events, encoder), media_type=encoder.media_type)


async def _frames(
    stream: JobStream, first: Event, rest: AsyncIterator[Event], encoder: StreamEncoder
) -> AsyncIterator[bytes]:
    try:
        for frame in encoder.start():
            yield frame
        event: Event | None = first
        while event is not None:
            for frame in _encode(encoder, event):
                yield frame
            event = await anext(rest, None)
    finally:
        await stream.aclose()


def _encode(encoder: StreamEncoder, event: Event) -> list[bytes]:
    if isinstance(event, TokenEvent):
        return encoder.token(event)
    if isinstance(event, DoneEvent):
        return encoder.done(event)
    return encoder.error(from_event(event))
