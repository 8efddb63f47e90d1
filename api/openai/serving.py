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
    ChoiceLogprobs,
    Completion,
    CompletionChoice,
    CompletionLogprobs,
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
from api.relay import Collected, StreamEncoder
from api.tool_calls import CallSplitter, Reply, arguments_json, read_reply
from api.wire import WireLogprob
from shared.events import (
    ChoiceEndEvent,
    DoneEvent,
    EmbeddingsEvent,
    TokenEvent,
    TokenLogprob,
    Usage,
    decode_vector,
)
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


def finish_reason(reason: NeutralFinish, reply: Reply | None = None) -> FinishReason:
    if reason is NeutralFinish.LENGTH:
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


def chat_logprobs(entries: list[TokenLogprob] | None) -> ChoiceLogprobs | None:
    """Chat's shape: `content[]` of token, logprob, bytes and `top_logprobs`."""
    if entries is None:
        return None
    return ChoiceLogprobs(content=WireLogprob.all_of(entries))


def completion_logprobs(
    entries: list[TokenLogprob] | None, offset: int = 0
) -> CompletionLogprobs | None:
    """Completions' legacy shape; `text_offset` counts characters from `offset` (the text
    already sent, when streaming)."""
    if entries is None:
        return None
    offsets = []
    for e in entries:
        offsets.append(offset)
        offset += len(e.token)
    return CompletionLogprobs(
        tokens=[e.token for e in entries],
        token_logprobs=[e.logprob for e in entries],
        top_logprobs=[{t.token: t.logprob for t in e.top} for e in entries],
        text_offset=offsets,
    )


def chat_completion(job: GenerationJob, out: Collected) -> ChatCompletion:
    choices = []
    for i, choice in enumerate(out.choices):
        reply = read_reply(job, choice.text)
        message = ResponseMessage(
            content=reply.text if reply.text or not reply.calls else None,
            tool_calls=tool_calls(reply),
        )
        choices.append(
            ChatChoice(
                index=i,
                message=message,
                finish_reason=finish_reason(choice.finish_reason, reply),
                logprobs=chat_logprobs(choice.logprobs),
            )
        )
    return ChatCompletion(
        id=chat_id(job),
        created=now(),
        model=job.model,
        choices=choices,
        usage=usage_info(out.done.usage),
    )


def completion(job: GenerationJob, out: Collected) -> Completion:
    return Completion(
        id=completion_id(job),
        created=now(),
        model=job.model,
        choices=[
            CompletionChoice(
                index=i,
                text=choice.text,
                finish_reason=finish_reason(choice.finish_reason),
                logprobs=completion_logprobs(choice.logprobs),
            )
            for i, choice in enumerate(out.choices)
        ],
        usage=usage_info(out.done.usage),
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
        return [self.sse(error_body(error).model_dump_json()), self.sse("[DONE]")]

    def _frame(self, chunk: ChatCompletionChunk | Completion) -> bytes:
        # OpenAI sends `"usage": null` on every chunk only when usage was asked for.
        return self.sse(chunk.model_dump_json(exclude=None if self.include_usage else {"usage"}))

    def _finish(self, choice: int, reason: NeutralFinish) -> list[bytes]:
        raise NotImplementedError

    def _usage(self, usage: UsageInfo) -> bytes:
        raise NotImplementedError

    def choice_end(self, event: ChoiceEndEvent) -> list[bytes]:
        return self._finish(event.choice, event.finish_reason)

    def done(self, event: DoneEvent) -> list[bytes]:
        # n > 1: each choice's finish went out with its ChoiceEndEvent.
        frames = self._finish(0, event.finish_reason) if self.job.n == 1 else []
        if self.include_usage:
            frames.append(self._usage(usage_info(event.usage)))
        return [*frames, self.sse("[DONE]")]


class ChatStreamEncoder(_OpenAIEncoder):
    """Text deltas as they come; tool calls once a choice's output has ended
    (api/tool_calls.py), each as a chunk with its id, type and name, then one with its
    arguments."""

    def __init__(self, job: GenerationJob, include_usage: bool) -> None:
        super().__init__(job, include_usage)
        self.splitters = [CallSplitter(job) for _ in range(job.n)]

    def _chunk(self, choices: list[ChatChunkChoice], usage: UsageInfo | None = None) -> bytes:
        chunk = ChatCompletionChunk(
            id=chat_id(self.job),
            created=self.created,
            model=self.job.model,
            choices=choices,
            usage=usage,
        )
        return self._frame(chunk)

    def _delta(self, choice: int, delta: Delta) -> bytes:
        return self._chunk([ChatChunkChoice(index=choice, delta=delta)])

    def start(self) -> list[bytes]:
        return [self._delta(i, Delta(role="assistant", content="")) for i in range(self.job.n)]

    def token(self, event: TokenEvent) -> list[bytes]:
        text = self.splitters[event.choice].feed(event.text)
        if not text and event.logprobs is None:
            return []
        choice = ChatChunkChoice(
            index=event.choice,
            delta=Delta(content=text),
            logprobs=chat_logprobs(event.logprobs),
        )
        return [self._chunk([choice])]

    def _finish(self, choice: int, reason: NeutralFinish) -> list[bytes]:
        reply = self.splitters[choice].finish()
        frames = [self._delta(choice, Delta(content=reply.text))] if reply.text else []
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
            frames.append(self._delta(choice, Delta(tool_calls=[named])))
            frames.append(self._delta(choice, Delta(tool_calls=[arguments])))
        finish = ChatChunkChoice(
            index=choice, delta=Delta(), finish_reason=finish_reason(reason, reply)
        )
        frames.append(self._chunk([finish]))
        return frames

    def _usage(self, usage: UsageInfo) -> bytes:
        return self._chunk([], usage=usage)


class CompletionStreamEncoder(_OpenAIEncoder):
    def __init__(self, job: GenerationJob, include_usage: bool) -> None:
        super().__init__(job, include_usage)
        self._sent = [0] * job.n  # characters sent per choice: logprobs' text_offset

    def _chunk(self, choices: list[CompletionChoice], usage: UsageInfo | None = None) -> bytes:
        chunk = Completion(
            id=completion_id(self.job),
            created=self.created,
            model=self.job.model,
            choices=choices,
            usage=usage,
        )
        return self._frame(chunk)

    def token(self, event: TokenEvent) -> list[bytes]:
        logprobs = completion_logprobs(event.logprobs, self._sent[event.choice])
        self._sent[event.choice] += len(event.text)
        choice = CompletionChoice(
            index=event.choice, text=event.text, finish_reason=None, logprobs=logprobs
        )
        return [self._chunk([choice])]

    def _finish(self, choice: int, reason: NeutralFinish) -> list[bytes]:
        return [
            self._chunk(
                [CompletionChoice(index=choice, text="", finish_reason=finish_reason(reason))]
            )
        ]

    def _usage(self, usage: UsageInfo) -> bytes:
        return self._chunk([], usage=usage)


class ChatFormat(BaseModel):
    """How a chat completion request wants its answer (kept to resume its stream)."""

    kind: Literal["openai.chat"] = "openai.chat"
    include_usage: bool = False

    def encoder(self, job: GenerationJob, prompt_tokens: int) -> ChatStreamEncoder:
        return ChatStreamEncoder(job, self.include_usage)

    def whole(self, job: GenerationJob, out: Collected) -> ChatCompletion:
        return chat_completion(job, out)


class CompletionFormat(BaseModel):
    """How a completion request wants its answer (kept to resume its stream)."""

    kind: Literal["openai.completion"] = "openai.completion"
    include_usage: bool = False

    def encoder(self, job: GenerationJob, prompt_tokens: int) -> CompletionStreamEncoder:
        return CompletionStreamEncoder(job, self.include_usage)

    def whole(self, job: GenerationJob, out: Collected) -> Completion:
        return completion(job, out)
