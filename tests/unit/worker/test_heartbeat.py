"""The heartbeat thread keeps a worker alive while its main thread is busy with a job."""

import asyncio
import time

import fakeredis

from shared import keys, registry
from shared.registry import WorkerInfo
from worker.heartbeat import Heartbeat


class Lease:
    def __init__(self) -> None:
        self.renewals = 0

    def renew(self, redis: object, ttl_s: float) -> None:
        self.renewals += 1


def test_beats_while_the_main_thread_is_busy_then_deregisters() -> None:
    server = fakeredis.FakeServer()
    redis = fakeredis.FakeRedis(server=server)
    info = WorkerInfo(
        worker_id="w1", model="m", n_ctx=64, backend="cpu", gguf="x", started_at=0, pid=1
    )
    lease = Lease()
    with Heartbeat(redis, info, interval_s=0.05, ttl_s=0.2, leases=[lease]):
        time.sleep(0.6)  # a long generation, three TTLs long, in the main thread
        alive = asyncio.run(registry.is_alive(fakeredis.FakeAsyncRedis(server=server), "w1"))
        assert alive
        assert lease.renewals >= 5
    assert not redis.exists(keys.worker_info("w1"))
