"""A chat conversation (model, system prompt, sampling parameters, turns) and where saved ones
are kept: one JSON file per name in the chat directory."""

import json
import re
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from shared.job import SamplingParams

# The request fields `/set` takes, as the OpenAI API (and vLLM's extensions) name them, and the
# neutral job's name where it differs: the job's model holds every limit (shared/job.py).
_NEUTRAL_NAMES = {"repetition_penalty": "repeat_penalty"}
_SAVED_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}")


class ChatParams(BaseModel):
    """Sampling parameters sent with every request; unset ones are left to the server."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    min_p: float | None = None
    max_tokens: int | None = None
    seed: int | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    repetition_penalty: float | None = None
    min_tokens: int | None = None
    ignore_eos: bool | None = None
    stop: list[str] | None = None

    @model_validator(mode="after")
    def _within_limits(self) -> "ChatParams":
        neutral = {_NEUTRAL_NAMES.get(k, k): v for k, v in self.request_fields().items()}
        SamplingParams.model_validate(neutral)  # raises with the job's own limits
        return self

    def request_fields(self) -> dict[str, Any]:
        return self.model_dump(exclude_none=True)

    @classmethod
    def names(cls) -> list[str]:
        return list(cls.model_fields)

    def with_value(self, name: str, value: str | None) -> "ChatParams":
        """A copy with `name` set from its text (`None`: unset); `ChatInputError` if invalid."""
        if name not in ChatParams.model_fields:
            raise ChatInputError(f"unknown parameter '{name}' (known: {', '.join(self.names())})")
        fields = self.request_fields()
        fields.pop(name, None)
        if value is not None:
            fields[name] = _stop_list(value) if name == "stop" else value
        try:
            return ChatParams.model_validate(fields)
        except ValidationError as exc:
            problem = exc.errors()[0]
            raise ChatInputError(f"{name}: {problem['msg']}") from None


class ChatInputError(ValueError):
    """What the person typed cannot be done; shown as one line."""


def _stop_list(value: str) -> list[str] | str:
    """`/set stop` takes one string, or a JSON list of them."""
    if value.startswith("["):
        try:
            parsed = json.loads(value)
        except json.JSONDecodeError:
            return value
        return parsed if isinstance(parsed, list) else value
    return [value]


class Turn(BaseModel):
    role: Literal["user", "assistant"]
    content: str
    model: str | None = None  # the model that wrote an assistant turn


class Conversation(BaseModel):
    """What a saved conversation file holds."""

    version: Literal[1] = 1
    model: str
    system: str | None = None
    params: ChatParams = Field(default_factory=ChatParams)
    turns: list[Turn] = Field(default_factory=list)

    def request(self, user_text: str) -> dict[str, Any]:
        """The chat completion request for the next user turn."""
        messages = [{"role": "system", "content": self.system}] if self.system else []
        messages += [{"role": t.role, "content": t.content} for t in self.turns]
        messages.append({"role": "user", "content": user_text})
        return {"model": self.model, "messages": messages, **self.params.request_fields()}


class ConversationStore:
    """Saved conversations: `<directory>/<name>.json`."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def save(self, name: str, conversation: Conversation) -> Path:
        path = self._path(name)
        path.parent.mkdir(parents=True, exist_ok=True)
        temporary = path.with_suffix(".json.tmp")
        temporary.write_text(conversation.model_dump_json(indent=2), encoding="utf-8")
        temporary.replace(path)  # a crash never leaves half a file under the name
        return path

    def load(self, name: str) -> Conversation:
        path = self._path(name)
        try:
            return Conversation.model_validate_json(path.read_bytes())
        except FileNotFoundError:
            raise ChatInputError(f"no saved conversation '{name}' in {self.directory}") from None
        except ValidationError:
            raise ChatInputError(f"{path} is not a conversation tokenq chat saved") from None

    def names(self) -> list[str]:
        if not self.directory.is_dir():
            return []
        return sorted(p.stem for p in self.directory.glob("*.json"))

    def _path(self, name: str) -> Path:
        if not _SAVED_NAME.fullmatch(name):
            raise ChatInputError(
                "a conversation name is 1-64 letters, digits, '_', '-' or '.' (not first)"
            )
        return self.directory / f"{name}.json"
