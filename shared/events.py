"""The events a worker publishes for one job: tokens, then exactly one terminal event."""

from enum import StrEnum
from typing import Annotated, Literal

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


class TokenEvent(BaseModel):
    type: Literal["token"] = "token"
    index: int = Field(description="0-based position of this delta in the job's output.")
    text: str


class DoneEvent(BaseModel):
    type: Literal["done"] = "done"
    finish_reason: FinishReason
    stop_sequence: str | None = None
    usage: Usage
    timings: Timings


class ErrorEvent(BaseModel):
    type: Literal["error"] = "error"
    code: ErrorCode
    message: str


Event = Annotated[TokenEvent | DoneEvent | ErrorEvent, Field(discriminator="type")]
TerminalEvent = DoneEvent | ErrorEvent

event_adapter: TypeAdapter[Event] = TypeAdapter(Event)


def parse_event(raw: str | bytes) -> TokenEvent | DoneEvent | ErrorEvent:
    return event_adapter.validate_json(raw)
