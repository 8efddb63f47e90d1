"""Which models the API knows, what a request's model name resolves to, and which models a
live worker serves.

A model is known when it is registered (shared/model_registry), named in `TOKENQ_MODELS`, or
was ever served by a worker. A name resolves through the registry: an alias becomes its
model's canonical name, which is what the job, its queue, its record and the OpenAI and
Anthropic responses carry (Ollama's responses echo the name the request gave).
"""

import asyncio
from dataclasses import dataclass

from api.errors import ModelNotFoundError, NoWorkerError
from api.state import AppState
from api.wire import JobRequest
from shared import registry
from shared.job import EmbeddingJob, GenerationJob
from shared.model_facts import ModelFacts
from shared.model_registry import store
from shared.model_registry.entry import GenerationDefaults, ModelEntry
from shared.registry import WorkerInfo


async def resolve(state: AppState, name: str) -> ModelEntry | None:
    """The registered model `name` (canonical or an alias) stands for."""
    return await store.lookup(state.redis, name)


async def canonical(state: AppState, name: str) -> str:
    """`name`'s canonical name if registered, else `name` itself."""
    entry = await resolve(state, name)
    return entry.name if entry is not None else name


async def job_for(
    state: AppState, body: JobRequest, request_id: str | None, deadline: float | None = None
) -> GenerationJob:
    """The request's neutral job, for its model's canonical name, with the model's generation
    defaults in place of the sampling parameters the client left out.

    The one place where every flavour's requests meet the registry.
    """
    job = body.to_job(state.job_deadline() if deadline is None else deadline, request_id)
    entry = await resolve(state, job.model)
    if entry is None:
        return job
    sampling = entry.defaults.apply(job.sampling, _sent(body, entry.defaults))
    return job.model_copy(update={"model": entry.name, "sampling": sampling})


async def embedding_job_for(state: AppState, job: EmbeddingJob) -> EmbeddingJob:
    """The embedding job for its model's canonical name (an alias resolved)."""
    return job.model_copy(update={"model": await canonical(state, job.model)})


def _sent(body: JobRequest, defaults: GenerationDefaults) -> set[str]:
    return {field for field in defaults.given() if body.sent(field)}


async def known_models(state: AppState) -> set[str]:
    """Every model name the API answers 503 rather than 404 for (canonical names)."""
    names = set(state.settings.models) | await registry.registered_models(state.redis)
    return names | {e.name for e in await store.all_entries(state.redis)}


async def require_live_worker(state: AppState, model: str) -> list[WorkerInfo]:
    """The model's live workers; 404 for a model nobody knows, 503 for one with none up.
    `model` is a canonical name (see `job_for`, `canonical`)."""
    workers = await registry.live_workers(state.redis, model)
    if workers:
        return workers
    if model not in await known_models(state):
        raise ModelNotFoundError(f"the model '{model}' does not exist", param="model")
    raise NoWorkerError(f"no worker is serving the model '{model}' right now")


async def live_models(state: AppState) -> dict[str, list[WorkerInfo]]:
    """Every known model that has at least one live worker, with those workers."""
    known = sorted(await known_models(state))
    found = await asyncio.gather(*(registry.live_workers(state.redis, m) for m in known))
    return {model: workers for model, workers in zip(known, found, strict=True) if workers}


@dataclass
class CatalogModel:
    """A model as the catalogs (/v1/models, Ollama's tags/ps/show) describe it: its registry
    entry if registered, and its live workers."""

    name: str
    entry: ModelEntry | None
    workers: list[WorkerInfo]

    @property
    def newest_worker(self) -> WorkerInfo | None:
        described = [w for w in self.workers if w.facts is not None]
        return max(described, key=lambda w: w.started_at) if described else None

    @property
    def facts(self) -> ModelFacts | None:
        """The registered file's facts; for an unregistered model, its newest worker's."""
        if self.entry is not None:
            return self.entry.facts
        worker = self.newest_worker
        return worker.facts if worker is not None else None

    @property
    def created(self) -> float:
        if self.entry is not None:
            return self.entry.added_at
        return min(w.started_at for w in self.workers)


async def catalog(state: AppState) -> list[CatalogModel]:
    """The registered models (served or not) and the served unregistered ones, by name."""
    entries = {e.name: e for e in await store.all_entries(state.redis)}
    live = await live_models(state)
    names = sorted(entries.keys() | live.keys())
    return [CatalogModel(n, entries.get(n), live.get(n, [])) for n in names]


async def catalog_model(state: AppState, name: str) -> CatalogModel:
    """One model of the catalog by any of its names; 404 if neither registered nor served."""
    entry = await resolve(state, name)
    model = entry.name if entry is not None else name
    workers = await registry.live_workers(state.redis, model)
    if entry is None and not workers:
        raise ModelNotFoundError(f"the model '{name}' does not exist", param="model")
    return CatalogModel(model, entry, workers)
