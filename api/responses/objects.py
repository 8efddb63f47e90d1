"""Responses API objects tokenq answers with: the response, its stream events, conversations,
deletions and errors, shaped as the official SDK's types (`openai.types.responses`,
`openai.types.conversations`) read them.
"""

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from api.responses.items import MessageItem, OutputItem, OutputTextContent
from api.wire import WireLogprob

ResponseStatus = Literal["completed", "failed", "in_progress", "cancelled", "queued", "incomplete"]
# A background response's statuses until its job ends.
UNFINISHED: tuple[ResponseStatus, ...] = ("queued", "in_progress")
# Those whose output a follow-up can continue (a failed or cancelled response has none).
ANSWERED: tuple[ResponseStatus, ...] = ("completed", "incomplete")


class InputTokensDetails(BaseModel):
    cached_tokens: int = 0
    cache_write_tokens: int = 0


class OutputTokensDetails(BaseModel):
    reasoning_tokens: int = 0


class ResponseUsage(BaseModel):
    input_tokens: int
    input_tokens_details: InputTokensDetails = Field(default_factory=InputTokensDetails)
    output_tokens: int
    output_tokens_details: OutputTokensDetails = Field(default_factory=OutputTokensDetails)
    total_tokens: int


class IncompleteDetails(BaseModel):
    reason: Literal["max_output_tokens"]


class ResponseError(BaseModel):
    code: str
    message: str


class TextFormat(BaseModel):
    type: Literal["text"] = "text"


class JsonObjectFormat(BaseModel):
    type: Literal["json_object"] = "json_object"


class JsonSchemaFormat(BaseModel):
    """Structured output by a JSON schema (a grammar constrains the output)."""

    model_config = ConfigDict(serialize_by_alias=True, validate_by_name=True)

    type: Literal["json_schema"] = "json_schema"
    name: str
    json_schema: dict[str, Any] = Field(alias="schema")
    description: str | None = None
    strict: bool | None = None


OutputFormat = Annotated[
    TextFormat | JsonObjectFormat | JsonSchemaFormat, Field(discriminator="type")
]


class TextConfig(BaseModel):
    format: OutputFormat = Field(default_factory=TextFormat)
    verbosity: Literal["low", "medium", "high"] = "medium"


class Reasoning(BaseModel):
    effort: None = None
    summary: None = None


class ConversationRef(BaseModel):
    id: str


class FunctionToolObject(BaseModel):
    """A function tool of the request, as the response repeats it."""

    type: Literal["function"] = "function"
    name: str
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None


class FunctionChoiceObject(BaseModel):
    type: Literal["function"] = "function"
    name: str


class ResponseObject(BaseModel):
    """A response, with the request's parameters echoed as OpenAI echoes them."""

    id: str
    object: Literal["response"] = "response"
    created_at: int
    status: ResponseStatus
    completed_at: int | None = None
    error: ResponseError | None = None
    incomplete_details: IncompleteDetails | None = None
    model: str
    output: list[OutputItem]
    usage: ResponseUsage | None = None
    instructions: str | None = None
    max_output_tokens: int | None = None
    temperature: float
    top_p: float
    metadata: dict[str, str] = Field(default_factory=dict)
    previous_response_id: str | None = None
    conversation: ConversationRef | None = None
    store: bool
    background: bool = False
    parallel_tool_calls: bool = True
    tool_choice: Literal["auto", "none", "required"] | FunctionChoiceObject = "auto"
    tools: list[FunctionToolObject] = Field(default_factory=list)
    text: TextConfig = Field(default_factory=TextConfig)
    reasoning: Reasoning = Field(default_factory=Reasoning)
    truncation: Literal["disabled", "auto"] = "disabled"
    top_logprobs: int = 0
    service_tier: Literal["default"] = "default"
    user: str | None = None
    safety_identifier: str | None = None
    prompt_cache_key: str | None = None

    @property
    def output_text(self) -> str:
        return "".join(item.text for item in self.output if isinstance(item, MessageItem))


class InputTokens(BaseModel):
    """What `POST /v1/responses/input_tokens` answers: the prompt's size."""

    object: Literal["response.input_tokens"] = "response.input_tokens"
    input_tokens: int


class DeletedResponse(BaseModel):
    id: str
    object: Literal["response.deleted"] = "response.deleted"
    deleted: Literal[True] = True


class Conversation(BaseModel):
    id: str
    object: Literal["conversation"] = "conversation"
    created_at: int
    metadata: dict[str, str] = Field(default_factory=dict)


class DeletedConversation(BaseModel):
    id: str
    object: Literal["conversation.deleted"] = "conversation.deleted"
    deleted: Literal[True] = True


# Stream events. Each carries its place in the stream (`sequence_number`, from 0).


class ResponseEvent(BaseModel):
    """response.created / in_progress / completed / incomplete / failed: the whole response."""

    type: Literal[
        "response.created",
        "response.in_progress",
        "response.completed",
        "response.incomplete",
        "response.failed",
    ]
    sequence_number: int
    response: ResponseObject


class OutputItemEvent(BaseModel):
    type: Literal["response.output_item.added", "response.output_item.done"]
    sequence_number: int
    output_index: int = 0
    item: OutputItem


class ContentPartEvent(BaseModel):
    type: Literal["response.content_part.added", "response.content_part.done"]
    sequence_number: int
    item_id: str
    output_index: int = 0
    content_index: int = 0
    part: OutputTextContent


class TextDeltaEvent(BaseModel):
    type: Literal["response.output_text.delta"] = "response.output_text.delta"
    sequence_number: int
    item_id: str
    output_index: int = 0
    content_index: int = 0
    delta: str
    logprobs: list[WireLogprob] = Field(default_factory=list)  # of the delta's tokens


class TextDoneEvent(BaseModel):
    type: Literal["response.output_text.done"] = "response.output_text.done"
    sequence_number: int
    item_id: str
    output_index: int = 0
    content_index: int = 0
    text: str
    logprobs: list[WireLogprob] = Field(default_factory=list)


class ArgumentsDeltaEvent(BaseModel):
    type: Literal["response.function_call_arguments.delta"] = (
        "response.function_call_arguments.delta"
    )
    sequence_number: int
    item_id: str
    output_index: int
    delta: str


class ArgumentsDoneEvent(BaseModel):
    type: Literal["response.function_call_arguments.done"] = "response.function_call_arguments.done"
    sequence_number: int
    item_id: str
    output_index: int
    name: str
    arguments: str


class ErrorEvent(BaseModel):
    """An error after the stream started (then `response.failed`)."""

    type: Literal["error"] = "error"
    sequence_number: int
    code: str | None
    message: str
    param: str | None


StreamEvent = Annotated[
    ResponseEvent
    | OutputItemEvent
    | ContentPartEvent
    | TextDeltaEvent
    | TextDoneEvent
    | ArgumentsDeltaEvent
    | ArgumentsDoneEvent
    | ErrorEvent,
    Field(discriminator="type"),
]
