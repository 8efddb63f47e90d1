"""Neutral events to Ollama responses and NDJSON lines; API errors to `{"error": ...}`.

The final line's durations are measured, in nanoseconds:
- total_duration: from the job's creation in the API to its done event arriving there;
- load_duration: getting the job onto a loaded model, as Ollama's scheduling is: the queue
  wait plus any model load charged to the job (none: workers load once, at start);
- prompt_eval_duration: the worker's prompt processing up to the first sampled token;
- eval_duration: the worker's decoding from the first sampled token to the end.
"""

import time
from typing import Literal

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
    ErrorResponse,
    GenerateChunk,
    GenerateDone,
)
from api.relay import StreamEncoder
from api.state import AppState
from shared.events import DoneEvent, FinishReason, TokenEvent
from shared.job import GenerationJob

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


def generate_done(job: GenerationJob, name: str, text: str, done: DoneEvent) -> GenerateDone:
    return GenerateDone(
        model=name, created_at=timestamp(time.time()), response=text, **dict(stats(job, done))
    )


def chat_done(job: GenerationJob, name: str, text: str, done: DoneEvent) -> ChatDone:
    return ChatDone(
        model=name,
        created_at=timestamp(time.time()),
        message=AssistantMessage(content=text),
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


async def fit_context(state: AppState, job: GenerationJob, num_ctx: int | None) -> GenerationJob:
    """The job limited to a context of `num_ctx` tokens, as Ollama's option asks.

    Above the workers' own context it cannot be honoured (400). Below it, the job carries it
    (`n_ctx`): `submit` and the worker then fit the prompt and its output in it.
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
                    model=self.name, created_at=timestamp(time.time()), response=event.text
                )
            )
        ]

    def done(self, event: DoneEvent) -> list[bytes]:
        return [line(generate_done(self.job, self.name, "", event))]


class ChatEncoder(_OllamaEncoder):
    def token(self, event: TokenEvent) -> list[bytes]:
        chunk = ChatChunk(
            model=self.name,
            created_at=timestamp(time.time()),
            message=AssistantMessage(content=event.text),
        )
        return [line(chunk)]

    def done(self, event: DoneEvent) -> list[bytes]:
        return [line(chat_done(self.job, self.name, "", event))]


class GenerateFormat(BaseModel):
    """How a generate request wants its answer; `name`: the model name it gave (echoed)."""

    kind: Literal["ollama.generate"] = "ollama.generate"
    name: str

    def encoder(self, job: GenerationJob, prompt_tokens: int) -> GenerateEncoder:
        return GenerateEncoder(job, self.name)

    def whole(self, job: GenerationJob, text: str, done: DoneEvent) -> GenerateDone:
        return generate_done(job, self.name, text, done)


class ChatFormat(BaseModel):
    """How a chat request wants its answer; `name`: the model name it gave (echoed)."""

    kind: Literal["ollama.chat"] = "ollama.chat"
    name: str

    def encoder(self, job: GenerationJob, prompt_tokens: int) -> ChatEncoder:
        return ChatEncoder(job, self.name)

    def whole(self, job: GenerationJob, text: str, done: DoneEvent) -> ChatDone:
        return chat_done(job, self.name, text, done)
