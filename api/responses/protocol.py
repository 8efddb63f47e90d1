"""Responses API request bodies (`/v1/responses`, `/v1/conversations`). Unknown fields are
refused: what is not honoured is refused rather than ignored.

Ranges and caps of generation are the neutral job's (shared/job.py); these models only map
their fields. The rules here are OpenAI's own wire rules (metadata, items per call).
"""

from typing import Annotated, Any, ClassVar, Literal, Self

from pydantic import (
    BeforeValidator,
    ConfigDict,
    Field,
    PrivateAttr,
    field_validator,
    model_validator,
)

from api.errors import InvalidRequestError
from api.grammar import JSON_OBJECT_GRAMMAR, constrain, schema_grammar
from api.responses.items import (
    FunctionCallItem,
    FunctionCallOutputItem,
    Item,
    MessageItem,
    Role,
    chat_turns,
)
from api.responses.objects import (
    FunctionChoiceObject,
    FunctionToolObject,
    JsonObjectFormat,
    JsonSchemaFormat,
)
from api.responses.objects import TextConfig as OutputConfig
from api.tool_calls import arguments_object
from api.wire import JobRequest, Loc, WireModel
from shared.job import (
    Flavour,
    GenerationJob,
    ModelName,
    NamedToolChoice,
    SamplingParams,
    Text,
    ToolChoice,
)

# OpenAI's limits on `metadata`: 16 pairs, keys of 64 characters, values of 512.
MAX_METADATA_PAIRS = 16
MAX_METADATA_KEY = 64
MAX_METADATA_VALUE = 512
# Items added to a conversation in one call, at most (OpenAI's limit).
MAX_ITEMS_PER_CALL = 20

# What `include` may ask for: the answer's tokens with their log-probabilities.
LOGPROBS = "message.output_text.logprobs"


def _includable(value: Any) -> Any:
    if isinstance(value, str) and value != LOGPROBS:
        raise ValueError(f"'{value}' cannot be included; only '{LOGPROBS}'")
    return value


Includable = Annotated[str, BeforeValidator(_includable)]

# The item types `input` and conversations take.
ITEM_TYPES = ("message", "function_call", "function_call_output")


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


class InputFunctionCall(WireModel):
    """A function call the model made, given back (an earlier `output` item, or the caller's
    own record of it)."""

    type: Literal["function_call"]
    call_id: Annotated[str, Field(min_length=1)]
    name: str
    arguments: str = Field(description="JSON text of the arguments object.")
    id: str | None = None  # stored under a new id, as messages are
    status: Literal["in_progress", "completed", "incomplete"] | None = None

    @field_validator("arguments")
    @classmethod
    def _an_object(cls, value: str) -> str:
        if arguments_object(value) is None:
            raise ValueError("a function call's arguments must be the JSON text of an object")
        return value

    def item(self) -> FunctionCallItem:
        return FunctionCallItem(call_id=self.call_id, name=self.name, arguments=self.arguments)


class InputFunctionCallOutput(WireModel):
    """What the caller's code returned for a call (`call_id`): text, or text parts."""

    type: Literal["function_call_output"]
    call_id: Annotated[str, Field(min_length=1)]
    output: str | list[Annotated[InputTextPart | UnreadablePart, Field(discriminator="type")]]
    id: str | None = None
    status: Literal["in_progress", "completed", "incomplete"] | None = None

    def item(self) -> FunctionCallOutputItem:
        output = self.output
        if not isinstance(output, str):
            output = "".join(p.text for p in output if isinstance(p, InputTextPart))
        return FunctionCallOutputItem(call_id=self.call_id, output=output)


InputItem = Annotated[
    InputMessage | InputFunctionCall | InputFunctionCallOutput, Field(discriminator="type")
]


def _typed_items(value: Any) -> Any:
    """A string is one user message, and an item without a type a message (the easy form);
    item types tokenq does not take (references, reasoning, built-in tools' calls) are refused
    clearly, before a model would report missing fields."""
    if isinstance(value, str):
        return [{"type": "message", "role": "user", "content": value}]
    if not isinstance(value, list):
        return value
    items = []
    for index, item in enumerate(value):
        if isinstance(item, dict):
            kind = item.get("type", "message")
            if kind not in ITEM_TYPES:
                raise ValueError(
                    f"item {index}: items of type '{kind}' are not supported; only messages, "
                    "function calls and function call outputs"
                )
            item = {**item, "type": kind}
        items.append(item)
    return items


InputItems = Annotated[list[InputItem], BeforeValidator(_typed_items)]


class FunctionToolSpec(WireModel):
    """A function tool (Responses' flat form). `strict` or not, a forced call's arguments
    follow the schema (a grammar constrains them); under `auto` they are not checked."""

    type: Literal["function"]
    name: str
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None

    def echoed(self) -> FunctionToolObject:
        return FunctionToolObject(
            name=self.name,
            description=self.description,
            parameters=self.parameters,
            strict=self.strict,
        )


def _function_tools_only(value: Any) -> Any:
    if isinstance(value, list):
        for index, tool in enumerate(value):
            kind = tool.get("type") if isinstance(tool, dict) else None
            if kind is not None and kind != "function":
                raise ValueError(
                    f"tool {index}: built-in tools ('{kind}') are not supported; only "
                    "function tools"
                )
    return value


class FunctionChoice(WireModel):
    type: Literal["function"]
    name: str


def _function_choice_only(value: Any) -> Any:
    if isinstance(value, dict) and value.get("type") != "function":
        raise ValueError(
            "only 'auto', 'none', 'required' or {\"type\": \"function\", \"name\": ...} can be "
            "chosen: there are no built-in tools"
        )
    return value


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

    # Kept as sent (a background request is stored with its job, and read back).
    model_config = ConfigDict(serialize_by_alias=True)

    type: Literal["json_schema"]
    name: str
    json_schema: dict[str, Any] = Field(alias="schema")
    description: str | None = None
    strict: bool | None = None


class TextConfig(WireModel):
    format: (
        Annotated[
            PlainTextFormat | JsonObjectTextFormat | JsonSchemaTextFormat,
            Field(discriminator="type"),
        ]
        | None
    ) = None
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


class PromptFields(WireModel):
    """What shapes a response's prompt: the fields `POST /v1/responses` and
    `POST /v1/responses/input_tokens` share."""

    model: ModelName
    input: InputItems | None = None
    instructions: Text | None = None
    previous_response_id: str | None = None
    conversation: str | ConversationRef | None = None
    text: TextConfig | None = None
    tools: Annotated[list[FunctionToolSpec], BeforeValidator(_function_tools_only)] | None = None
    tool_choice: (
        Annotated[
            Literal["auto", "none", "required"] | FunctionChoice,
            BeforeValidator(_function_choice_only),
        ]
        | None
    ) = None
    parallel_tool_calls: bool | None = None
    truncation: Literal["disabled", "auto"] | None = None
    reasoning: None = None

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


class CountInputTokensRequest(PromptFields):
    """`POST /v1/responses/input_tokens`: a response's input, counted as its prompt would be
    (`model` is required here: its vocabulary counts)."""

    def as_response(self) -> "CreateResponseRequest":
        """The response request whose prompt this is."""
        return CreateResponseRequest.model_validate(
            self.model_dump(exclude_unset=True, by_alias=True)
        )


class CreateResponseRequest(PromptFields, JobRequest):
    """`POST /v1/responses`. With `previous_response_id` or `conversation`, the stored turns
    come first in the prompt (`with_history`); `instructions` are never carried over."""

    sampling_names: ClassVar[dict[str, str]] = {
        "max_tokens": "max_output_tokens",
        "logprobs": "top_logprobs",
    }

    max_output_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    store: bool = True
    metadata: Metadata = None
    top_logprobs: int | None = None
    background: bool | None = None
    include: list[Includable] | None = None
    # Identifiers and caching hints with nothing to act on here.
    user: str | None = None
    safety_identifier: str | None = None
    prompt_cache_key: str | None = None

    _history: list[Item] = PrivateAttr(default_factory=list)
    # Stored turns and input items left out of the prompt, from the first (truncation).
    _skipped: int = PrivateAttr(default=0)
    # The parameter of the text of each of the job's messages.
    _message_params: list[str] = PrivateAttr(default_factory=list)

    _check_metadata = field_validator("metadata")(_metadata)

    @property
    def logprobs_asked(self) -> int | None:
        """How many most likely tokens each answer token comes with, when its log-probability
        is asked for (`include`); None when it is not."""
        if LOGPROBS not in (self.include or []):
            return None
        return self.top_logprobs or 0

    @model_validator(mode="after")
    def _asks_make_sense(self) -> Self:
        if self.top_logprobs and self.logprobs_asked is None:
            raise ValueError(f"top_logprobs needs include: ['{LOGPROBS}']")
        if self.background and not self.store:
            raise ValueError("a background response is stored: background needs store: true")
        return self

    def input_items(self) -> list[Item]:
        """This request's input as stored items (instructions are not an item)."""
        return [item.item() for item in self.input or []]

    def with_history(self, history: list[Item]) -> Self:
        """This request continuing the stored turns of its previous response or conversation."""
        self._history = list(history)
        return self

    @property
    def droppable(self) -> int:
        """How many of its stored turns and input items truncation may leave out: all but
        the last."""
        return max(len(self._history) + len(self.input or []) - 1, 0)

    def skipping(self, count: int) -> Self:
        """This request with its first `count` stored turns and input items left out of the
        prompt (`truncation: "auto"`), and the outputs of calls that are then left out."""
        self._skipped = count
        return self

    def build_job(self, deadline: float, request_id: str | None) -> GenerationJob:
        system: list[Item] = (
            [MessageItem.of_text("system", self.instructions)] if self.instructions else []
        )
        conversation = [*self._history, *self.input_items()]
        start = _kept_from(conversation, self._skipped)
        items = [*system, *conversation[start:]]
        if not items:
            raise InvalidRequestError(
                "there is nothing to answer: no input, instructions or stored turns",
                param="input",
            )

        def param_of(index: int, field: str = "call_id") -> str:  # as if nothing was left out
            return self._item_param(index if index < len(system) else index + start, field)

        turns = chat_turns(items, param_of)
        self._message_params = [param_of(i, _text_field(items[i])) for i, _ in turns]
        job = GenerationJob(
            model=self.model,
            messages=[message for _, message in turns],
            sampling=SamplingParams(
                logprobs=self.logprobs_asked,
                max_tokens=self.max_output_tokens,
                temperature=1.0 if self.temperature is None else self.temperature,
                top_p=1.0 if self.top_p is None else self.top_p,
            ),
            stream=self.stream,
            flavour=Flavour.RESPONSES,
            deadline=deadline,
            request_id=request_id,
            tools=[
                self.tool(i, t.name, t.description, t.parameters)
                for i, t in enumerate(self.tools or [])
            ],
            tool_choice=self._tool_choice(),
            parallel_tool_calls=self.parallel_tool_calls is not False,
        )
        grammar = self.text.grammar() if self.text is not None else None
        return constrain(job, grammar, tools_param="tools", format_param="text.format")

    def param(self, loc: Loc) -> str | None:
        if loc == ("messages",):
            return "input"
        return super().param(loc)

    def _tool_choice(self) -> ToolChoice:
        if isinstance(self.tool_choice, FunctionChoice):
            return NamedToolChoice(name=self.tool_choice.name)
        return self.tool_choice or "auto"

    def echoed_tool_choice(self) -> Literal["auto", "none", "required"] | FunctionChoiceObject:
        """`tool_choice` as the response object repeats it."""
        if isinstance(self.tool_choice, FunctionChoice):
            return FunctionChoiceObject(name=self.tool_choice.name)
        return self.tool_choice or "auto"

    def message_param(self, index: int) -> str:
        return self._message_params[index]

    def _item_param(self, index: int, field: str = "call_id") -> str:
        """The parameter of a field of the item at `index` of instructions, stored turns and
        input: the stored turns are blamed as a whole, by what names them."""
        index -= 1 if self.instructions else 0
        if index < 0:
            return "instructions"
        if index < len(self._history):
            return "previous_response_id" if self.previous_response_id else "conversation"
        return f"input.{index - len(self._history)}.{field}"


def _kept_from(items: list[Item], skipped: int) -> int:
    """Where the prompt starts when the first `skipped` items are left out: after them and
    after the call outputs that follow them, whose calls are gone."""
    start = skipped
    while start < len(items) - 1 and isinstance(items[start], FunctionCallOutputItem):
        start += 1
    return start


def _text_field(item: Item) -> str:
    """The field that holds an item's text."""
    return "output" if isinstance(item, FunctionCallOutputItem) else "content"


class CreateConversationRequest(WireModel):
    items: Annotated[InputItems, Field(max_length=MAX_ITEMS_PER_CALL)] | None = None
    metadata: Metadata = None

    _check_metadata = field_validator("metadata")(_metadata)


class UpdateConversationRequest(WireModel):
    metadata: Metadata

    _check_metadata = field_validator("metadata")(_metadata)


class CreateItemsRequest(WireModel):
    items: Annotated[InputItems, Field(min_length=1, max_length=MAX_ITEMS_PER_CALL)]
