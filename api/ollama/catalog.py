"""Ollama's model catalog (/api/tags, /api/ps, /api/show): its wire types, filled from the
registry's entries (shared/model_registry) and, for a served unregistered model, the facts its
worker registered about its GGUF file (shared/model_facts.py)."""

import time
from datetime import UTC, datetime, timedelta

from pydantic import BaseModel, model_validator

from api.models import CatalogModel
from api.ollama.protocol import Options, model_name
from api.wire import WireModel
from shared.job import Text
from shared.model_facts import MetadataValue, ModelFacts, parameter_size
from shared.model_registry.files import file_name

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


def details(facts: ModelFacts) -> ModelDetails:
    return ModelDetails(
        format=facts.format,
        family=facts.architecture,
        families=[facts.architecture],
        parameter_size=parameter_size(facts.parameter_count),
        quantization_level=facts.file_type,
    )


def listed(model: CatalogModel) -> ListedModel | None:
    """The model as /api/tags lists it (None: nothing known about its file yet)."""
    facts = model.facts
    if facts is None:
        return None
    return ListedModel(
        name=display_name(model.name),
        model=display_name(model.name),
        modified_at=timestamp(model.entry.added_at if model.entry else facts.modified_at),
        size=facts.size,
        digest=facts.digest,
        details=details(facts),
    )


def running(model: CatalogModel) -> RunningModel | None:
    """The model as /api/ps lists it (None: no live worker has described its file)."""
    worker, facts = model.newest_worker, model.facts
    if worker is None or facts is None:
        return None
    return RunningModel(
        name=display_name(model.name),
        model=display_name(model.name),
        size=facts.size,
        digest=facts.digest,
        details=details(facts),
        expires_at=timestamp(time.time() + _FOREVER.total_seconds()),
        # The file's size where its layers are offloaded, as no per-layer figure is kept.
        size_vram=facts.size if worker.backend != "cpu" else 0,
        context_length=min(w.n_ctx for w in model.workers),
    )


def show(model: CatalogModel) -> ShowResponse | None:
    """The model as /api/show describes it (None: nothing known about its file yet).

    Its parameters are what a request leaving them out gets: the Ollama flavour's defaults,
    overridden by the registered model's generation defaults.
    """
    facts, worker = model.facts, model.newest_worker
    if facts is None:
        return None
    n_ctx = worker.n_ctx if worker else (model.entry.context_length if model.entry else None)
    parameters: dict[str, object] = {"num_ctx": n_ctx} if n_ctx else {}
    parameters |= {name: Options.model_fields[name].default for name in _SHOWN_DEFAULTS}
    stops: list[str] = []
    if model.entry is not None:
        given = model.entry.defaults.given()
        renamed = {"max_tokens": "num_predict"}
        parameters |= {renamed.get(k, k): v for k, v in given.items() if k != "stop"}
        stops = model.entry.defaults.stop or []
    template = facts.chat_template or ""
    source = worker.gguf if worker else file_name(facts.digest)
    lines = [f"# Modelfile of the tokenq model {model.name}", f"FROM {source}"]
    lines.append(f'TEMPLATE """{template}"""')
    lines += [f"PARAMETER {name} {value}" for name, value in parameters.items()]
    lines += [f'PARAMETER stop "{stop}"' for stop in stops]
    if facts.license:
        lines.append(f'LICENSE """{facts.license}"""')
    shown = [f"{name:<30} {value}" for name, value in parameters.items()]
    shown += [f'{"stop":<30} "{stop}"' for stop in stops]
    return ShowResponse(
        license=facts.license or "",
        modelfile="\n".join(lines) + "\n",
        parameters="\n".join(shown),
        template=template,
        details=details(facts),
        model_info=facts.metadata,
        capabilities=["completion"],
        modified_at=timestamp(facts.modified_at),
    )
