"""Neutral events to Anthropic messages and stream events; API errors to Anthropic's envelope."""

from typing import Literal

from fastapi.responses import JSONResponse
from pydantic import BaseModel

from api.anthropic.protocol import (
    ContentBlock,
    ContentBlockDeltaEvent,
    ContentBlockStartEvent,
    ContentBlockStopEvent,
    DeltaUsage,
    ErrorBody,
    ErrorResponse,
    InputJsonDelta,
    Message,
    MessageDelta,
    MessageDeltaEvent,
    MessageStartEvent,
    MessageStopEvent,
    PingEvent,
    StopReason,
    StreamEvent,
    TextBlock,
    TextDelta,
    ToolUseBlock,
    Usage,
)
from api.errors import ApiError, ErrorKind
from api.relay import Collected, StreamEncoder
from api.tool_calls import CallSplitter, Reply, arguments_json, read_reply
from shared.events import DoneEvent, FinishReason, TokenEvent
from shared.job import GenerationJob, ToolCall

# Anthropic's error type for each kind of error, and the status where it differs from ours:
# a model without a live worker is "overloaded" (529), which the client retries.
_ERRORS: dict[ErrorKind, tuple[str, int | None]] = {
    ErrorKind.INVALID_REQUEST: ("invalid_request_error", None),
    ErrorKind.AUTHENTICATION: ("authentication_error", None),
    ErrorKind.PERMISSION: ("permission_error", None),
    ErrorKind.NOT_FOUND: ("not_found_error", None),
    ErrorKind.RATE_LIMITED: ("rate_limit_error", None),
    ErrorKind.UNAVAILABLE: ("overloaded_error", 529),
    ErrorKind.TIMEOUT: ("timeout_error", None),
    ErrorKind.INTERNAL: ("api_error", None),
}

_STOP_REASONS: dict[FinishReason, StopReason] = {
    FinishReason.STOP: "end_turn",
    FinishReason.STOP_SEQUENCE: "stop_sequence",
    FinishReason.LENGTH: "max_tokens",
    FinishReason.CANCELLED: "end_turn",
}


def error_body(error: ApiError) -> ErrorResponse:
    return ErrorResponse(error=ErrorBody(type=_ERRORS[error.kind][0], message=error.message))


def error_status(error: ApiError) -> int:
    return _ERRORS[error.kind][1] or error.status


def render_error(error: ApiError) -> JSONResponse:
    return JSONResponse(
        error_body(error).model_dump(), status_code=error_status(error), headers=error.headers()
    )


def message_id(job: GenerationJob) -> str:
    return f"msg_{job.id}"


def tool_use_id(call: ToolCall) -> str:
    return f"toolu_{call.id}"


def tool_use(call: ToolCall) -> ToolUseBlock:
    return ToolUseBlock(id=tool_use_id(call), name=call.name, input=call.arguments)


def stop_reason(done: DoneEvent, reply: Reply) -> StopReason:
    if reply.calls and done.finish_reason is not FinishReason.LENGTH:
        return "tool_use"
    return _STOP_REASONS[done.finish_reason]


def message(job: GenerationJob, text: str, done: DoneEvent) -> Message:
    reply = read_reply(job, text)
    content: list[ContentBlock] = [TextBlock(text=reply.text)]
    if job.offers_tools:  # a text block only where there is text, as Anthropic answers
        content = [
            *([TextBlock(text=reply.text)] if reply.text else []),
            *map(tool_use, reply.calls),
        ]
    return Message(
        id=message_id(job),
        model=job.model,
        content=content,
        stop_reason=stop_reason(done, reply),
        stop_sequence=done.stop_sequence,
        usage=Usage(
            input_tokens=done.usage.prompt_tokens, output_tokens=done.usage.completion_tokens
        ),
    )


class MessageStreamEncoder(StreamEncoder):
    """message_start, content_block_start, ping, content_block_delta..., content_block_stop,
    message_delta, message_stop; or an `error` event once the stream has started.

    When the job offers tools, the text block opens with the first text, and each tool call
    comes once the output has ended (api/tool_calls.py) as a block of its own: a tool_use
    content_block_start with an empty input, an input_json_delta, content_block_stop.
    """

    def __init__(self, job: GenerationJob, input_tokens: int) -> None:
        self.job = job
        self.input_tokens = input_tokens
        self.splitter = CallSplitter(job)
        self.blocks = 0  # content blocks opened
        self.text_open = False

    def start(self) -> list[bytes]:
        started = Message(
            id=message_id(self.job),
            model=self.job.model,
            content=[],
            stop_reason=None,
            stop_sequence=None,
            usage=Usage(input_tokens=self.input_tokens, output_tokens=0),
        )
        frames = [self._frame(MessageStartEvent(message=started))]
        if not self.job.offers_tools:
            frames.extend(self._open_text())
        return [*frames, self._frame(PingEvent())]

    def _open_text(self) -> list[bytes]:
        self.text_open, self.blocks = True, self.blocks + 1
        return [self._frame(ContentBlockStartEvent(content_block=TextBlock(text="")))]

    def _text(self, text: str) -> list[bytes]:
        if not text:
            return []
        frames = [] if self.text_open else self._open_text()
        return [*frames, self._frame(ContentBlockDeltaEvent(delta=TextDelta(text=text)))]

    def token(self, event: TokenEvent) -> list[bytes]:
        return self._text(self.splitter.feed(event.text))

    def resumed(self) -> None:
        # The client has the start: a job without tools opened its text block there.
        self.text_open = not self.job.offers_tools
        self.blocks = int(self.text_open)

    def done(self, event: DoneEvent) -> list[bytes]:
        reply = self.splitter.finish()
        frames = self._text(reply.text)
        if self.text_open:
            frames.append(self._frame(ContentBlockStopEvent(index=0)))
        for call in reply.calls:
            index, self.blocks = self.blocks, self.blocks + 1
            opened = ToolUseBlock(id=tool_use_id(call), name=call.name, input={})
            frames += [
                self._frame(ContentBlockStartEvent(index=index, content_block=opened)),
                self._frame(
                    ContentBlockDeltaEvent(
                        index=index, delta=InputJsonDelta(partial_json=arguments_json(call))
                    )
                ),
                self._frame(ContentBlockStopEvent(index=index)),
            ]
        delta = MessageDelta(
            stop_reason=stop_reason(event, reply), stop_sequence=event.stop_sequence
        )
        return [
            *frames,
            self._frame(
                MessageDeltaEvent(
                    delta=delta, usage=DeltaUsage(output_tokens=event.usage.completion_tokens)
                )
            ),
            self._frame(MessageStopEvent()),
        ]

    def error(self, error: ApiError) -> list[bytes]:
        return [self._frame(error_body(error))]

    def _frame(self, event: StreamEvent | ErrorResponse) -> bytes:
        return self.sse(event.model_dump_json(), event=event.type)


class MessagesFormat(BaseModel):
    """How a Messages request wants its answer (kept to resume its stream)."""

    kind: Literal["anthropic.messages"] = "anthropic.messages"

    def encoder(self, job: GenerationJob, prompt_tokens: int) -> MessageStreamEncoder:
        # message_start carries the input tokens before the worker has reported any usage.
        return MessageStreamEncoder(job, prompt_tokens)

    def whole(self, job: GenerationJob, out: Collected) -> Message:
        return message(job, out.text, out.done)
