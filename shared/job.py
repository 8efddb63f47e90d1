"""The neutral generation job: every API flavour converts its request into one of these.

Every limit on a request's content lives here, once (as vLLM's `SamplingParams` holds them):
the flavours only map their field names onto these and name their own parameter in the 400
(api/wire.py). The worker validates the same model when it reads a job.
"""

import time
import uuid
from enum import StrEnum
from typing import Annotated, Literal, Self

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, model_validator

# Stop strings are matched against the output after every token (worker/stops.py), at a cost
# that grows with their number and length: 16 of 256 characters cost at worst ~0.15 ms a
# token, against the ~18 ms that 20,000 unbounded ones cost. OpenAI allows 4, vLLM any.
MAX_STOP_STRINGS = 16
MAX_STOP_LENGTH = 256
# llama.cpp takes the seed as a uint32 whose all-ones value means "random", and top_k as an
# int32 (any value beyond the vocabulary is the same as none).
MAX_SEED = 2**32 - 2
MAX_TOP_K = 2**31 - 1
# OpenAI's bounds: top_logprobs 0..20, logit_bias values -100..100; n sequences of one prompt
# take n slots of a worker at once.
MAX_TOP_LOGPROBS = 20
MAX_LOGIT_BIAS = 100.0
MAX_LOGIT_BIAS_ENTRIES = 1024
MAX_N = 8
# An embedding request's inputs: OpenAI's own limit on their number (each must also fit the
# model's context, which the API and the worker check against the served model).
MAX_EMBEDDING_INPUTS = 2048


def _unicode(value: object) -> object:
    # JSON's \ud800 escapes can carry an unpaired surrogate, which is no character: the
    # tokenizer, Redis and every response encode text as UTF-8 and cannot encode one.
    # Checked before the length, whose own refusal of one does not say what is wrong.
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError as exc:
            raise ValueError(
                f"the text is not valid Unicode: an unpaired surrogate at character {exc.start}"
            ) from None
    return value


Text = Annotated[str, BeforeValidator(_unicode)]
"""A string that is valid Unicode text (encodable as UTF-8)."""

NonEmptyText = Annotated[str, Field(min_length=1), BeforeValidator(_unicode)]

ModelName = NonEmptyText
"""A model's name as requests give it."""

StopString = Annotated[
    str, Field(min_length=1, max_length=MAX_STOP_LENGTH), BeforeValidator(_unicode)
]


class Flavour(StrEnum):
    """The API a request came in through."""

    OPENAI = "openai"
    ANTHROPIC = "anthropic"
    OLLAMA = "ollama"
    RESPONSES = "responses"  # OpenAI's Responses API (and its conversations)


class ChatMessage(BaseModel):
    """One turn of a conversation, already reduced to plain text.

    Its text is checked by the job that holds it, so that an error names the message.
    """

    role: Literal["system", "user", "assistant"]
    content: str


def _readable(message: ChatMessage) -> ChatMessage:
    _unicode(message.content)
    return message


class SamplingParams(BaseModel):
    """How to pick tokens. `temperature == 0` means greedy."""

    # A non-finite number (JSON's 1e999 parses as infinity) would not survive the job's JSON.
    model_config = ConfigDict(allow_inf_nan=False)

    max_tokens: int | None = Field(
        default=None, ge=1, description="Tokens to generate at most; None fills the context."
    )
    temperature: float = Field(default=1.0, ge=0.0, le=2.0)
    top_p: float = Field(default=1.0, gt=0.0, le=1.0)
    top_k: int = Field(default=0, ge=0, le=MAX_TOP_K, description="0 disables top-k.")
    min_p: float = Field(default=0.0, ge=0.0, le=1.0)
    repeat_penalty: float = Field(default=1.0, gt=0.0)
    presence_penalty: float = Field(default=0.0, ge=-2.0, le=2.0)
    frequency_penalty: float = Field(default=0.0, ge=-2.0, le=2.0)
    seed: int | None = Field(default=None, ge=0, le=MAX_SEED, description="None: random.")
    stop: list[StopString] = Field(default_factory=list, max_length=MAX_STOP_STRINGS)
    # vLLM's extensions that load generators (`vllm bench serve`, ...) send: end-of-generation
    # tokens are never sampled while they apply, so every token counts.
    ignore_eos: bool = Field(default=False, description="Never end at an end-of-generation token.")
    min_tokens: int = Field(
        default=0, ge=0, description="No end-of-generation token before this many tokens."
    )

    grammar: str | None = Field(
        default=None,
        min_length=1,
        description="A GBNF grammar (root rule `root`) every output must match.",
    )
    logit_bias: dict[
        Annotated[int, Field(ge=0)],
        Annotated[float, Field(ge=-MAX_LOGIT_BIAS, le=MAX_LOGIT_BIAS)],
    ] = Field(
        default_factory=dict,
        max_length=MAX_LOGIT_BIAS_ENTRIES,
        description="Added to the logits of these token ids before sampling.",
    )
    logprobs: int | None = Field(
        default=None,
        ge=0,
        le=MAX_TOP_LOGPROBS,
        description="None: no log-probabilities; k: the sampled token's and the k most likely.",
    )

    def suppress_eog(self, generated: int) -> bool:
        """Whether end-of-generation tokens are banned for the next token."""
        return self.ignore_eos or generated < self.min_tokens


def new_job_id() -> str:
    return uuid.uuid4().hex


class QueuedJob(BaseModel):
    """What every job that goes through a model's queue has: who it is, where it came from,
    when it must start by; its admission, record and worker's run follow from these alone
    (shared/lifecycle)."""

    id: str = Field(default_factory=new_job_id)
    model: ModelName
    flavour: Flavour
    created_at: float = Field(default_factory=time.time)
    deadline: float = Field(description="Unix time after which the job must not start.")
    request_id: str | None = None
    attempt: int = Field(default=1, ge=1, description="Run number; >1 after its worker died.")


class GenerationJob(QueuedJob):
    """One generation request, independent of the API flavour it arrived through.

    Exactly one of `messages` (chat, rendered with the model's own template) and `prompt`
    (raw text, fed as is) is set, and neither is empty: the worker never gets nothing to
    evaluate. With `continue_final_message` the last message is an assistant turn left open:
    the model continues its text (Anthropic's and Ollama's prefill).
    """

    messages: list[Annotated[ChatMessage, AfterValidator(_readable)]] | None = Field(
        default=None, min_length=1
    )
    continue_final_message: bool = False
    prompt: NonEmptyText | None = None
    sampling: SamplingParams = Field(default_factory=SamplingParams)
    stream: bool = False
    n_ctx: int | None = Field(
        default=None,
        ge=1,
        description="A context smaller than the worker's for this job (Ollama's num_ctx).",
    )
    n: int = Field(
        default=1, ge=1, le=MAX_N, description="Sequences generated from the one prompt."
    )

    @model_validator(mode="after")
    def _one_prompt(self) -> Self:
        if (self.messages is None) == (self.prompt is None):
            raise ValueError("a job has exactly one of messages and prompt")
        if self.continue_final_message and (
            not self.messages or self.messages[-1].role != "assistant"
        ):
            raise ValueError("only a final assistant message can be continued")
        return self


TokenIds = Annotated[list[Annotated[int, Field(ge=0)]], Field(min_length=1)]
"""Token ids of the model's vocabulary (checked against it by the worker)."""

EmbeddingInput = NonEmptyText | TokenIds


class EmbeddingJob(QueuedJob):
    """One embedding request: a vector for each input, in order.

    Each input is text (tokenized as a raw prompt is: no chat template) or token ids. Its
    vector is the mean of the model's last hidden states over the input's tokens,
    L2-normalised (worker/embedding.py).
    """

    inputs: list[EmbeddingInput] = Field(min_length=1, max_length=MAX_EMBEDDING_INPUTS)
    truncate: bool = Field(
        default=False,
        description="Cut an input longer than the context to its start instead of refusing it.",
    )
    n_ctx: int | None = Field(
        default=None, ge=1, description="A context smaller than the worker's (Ollama's num_ctx)."
    )
    dimensions: int | None = Field(
        default=None, ge=1, description="The vectors' length the client expects (None: any)."
    )


AnyJob = GenerationJob | EmbeddingJob
"""Every kind of job a worker runs."""
