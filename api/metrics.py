"""`GET /metrics`: this process's metrics (all processes' under `uvicorn --workers N`) and the
queue state of every known model, read from Redis at scrape time."""

import time

from fastapi import APIRouter, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from redis.exceptions import RedisError

from api.deps import StateDep
from api.state import AppState
from shared import keys, registry
from shared.metrics import Exposition, ModelQueue, QueueState

router = APIRouter()


async def queue_state(state: AppState) -> list[ModelQueue]:
    """Waiting jobs (RQ queue length), running jobs (RQ's started registry, leases not yet
    lapsed) and live workers (heartbeat registry) of every known model, in one round trip."""
    models = sorted(set(state.settings.models) | await registry.registered_models(state.redis))
    now = time.time()
    pipe = state.redis.pipeline(transaction=False)
    for model in models:
        pipe.llen(keys.rq_queue_key(model))
        pipe.zcount(keys.rq_started_key(model), now, "+inf")
        pipe.zcount(keys.workers_index(model), now, "+inf")
    counts = await pipe.execute()
    return [
        ModelQueue(model=model, waiting=w, running=r, live_workers=n)
        for model, (w, r, n) in zip(models, _triples(counts), strict=True)
    ]


@router.get("/metrics", include_in_schema=False)
async def metrics(state: StateDep) -> Response:
    try:
        queues: list[ModelQueue] | None = await queue_state(state)
    except RedisError:
        queues = None
    page = Exposition([state.metrics.exposition(), QueueState(queues)])
    return Response(generate_latest(page), media_type=CONTENT_TYPE_LATEST)


def _triples(counts: list[int]) -> list[tuple[int, int, int]]:
    return [(counts[i], counts[i + 1], counts[i + 2]) for i in range(0, len(counts), 3)]
