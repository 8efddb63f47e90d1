"""Ollama generation wire types (/api/generate, /api/chat).

Requests forbid unknown fields, and fields Ollama has but tokenq cannot honour are refused
with a 400 naming them unless they are at a value that changes nothing. Sampling defaults are
Ollama's own, so a request without options behaves as it would against Ollama; their ranges
and caps are the neutral job's (shared/job.py).
"""

from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from api.errors import InvalidRequestError
from api.grammar import JSON_OBJECT_GRAMMAR, constrain, schema_grammar
from api.wire import JobRequest, ToolCallsWhenMade, WireLogprob, WireModel
from shared.events import TopLogprob
from shared.job import (
    ChatMessage,
    EmbeddingJob,
    Flavour,
    GenerationJob,
    ModelName,
    NamedToolChoice,
    SamplingParams,
    Tool,
    ToolCall,
    ToolChoice,
)

_REFUSED = {
    "suffix": "fill-in-the-middle (suffix) is not supported",
    "template": "custom templates are not supported: the model's own chat template is used",
    "context": "context token arrays are not supported: send the conversation to /api/chat",
    "images": "image input is not supported: the model reads text only",
    "think": "this model does not support thinking",
    "thinking": "this model does not support thinking",
}

# Options that size or place the model when it is loaded: a worker loads its model once, with
# its own flags, so they cannot change per request.
_LOAD_TIME = frozenset(
    {
        "numa",
        "num_batch",
        "num_gpu",
        "main_gpu",
        "low_vram",
        "f16_kv",
        "logits_all",
        "vocab_only",
        "use_mmap",
        "use_mlock",
        "embedding_only",
        "num_thread",
    }
)

# The repeat-penalty window llama.cpp's sampler uses in the worker (Llama's last_n_tokens_size,
# also Ollama's default): the one value of repeat_last_n that is honoured.
PENALTY_WINDOW = 64


def _refuse_if_set(value: Any, info: ValidationInfo) -> Any:
    if value:
        raise ValueError(_REFUSED[info.field_name or ""])
    return value


def model_name(name: str) -> str:
    """The tokenq model an Ollama name means: `smollm2:latest` is `smollm2`."""
    return name.removesuffix(":latest")


class Options(WireModel):
    """Ollama's `options`, with Ollama's defaults."""

    num_predict: int | None = Field(default=None, description="<= 0: until the context is full.")
    temperature: float = 0.8
    top_k: int = 40
    top_p: float = 0.9
    min_p: float = 0.0
    seed: int | None = Field(default=None, description="Negative: random.")
    stop: list[str] | None = None
    repeat_penalty: float = 1.1
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    num_ctx: int | None = Field(default=None, ge=1, description="At most the worker's context.")
    repeat_last_n: int = PENALTY_WINDOW
    # Accepted without effect. num_keep is only used when Ollama shifts a full context, which
    # tokenq never does (it stops with "length"); Ollama itself ignores penalize_newline.
    num_keep: int | None = None
    penalize_newline: bool | None = None
    # Honoured at the value that turns them off; mirostat_tau/eta only matter with mirostat.
    typical_p: float = 1.0
    tfs_z: float = 1.0
    mirostat: int = 0
    mirostat_tau: float | None = None
    mirostat_eta: float | None = None

    @model_validator(mode="before")
    @classmethod
    def _check_keys(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        if refused := sorted(_LOAD_TIME & data.keys()):
            raise ValueError(
                f"{', '.join(refused)}: set when a worker loads the model (tokenq worker "
                "flags), not per request"
            )
        return {k: v for k, v in data.items() if v is not None}  # null means the default

    @field_validator("repeat_last_n")
    @classmethod
    def _window(cls, value: int) -> int:
        if value != PENALTY_WINDOW:
            raise ValueError(
                f"only the worker's repeat-penalty window, {PENALTY_WINDOW}, is supported"
            )
        return value

    @field_validator("typical_p", "tfs_z")
    @classmethod
    def _off(cls, value: float, info: ValidationInfo) -> float:
        if value != 1.0:
            raise ValueError(f"{info.field_name} sampling is not supported (1.0 turns it off)")
        return value

    @field_validator("mirostat")
    @classmethod
    def _no_mirostat(cls, value: int) -> int:
        if value != 0:
            raise ValueError("mirostat sampling is not supported (0 turns it off)")
        return value

    def sampling(self, logprobs: int | None = None) -> SamplingParams:
        return SamplingParams(
            logprobs=logprobs,
            max_tokens=self.num_predict if self.num_predict and self.num_predict > 0 else None,
            temperature=self.temperature,
            top_p=self.top_p,
            top_k=self.top_k,
            min_p=self.min_p,
            repeat_penalty=self.repeat_penalty,
            presence_penalty=self.presence_penalty,
            frequency_penalty=self.frequency_penalty,
            seed=self.seed if self.seed is not None and self.seed >= 0 else None,
            stop=list(self.stop or []),
        )


class _Request(JobRequest):
    model: ModelName
    stream: bool = True
    format: str | dict[str, Any] | None = None
    options: Options = Field(default_factory=Options)
    keep_alive: float | str | None = Field(
        default=None, description="Accepted; a worker keeps its model loaded until it stops."
    )
    think: bool | str | None = None
    logprobs: bool | None = None
    top_logprobs: int | None = None

    _refused = field_validator("think")(_refuse_if_set)

    @field_validator("format")
    @classmethod
    def _known_format(cls, value: str | dict[str, Any] | None) -> str | dict[str, Any] | None:
        if isinstance(value, str) and value not in ("", "json"):
            raise ValueError("format is 'json' or a JSON schema")
        return value

    def _output_grammar(self) -> str | None:
        if self.format == "json":
            return JSON_OBJECT_GRAMMAR
        if isinstance(self.format, dict):
            return schema_grammar(self.format, "format")
        return None

    @property
    def target(self) -> str:
        """The tokenq model the request is for."""
        return model_name(self.model)

    def sampling_param(self, field: str) -> str:
        if field == "logprobs":
            return "top_logprobs"
        return f"options.{'num_predict' if field == 'max_tokens' else field}"

    @property
    def logprobs_asked(self) -> int | None:
        """The job's `logprobs`: asked by `logprobs` (or a `top_logprobs` above 0)."""
        if self.logprobs or self.top_logprobs:
            return self.top_logprobs or 0
        return None

    def _job(
        self,
        deadline: float,
        request_id: str | None,
        messages: list[ChatMessage] | None = None,
        prompt: str | None = None,
        tools: list[Tool] | None = None,
        tool_choice: ToolChoice = "auto",
    ) -> GenerationJob:
        final = messages[-1] if messages else None
        job = GenerationJob(
            model=self.target,
            messages=messages,
            continue_final_message=final is not None and final.role == "assistant",
            prompt=prompt,
            sampling=self.options.sampling(logprobs=self.logprobs_asked),
            stream=self.stream,
            flavour=Flavour.OLLAMA,
            deadline=deadline,
            request_id=request_id,
            tools=tools or [],
            tool_choice=tool_choice,
        )
        return constrain(job, self._output_grammar(), tools_param="tools", format_param="format")


class GenerateRequest(_Request):
    prompt: str | None = None
    system: str | None = None
    raw: bool = False
    suffix: str | None = None
    template: str | None = None
    context: list[int] | None = None
    images: list[str] | None = None

    _refused_here = field_validator("suffix", "template", "context", "images")(_refuse_if_set)

    @model_validator(mode="after")
    def _raw_has_no_system(self) -> "GenerateRequest":
        if self.raw and self.system:
            raise ValueError("system cannot be applied to a raw prompt (raw skips the template)")
        return self

    def message_param(self, index: int) -> str:
        return "system" if self.system and index == 0 else "prompt"

    def build_job(self, deadline: float, request_id: str | None) -> GenerationJob:
        if self.raw:
            return self._job(deadline, request_id, prompt=self.prompt or "")
        system = [ChatMessage(role="system", content=self.system)] if self.system else []
        user = ChatMessage(role="user", content=self.prompt or "")
        return self._job(deadline, request_id, messages=[*system, user])


class CallFunction(WireModel):
    name: str
    arguments: dict[str, Any]
    index: int | None = None


class CallParam(WireModel):
    """A tool call of an earlier assistant turn."""

    function: CallFunction
    id: str | None = None
    type: Literal["function"] | None = None


class Message(WireModel):
    role: Literal["system", "user", "assistant", "tool"]
    content: str = ""
    images: list[str] | None = None
    tool_calls: list[CallParam] | None = None
    tool_name: str | None = None  # a tool message's tool
    tool_call_id: str | None = None
    thinking: str | None = None

    _refused = field_validator("images", "thinking")(_refuse_if_set)


class FunctionParam(WireModel):
    name: str
    description: str | None = None
    parameters: dict[str, Any] | None = None


class ToolParam(WireModel):
    type: Literal["function"] = "function"
    function: FunctionParam


class FunctionName(WireModel):
    name: str


class NamedChoice(WireModel):
    type: Literal["function"]
    function: FunctionName


class ChatRequest(_Request):
    messages: list[Message] = Field(default_factory=list)
    tools: list[ToolParam] | None = None  # the official client always sends [], which is fine
    # tokenq's extension (Ollama has no tool_choice), with OpenAI's values: a forced call.
    tool_choice: Annotated[
        Literal["auto", "none", "required"] | NamedChoice, Field(union_mode="left_to_right")
    ] = "auto"

    def tool_param(self, index: int, field: str) -> str:
        return f"tools.{index}.function.{field}"

    def build_job(self, deadline: float, request_id: str | None) -> GenerationJob:
        # A final assistant message is continued, as Ollama's templates leave it open.
        messages = [_chat_message(m, i) for i, m in enumerate(self.messages)]
        tools = [
            self.tool(i, t.function.name, t.function.description, t.function.parameters)
            for i, t in enumerate(self.tools or [])
        ]
        choice: ToolChoice = (
            NamedToolChoice(name=self.tool_choice.function.name)
            if isinstance(self.tool_choice, NamedChoice)
            else self.tool_choice
        )
        return self._job(deadline, request_id, messages=messages, tools=tools, tool_choice=choice)


def _chat_message(message: Message, index: int) -> ChatMessage:
    if message.role == "tool":
        return ChatMessage(
            role="tool",
            content=message.content,
            tool_call_id=message.tool_call_id,
            name=message.tool_name,
        )
    calls = [
        ToolCall(id=c.id or f"{index}-{j}", name=c.function.name, arguments=c.function.arguments)
        for j, c in enumerate(message.tool_calls or [])
    ]
    return ChatMessage(role=message.role, content=message.content, tool_calls=calls)


# Responses: one line per token while streaming, then a final line with the statistics.


class ResponseFunction(BaseModel):
    index: int
    name: str
    arguments: dict[str, Any]


class ResponseToolCall(BaseModel):
    function: ResponseFunction


class AssistantMessage(ToolCallsWhenMade):
    role: Literal["assistant"] = "assistant"
    content: str
    tool_calls: list[ResponseToolCall] | None = None


class Logprob(WireLogprob):
    """Ollama leaves `top_logprobs` out when none were asked for."""

    top_logprobs: list[TopLogprob] = Field(default_factory=list, exclude_if=lambda top: not top)


class DoneStats(BaseModel):
    """The final line's fields. Durations are nanoseconds, measured (api/ollama/serving.py)."""

    done: Literal[True] = True
    done_reason: Literal["stop", "length", "load"]
    total_duration: int = 0
    load_duration: int = 0
    prompt_eval_count: int = 0
    prompt_eval_duration: int = 0
    eval_count: int = 0
    eval_duration: int = 0


class _Line(BaseModel):
    model: str = Field(description="The model name as the request gave it.")
    created_at: str
    # Present only when asked for (`logprobs`): the tokens of this line's text.
    logprobs: list[Logprob] | None = Field(default=None, exclude_if=lambda v: v is None)


class _GenerateLine(_Line):
    response: str


class _ChatLine(_Line):
    message: AssistantMessage


class GenerateChunk(_GenerateLine):
    done: Literal[False] = False


class GenerateDone(DoneStats, _GenerateLine):
    pass


class ChatChunk(_ChatLine):
    done: Literal[False] = False


class ChatDone(DoneStats, _ChatLine):
    pass


class ErrorResponse(BaseModel):
    error: str


# Embeddings: POST /api/embed, and the older POST /api/embeddings


class _EmbedBase(WireModel):
    model: ModelName
    # Options of a generation change nothing in an embedding; num_ctx bounds the inputs.
    options: Options = Field(default_factory=Options)
    keep_alive: float | str | None = Field(
        default=None, description="Accepted; a worker keeps its model loaded until it stops."
    )

    @property
    def target(self) -> str:
        return model_name(self.model)

    def _job(
        self, inputs: list[str], truncate: bool, dimensions: int | None, deadline: float,
        request_id: str | None,
    ) -> EmbeddingJob:  # fmt: skip
        try:
            return EmbeddingJob(
                model=self.target,
                inputs=list(inputs),
                truncate=truncate,
                dimensions=dimensions,
                flavour=Flavour.OLLAMA,
                deadline=deadline,
                request_id=request_id,
            )
        except ValidationError as exc:
            error = exc.errors(include_url=False)[0]
            message = str(error["msg"]).removeprefix("Value error, ")
            raise InvalidRequestError(f"input: {message}", param="input") from None


class EmbedRequest(_EmbedBase):
    input: str | list[str]
    truncate: bool = True  # Ollama's default: cut inputs to the context
    dimensions: int | None = None

    @property
    def inputs(self) -> list[str]:
        """The inputs; Ollama skips an empty string given alone (an empty answer)."""
        return [self.input] if isinstance(self.input, str) and self.input else (
            self.input if isinstance(self.input, list) else []
        )  # fmt: skip

    def to_job(self, deadline: float, request_id: str | None = None) -> EmbeddingJob:
        return self._job(self.inputs, self.truncate, self.dimensions, deadline, request_id)


class EmbeddingsRequest(_EmbedBase):
    """The older endpoint: one `prompt`, one `embedding`."""

    prompt: str = ""

    def to_job(self, deadline: float, request_id: str | None = None) -> EmbeddingJob:
        return self._job([self.prompt], True, None, deadline, request_id)


class EmbedResponse(BaseModel):
    model: str
    embeddings: list[list[float]]
    total_duration: int | None = None
    load_duration: int | None = None
    prompt_eval_count: int | None = None


class EmbeddingsResponse(BaseModel):
    embedding: list[float]
