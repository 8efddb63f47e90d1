"""Neutral events to OpenAI responses and stream chunks."""

from typing import Literal

from fastapi.responses import JSONResponse

from api.errors import ApiError, ErrorKind
from api.openai.protocol import (
    ChatChoice,
    ChatChunkChoice,
    ChatCompletion,
    ChatCompletionChunk,
    Completion,
    CompletionChoice,
    Delta,
    EmbeddingData,
    EmbeddingList,
    EmbeddingUsage,
    ErrorBody,
    ErrorResponse,
    FinishReason,
    FunctionDelta,
    ResponseFunction,
    ResponseMessage,
    ResponseToolCall,
    ToolCallDelta,
    UsageInfo,
    now,
)
from api.relay import StreamEncoder
from api.sse import format_sse
from api.tool_calls import CallSplitter, Reply, arguments_json, read_reply
from shared.events import DoneEvent, EmbeddingsEvent, TokenEvent, Usage, decode_vector
from shared.events import FinishReason as NeutralFinish
from shared.job import EmbeddingJob, GenerationJob, ToolCall

_ERROR_TYPES = {
    ErrorKind.INVALID_REQUEST: "invalid_request_error",
    ErrorKind.AUTHENTICATION: "invalid_request_error",  # as OpenAI's 401 (code invalid_api_key)
    ErrorKind.PERMISSION: "permission_error",
    ErrorKind.NOT_FOUND: "invalid_request_error",
    ErrorKind.RATE_LIMITED: "rate_limit_error",
    ErrorKind.UNAVAILABLE: "service_unavailable_error",
    ErrorKind.TIMEOUT: "timeout_error",
    ErrorKind.INTERNAL: "server_error",
}

DONE_FRAME = format_sse("[DONE]")


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


def finish_reason(done: DoneEvent, reply: Reply | None = None) -> FinishReason:
    if done.finish_reason is NeutralFinish.LENGTH:
        return "length"
    return "tool_calls" if reply is not None and reply.calls else "stop"


def call_id(call: ToolCall) -> str:
    return f"call_{call.id}"


def tool_calls(reply: Reply) -> list[ResponseToolCall] | None:
    if not reply.calls:
        return None
    return [
        ResponseToolCall(
            id=call_id(c), function=ResponseFunction(name=c.name, arguments=arguments_json(c))
        )
        for c in reply.calls
    ]


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
    reply = read_reply(job, text)
    message = ResponseMessage(
        content=reply.text if reply.text or not reply.calls else None,
        tool_calls=tool_calls(reply),
    )
    return ChatCompletion(
        id=chat_id(job),
        created=now(),
        model=job.model,
        choices=[ChatChoice(message=message, finish_reason=finish_reason(done, reply))],
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


def embedding_list(
    job: EmbeddingJob, event: EmbeddingsEvent, encoding: Literal["float", "base64"]
) -> EmbeddingList:
    """The vectors in OpenAI's list; base64 is the event's own little-endian float32."""
    return EmbeddingList(
        data=[
            EmbeddingData(index=i, embedding=v if encoding == "base64" else decode_vector(v))
            for i, v in enumerate(event.vectors)
        ],
        model=job.model,
        usage=EmbeddingUsage(
            prompt_tokens=event.usage.prompt_tokens, total_tokens=event.usage.prompt_tokens
        ),
    )


class _OpenAIEncoder(StreamEncoder):
    def __init__(self, job: GenerationJob, include_usage: bool) -> None:
        self.job = job
        self.include_usage = include_usage
        self.created = now()

    def error(self, error: ApiError) -> list[bytes]:
        return [format_sse(error_body(error).model_dump_json()), DONE_FRAME]

    def _frame(self, chunk: ChatCompletionChunk | Completion) -> bytes:
        # OpenAI sends `"usage": null` on every chunk only when usage was asked for.
        return format_sse(chunk.model_dump_json(exclude=None if self.include_usage else {"usage"}))


class ChatStreamEncoder(_OpenAIEncoder):
    """Text deltas as they come; tool calls once the output has ended (api/tool_calls.py),
    each as a chunk with its id, type and name, then one with its arguments."""

    def __init__(self, job: GenerationJob, include_usage: bool) -> None:
        super().__init__(job, include_usage)
        self.splitter = CallSplitter(job)

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
        text = self.splitter.feed(event.text)
        return [self._chunk(Delta(content=text))] if text else []

    def done(self, event: DoneEvent) -> list[bytes]:
        reply = self.splitter.finish()
        frames = [self._chunk(Delta(content=reply.text))] if reply.text else []
        for index, call in enumerate(reply.calls):
            named = ToolCallDelta(
                index=index,
                id=call_id(call),
                type="function",
                function=FunctionDelta(name=call.name, arguments=""),
            )
            arguments = ToolCallDelta(
                index=index, function=FunctionDelta(arguments=arguments_json(call))
            )
            frames.append(self._chunk(Delta(tool_calls=[named])))
            frames.append(self._chunk(Delta(tool_calls=[arguments])))
        frames.append(self._chunk(Delta(), finish=finish_reason(event, reply)))
        if self.include_usage:
            frames.append(self._chunk(Delta(), usage=usage_info(event.usage)))
        return [*frames, DONE_FRAME]


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
        return [*frames, DONE_FRAME]
