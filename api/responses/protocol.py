"""Responses API request bodies (`/v1/responses`, `/v1/conversations`). Unknown fields are
refused: what is not honoured is refused rather than ignored.

Ranges and caps of generation are the neutral job's (shared/job.py); these models only map
their fields. The rules here are OpenAI's own wire rules (metadata, items per call).
"""

from typing import Annotated, Any, ClassVar, Literal, Self

from pydantic import BeforeValidator, Field, PrivateAttr, field_validator, model_validator

from api.grammar import JSON_OBJECT_GRAMMAR, constrain, schema_grammar
from api.responses.items import MessageItem, Role
from api.responses.objects import JsonObjectFormat, JsonSchemaFormat
from api.responses.objects import TextConfig as OutputConfig
from api.wire import JobRequest, Loc, WireModel
from shared.job import Flavour, GenerationJob, ModelName, SamplingParams, Text

# OpenAI's limits on `metadata`: 16 pairs, keys of 64 characters, values of 512.
MAX_METADATA_PAIRS = 16
MAX_METADATA_KEY = 64
MAX_METADATA_VALUE = 512
# Items added to a conversation in one call, at most (OpenAI's limit).
MAX_ITEMS_PER_CALL = 20

# Reasons given in the 400s of what is not honoured.
NO_TOOLS = "tools (function calling and built-in tools) are not supported yet"


class InputTextPart(WireModel):
    type: Literal["input_text"]
    text: Text


class OutputTextPart(WireModel):
    """An earlier answer passed back as input (`response.output` items)."""

    type: Literal["output_text"]
    text: Text
    annotations: list[Any] = Field(default_factory=list)
    logprobs: list[Any] | None = None


class UnreadablePart(WireModel):
    type: Literal["input_image", "input_file", "input_audio", "refusal"]

    @model_validator(mode="before")
    @classmethod
    def _refuse(cls, value: Any) -> Any:
        raise ValueError("only text content is supported: the model reads text only")


ContentPart = Annotated[
    InputTextPart | OutputTextPart | UnreadablePart, Field(discriminator="type")
]


def _as_parts(value: Any) -> Any:
    """Content given as a string is one text part."""
    return [{"type": "input_text", "text": value}] if isinstance(value, str) else value


class InputMessage(WireModel):
    """A message item of `input` (easy or full form; an earlier output message too)."""

    type: Literal["message"] = "message"
    role: Role
    content: Annotated[list[ContentPart], BeforeValidator(_as_parts)]
    id: str | None = None  # of an earlier output item passed back; stored under a new id
    status: Literal["in_progress", "completed", "incomplete"] | None = None
    phase: Literal["commentary", "final_answer"] | None = None  # a label; no effect here

    def item(self) -> MessageItem:
        """The item as stored and listed (always a new id: ids are unique in a conversation)."""
        text = "".join(p.text for p in self.content if not isinstance(p, UnreadablePart))
        return MessageItem.of_text(self.role, text)


def _only_messages(value: Any) -> Any:
    """A string is one user message; a list is refused clearly if it holds item types tokenq
    does not take (tool calls and their outputs, references, reasoning), before the message
    model would report missing fields."""
    if isinstance(value, str):
        return [{"role": "user", "content": value}]
    if isinstance(value, list):
        for index, item in enumerate(value):
            kind = item.get("type", "message") if isinstance(item, dict) else "message"
            if kind != "message":
                raise ValueError(
                    f"item {index}: items of type '{kind}' are not supported; only messages"
                )
    return value


InputItems = Annotated[list[InputMessage], BeforeValidator(_only_messages)]


def _metadata(value: dict[str, str] | None) -> dict[str, str] | None:
    if value is None:
        return None
    if len(value) > MAX_METADATA_PAIRS:
        raise ValueError(f"at most {MAX_METADATA_PAIRS} key-value pairs")
    for key, text in value.items():
        if len(key) > MAX_METADATA_KEY:
            raise ValueError(f"keys are at most {MAX_METADATA_KEY} characters")
        if len(text) > MAX_METADATA_VALUE:
            raise ValueError(f"values are at most {MAX_METADATA_VALUE} characters")
    return value


Metadata = dict[str, Text] | None


class ConversationRef(WireModel):
    id: str


class StreamOptions(WireModel):
    include_obfuscation: bool | None = None  # accepted; no obfuscation field is ever added


class PlainTextFormat(WireModel):
    type: Literal["text"]


class JsonObjectTextFormat(WireModel):
    type: Literal["json_object"]


class JsonSchemaTextFormat(WireModel):
    """`text.format` for structured output: the output is constrained to the schema by a
    grammar (api/grammar.py), so it always parses and validates (`strict` or not)."""

    type: Literal["json_schema"]
    name: str
    json_schema: dict[str, Any] = Field(alias="schema")
    description: str | None = None
    strict: bool | None = None


class TextConfig(WireModel):
    format: Annotated[
        PlainTextFormat | JsonObjectTextFormat | JsonSchemaTextFormat,
        Field(discriminator="type"),
    ] | None = None
    verbosity: Literal["low", "medium", "high"] | None = None  # a hint; no effect here

    def grammar(self) -> str | None:
        """The grammar the output must match, if the format asks for one."""
        match self.format:
            case JsonObjectTextFormat():
                return JSON_OBJECT_GRAMMAR
            case JsonSchemaTextFormat(json_schema=schema):
                return schema_grammar(schema, "text.format.schema")
        return None

    def echoed(self) -> OutputConfig:
        """As the response object repeats it."""
        match self.format:
            case JsonObjectTextFormat():
                return OutputConfig(format=JsonObjectFormat())
            case JsonSchemaTextFormat() as spec:
                echo = JsonSchemaFormat(
                    name=spec.name,
                    json_schema=spec.json_schema,
                    description=spec.description,
                    strict=spec.strict,
                )
                return OutputConfig(format=echo)
        return OutputConfig()


class CreateResponseRequest(JobRequest):
    """`POST /v1/responses`. With `previous_response_id` or `conversation`, the stored turns
    come first in the prompt (`with_history`); `instructions` are never carried over."""

    sampling_names: ClassVar[dict[str, str]] = {"max_tokens": "max_output_tokens"}

    model: ModelName
    input: InputItems | None = None
    instructions: Text | None = None
    max_output_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    store: bool = True
    previous_response_id: str | None = None
    conversation: str | ConversationRef | None = None
    metadata: Metadata = None
    text: TextConfig | None = None
    tools: list[Any] | None = None
    tool_choice: Literal["auto", "none"] | None = None
    parallel_tool_calls: bool | None = None
    truncation: Literal["disabled"] | None = None
    top_logprobs: Literal[0] | None = None
    background: Literal[False] | None = None
    include: list[Any] | None = None
    reasoning: None = None
    # Identifiers and caching hints with nothing to act on here.
    user: str | None = None
    safety_identifier: str | None = None
    prompt_cache_key: str | None = None

    _history: list[MessageItem] = PrivateAttr(default_factory=list)

    _check_metadata = field_validator("metadata")(_metadata)

    @field_validator("tools")
    @classmethod
    def _no_tools(cls, value: list[Any] | None) -> list[Any] | None:
        if value:
            raise ValueError(NO_TOOLS)
        return value

    @field_validator("include")
    @classmethod
    def _nothing_included(cls, value: list[Any] | None) -> list[Any] | None:
        if value:
            raise ValueError("no additional output data can be included")
        return value

    @model_validator(mode="after")
    def _one_kind_of_state(self) -> Self:
        if self.previous_response_id is not None and self.conversation is not None:
            raise ValueError("previous_response_id and conversation cannot be used together")
        return self

    @property
    def conversation_id(self) -> str | None:
        if isinstance(self.conversation, ConversationRef):
            return self.conversation.id
        return self.conversation

    def input_items(self) -> list[MessageItem]:
        """This request's input as stored items (instructions are not an item)."""
        return [message.item() for message in self.input or []]

    def with_history(self, history: list[MessageItem]) -> Self:
        """This request continuing the stored turns of its previous response or conversation."""
        self._history = list(history)
        return self

    def build_job(self, deadline: float, request_id: str | None) -> GenerationJob:
        system = [MessageItem.of_text("system", self.instructions)] if self.instructions else []
        turns = [*system, *self._history, *self.input_items()]
        job = GenerationJob(
            model=self.model,
            messages=[turn.chat_message() for turn in turns] or None,
            sampling=SamplingParams(
                max_tokens=self.max_output_tokens,
                temperature=1.0 if self.temperature is None else self.temperature,
                top_p=1.0 if self.top_p is None else self.top_p,
            ),
            stream=self.stream,
            flavour=Flavour.RESPONSES,
            deadline=deadline,
            request_id=request_id,
        )
        grammar = self.text.grammar() if self.text is not None else None
        return constrain(job, grammar, tools_param="tools", format_param="text.format")

    def param(self, loc: Loc) -> str | None:
        if loc in ((), ("messages",)):  # nothing to answer: no input and no stored turns
            return "input"
        return super().param(loc)

    def message_param(self, index: int) -> str:
        index -= 1 if self.instructions else 0
        if index < 0:
            return "instructions"
        if index < len(self._history):
            return "previous_response_id" if self.previous_response_id else "conversation"
        return f"input.{index - len(self._history)}.content"


class CreateConversationRequest(WireModel):
    items: Annotated[InputItems, Field(max_length=MAX_ITEMS_PER_CALL)] | None = None
    metadata: Metadata = None

    _check_metadata = field_validator("metadata")(_metadata)


class UpdateConversationRequest(WireModel):
    metadata: Metadata

    _check_metadata = field_validator("metadata")(_metadata)


class CreateItemsRequest(WireModel):
    items: Annotated[InputItems, Field(min_length=1, max_length=MAX_ITEMS_PER_CALL)]
