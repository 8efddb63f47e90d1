"""OpenAI wire types. Requests forbid unknown fields: what is not honoured is refused.

Ranges and caps are the neutral job's (shared/job.py); these models only map the fields.
"""

import time
from typing import Annotated, Any, ClassVar, Literal, Self

from pydantic import BaseModel, Field, field_validator, model_serializer, model_validator

from api.wire import JobRequest, WireModel
from shared.job import ChatMessage, Flavour, GenerationJob, ModelName, SamplingParams


class TextPart(WireModel):
    type: Literal["text"]
    text: str


class ImagePart(WireModel):
    type: Literal["image_url"]
    image_url: Any

    @field_validator("image_url")
    @classmethod
    def _refuse(cls, _value: Any) -> Any:
        raise ValueError("image input is not supported: the model reads text only")


ContentPart = Annotated[TextPart | ImagePart, Field(discriminator="type")]


def _text(content: str | list[Any] | None) -> str:
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    return "".join(part.text for part in content if isinstance(part, TextPart))


class SystemMessage(WireModel):
    role: Literal["system", "developer"]
    content: str | list[TextPart]
    name: str | None = None


class UserMessage(WireModel):
    role: Literal["user"]
    content: str | list[ContentPart]
    name: str | None = None


class AssistantMessage(WireModel):
    role: Literal["assistant"]
    content: str | list[TextPart] | None = None
    name: str | None = None


Message = Annotated[SystemMessage | UserMessage | AssistantMessage, Field(discriminator="role")]


class StreamOptions(WireModel):
    include_usage: bool = False


class _SamplingFields(JobRequest):
    """Parameters both OpenAI endpoints share (plus vLLM's top_k/min_p/repetition_penalty)."""

    sampling_names: ClassVar[dict[str, str]] = {"repeat_penalty": "repetition_penalty"}

    model: ModelName
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    min_p: float = 0.0
    repetition_penalty: float = 1.0
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    seed: int | None = Field(default=None, description="Negative: random.")
    stop: str | list[str] | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    n: int = 1
    logit_bias: dict[str, float] | None = None
    user: str | None = None
    ignore_eos: bool = False  # vLLM's extensions, sent by load generators
    min_tokens: int = 0

    @field_validator("logit_bias")
    @classmethod
    def _token_ids(cls, value: dict[str, float] | None) -> dict[str, float] | None:
        # OpenAI's keys are token ids written as strings; the job checks ranges and count.
        for key in value or {}:
            if not key.isdigit():
                raise ValueError(f"keys are token ids (non-negative integers), not {key!r}")
        return value

    @property
    def include_usage(self) -> bool:
        return self.stream_options is not None and self.stream_options.include_usage

    @property
    def top_logprobs_asked(self) -> int | None:
        """The job's `logprobs`: None (not asked) or how many alternatives a token gets."""
        raise NotImplementedError

    def job_fields(self) -> dict[str, Any]:
        """What both endpoints set on the job besides their prompt and sampling."""
        return {"n": self.n, "stream": self.stream, "flavour": Flavour.OPENAI}

    def _sampling(self, max_tokens: int | None) -> SamplingParams:
        return SamplingParams(
            max_tokens=max_tokens,
            temperature=self.temperature,
            top_p=self.top_p,
            top_k=self.top_k,
            min_p=self.min_p,
            repeat_penalty=self.repetition_penalty,
            presence_penalty=self.presence_penalty,
            frequency_penalty=self.frequency_penalty,
            # Negative: random, as llama.cpp's own server reads -1 (clients written for it).
            seed=self.seed if self.seed is not None and self.seed >= 0 else None,
            stop=[self.stop] if isinstance(self.stop, str) else list(self.stop or []),
            ignore_eos=self.ignore_eos,
            min_tokens=self.min_tokens,
            logit_bias={int(k): v for k, v in (self.logit_bias or {}).items()},
            logprobs=self.top_logprobs_asked,
        )


class ChatCompletionRequest(_SamplingFields):
    messages: list[Message]
    max_tokens: int | None = None
    max_completion_tokens: int | None = None
    logprobs: bool | None = None
    top_logprobs: int | None = None

    @model_validator(mode="after")
    def _top_needs_logprobs(self) -> Self:
        if self.top_logprobs is not None and not self.logprobs:
            raise ValueError("top_logprobs needs logprobs: true")
        return self

    @property
    def top_logprobs_asked(self) -> int | None:
        return (self.top_logprobs or 0) if self.logprobs else None

    def sampling_param(self, field: str) -> str:
        if field == "max_tokens" and self.max_completion_tokens is not None:
            return "max_completion_tokens"
        if field == "logprobs":
            return "top_logprobs"
        return super().sampling_param(field)

    def build_job(self, deadline: float, request_id: str | None) -> GenerationJob:
        return GenerationJob(
            model=self.model,
            messages=[
                ChatMessage(
                    role="system" if m.role == "developer" else m.role, content=_text(m.content)
                )
                for m in self.messages
            ],
            sampling=self._sampling(
                self.max_tokens
                if self.max_completion_tokens is None
                else self.max_completion_tokens
            ),
            deadline=deadline,
            request_id=request_id,
            **self.job_fields(),
        )


class CompletionRequest(_SamplingFields):
    prompt: str | list[str]
    max_tokens: int | None = 16
    echo: bool = False
    suffix: str | None = None
    logprobs: int | None = None
    best_of: int | None = None

    @field_validator("prompt")
    @classmethod
    def _one_prompt(cls, value: str | list[str]) -> str | list[str]:
        if isinstance(value, list) and len(value) != 1:
            raise ValueError("exactly one prompt is supported per request")
        return value

    @property
    def top_logprobs_asked(self) -> int | None:
        return self.logprobs

    @field_validator("echo", "suffix")
    @classmethod
    def _unsupported(cls, value: Any) -> Any:
        if value:
            raise ValueError("this parameter is not supported")
        return value

    @field_validator("best_of")
    @classmethod
    def _best_of(cls, value: int | None) -> int | None:
        if value not in (None, 1):
            raise ValueError("only best_of=1 is supported")
        return value

    def build_job(self, deadline: float, request_id: str | None) -> GenerationJob:
        return GenerationJob(
            model=self.model,
            prompt=self.prompt if isinstance(self.prompt, str) else self.prompt[0],
            sampling=self._sampling(self.max_tokens),
            deadline=deadline,
            request_id=request_id,
            **self.job_fields(),
        )


# Responses


class UsageInfo(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


FinishReason = Literal["stop", "length"]


class ResponseMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str


class TopLogprob(BaseModel):
    token: str
    logprob: float
    bytes: list[int] | None


class TokenLogprob(TopLogprob):
    top_logprobs: list[TopLogprob]


class ChoiceLogprobs(BaseModel):
    """Chat's `choices[].logprobs`."""

    content: list[TokenLogprob] | None
    refusal: list[TokenLogprob] | None = None


class CompletionLogprobs(BaseModel):
    """Completions' legacy `choices[].logprobs`: parallel lists, one entry per token."""

    tokens: list[str]
    token_logprobs: list[float]
    top_logprobs: list[dict[str, float]]
    text_offset: list[int]


class ChatChoice(BaseModel):
    index: int = 0
    message: ResponseMessage
    finish_reason: FinishReason
    logprobs: ChoiceLogprobs | None = None


class ChatCompletion(BaseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[ChatChoice]
    usage: UsageInfo
    system_fingerprint: str | None = None


class Delta(BaseModel):
    role: Literal["assistant"] | None = None
    content: str | None = None

    @model_serializer
    def _present_fields(self) -> dict[str, str]:
        # OpenAI's deltas carry only the fields that changed.
        return {k: v for k, v in (("role", self.role), ("content", self.content)) if v is not None}


class ChatChunkChoice(BaseModel):
    index: int = 0
    delta: Delta
    finish_reason: FinishReason | None = None
    logprobs: ChoiceLogprobs | None = None


class ChatCompletionChunk(BaseModel):
    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int
    model: str
    choices: list[ChatChunkChoice]
    usage: UsageInfo | None = None


class CompletionChoice(BaseModel):
    index: int = 0
    text: str
    finish_reason: FinishReason | None
    logprobs: CompletionLogprobs | None = None


class Completion(BaseModel):
    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int
    model: str
    choices: list[CompletionChoice]
    usage: UsageInfo | None = None


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "tokenq"
    # tokenq's own fields (OpenAI's clients keep unknown fields): the registry's view.
    aliases: list[str] = Field(default_factory=list)
    digest: str | None = Field(default=None, description="sha256:<hex> of the model file.")
    live_workers: int = 0


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


class ErrorBody(BaseModel):
    message: str
    type: str
    param: str | None
    code: str | None


class ErrorResponse(BaseModel):
    error: ErrorBody


def now() -> int:
    return int(time.time())
