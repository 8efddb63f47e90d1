"""Which workers are alive for which model.

A worker writes its `WorkerInfo` under a key that expires after `heartbeat_ttl_s` and scores
its id in the model's index with the time that lapse happens; a heartbeat renews both. Readers
keep only ids whose score is still in the future, so a SIGKILLed worker drops out within the
TTL without anyone cleaning up after it.
"""

import time
from collections.abc import Collection
from typing import cast

from pydantic import BaseModel, Field
from redis import Redis
from redis.asyncio import Redis as AsyncRedis

from shared import keys
from shared.model_facts import ModelFacts


class WorkerInfo(BaseModel):
    worker_id: str
    model: str
    n_ctx: int
    backend: str  # "cpu" or "cuda"
    gguf: str
    started_at: float
    pid: int
    slots: int = Field(default=1, description="Sequences it decodes at once (a job's n at most).")
    facts: ModelFacts | None = Field(
        default=None, description="The served file (size, digest, GGUF metadata)."
    )
    embedding_dims: int | None = Field(
        default=None, description="The length of its embedding vectors; None: it cannot embed."
    )


def heartbeat(redis: Redis, info: WorkerInfo, ttl_s: float) -> None:
    """Register or renew a worker; call at least once per `ttl_s`."""
    lapse = time.time() + ttl_s
    pipe = redis.pipeline(transaction=True)
    pipe.set(keys.worker_info(info.worker_id), info.model_dump_json(), px=int(ttl_s * 1000))
    pipe.zadd(keys.workers_index(info.model), {info.worker_id: lapse})
    pipe.sadd(keys.known_models(), info.model)
    pipe.execute()


def deregister(redis: Redis, info: WorkerInfo) -> None:
    pipe = redis.pipeline(transaction=True)
    pipe.delete(keys.worker_info(info.worker_id))
    pipe.zrem(keys.workers_index(info.model), info.worker_id)
    pipe.execute()


async def live_workers(redis: AsyncRedis, model: str) -> list[WorkerInfo]:
    """The workers of `model` whose heartbeat has not lapsed."""
    index = keys.workers_index(model)
    now = time.time()
    await redis.zremrangebyscore(index, "-inf", now)
    ids = cast(list[bytes], await redis.zrangebyscore(index, now, "+inf"))
    if not ids:
        return []
    raw = await redis.mget([keys.worker_info(_text(i)) for i in ids])
    return [WorkerInfo.model_validate_json(r) for r in raw if r is not None]


def live_workers_now(redis: Redis, model: str) -> list[WorkerInfo]:
    """`live_workers` for synchronous callers (the `tokenq up` supervisor), read-only."""
    ids = cast(list[bytes], redis.zrangebyscore(keys.workers_index(model), time.time(), "+inf"))
    if not ids:
        return []
    raw = cast(list[bytes | None], redis.mget([keys.worker_info(_text(i)) for i in ids]))
    return [WorkerInfo.model_validate_json(r) for r in raw if r is not None]


async def is_alive(redis: AsyncRedis, worker_id: str) -> bool:
    """Whether this worker's heartbeat has not lapsed."""
    return bool(await redis.exists(keys.worker_info(worker_id)))


async def alive_among(redis: AsyncRedis, worker_ids: Collection[str]) -> set[str]:
    """Those of these workers whose heartbeat has not lapsed, asked in one round trip."""
    ids = list(worker_ids)
    if not ids:
        return set()
    pipe = redis.pipeline(transaction=False)
    for worker_id in ids:
        pipe.exists(keys.worker_info(worker_id))
    found = await pipe.execute()
    return {worker_id for worker_id, n in zip(ids, found, strict=True) if n}


async def registered_models(redis: AsyncRedis) -> set[str]:
    """Every model a worker has ever registered, live or not."""
    return {_text(m) for m in await redis.smembers(keys.known_models())}


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
