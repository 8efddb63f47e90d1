"""What every flavour's request models share: strict parsing, and turning a request into the
neutral job with the job's own limits blamed on the flavour's parameter.

Request models only declare their wire types and map their fields onto the neutral job
(shared/job.py), which holds every range and cap. When the job refuses a value, the 400 names
the parameter as the flavour's client wrote it: `stop_sequences.3`, `options.repeat_penalty`.
"""

from abc import abstractmethod
from typing import Any, ClassVar, Self

from pydantic import (
    BaseModel,
    ConfigDict,
    SerializerFunctionWrapHandler,
    ValidationError,
    model_serializer,
)
from pydantic_core import ErrorDetails

from api.errors import InvalidRequestError
from shared.events import TokenLogprob, TopLogprob
from shared.job import GenerationJob, SamplingParams, Tool

# A neutral error's location: field names and list indices, as pydantic gives them.
Loc = tuple[int | str, ...]

# Where a neutral model that flavours build on their own sits in a job: its errors are
# located relative to itself.
_PLACE: dict[str, Loc] = {SamplingParams.__name__: ("sampling",)}

# A request that breaks many rules is told about the first few.
_MAX_PROBLEMS = 3


class WireModel(BaseModel):
    """Base of every request body model.

    Unknown fields are refused: what is not honoured is refused rather than ignored. Strict:
    JSON's types are not coerced ("4", 4.0 and true are no `max_tokens`); an integer is still
    a valid float, as JSON does not tell them apart.
    """

    model_config = ConfigDict(extra="forbid", strict=True)


class JobRequest(WireModel):
    """A request body that becomes a `GenerationJob`."""

    # The flavour's name for each sampling field whose name differs from the neutral one.
    sampling_names: ClassVar[dict[str, str]] = {}

    @abstractmethod
    def build_job(self, deadline: float, request_id: str | None) -> GenerationJob:
        """Map this request's fields onto the neutral job; the job checks the values."""

    def to_job(self, deadline: float, request_id: str | None = None) -> GenerationJob:
        """The neutral job; 400 naming this flavour's parameter for a value the job refuses."""
        try:
            return self.build_job(deadline, request_id)
        except ValidationError as exc:
            raise self._invalid(exc) from None

    def tool(self, index: int, name: str, description: str | None, parameters: Any) -> Tool:
        """The neutral tool of this request's tool `index`; 400 naming its parameter."""
        fields: dict[str, Any] = {"name": name, "description": description or ""}
        if parameters is not None:
            fields["parameters"] = parameters
        try:
            return Tool(**fields)
        except ValidationError as exc:
            raise self._invalid(exc, ("tools", index)) from None

    def tool_param(self, index: int, field: str) -> str:
        """This flavour's parameter for a neutral `Tool` field of its tool `index`."""
        return f"tools.{index}.{field}"

    def sampling_param(self, field: str) -> str:
        """This flavour's parameter for a neutral `SamplingParams` field."""
        return self.sampling_names.get(field, field)

    def sent(self, field: str) -> bool:
        """Whether the client gave a value (not null) for a neutral `SamplingParams` field,
        under this flavour's parameter for it (a nested one like `options.top_k` included)."""
        node: BaseModel = self
        *parents, leaf = self.sampling_param(field).split(".")
        for name in parents:
            child = getattr(node, name, None) if name in node.model_fields_set else None
            if not isinstance(child, BaseModel):
                return False
            node = child
        return leaf in node.model_fields_set and getattr(node, leaf, None) is not None

    def message_param(self, index: int) -> str:
        """This flavour's parameter for the text of the job's message at `index`."""
        return f"messages.{index}.content"

    def param(self, loc: Loc) -> str | None:
        """This flavour's parameter for a neutral job's field."""
        match loc:
            case ("sampling", str(field), *rest):
                return ".".join([self.sampling_param(field), *map(str, rest)])
            case ("messages", int(index), *_):
                return self.message_param(index)
            case ("tools", int(index), str(field), *_):
                return self.tool_param(index, field)
            case ():
                return None
        return ".".join(map(str, loc))

    def _invalid(self, exc: ValidationError, place: Loc = ()) -> InvalidRequestError:
        problems: list[tuple[str | None, str]] = []
        for error in exc.errors(include_url=False)[:_MAX_PROBLEMS]:
            param = self.param((*(place or _PLACE.get(exc.title, ())), *error["loc"]))
            problems.append((param, _message(error)))
        message = "; ".join(f"{p}: {m}" if p else m for p, m in problems)
        return InvalidRequestError(message, param=problems[0][0])


def _message(error: ErrorDetails) -> str:
    return str(error["msg"]).removeprefix("Value error, ")


class WireLogprob(TopLogprob):
    """A generated token's log-probability as OpenAI's chat, the Responses API and Ollama
    write it: `token`, `logprob`, `bytes`, and its step's most likely tokens as
    `top_logprobs` (the neutral `TokenLogprob` calls them `top`)."""

    top_logprobs: list[TopLogprob]

    @classmethod
    def of(cls, entry: TokenLogprob) -> Self:
        return cls(**entry.model_dump(exclude={"top"}), top_logprobs=entry.top)

    @classmethod
    def all_of(cls, entries: list[TokenLogprob] | None) -> list[Self]:
        return [cls.of(entry) for entry in entries or []]


class ToolCallsWhenMade(BaseModel):
    """Base of a reply message whose `tool_calls` key is sent only when calls were made, as
    OpenAI and Ollama send it (subclasses declare `tool_calls: list[...] | None = None`)."""

    @model_serializer(mode="wrap")
    def _calls_when_made(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        dumped: dict[str, Any] = handler(self)
        if getattr(self, "tool_calls", None) is None:
            dumped.pop("tool_calls", None)
        return dumped
