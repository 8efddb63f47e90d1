"""A registered model: its names, its file's facts, its generation defaults; and the manifest
that exports entries for reproducible deploys."""

import re
import time
from typing import Annotated, Self

from pydantic import BaseModel, Field, model_validator

from shared.job import SamplingParams, StopString
from shared.model_facts import ModelFacts

# A name or alias: what Ollama allows in a model name (name[:tag]), which also keeps names
# usable in Redis keys, URLs (/v1/models/{id}) and file names.
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._\-]*(:[A-Za-z0-9][A-Za-z0-9._\-]*)?$")
MAX_NAME_LENGTH = 128

MANIFEST_VERSION = 1


def _valid_name(value: str) -> str:
    if len(value) > MAX_NAME_LENGTH or not _NAME.match(value):
        raise ValueError(
            f"'{value}' is not a valid model name: letters, digits, '.', '_' and '-', "
            f"optionally one ':tag', at most {MAX_NAME_LENGTH} characters"
        )
    return value


ModelName = Annotated[str, Field(min_length=1)]


class GenerationDefaults(BaseModel):
    """What a request that leaves these out gets (None: the API flavour's own default).

    The values are checked against the neutral job's limits (shared/job.py), once, here.
    """

    max_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    stop: list[StopString] | None = None

    @model_validator(mode="after")
    def _within_job_limits(self) -> Self:
        SamplingParams(**self.given())  # raises the job's own ValidationError
        return self

    def given(self) -> dict[str, object]:
        """The defaults that are set, by neutral sampling field."""
        return self.model_dump(exclude_none=True)

    def apply(self, sampling: SamplingParams, sent: set[str]) -> SamplingParams:
        """`sampling` with these defaults in place of the fields the client did not send."""
        update = {name: value for name, value in self.given().items() if name not in sent}
        return sampling.model_copy(update=update) if update else sampling


class ModelEntry(BaseModel):
    """One registered model. `facts.digest` (sha256) names its file on every host."""

    name: ModelName
    aliases: list[ModelName] = Field(default_factory=list)
    facts: ModelFacts
    defaults: GenerationDefaults = Field(default_factory=GenerationDefaults)
    added_at: float = Field(default_factory=time.time)
    source: str = Field(default="", description="Where the file was added from (informative).")
    parent: str | None = Field(
        default=None, description="The model this one was quantized from, e.g. 'smollm2 Q4_0'."
    )

    @model_validator(mode="after")
    def _names(self) -> Self:
        for name in [self.name, *self.aliases]:
            _valid_name(name)
        if self.name in self.aliases or len(set(self.aliases)) != len(self.aliases):
            raise ValueError("aliases must differ from the name and from each other")
        return self

    @property
    def digest(self) -> str:
        return self.facts.digest

    @property
    def names(self) -> list[str]:
        return [self.name, *self.aliases]

    @property
    def context_length(self) -> int | None:
        value = self.facts.metadata.get(f"{self.facts.architecture}.context_length")
        return value if isinstance(value, int) else None


class Manifest(BaseModel):
    """What `tokenq model export` writes and `tokenq model import` reads."""

    version: int = MANIFEST_VERSION
    models: list[ModelEntry]

    @model_validator(mode="after")
    def _supported(self) -> Self:
        if self.version != MANIFEST_VERSION:
            raise ValueError(f"manifest version {self.version} is not {MANIFEST_VERSION}")
        return self
