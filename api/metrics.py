"""`GET /metrics`: this process's metrics (all processes' under `uvicorn --workers N`) and the
queue state of every known model, read from Redis at scrape time."""

import asyncio

from fastapi import APIRouter, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from redis.exceptions import RedisError

from api.deps import StateDep
from api.models import known_models
from api.state import AppState
from shared import registry
from shared.lifecycle.queue import queue_depth
from shared.metrics import Exposition, ModelQueueSample, QueueCollector

router = APIRouter()


async def queue_samples(state: AppState) -> list[ModelQueueSample]:
    """Waiting and running jobs (the admission records of shared/lifecycle: expired and
    cancelled jobs and dead workers' jobs do not count) and live workers of every known model."""
    models = sorted(await known_models(state))
    window = state.settings.drain_window_s
    queues = await asyncio.gather(*(queue_depth(state.redis, m, window) for m in models))
    workers = await asyncio.gather(*(registry.live_workers(state.redis, m) for m in models))
    return [
        ModelQueueSample(model=model, waiting=q.waiting, running=q.running, live_workers=len(w))
        for model, q, w in zip(models, queues, workers, strict=True)
    ]


@router.get("/metrics", include_in_schema=False)
async def metrics(state: StateDep) -> Response:
    try:
        queues: list[ModelQueueSample] | None = await queue_samples(state)
    except RedisError:
        queues = None
    page = Exposition([state.metrics.exposition(), QueueCollector(queues)])
    return Response(generate_latest(page), media_type=CONTENT_TYPE_LATEST)
