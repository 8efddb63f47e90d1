"""The neutral generation job: every API flavour converts its request into one of these."""

import time
import uuid
from enum import StrEnum
from typing import Literal

from pydantic import BaseModel, Field


class Flavour(StrEnum):
    """The API a request came in through."""

    OPENAI = "openai"
    ANTHROPIC = "anthropic"
    OLLAMA = "ollama"


class ChatMessage(BaseModel):
    """One turn of a conversation, already reduced to plain text."""

    role: Literal["system", "user", "assistant"]
    content: str


class SamplingParams(BaseModel):
    """How to pick tokens. `temperature == 0` means greedy."""

    max_tokens: int | None = Field(
        default=None, ge=1, description="Tokens to generate at most; None fills the context."
    )
    temperature: float = Field(default=1.0, ge=0.0, le=2.0)
    top_p: float = Field(default=1.0, gt=0.0, le=1.0)
    top_k: int = Field(default=0, ge=0, description="0 disables top-k.")
    min_p: float = Field(default=0.0, ge=0.0, le=1.0)
    repeat_penalty: float = Field(default=1.0, gt=0.0)
    presence_penalty: float = Field(default=0.0, ge=-2.0, le=2.0)
    frequency_penalty: float = Field(default=0.0, ge=-2.0, le=2.0)
    seed: int | None = None
    stop: list[str] = Field(default_factory=list)


def new_job_id() -> str:
    return uuid.uuid4().hex


class GenerationJob(BaseModel):
    """One generation request, independent of the API flavour it arrived through.

    Exactly one of `messages` (chat, rendered with the model's own template) and `prompt`
    (raw text, fed as is) is set. With `continue_final_message` the last message is an
    assistant turn left open: the model continues its text (Anthropic's and Ollama's prefill).
    """

    id: str = Field(default_factory=new_job_id)
    model: str
    messages: list[ChatMessage] | None = None
    continue_final_message: bool = False
    prompt: str | None = None
    sampling: SamplingParams = Field(default_factory=SamplingParams)
    stream: bool = False
    flavour: Flavour
    created_at: float = Field(default_factory=time.time)
    deadline: float = Field(description="Unix time after which the job must not start.")
    request_id: str | None = None
    attempt: int = Field(default=1, ge=1, description="Run number; >1 after its worker died.")
    n_ctx: int | None = Field(
        default=None,
        ge=1,
        description="A context smaller than the worker's for this job (Ollama's num_ctx).",
    )

    def model_post_init(self, _context: object) -> None:
        if (self.messages is None) == (self.prompt is None):
            raise ValueError("a job has exactly one of messages and prompt")
        if self.continue_final_message and (
            not self.messages or self.messages[-1].role != "assistant"
        ):
            raise ValueError("only a final assistant message can be continued")
