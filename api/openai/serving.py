"""Neutral events to OpenAI responses and stream chunks."""

from typing import Literal

from fastapi.responses import JSONResponse
from pydantic import BaseModel

from api.errors import ApiError, ErrorKind
from api.openai.protocol import (
    ChatChoice,
    ChatChunkChoice,
    ChatCompletion,
    ChatCompletionChunk,
    Completion,
    CompletionChoice,
    Delta,
    ErrorBody,
    ErrorResponse,
    FinishReason,
    ResponseMessage,
    UsageInfo,
    now,
)
from api.relay import StreamEncoder
from shared.events import DoneEvent, TokenEvent, Usage
from shared.events import FinishReason as NeutralFinish
from shared.job import GenerationJob

_ERROR_TYPES = {
    ErrorKind.INVALID_REQUEST: "invalid_request_error",
    ErrorKind.NOT_FOUND: "invalid_request_error",
    ErrorKind.RATE_LIMITED: "rate_limit_error",
    ErrorKind.UNAVAILABLE: "service_unavailable_error",
    ErrorKind.TIMEOUT: "timeout_error",
    ErrorKind.INTERNAL: "server_error",
}



def error_body(error: ApiError) -> ErrorResponse:
    return ErrorResponse(
        error=ErrorBody(
            message=error.message, type=_ERROR_TYPES[error.kind], param=error.param, code=error.code
        )
    )


def render_error(error: ApiError) -> JSONResponse:
    return JSONResponse(
        error_body(error).model_dump(), status_code=error.status, headers=error.headers()
    )


def finish_reason(done: DoneEvent) -> FinishReason:
    return "length" if done.finish_reason is NeutralFinish.LENGTH else "stop"


def usage_info(usage: Usage) -> UsageInfo:
    return UsageInfo(
        prompt_tokens=usage.prompt_tokens,
        completion_tokens=usage.completion_tokens,
        total_tokens=usage.total_tokens,
    )


def chat_id(job: GenerationJob) -> str:
    return f"chatcmpl-{job.id}"


def completion_id(job: GenerationJob) -> str:
    return f"cmpl-{job.id}"


def chat_completion(job: GenerationJob, text: str, done: DoneEvent) -> ChatCompletion:
    return ChatCompletion(
        id=chat_id(job),
        created=now(),
        model=job.model,
        choices=[
            ChatChoice(message=ResponseMessage(content=text), finish_reason=finish_reason(done))
        ],
        usage=usage_info(done.usage),
    )


def completion(job: GenerationJob, text: str, done: DoneEvent) -> Completion:
    return Completion(
        id=completion_id(job),
        created=now(),
        model=job.model,
        choices=[CompletionChoice(text=text, finish_reason=finish_reason(done))],
        usage=usage_info(done.usage),
    )


class _OpenAIEncoder(StreamEncoder):
    def __init__(self, job: GenerationJob, include_usage: bool) -> None:
        self.job = job
        self.include_usage = include_usage
        self.created = now()

    def error(self, error: ApiError) -> list[bytes]:
        return [self.sse(error_body(error).model_dump_json()), self.sse("[DONE]")]

    def _frame(self, chunk: ChatCompletionChunk | Completion) -> bytes:
        # OpenAI sends `"usage": null` on every chunk only when usage was asked for.
        return self.sse(chunk.model_dump_json(exclude=None if self.include_usage else {"usage"}))


class ChatStreamEncoder(_OpenAIEncoder):
    def _chunk(
        self, delta: Delta, finish: FinishReason | None = None, usage: UsageInfo | None = None
    ) -> bytes:
        chunk = ChatCompletionChunk(
            id=chat_id(self.job),
            created=self.created,
            model=self.job.model,
            choices=[] if usage else [ChatChunkChoice(delta=delta, finish_reason=finish)],
            usage=usage,
        )
        return self._frame(chunk)

    def start(self) -> list[bytes]:
        return [self._chunk(Delta(role="assistant", content=""))]

    def token(self, event: TokenEvent) -> list[bytes]:
        return [self._chunk(Delta(content=event.text))]

    def done(self, event: DoneEvent) -> list[bytes]:
        frames = [self._chunk(Delta(), finish=finish_reason(event))]
        if self.include_usage:
            frames.append(self._chunk(Delta(), usage=usage_info(event.usage)))
        return [*frames, self.sse("[DONE]")]


class CompletionStreamEncoder(_OpenAIEncoder):
    def _chunk(
        self, text: str, finish: FinishReason | None = None, usage: UsageInfo | None = None
    ) -> bytes:
        chunk = Completion(
            id=completion_id(self.job),
            created=self.created,
            model=self.job.model,
            choices=[] if usage else [CompletionChoice(text=text, finish_reason=finish)],
            usage=usage,
        )
        return self._frame(chunk)

    def token(self, event: TokenEvent) -> list[bytes]:
        return [self._chunk(event.text)]

    def done(self, event: DoneEvent) -> list[bytes]:
        frames = [self._chunk("", finish=finish_reason(event))]
        if self.include_usage:
            frames.append(self._chunk("", usage=usage_info(event.usage)))
        return [*frames, self.sse("[DONE]")]


class ChatFormat(BaseModel):
    """How a chat completion request wants its answer (kept to resume its stream)."""

    kind: Literal["openai.chat"] = "openai.chat"
    include_usage: bool = False

    def encoder(self, job: GenerationJob, prompt_tokens: int) -> ChatStreamEncoder:
        return ChatStreamEncoder(job, self.include_usage)

    def whole(self, job: GenerationJob, text: str, done: DoneEvent) -> ChatCompletion:
        return chat_completion(job, text, done)


class CompletionFormat(BaseModel):
    """How a completion request wants its answer (kept to resume its stream)."""

    kind: Literal["openai.completion"] = "openai.completion"
    include_usage: bool = False

    def encoder(self, job: GenerationJob, prompt_tokens: int) -> CompletionStreamEncoder:
        return CompletionStreamEncoder(job, self.include_usage)

    def whole(self, job: GenerationJob, text: str, done: DoneEvent) -> Completion:
        return completion(job, text, done)
