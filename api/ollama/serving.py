"""Neutral events to Ollama responses and NDJSON lines; API errors to `{"error": ...}`.

The final line's durations are measured, in nanoseconds:
- total_duration: from the job's creation in the API to its done event arriving there;
- load_duration: getting the job onto a loaded model, as Ollama's scheduling is: the queue
  wait plus any model load charged to the job (none: workers load once, at start);
- prompt_eval_duration: the worker's prompt processing up to the first sampled token;
- eval_duration: the worker's decoding from the first sampled token to the end.
"""

import time
from typing import Literal, TypeVar

from fastapi.responses import JSONResponse
from pydantic import BaseModel

from api.errors import ApiError, InvalidRequestError
from api.models import require_live_worker
from api.ollama.catalog import timestamp
from api.ollama.protocol import (
    AssistantMessage,
    ChatChunk,
    ChatDone,
    DoneStats,
    EmbedResponse,
    ErrorResponse,
    GenerateChunk,
    GenerateDone,
    Logprob,
    ResponseFunction,
    ResponseToolCall,
)
from api.relay import Collected, StreamEncoder
from api.state import AppState
from api.tool_calls import CallSplitter, Reply, read_reply
from shared.events import DoneEvent, EmbeddingsEvent, FinishReason, TokenEvent, TokenLogprob
from shared.job import EmbeddingJob, GenerationJob

NDJSON = "application/x-ndjson"


def render_error(error: ApiError) -> JSONResponse:
    return JSONResponse(
        ErrorResponse(error=error.message).model_dump(),
        status_code=error.status,
        headers=error.headers(),
    )


def line(body: BaseModel) -> bytes:
    return body.model_dump_json().encode("utf-8") + b"\n"


def _ns(seconds: float) -> int:
    return max(0, round(seconds * 1e9))


def stats(job: GenerationJob, done: DoneEvent) -> DoneStats:
    timings, usage = done.timings, done.usage
    return DoneStats(
        done_reason="length" if done.finish_reason is FinishReason.LENGTH else "stop",
        total_duration=_ns(time.time() - job.created_at),
        load_duration=_ns(timings.queued + timings.load),
        prompt_eval_count=usage.prompt_tokens,
        prompt_eval_duration=_ns(timings.prompt_eval),
        eval_count=usage.completion_tokens,
        eval_duration=_ns(timings.decode),
    )


def logprobs(entries: list[TokenLogprob] | None) -> list[Logprob] | None:
    return None if entries is None else Logprob.all_of(entries)


def generate_done(
    job: GenerationJob, name: str, out: Collected | None, done: DoneEvent | None = None
) -> GenerateDone:
    """The final line: with the whole output (`out`), or after a stream (only `done`)."""
    done = out.done if out is not None else done
    assert done is not None
    return GenerateDone(
        model=name,
        created_at=timestamp(time.time()),
        response=out.text if out is not None else "",
        logprobs=logprobs(out.choices[0].logprobs) if out is not None else None,
        **dict(stats(job, done)),
    )


def reply_message(reply: Reply) -> AssistantMessage:
    """The reply as Ollama's message: its text, and its tool calls (arguments as objects)."""
    calls = [
        ResponseToolCall(function=ResponseFunction(index=i, name=c.name, arguments=c.arguments))
        for i, c in enumerate(reply.calls)
    ]
    return AssistantMessage(content=reply.text, tool_calls=calls or None)


def chat_done(
    job: GenerationJob, name: str, out: Collected | None, done: DoneEvent | None = None
) -> ChatDone:
    """The final line: with the whole output (`out`), or after a stream (only `done`)."""
    done = out.done if out is not None else done
    assert done is not None
    return ChatDone(
        model=name,
        created_at=timestamp(time.time()),
        message=reply_message(read_reply(job, out.text if out is not None else "")),
        logprobs=logprobs(out.choices[0].logprobs) if out is not None else None,
        **dict(stats(job, done)),
    )


def loaded_generate(name: str) -> GenerateDone:
    """Ollama's answer to a request without a prompt: the model is loaded (it always is)."""
    return GenerateDone(
        model=name, created_at=timestamp(time.time()), response="", done_reason="load"
    )


def loaded_chat(name: str) -> ChatDone:
    return ChatDone(
        model=name,
        created_at=timestamp(time.time()),
        message=AssistantMessage(content=""),
        done_reason="load",
    )


J = TypeVar("J", GenerationJob, EmbeddingJob)


async def fit_context(state: AppState, job: J, num_ctx: int | None) -> J:
    """The job limited to a context of `num_ctx` tokens, as Ollama's option asks.

    Above the workers' own context it cannot be honoured (400). Below it, the job carries it
    (`n_ctx`): `submit` and the worker then fit the prompt and its output (or each input to
    embed) in it.
    """
    if num_ctx is None:
        return job
    n_ctx = min(w.n_ctx for w in await require_live_worker(state, job.model))
    if num_ctx > n_ctx:
        raise InvalidRequestError(
            f"options.num_ctx is {num_ctx}, above this model's context of {n_ctx} tokens",
            param="options.num_ctx",
        )
    return job.model_copy(update={"n_ctx": num_ctx})


def embed_response(job: EmbeddingJob, name: str, event: EmbeddingsEvent) -> EmbedResponse:
    return EmbedResponse(
        model=name,
        embeddings=event.floats(),
        total_duration=_ns(time.time() - job.created_at),
        load_duration=_ns(event.timings.queued + event.timings.load),
        prompt_eval_count=event.usage.prompt_tokens,
    )


class _OllamaEncoder(StreamEncoder):
    media_type = NDJSON

    def __init__(self, job: GenerationJob, name: str) -> None:
        self.job = job
        self.name = name

    def error(self, error: ApiError) -> list[bytes]:
        return [line(ErrorResponse(error=error.message))]


class GenerateEncoder(_OllamaEncoder):
    def token(self, event: TokenEvent) -> list[bytes]:
        return [
            line(
                GenerateChunk(
                    model=self.name,
                    created_at=timestamp(time.time()),
                    response=event.text,
                    logprobs=logprobs(event.logprobs),
                )
            )
        ]

    def done(self, event: DoneEvent) -> list[bytes]:
        return [line(generate_done(self.job, self.name, None, event))]


class ChatEncoder(_OllamaEncoder):
    """Text as it comes; tool calls, read once the output has ended, in one chunk before the
    final line (as Ollama sends them)."""

    def __init__(self, job: GenerationJob, name: str) -> None:
        super().__init__(job, name)
        self.splitter = CallSplitter(job)

    def _chunk(self, message: AssistantMessage, entries: list[Logprob] | None = None) -> bytes:
        return line(
            ChatChunk(
                model=self.name,
                created_at=timestamp(time.time()),
                message=message,
                logprobs=entries,
            )
        )

    def token(self, event: TokenEvent) -> list[bytes]:
        entries = logprobs(event.logprobs)
        if not self.job.offers_tools:  # every token's line, as Ollama sends them
            return [self._chunk(AssistantMessage(content=event.text), entries)]
        text = self.splitter.feed(event.text)
        return [self._chunk(AssistantMessage(content=text), entries)] if text or entries else []

    def done(self, event: DoneEvent) -> list[bytes]:
        reply = self.splitter.finish()
        frames = [self._chunk(reply_message(reply))] if reply.text or reply.calls else []
        return [*frames, line(chat_done(self.job, self.name, None, event))]


class GenerateFormat(BaseModel):
    """How a generate request wants its answer; `name`: the model name it gave (echoed)."""

    kind: Literal["ollama.generate"] = "ollama.generate"
    name: str

    def encoder(self, job: GenerationJob, prompt_tokens: int) -> GenerateEncoder:
        return GenerateEncoder(job, self.name)

    def whole(self, job: GenerationJob, out: Collected) -> GenerateDone:
        return generate_done(job, self.name, out)


class ChatFormat(BaseModel):
    """How a chat request wants its answer; `name`: the model name it gave (echoed)."""

    kind: Literal["ollama.chat"] = "ollama.chat"
    name: str

    def encoder(self, job: GenerationJob, prompt_tokens: int) -> ChatEncoder:
        return ChatEncoder(job, self.name)

    def whole(self, job: GenerationJob, out: Collected) -> ChatDone:
        return chat_done(job, self.name, out)
