"""Which models the API knows and which of them a live worker serves."""

from api.errors import ModelNotFoundError, NoWorkerError
from api.state import AppState
from shared import registry
from shared.registry import WorkerInfo


async def require_live_worker(state: AppState, model: str) -> list[WorkerInfo]:
    """The model's live workers; 404 for a model nobody knows, 503 for one with none up."""
    workers = await registry.live_workers(state.redis, model)
    if workers:
        return workers
    known = set(state.settings.models) | await registry.registered_models(state.redis)
    if model not in known:
        raise ModelNotFoundError(f"the model '{model}' does not exist", param="model")
    raise NoWorkerError(f"no worker is serving the model '{model}' right now")


async def live_models(state: AppState) -> dict[str, list[WorkerInfo]]:
    """Every known model that has at least one live worker, with those workers."""
    known = set(state.settings.models) | await registry.registered_models(state.redis)
    found = {m: await registry.live_workers(state.redis, m) for m in sorted(known)}
    return {model: workers for model, workers in found.items() if workers}
