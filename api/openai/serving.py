"""Neutral events to OpenAI responses and stream chunks."""

from fastapi.responses import JSONResponse

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
    ErrorBody,
    ErrorResponse,
    FinishReason,
    ResponseMessage,
    UsageInfo,
    now,
)
from api.openai.protocol import TokenLogprob as OpenAIToken
from api.openai.protocol import TopLogprob as OpenAITop
from api.relay import Collected, StreamEncoder
from api.sse import format_sse
from shared.events import ChoiceEndEvent, DoneEvent, TokenEvent, TokenLogprob, TopLogprob, Usage
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


def finish_reason(reason: NeutralFinish) -> FinishReason:
    return "length" if reason is NeutralFinish.LENGTH else "stop"


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


def _top(entry: TopLogprob) -> OpenAITop:
    return OpenAITop(token=entry.token, logprob=entry.logprob, bytes=entry.bytes)


def chat_logprobs(entries: list[TokenLogprob] | None) -> ChoiceLogprobs | None:
    """Chat's shape: `content[]` of token, logprob, bytes and `top_logprobs`."""
    if entries is None:
        return None
    return ChoiceLogprobs(
        content=[
            OpenAIToken(**_top(e).model_dump(), top_logprobs=[_top(t) for t in e.top])
            for e in entries
        ]
    )


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
    return ChatCompletion(
        id=chat_id(job),
        created=now(),
        model=job.model,
        choices=[
            ChatChoice(
                index=i,
                message=ResponseMessage(content=choice.text),
                finish_reason=finish_reason(choice.finish_reason),
                logprobs=chat_logprobs(choice.logprobs),
            )
            for i, choice in enumerate(out.choices)
        ],
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

    def _finish(self, choice: int, reason: NeutralFinish) -> bytes:
        raise NotImplementedError

    def _usage(self, usage: UsageInfo) -> bytes:
        raise NotImplementedError

    def choice_end(self, event: ChoiceEndEvent) -> list[bytes]:
        return [self._finish(event.choice, event.finish_reason)]

    def done(self, event: DoneEvent) -> list[bytes]:
        # n > 1: each choice's finish went out with its ChoiceEndEvent.
        frames = [self._finish(0, event.finish_reason)] if self.job.n == 1 else []
        if self.include_usage:
            frames.append(self._usage(usage_info(event.usage)))
        return [*frames, DONE_FRAME]


class ChatStreamEncoder(_OpenAIEncoder):
    def _chunk(self, choices: list[ChatChunkChoice], usage: UsageInfo | None = None) -> bytes:
        chunk = ChatCompletionChunk(
            id=chat_id(self.job),
            created=self.created,
            model=self.job.model,
            choices=choices,
            usage=usage,
        )
        return self._frame(chunk)

    def start(self) -> list[bytes]:
        return [
            self._chunk([ChatChunkChoice(index=i, delta=Delta(role="assistant", content=""))])
            for i in range(self.job.n)
        ]

    def token(self, event: TokenEvent) -> list[bytes]:
        choice = ChatChunkChoice(
            index=event.choice,
            delta=Delta(content=event.text),
            logprobs=chat_logprobs(event.logprobs),
        )
        return [self._chunk([choice])]

    def _finish(self, choice: int, reason: NeutralFinish) -> bytes:
        return self._chunk(
            [ChatChunkChoice(index=choice, delta=Delta(), finish_reason=finish_reason(reason))]
        )

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

    def _finish(self, choice: int, reason: NeutralFinish) -> bytes:
        return self._chunk(
            [CompletionChoice(index=choice, text="", finish_reason=finish_reason(reason))]
        )

    def _usage(self, usage: UsageInfo) -> bytes:
        return self._chunk([], usage=usage)
