"""The events a worker publishes for one job: tokens (and, for n > 1 sequences, one end per
sequence), then exactly one terminal event."""

import base64
from enum import StrEnum
from typing import Annotated, Literal

import numpy as np
import numpy.typing as npt
from pydantic import BaseModel, Field, TypeAdapter


class FinishReason(StrEnum):
    STOP = "stop"  # end of sequence token
    STOP_SEQUENCE = "stop_sequence"  # one of the job's stop strings matched
    LENGTH = "length"  # max_tokens reached
    CANCELLED = "cancelled"


class ErrorCode(StrEnum):
    """Why a job ended in an error; the API maps each to a status once (api/errors.py)."""

    CONTEXT_LENGTH_EXCEEDED = "context_length_exceeded"
    INVALID_REQUEST = "invalid_request"
    DEADLINE_EXCEEDED = "deadline_exceeded"
    WORKER_LOST = "worker_lost"
    CANCELLED = "cancelled"
    BACKEND_UNAVAILABLE = "backend_unavailable"
    INTERNAL = "internal_error"


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


class Timings(BaseModel):
    """Measured durations in seconds."""

    queued: float = Field(description="Enqueue to the worker picking the job up.")
    prompt_eval: float = Field(description="Prompt processing up to the first sampled token.")
    decode: float = Field(description="From the first sampled token to the end.")
    load: float = Field(default=0.0, description="Model loading charged to this job.")


class TopLogprob(BaseModel):
    """A token and its log-probability at one step (natural log, over the raw logits)."""

    token: str = Field(description="The token's text (invalid UTF-8 replaced).")
    bytes: list[int] = Field(description="The token's exact bytes.")
    logprob: float


class TokenLogprob(TopLogprob):
    """A sampled token's log-probability and the most likely tokens at its step."""

    top: list[TopLogprob] = Field(
        default_factory=list, description="The k most likely tokens, most likely first."
    )


class TokenEvent(BaseModel):
    type: Literal["token"] = "token"
    index: int = Field(description="0-based position of this event in the job's output events.")
    text: str
    choice: int = Field(default=0, description="Which of the job's n sequences.")
    logprobs: list[TokenLogprob] | None = Field(
        default=None,
        description="When asked for: one entry per token whose text this delta completes "
        "(a delta may carry several tokens; merged deltas concatenate them).",
    )


class ChoiceEndEvent(BaseModel):
    """One of a job's n > 1 sequences ended; the job's DoneEvent follows the last of them."""

    type: Literal["choice_end"] = "choice_end"
    index: int = Field(description="Position in the job's output events (shared with tokens).")
    choice: int
    finish_reason: FinishReason
    stop_sequence: str | None = None
    completion_tokens: int


class DoneEvent(BaseModel):
    """The job's end. With n > 1, `finish_reason` and `stop_sequence` are the first
    sequence's (each has its ChoiceEndEvent) and `usage` counts the prompt once and the
    tokens of every sequence."""

    type: Literal["done"] = "done"
    finish_reason: FinishReason
    stop_sequence: str | None = None
    usage: Usage
    timings: Timings


class EmbeddingsEvent(BaseModel):
    """The terminal event of an embedding job: one vector per input, in the inputs' order.

    Each vector travels as base64 of its little-endian float32 values (exact, and a quarter
    of their JSON's size), as OpenAI's `encoding_format: "base64"` sends them.
    """

    type: Literal["embeddings"] = "embeddings"
    vectors: list[str] = Field(description="base64 of little-endian float32, one per input")
    usage: Usage  # prompt_tokens: the inputs' tokens, as evaluated; completion_tokens 0
    timings: Timings

    @classmethod
    def of(
        cls, vectors: list[npt.NDArray[np.float32]], usage: Usage, timings: Timings
    ) -> "EmbeddingsEvent":
        return cls(vectors=[encode_vector(v) for v in vectors], usage=usage, timings=timings)

    def floats(self) -> list[list[float]]:
        return [decode_vector(v) for v in self.vectors]


def encode_vector(vector: npt.NDArray[np.float32]) -> str:
    return base64.b64encode(np.asarray(vector, dtype="<f4").tobytes()).decode("ascii")


def decode_vector(encoded: str) -> list[float]:
    values: list[float] = np.frombuffer(base64.b64decode(encoded), dtype="<f4").tolist()
    return values


class ErrorEvent(BaseModel):
    type: Literal["error"] = "error"
    code: ErrorCode
    message: str


Event = Annotated[
    TokenEvent | ChoiceEndEvent | DoneEvent | EmbeddingsEvent | ErrorEvent,
    Field(discriminator="type"),
]
TerminalEvent = DoneEvent | EmbeddingsEvent | ErrorEvent

event_adapter: TypeAdapter[Event] = TypeAdapter(Event)


def parse_event(
    raw: str | bytes,
) -> TokenEvent | ChoiceEndEvent | DoneEvent | EmbeddingsEvent | ErrorEvent:
    return event_adapter.validate_json(raw)
