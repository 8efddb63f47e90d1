"""Ollama's model catalog (/api/tags, /api/ps, /api/show): its wire types, filled from the
facts each worker registers about the GGUF file it serves (shared/model_facts.py)."""

import time
from datetime import UTC, datetime, timedelta
from typing import NamedTuple

from pydantic import BaseModel, model_validator

from api.ollama.protocol import Options, model_name
from api.wire import WireModel
from shared.job import Text
from shared.model_facts import MetadataValue, ModelFacts, parameter_size
from shared.registry import WorkerInfo

# A worker keeps its model loaded until it stops. Ollama says "never unloads" (keep_alive < 0)
# with an expiry at the far end of its duration type, 2**63 ns from now; so does this.
_FOREVER = timedelta(microseconds=2**63 // 1000)

# The sampling defaults the Ollama flavour applies, shown as the model's parameters.
_SHOWN_DEFAULTS = ("temperature", "top_k", "top_p", "repeat_penalty")


def timestamp(unix: float) -> str:
    """RFC 3339 in UTC, as Ollama's timestamps."""
    return datetime.fromtimestamp(unix, UTC).isoformat().replace("+00:00", "Z")


def display_name(model: str) -> str:
    """The Ollama name of a tokenq model: `smollm2` is listed as `smollm2:latest`."""
    return model if ":" in model else f"{model}:latest"


class ModelDetails(BaseModel):
    parent_model: str = ""
    format: str
    family: str
    families: list[str]
    parameter_size: str
    quantization_level: str


class ListedModel(BaseModel):
    name: str
    model: str
    modified_at: str
    size: int
    digest: str
    details: ModelDetails


class TagsResponse(BaseModel):
    models: list[ListedModel]


class RunningModel(BaseModel):
    name: str
    model: str
    size: int
    digest: str
    details: ModelDetails
    expires_at: str
    size_vram: int
    context_length: int


class PsResponse(BaseModel):
    models: list[RunningModel]


class ShowRequest(WireModel):
    model: Text | None = None
    name: Text | None = None  # what older clients send instead of `model`
    verbose: bool = False

    @model_validator(mode="after")
    def _check(self) -> "ShowRequest":
        if not (self.model or self.name):
            raise ValueError("model is required")
        if self.verbose:
            raise ValueError("verbose is not supported: token tables are not kept by the API")
        return self

    @property
    def requested(self) -> str:
        return self.model or self.name or ""

    @property
    def target(self) -> str:
        return model_name(self.requested)


class ShowResponse(BaseModel):
    license: str
    modelfile: str
    parameters: str
    template: str
    details: ModelDetails
    model_info: dict[str, MetadataValue]
    capabilities: list[str]
    modified_at: str


class VersionResponse(BaseModel):
    version: str


class Served(NamedTuple):
    """A model, the newest of its live workers that described its file, and that file."""

    model: str
    worker: WorkerInfo
    facts: ModelFacts


def served(model: str, workers: list[WorkerInfo]) -> Served | None:
    described = [Served(model, w, w.facts) for w in workers if w.facts is not None]
    return max(described, key=lambda s: s.worker.started_at) if described else None


def served_models(models: dict[str, list[WorkerInfo]]) -> list[Served]:
    return [s for model, workers in models.items() if (s := served(model, workers))]


def details(facts: ModelFacts) -> ModelDetails:
    return ModelDetails(
        format=facts.format,
        family=facts.architecture,
        families=[facts.architecture],
        parameter_size=parameter_size(facts.parameter_count),
        quantization_level=facts.file_type,
    )


def listed(served: Served) -> ListedModel:
    facts = served.facts
    return ListedModel(
        name=display_name(served.model),
        model=display_name(served.model),
        modified_at=timestamp(facts.modified_at),
        size=facts.size,
        digest=facts.digest,
        details=details(facts),
    )


def running(served: Served) -> RunningModel:
    worker, facts = served.worker, served.facts
    return RunningModel(
        name=display_name(served.model),
        model=display_name(served.model),
        size=facts.size,
        digest=facts.digest,
        details=details(facts),
        expires_at=timestamp(time.time() + _FOREVER.total_seconds()),
        # The file's size where its layers are offloaded, as no per-layer figure is kept.
        size_vram=facts.size if worker.backend != "cpu" else 0,
        context_length=worker.n_ctx,
    )


def show(served: Served) -> ShowResponse:
    worker, facts = served.worker, served.facts
    parameters = {"num_ctx": worker.n_ctx} | {
        name: Options.model_fields[name].default for name in _SHOWN_DEFAULTS
    }
    template = facts.chat_template or ""
    modelfile = [
        f"# Modelfile of the tokenq worker {worker.worker_id}",
        f"FROM {worker.gguf}",
        f'TEMPLATE """{template}"""',
        *(f"PARAMETER {name} {value}" for name, value in parameters.items()),
    ]
    if facts.license:
        modelfile.append(f'LICENSE """{facts.license}"""')
    return ShowResponse(
        license=facts.license or "",
        modelfile="\n".join(modelfile) + "\n",
        parameters="\n".join(f"{name:<30} {value}" for name, value in parameters.items()),
        template=template,
        details=details(facts),
        model_info=facts.metadata,
        capabilities=["completion"],
        modified_at=timestamp(facts.modified_at),
    )
