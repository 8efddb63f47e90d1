"""OpenAI wire types. Requests forbid unknown fields: what is not honoured is refused.

Ranges and caps are the neutral job's (shared/job.py); these models only map the fields.
"""

import time
from typing import Annotated, Any, ClassVar, Literal, Self, cast

from pydantic import (
    BaseModel,
    Field,
    ValidationError,
    field_validator,
    model_serializer,
    model_validator,
)

from api.errors import InvalidRequestError
from api.grammar import JSON_OBJECT_GRAMMAR, constrain, schema_grammar
from api.tool_calls import arguments_object
from api.wire import JobRequest, ToolCallsWhenMade, WireLogprob, WireModel
from shared.job import (
    ChatMessage,
    EmbeddingInput,
    EmbeddingJob,
    Flavour,
    GenerationJob,
    ModelName,
    NamedToolChoice,
    SamplingParams,
    ToolCall,
    ToolChoice,
)


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


class FunctionCall(WireModel):
    name: str
    arguments: str = Field(description="JSON text of the arguments object.")


class AssistantToolCall(WireModel):
    id: str
    type: Literal["function"]
    function: FunctionCall


class AssistantMessage(WireModel):
    role: Literal["assistant"]
    content: str | list[TextPart] | None = None
    name: str | None = None
    tool_calls: list[AssistantToolCall] | None = None
    refusal: None = None  # a message of an earlier response given back as it came


class ToolMessage(WireModel):
    role: Literal["tool"]
    content: str | list[TextPart]
    tool_call_id: str


Message = Annotated[
    SystemMessage | UserMessage | AssistantMessage | ToolMessage, Field(discriminator="role")
]


class FunctionDefinition(WireModel):
    name: str
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None  # arguments always follow the schema when a call is forced


class FunctionTool(WireModel):
    type: Literal["function"]
    function: FunctionDefinition


class FunctionName(WireModel):
    name: str


class NamedFunctionChoice(WireModel):
    type: Literal["function"]
    function: FunctionName


class TextFormat(WireModel):
    type: Literal["text"]


class JsonObjectFormat(WireModel):
    type: Literal["json_object"]


class JsonSchemaSpec(WireModel):
    name: str
    description: str | None = None
    json_schema: dict[str, Any] = Field(alias="schema")
    strict: bool | None = None  # the output always follows the schema (a grammar)


class JsonSchemaFormat(WireModel):
    type: Literal["json_schema"]
    json_schema: JsonSchemaSpec


ResponseFormat = Annotated[
    TextFormat | JsonObjectFormat | JsonSchemaFormat, Field(discriminator="type")
]


def _output_grammar(response_format: ResponseFormat | None) -> str | None:
    match response_format:
        case JsonObjectFormat():
            return JSON_OBJECT_GRAMMAR
        case JsonSchemaFormat(json_schema=spec):
            return schema_grammar(spec.json_schema, "response_format.json_schema.schema")
    return None


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
    response_format: ResponseFormat | None = None

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
    tools: list[FunctionTool] | None = None
    tool_choice: Literal["none", "auto", "required"] | NamedFunctionChoice | None = None
    parallel_tool_calls: bool | None = None

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
        job = GenerationJob(
            model=self.model,
            messages=self._chat_messages(),
            sampling=self._sampling(
                self.max_tokens
                if self.max_completion_tokens is None
                else self.max_completion_tokens
            ),
            deadline=deadline,
            request_id=request_id,
            tools=[
                self.tool(i, t.function.name, t.function.description, t.function.parameters)
                for i, t in enumerate(self.tools or [])
            ],
            tool_choice=self._tool_choice(),
            parallel_tool_calls=self.parallel_tool_calls is not False,
            **self.job_fields(),
        )
        return constrain(
            job,
            _output_grammar(self.response_format),
            tools_param="tools",
            format_param="response_format",
        )

    def tool_param(self, index: int, field: str) -> str:
        return f"tools.{index}.function.{field}"

    def _tool_choice(self) -> ToolChoice:
        if isinstance(self.tool_choice, NamedFunctionChoice):
            return NamedToolChoice(name=self.tool_choice.function.name)
        # OpenAI's default: "auto" with tools, "none" without.
        return self.tool_choice or "auto"

    def _chat_messages(self) -> list[ChatMessage]:
        names: dict[str, str] = {}  # tool call id -> the tool it called
        messages: list[ChatMessage] = []
        for i, m in enumerate(self.messages):
            match m:
                case ToolMessage():
                    messages.append(
                        ChatMessage(
                            role="tool",
                            content=_text(m.content),
                            tool_call_id=m.tool_call_id,
                            name=names.get(m.tool_call_id),
                        )
                    )
                case AssistantMessage():
                    calls = [
                        _call(c, f"messages.{i}.tool_calls.{j}")
                        for j, c in enumerate(m.tool_calls or [])
                    ]
                    names.update((c.id, c.name) for c in calls)
                    messages.append(
                        ChatMessage(role="assistant", content=_text(m.content), tool_calls=calls)
                    )
                case _:
                    role = "system" if m.role == "developer" else m.role
                    messages.append(ChatMessage(role=role, content=_text(m.content)))
        return messages


def _call(call: AssistantToolCall, param: str) -> ToolCall:
    arguments = arguments_object(call.function.arguments)
    if arguments is None:
        raise InvalidRequestError(
            "a tool call's arguments must be the JSON text of an object",
            param=f"{param}.function.arguments",
        )
    return ToolCall(id=call.id, name=call.function.name, arguments=arguments)


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
        job = GenerationJob(
            model=self.model,
            prompt=self.prompt if isinstance(self.prompt, str) else self.prompt[0],
            sampling=self._sampling(self.max_tokens),
            deadline=deadline,
            request_id=request_id,
            **self.job_fields(),
        )
        return constrain(
            job,
            _output_grammar(self.response_format),
            tools_param="tools",
            format_param="response_format",
        )


# Responses


class UsageInfo(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


FinishReason = Literal["stop", "length", "tool_calls"]


class ResponseFunction(BaseModel):
    name: str
    arguments: str


class ResponseToolCall(BaseModel):
    id: str
    type: Literal["function"] = "function"
    function: ResponseFunction


class ResponseMessage(ToolCallsWhenMade):
    role: Literal["assistant"] = "assistant"
    content: str | None
    tool_calls: list[ResponseToolCall] | None = None


class ChoiceLogprobs(BaseModel):
    """Chat's `choices[].logprobs`."""

    content: list[WireLogprob] | None
    refusal: list[WireLogprob] | None = None


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


class FunctionDelta(BaseModel):
    name: str | None = None
    arguments: str


class ToolCallDelta(BaseModel):
    """A call's first chunk has its id, type and name; later ones add argument text."""

    index: int
    id: str | None = None
    type: Literal["function"] | None = None
    function: FunctionDelta


class Delta(BaseModel):
    role: Literal["assistant"] | None = None
    content: str | None = None
    tool_calls: list[ToolCallDelta] | None = None

    @model_serializer
    def _present_fields(self) -> dict[str, Any]:
        # OpenAI's deltas carry only the fields that changed.
        present: dict[str, Any] = {
            k: v for k, v in (("role", self.role), ("content", self.content)) if v is not None
        }
        if self.tool_calls is not None:
            present["tool_calls"] = [t.model_dump(exclude_none=True) for t in self.tool_calls]
        return present


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


# Embeddings (POST /v1/embeddings)

EmbeddingInputs = str | list[str] | list[int] | list[list[int]]


class EmbeddingRequest(WireModel):
    model: ModelName
    input: EmbeddingInputs
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: int | None = None
    user: str | None = None

    def to_job(self, deadline: float, request_id: str | None = None) -> EmbeddingJob:
        """The neutral job; 400 naming `input` (or `input.N`) for what the job refuses."""
        given = self.input
        if isinstance(given, list) and given and isinstance(given[0], int):
            inputs: list[EmbeddingInput] = [given]  # one input, as token ids
        else:
            inputs = [given] if isinstance(given, str) else cast(list[EmbeddingInput], given)
        try:
            return EmbeddingJob(
                model=self.model,
                inputs=inputs,
                dimensions=self.dimensions,
                flavour=Flavour.OPENAI,
                deadline=deadline,
                request_id=request_id,
            )
        except ValidationError as exc:
            error = exc.errors(include_url=False)[0]
            param: str | None
            match error["loc"]:
                case ("inputs", int(index), *_) if isinstance(given, list) and len(inputs) > 1:
                    param = f"input.{index}"
                case ("inputs", *_):
                    param = "input"
                case (str(field), *_):
                    param = field
                case _:
                    param = None
            message = str(error["msg"]).removeprefix("Value error, ")
            raise InvalidRequestError(f"{param}: {message}", param=param) from None


class EmbeddingData(BaseModel):
    object: Literal["embedding"] = "embedding"
    index: int
    embedding: list[float] | str  # str: base64 of little-endian float32


class EmbeddingUsage(BaseModel):
    prompt_tokens: int
    total_tokens: int


class EmbeddingList(BaseModel):
    object: Literal["list"] = "list"
    data: list[EmbeddingData]
    model: str
    usage: EmbeddingUsage


# vLLM's tokenizer endpoints (POST /tokenize, /detokenize)


class TokenizeRequest(WireModel):
    """vLLM's: a raw `prompt`, or chat `messages` rendered with the model's template."""

    model: ModelName
    prompt: str | None = None
    messages: list[Message] | None = None
    add_generation_prompt: bool = True
    add_special_tokens: bool = True

    def to_job(self, deadline: float) -> GenerationJob:
        """The generation job whose prompt this is: counted exactly as a request's would be."""
        if (self.prompt is None) == (self.messages is None):
            raise InvalidRequestError("give exactly one of prompt and messages", param="prompt")
        if self.messages is not None and not self.add_generation_prompt:
            raise InvalidRequestError(
                "only add_generation_prompt=true is supported (as every chat request renders)",
                param="add_generation_prompt",
            )
        if not self.add_special_tokens:
            raise InvalidRequestError(
                "only add_special_tokens=true is supported (as every request is tokenized)",
                param="add_special_tokens",
            )
        request = ChatCompletionRequest(model=self.model, messages=self.messages or [])
        if self.messages is not None:
            return request.to_job(deadline)
        return CompletionRequest(model=self.model, prompt=self.prompt or "").to_job(deadline)


class TokenizeResponse(BaseModel):
    count: int
    max_model_len: int
    tokens: list[int]


class DetokenizeRequest(WireModel):
    model: ModelName
    tokens: list[Annotated[int, Field(ge=0)]]


class DetokenizeResponse(BaseModel):
    prompt: str
