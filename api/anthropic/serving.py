"""Neutral events to Anthropic messages and stream events; API errors to Anthropic's envelope."""

from typing import Literal

from fastapi.responses import JSONResponse
from pydantic import BaseModel

from api.anthropic.protocol import (
    ContentBlockDeltaEvent,
    ContentBlockStartEvent,
    ContentBlockStopEvent,
    DeltaUsage,
    ErrorBody,
    ErrorResponse,
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
    Usage,
)
from api.errors import ApiError, ErrorKind
from api.relay import StreamEncoder
from shared.events import DoneEvent, FinishReason, TokenEvent
from shared.job import GenerationJob

# Anthropic's error type for each kind of error, and the status where it differs from ours:
# a model without a live worker is "overloaded" (529), which the client retries.
_ERRORS: dict[ErrorKind, tuple[str, int | None]] = {
    ErrorKind.INVALID_REQUEST: ("invalid_request_error", None),
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


def message(job: GenerationJob, text: str, done: DoneEvent) -> Message:
    return Message(
        id=message_id(job),
        model=job.model,
        content=[TextBlock(text=text)],
        stop_reason=_STOP_REASONS[done.finish_reason],
        stop_sequence=done.stop_sequence,
        usage=Usage(
            input_tokens=done.usage.prompt_tokens, output_tokens=done.usage.completion_tokens
        ),
    )


class MessageStreamEncoder(StreamEncoder):
    """message_start, content_block_start, ping, content_block_delta..., content_block_stop,
    message_delta, message_stop; or an `error` event once the stream has started."""

    def __init__(self, job: GenerationJob, input_tokens: int) -> None:
        self.job = job
        self.input_tokens = input_tokens

    def start(self) -> list[bytes]:
        started = Message(
            id=message_id(self.job),
            model=self.job.model,
            content=[],
            stop_reason=None,
            stop_sequence=None,
            usage=Usage(input_tokens=self.input_tokens, output_tokens=0),
        )
        return [
            self._frame(MessageStartEvent(message=started)),
            self._frame(ContentBlockStartEvent(content_block=TextBlock(text=""))),
            self._frame(PingEvent()),
        ]

    def token(self, event: TokenEvent) -> list[bytes]:
        return [self._frame(ContentBlockDeltaEvent(delta=TextDelta(text=event.text)))]

    def done(self, event: DoneEvent) -> list[bytes]:
        delta = MessageDelta(
            stop_reason=_STOP_REASONS[event.finish_reason], stop_sequence=event.stop_sequence
        )
        return [
            self._frame(ContentBlockStopEvent()),
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

    def whole(self, job: GenerationJob, text: str, done: DoneEvent) -> Message:
        return message(job, text, done)
