"""From a job's neutral events to a response: collect them, or stream them as frames.

Flavours only say how each event looks on their wire; the order, the error handling, the
clean-up and the SSE ids live here once.

SSE ids: every frame of a job's event at position p of its log (tokens 0, 1, ..., then the
terminal event) has `id: p+1`, the number of the job's events the client then has; the frames
a stream starts with (before any event) have `id: 0`. A client that reconnects with
`Last-Event-ID: N` gets the frames of the events from position N on, and no start frames.
"""

from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Protocol, TypeVar

from fastapi.responses import StreamingResponse

from api.errors import ApiError, from_event
from api.sse import PING, format_comment, format_sse
from api.stream import JobStream, KeepAlive, Notice, Queued
from shared.events import (
    ChoiceEndEvent,
    DoneEvent,
    EmbeddingsEvent,
    ErrorEvent,
    Event,
    FinishReason,
    TerminalEvent,
    TokenEvent,
    TokenLogprob,
)
from shared.job import GenerationJob

T = TypeVar("T")
T_co = TypeVar("T_co", covariant=True)


@dataclass
class ChoiceText:
    """One of the job's sequences, whole."""

    text: str
    logprobs: list[TokenLogprob] | None  # None when not asked for
    finish_reason: FinishReason
    stop_sequence: str | None


@dataclass
class Collected:
    """A job's whole output: its sequences by index (one unless n > 1), and its end."""

    choices: list[ChoiceText]
    done: DoneEvent

    @property
    def text(self) -> str:
        return self.choices[0].text


async def collect(stream: JobStream) -> Collected:
    """The whole output and the done event; a worker error is raised as an ApiError."""
    job = stream.job
    assert isinstance(job, GenerationJob), "an embedding job's stream has no text"
    n = job.n
    async with stream:
        parts: list[list[str]] = [[] for _ in range(n)]
        logprobs: list[list[TokenLogprob] | None] = [None] * n
        ends: dict[int, ChoiceEndEvent] = {}
        async for event in stream.events():
            if isinstance(event, Queued | KeepAlive):
                continue
            if isinstance(event, TokenEvent):
                parts[event.choice].append(event.text)
                if event.logprobs is not None:
                    logprobs[event.choice] = (logprobs[event.choice] or []) + event.logprobs
            elif isinstance(event, ChoiceEndEvent):
                ends[event.choice] = event
            elif isinstance(event, ErrorEvent):
                raise from_event(event)
            elif isinstance(event, DoneEvent):
                if job.sampling.logprobs is not None:  # asked: a list, maybe empty
                    logprobs = [entries or [] for entries in logprobs]
                choices = []
                for i in range(n):
                    end = ends.get(i)
                    choices.append(
                        ChoiceText(
                            text="".join(parts[i]),
                            logprobs=logprobs[i],
                            finish_reason=end.finish_reason if end else event.finish_reason,
                            stop_sequence=end.stop_sequence if end else event.stop_sequence,
                        )
                    )
                return Collected(choices, event)
    raise AssertionError("a generation job's stream ends with a done or an error event")


async def collect_embeddings(stream: JobStream) -> EmbeddingsEvent:
    """An embedding job's vectors; a worker error is raised as an ApiError."""
    async with stream:
        async for event in stream.events():
            if isinstance(event, ErrorEvent):
                raise from_event(event)
            if isinstance(event, EmbeddingsEvent):
                return event
    raise AssertionError("an embedding job's stream ends with its vectors or an error")


class StreamEncoder:
    """A flavour's frames for one streamed job; subclasses fill in each frame."""

    media_type = "text/event-stream"
    # The SSE id of the frames being encoded (set by the relay before each event).
    event_id: int | None = None

    def sse(self, data: str, event: str | None = None) -> bytes:
        """An SSE frame with the current event's id."""
        return format_sse(data, event, self.event_id)

    def start(self) -> list[bytes]:
        return []

    def resumed(self) -> None:
        """The stream resumes after `Last-Event-ID`: the client has the start frames (an
        encoder that tracks what it opened there catches up). What an encoder holds back
        while reading tool calls (api/tool_calls.py) is not replayed: a job offering tools
        resumes with the rest of its output only."""

    def token(self, event: TokenEvent) -> list[bytes]:
        raise NotImplementedError

    def choice_end(self, event: ChoiceEndEvent) -> list[bytes]:
        """One of n > 1 sequences ended (only flavours that take n see these)."""
        return []

    def done(self, event: DoneEvent) -> list[bytes]:
        raise NotImplementedError

    def error(self, error: ApiError) -> list[bytes]:
        raise NotImplementedError

    async def settle(self, terminal: TerminalEvent) -> None:
        """Called with the job's terminal event before its frames are made: a flavour that
        keeps state (the Responses API stores the response) does it here, so the client
        reads the last frame only once the state is there."""

    def queued(self, position: int | None) -> list[bytes]:
        """While the job waits in line; SSE flavours send a comment, which clients skip."""
        if self.media_type != "text/event-stream":
            return []
        return [format_comment(f"queued position={position if position else '?'}")]

    def keepalive(self) -> list[bytes]:
        """Nothing to send for a while; SSE flavours send a comment (NDJSON has none)."""
        return [PING] if self.media_type == "text/event-stream" else []


class ResponseFormat(Protocol[T_co]):
    """How a request wants its job's answer: its flavour's stream encoder, or whole."""

    def encoder(self, job: GenerationJob, prompt_tokens: int) -> StreamEncoder: ...

    def whole(self, job: GenerationJob, out: Collected) -> T_co: ...


async def answer(stream: JobStream, fmt: ResponseFormat[T]) -> T | StreamingResponse:
    """The job's answer: its frames as they come (a streamed job), or whole once it ended."""
    job = stream.job
    assert isinstance(job, GenerationJob), "an embedding job is answered by its route"
    if job.stream:
        return await stream_response(stream, lambda: fmt.encoder(job, stream.prompt_tokens))
    return fmt.whole(job, await collect(stream))


async def stream_response(
    stream: JobStream, make_encoder: Callable[[], StreamEncoder]
) -> StreamingResponse:
    """Stream the job's frames; the response starts once its first event is in, or once it
    is found still waiting in line (`queue_notice_after_s`).

    Waiting for the first event lets an error that comes before any token (deadline, worker
    lost) be answered with a real HTTP status instead of an error inside a 200 stream; a job
    that has to queue starts its stream early instead, with its position in the
    `X-Queue-Position` header and then in SSE comments, so the client sees it is in line.
    A job that sends nothing for `sse_keepalive_s` (a long prefill) starts it too, with a
    `: ping` comment, repeated at that interval, so proxies do not time the stream out.
    """
    events = stream.events(streaming=True)
    try:
        first = await anext(events)
        if isinstance(first, ErrorEvent):
            raise from_event(first)
    except BaseException:
        await stream.aclose()
        raise
    encoder = make_encoder()
    headers = {"X-Job-Id": stream.job.id}
    if isinstance(first, Queued):
        headers["X-Queue-Position"] = str(first.position or "")
    return StreamingResponse(
        _frames(stream, first, events, encoder), media_type=encoder.media_type, headers=headers
    )


async def _frames(
    stream: JobStream,
    first: Event | Notice,
    rest: AsyncIterator[Event | Notice],
    encoder: StreamEncoder,
) -> AsyncIterator[bytes]:
    try:
        started = stream.after is not None  # a resumed stream: the client has the start
        if started:
            encoder.resumed()
        item: Event | Notice | None = first
        while item is not None:
            if not started and not isinstance(item, Queued | KeepAlive):
                started = True
                encoder.event_id = 0
                for frame in encoder.start():
                    yield frame
            if isinstance(item, DoneEvent | ErrorEvent):
                await encoder.settle(item)
            if isinstance(item, TokenEvent | ChoiceEndEvent):
                encoder.event_id = item.index + 1
            elif not isinstance(item, Queued | KeepAlive):
                encoder.event_id = stream.position + 1
            for frame in _encode(encoder, item):
                yield frame
            item = await anext(rest, None)
    finally:
        await stream.aclose()


def _encode(encoder: StreamEncoder, item: Event | Notice) -> list[bytes]:
    if isinstance(item, Queued):
        return encoder.queued(item.position)
    if isinstance(item, KeepAlive):
        return encoder.keepalive()
    if isinstance(item, TokenEvent):
        return encoder.token(item)
    if isinstance(item, ChoiceEndEvent):
        return encoder.choice_end(item)
    if isinstance(item, DoneEvent):
        return encoder.done(item)
    if isinstance(item, EmbeddingsEvent):  # never streamed: no frame for it
        return []
    return encoder.error(from_event(item))
