"""Anthropic Messages API wire types. Requests forbid unknown fields: what is not honoured is
refused with a 400 naming it, rather than silently ignored."""

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from shared.job import ChatMessage, Flavour, GenerationJob, SamplingParams


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class CacheControl(_Strict):
    """A prompt-caching hint; accepted and without effect (nothing is cached across jobs)."""

    type: Literal["ephemeral"]
    ttl: str | None = None


class TextBlockParam(_Strict):
    type: Literal["text"]
    text: str
    cache_control: CacheControl | None = None
    citations: list[Any] | None = None

    @field_validator("citations")
    @classmethod
    def _no_citations(cls, value: list[Any] | None) -> list[Any] | None:
        if value:
            raise ValueError("citations are not supported")
        return value


class _RefusedBlock(_Strict):
    """A block kind the model cannot read; refused with a clear message."""

    model_config = ConfigDict(extra="allow")
    type: str

    @model_validator(mode="after")
    def _refuse(self) -> "_RefusedBlock":
        raise ValueError(f"{self.type} input is not supported: the model reads text only")


class ImageBlockParam(_RefusedBlock):
    type: Literal["image"]


class DocumentBlockParam(_RefusedBlock):
    type: Literal["document"]


ContentBlockParam = Annotated[
    TextBlockParam | ImageBlockParam | DocumentBlockParam, Field(discriminator="type")
]


def _blocks(content: Any) -> Any:
    """A string is shorthand for one text block."""
    return [{"type": "text", "text": content}] if isinstance(content, str) else content


def _text(blocks: list[Any]) -> str:
    return "".join(block.text for block in blocks if isinstance(block, TextBlockParam))


class MessageParam(_Strict):
    role: Literal["user", "assistant"]
    content: list[ContentBlockParam]

    _shorthand = field_validator("content", mode="before")(_blocks)

    @property
    def text(self) -> str:
        return _text(self.content)


class Metadata(_Strict):
    user_id: str | None = None


class ThinkingConfig(_Strict):
    type: str
    budget_tokens: int | None = None

    @field_validator("type")
    @classmethod
    def _disabled_only(cls, value: str) -> str:
        if value != "disabled":
            raise ValueError("extended thinking is not supported by this model")
        return value


class _Conversation(_Strict):
    """What both /v1/messages and /v1/messages/count_tokens turn into a prompt."""

    model: str = Field(min_length=1)
    messages: list[MessageParam] = Field(min_length=1)
    system: list[TextBlockParam] | None = None
    thinking: ThinkingConfig | None = None

    _shorthand = field_validator("system", mode="before")(_blocks)

    @model_validator(mode="after")
    def _prefill_has_no_trailing_space(self) -> "_Conversation":
        last = self.messages[-1]
        if last.role == "assistant" and last.text != last.text.rstrip():
            raise ValueError("final assistant content cannot end with trailing whitespace")
        return self

    def chat_messages(self) -> list[ChatMessage]:
        system = _text(self.system or [])  # an empty system prompt is none
        turns = [ChatMessage(role=m.role, content=m.text) for m in self.messages]
        return [ChatMessage(role="system", content=system), *turns] if system else turns

    def _job(
        self, sampling: SamplingParams, stream: bool, deadline: float, request_id: str | None
    ) -> GenerationJob:
        return GenerationJob(
            model=self.model,
            messages=self.chat_messages(),
            # A final assistant message is a prefill: the reply continues its text.
            continue_final_message=self.messages[-1].role == "assistant",
            sampling=sampling,
            stream=stream,
            flavour=Flavour.ANTHROPIC,
            deadline=deadline,
            request_id=request_id,
        )


class CountTokensRequest(_Conversation):
    def to_job(self, deadline: float) -> GenerationJob:
        """The job this conversation would be: counted, never enqueued."""
        return self._job(SamplingParams(), False, deadline, None)


class MessagesRequest(_Conversation):
    max_tokens: int = Field(ge=1)
    stop_sequences: list[str] | None = None
    temperature: float = Field(default=1.0, ge=0.0, le=1.0)
    top_p: float | None = Field(default=None, gt=0.0, le=1.0)
    top_k: int | None = Field(default=None, ge=0)
    metadata: Metadata | None = None
    stream: bool = False

    @field_validator("stop_sequences")
    @classmethod
    def _stops(cls, value: list[str] | None) -> list[str] | None:
        if value and any(not s for s in value):
            raise ValueError("stop sequences must not be empty")
        return value

    def to_job(self, deadline: float, request_id: str | None = None) -> GenerationJob:
        sampling = SamplingParams(
            max_tokens=self.max_tokens,
            temperature=self.temperature,
            top_p=self.top_p if self.top_p is not None else 1.0,
            top_k=self.top_k or 0,
            stop=list(self.stop_sequences or []),
        )
        return self._job(sampling, self.stream, deadline, request_id)


# Responses

StopReason = Literal["end_turn", "max_tokens", "stop_sequence"]


class TextBlock(BaseModel):
    type: Literal["text"] = "text"
    text: str


class Usage(BaseModel):
    input_tokens: int
    output_tokens: int


class Message(BaseModel):
    id: str
    type: Literal["message"] = "message"
    role: Literal["assistant"] = "assistant"
    model: str
    content: list[TextBlock]
    stop_reason: StopReason | None
    stop_sequence: str | None
    usage: Usage


class TokenCount(BaseModel):
    input_tokens: int


# Stream events, each sent as an SSE frame named after its `type`


class MessageStartEvent(BaseModel):
    type: Literal["message_start"] = "message_start"
    message: Message


class ContentBlockStartEvent(BaseModel):
    type: Literal["content_block_start"] = "content_block_start"
    index: int = 0
    content_block: TextBlock


class PingEvent(BaseModel):
    type: Literal["ping"] = "ping"


class TextDelta(BaseModel):
    type: Literal["text_delta"] = "text_delta"
    text: str


class ContentBlockDeltaEvent(BaseModel):
    type: Literal["content_block_delta"] = "content_block_delta"
    index: int = 0
    delta: TextDelta


class ContentBlockStopEvent(BaseModel):
    type: Literal["content_block_stop"] = "content_block_stop"
    index: int = 0


class MessageDelta(BaseModel):
    stop_reason: StopReason
    stop_sequence: str | None


class DeltaUsage(BaseModel):
    output_tokens: int


class MessageDeltaEvent(BaseModel):
    type: Literal["message_delta"] = "message_delta"
    delta: MessageDelta
    usage: DeltaUsage


class MessageStopEvent(BaseModel):
    type: Literal["message_stop"] = "message_stop"


class ErrorBody(BaseModel):
    type: str
    message: str


class ErrorResponse(BaseModel):
    """The error envelope, both as a response body and as the `error` stream event."""

    type: Literal["error"] = "error"
    error: ErrorBody


StreamEvent = (
    MessageStartEvent
    | ContentBlockStartEvent
    | PingEvent
    | ContentBlockDeltaEvent
    | ContentBlockStopEvent
    | MessageDeltaEvent
    | MessageStopEvent
    | ErrorResponse
)
