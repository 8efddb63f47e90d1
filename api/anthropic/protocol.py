"""Anthropic Messages API wire types. Requests forbid unknown fields: what is not honoured is
refused with a 400 naming it, rather than silently ignored. Ranges and caps are the neutral
job's (shared/job.py); these models only map the fields."""

from typing import Annotated, Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from api.grammar import constrain
from api.wire import JobRequest, WireModel
from shared.job import (
    ChatMessage,
    Flavour,
    GenerationJob,
    ModelName,
    NamedToolChoice,
    SamplingParams,
    Tool,
    ToolCall,
    ToolChoice,
)


class CacheControl(WireModel):
    """A prompt-caching hint; accepted and without effect (nothing is cached across jobs)."""

    type: Literal["ephemeral"]
    ttl: str | None = None


class TextBlockParam(WireModel):
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


class _RefusedBlock(WireModel):
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


class ToolUseBlockParam(WireModel):
    """A tool call of an earlier assistant turn."""

    type: Literal["tool_use"]
    id: str
    name: str
    input: dict[str, Any]
    cache_control: CacheControl | None = None
    # An earlier response's block given back as the SDK dumps it.
    caller: None = None
    toolset_name: None = None


class ToolResultBlockParam(WireModel):
    """The result of a tool call, in a user turn."""

    type: Literal["tool_result"]
    tool_use_id: str
    content: str | list[TextBlockParam] | None = None
    is_error: bool | None = None
    cache_control: CacheControl | None = None

    @property
    def text(self) -> str:
        content = self.content or ""
        text = content if isinstance(content, str) else "".join(b.text for b in content)
        return f"Error: {text}" if self.is_error else text


ContentBlockParam = Annotated[
    TextBlockParam
    | ImageBlockParam
    | DocumentBlockParam
    | ToolUseBlockParam
    | ToolResultBlockParam,
    Field(discriminator="type"),
]


class ToolParam(WireModel):
    """A client tool. Anthropic's server tools (web search, ...) have other types: refused."""

    name: str
    description: str | None = None
    input_schema: dict[str, Any]
    type: Literal["custom"] | None = None
    cache_control: CacheControl | None = None


class ToolChoiceAuto(WireModel):
    type: Literal["auto"]
    disable_parallel_tool_use: bool | None = None


class ToolChoiceAny(WireModel):
    type: Literal["any"]
    disable_parallel_tool_use: bool | None = None


class ToolChoiceTool(WireModel):
    type: Literal["tool"]
    name: str
    disable_parallel_tool_use: bool | None = None


class ToolChoiceNone(WireModel):
    type: Literal["none"]


ToolChoiceParam = Annotated[
    ToolChoiceAuto | ToolChoiceAny | ToolChoiceTool | ToolChoiceNone, Field(discriminator="type")
]


def _blocks(content: Any) -> Any:
    """A string is shorthand for one text block."""
    return [{"type": "text", "text": content}] if isinstance(content, str) else content


def _text(blocks: list[Any]) -> str:
    return "".join(block.text for block in blocks if isinstance(block, TextBlockParam))


class MessageParam(WireModel):
    role: Literal["user", "assistant"]
    content: list[ContentBlockParam]

    _shorthand = field_validator("content", mode="before")(_blocks)

    @model_validator(mode="after")
    def _tool_blocks_in_their_turns(self) -> "MessageParam":
        misplaced = ToolResultBlockParam if self.role == "assistant" else ToolUseBlockParam
        if any(isinstance(b, misplaced) for b in self.content):
            kind = "tool_result" if self.role == "assistant" else "tool_use"
            raise ValueError(f"{kind} blocks cannot be in a {self.role} message")
        return self

    @property
    def text(self) -> str:
        return _text(self.content)


class Metadata(WireModel):
    user_id: str | None = None


class ThinkingConfig(WireModel):
    type: str
    budget_tokens: int | None = None

    @field_validator("type")
    @classmethod
    def _disabled_only(cls, value: str) -> str:
        if value != "disabled":
            raise ValueError("extended thinking is not supported by this model")
        return value


class _Conversation(JobRequest):
    """What both /v1/messages and /v1/messages/count_tokens turn into a prompt."""

    sampling_names: ClassVar[dict[str, str]] = {"stop": "stop_sequences"}

    model: ModelName
    # Anthropic's own rule: the system prompt, a field of its own here, is no conversation.
    messages: list[MessageParam] = Field(min_length=1)
    system: list[TextBlockParam] | None = None
    thinking: ThinkingConfig | None = None
    tools: list[ToolParam] | None = None
    tool_choice: ToolChoiceParam | None = None

    _shorthand = field_validator("system", mode="before")(_blocks)

    @model_validator(mode="after")
    def _prefill_has_no_trailing_space(self) -> "_Conversation":
        last = self.messages[-1]
        if last.role == "assistant" and last.text != last.text.rstrip():
            raise ValueError("final assistant content cannot end with trailing whitespace")
        return self

    @property
    def system_text(self) -> str:
        return _text(self.system or [])  # an empty system prompt is none

    def chat_messages(self) -> list[ChatMessage]:
        return [message for message, _ in self._turns()]

    def _turns(self) -> list[tuple[ChatMessage, str]]:
        """The job's messages, each with the parameter it came from.

        A user turn's tool results become tool messages (before its text, if any); an
        assistant turn's tool_use blocks become its tool calls.
        """
        system = self.system_text
        turns = [(ChatMessage(role="system", content=system), "system")] if system else []
        names: dict[str, str] = {}  # tool_use id -> the tool it called
        for i, m in enumerate(self.messages):
            param = f"messages.{i}.content"
            if m.role == "assistant":
                calls = [
                    ToolCall(id=b.id, name=b.name, arguments=b.input)
                    for b in m.content
                    if isinstance(b, ToolUseBlockParam)
                ]
                names.update((c.id, c.name) for c in calls)
                turns.append(
                    (ChatMessage(role="assistant", content=m.text, tool_calls=calls), param)
                )
                continue
            results = [b for b in m.content if isinstance(b, ToolResultBlockParam)]
            for result in results:
                tool = ChatMessage(
                    role="tool",
                    content=result.text,
                    tool_call_id=result.tool_use_id,
                    name=names.get(result.tool_use_id),
                )
                turns.append((tool, param))
            if m.text or not results:
                turns.append((ChatMessage(role="user", content=m.text), param))
        return turns

    def message_param(self, index: int) -> str:
        turns = self._turns()
        return turns[index][1] if index < len(turns) else super().message_param(index)

    def _tools(self) -> list[Tool]:
        return [
            self.tool(i, t.name, t.description, t.input_schema)
            for i, t in enumerate(self.tools or [])
        ]

    def tool_param(self, index: int, field: str) -> str:
        return f"tools.{index}.{'input_schema' if field == 'parameters' else field}"

    def _tool_choice(self) -> ToolChoice:
        match self.tool_choice:
            case ToolChoiceAny():
                return "required"
            case ToolChoiceTool(name=name):
                return NamedToolChoice(name=name)
            case ToolChoiceNone():
                return "none"
        return "auto"

    def _job(
        self, sampling: SamplingParams, stream: bool, deadline: float, request_id: str | None
    ) -> GenerationJob:
        choice = self.tool_choice
        job = GenerationJob(
            model=self.model,
            messages=self.chat_messages(),
            # A final assistant message is a prefill: the reply continues its text.
            continue_final_message=self.messages[-1].role == "assistant",
            sampling=sampling,
            stream=stream,
            flavour=Flavour.ANTHROPIC,
            deadline=deadline,
            request_id=request_id,
            tools=self._tools(),
            tool_choice=self._tool_choice(),
            parallel_tool_calls=not getattr(choice, "disable_parallel_tool_use", None),
        )
        # Anthropic's structured output is a forced tool: its grammar is the only format.
        return constrain(job, None, tools_param="tools", format_param="tool_choice")


class CountTokensRequest(_Conversation):
    def build_job(self, deadline: float, request_id: str | None) -> GenerationJob:
        """The job this conversation would be: counted, never enqueued."""
        return self._job(SamplingParams(), False, deadline, request_id)


class MessagesRequest(_Conversation):
    max_tokens: int
    stop_sequences: list[str] | None = None
    # Anthropic documents 0-1, narrower than the job's 0-2: a client written for Anthropic
    # expects its own range to be enforced.
    temperature: float = Field(default=1.0, le=1.0)
    top_p: float | None = None
    top_k: int | None = None
    metadata: Metadata | None = None
    stream: bool = False

    def build_job(self, deadline: float, request_id: str | None) -> GenerationJob:
        sampling = SamplingParams(
            max_tokens=self.max_tokens,
            temperature=self.temperature,
            top_p=self.top_p if self.top_p is not None else 1.0,
            top_k=self.top_k or 0,
            stop=list(self.stop_sequences or []),
        )
        return self._job(sampling, self.stream, deadline, request_id)


# Responses

StopReason = Literal["end_turn", "max_tokens", "stop_sequence", "tool_use"]


class TextBlock(BaseModel):
    type: Literal["text"] = "text"
    text: str


class ToolUseBlock(BaseModel):
    type: Literal["tool_use"] = "tool_use"
    id: str
    name: str
    input: dict[str, Any]


ContentBlock = TextBlock | ToolUseBlock


class Usage(BaseModel):
    input_tokens: int
    output_tokens: int


class Message(BaseModel):
    id: str
    type: Literal["message"] = "message"
    role: Literal["assistant"] = "assistant"
    model: str
    content: list[ContentBlock]
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
    content_block: ContentBlock


class PingEvent(BaseModel):
    type: Literal["ping"] = "ping"


class TextDelta(BaseModel):
    type: Literal["text_delta"] = "text_delta"
    text: str


class InputJsonDelta(BaseModel):
    type: Literal["input_json_delta"] = "input_json_delta"
    partial_json: str


class ContentBlockDeltaEvent(BaseModel):
    type: Literal["content_block_delta"] = "content_block_delta"
    index: int = 0
    delta: TextDelta | InputJsonDelta


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
