"""Keeps a worker's registration alive from a thread, also while a job runs.

RQ's SimpleWorker runs the job in the main thread and sends no heartbeat of its own meanwhile.
The same beat renews the worker's leases: its running job and its `max_running` slot.
"""

import logging
import threading
from collections.abc import Callable, Sequence
from typing import Protocol

from redis import Redis
from redis.exceptions import RedisError

from shared import registry
from shared.registry import WorkerInfo

log = logging.getLogger(__name__)


class Lease(Protocol):
    def renew(self, redis: Redis, ttl_s: float) -> None: ...


class Heartbeat:
    def __init__(
        self,
        redis: Redis,
        info: WorkerInfo,
        interval_s: float,
        ttl_s: float,
        leases: Sequence[Lease] = (),
        on_beat: Callable[[], None] = lambda: None,
    ) -> None:
        """`on_beat` is called after each heartbeat that reached Redis."""
        self._redis = redis
        self._info = info
        self._interval_s = interval_s
        self._ttl_s = ttl_s
        self._leases = leases
        self._on_beat = on_beat
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._beat, name="heartbeat", daemon=True)

    def __enter__(self) -> "Heartbeat":
        registry.heartbeat(self._redis, self._info, self._ttl_s)
        self._on_beat()
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stopped.set()
        self._thread.join()
        try:
            registry.deregister(self._redis, self._info)
        except RedisError:
            log.warning("could not deregister worker %s", self._info.worker_id)

    def _beat(self) -> None:
        while not self._stopped.wait(self._interval_s):
            try:
                registry.heartbeat(self._redis, self._info, self._ttl_s)
                leases = self._redis.pipeline(transaction=False)  # one round trip for all
                for lease in self._leases:
                    lease.renew(leases, self._ttl_s)
                leases.execute()
            except RedisError as exc:  # Redis may come back; keep trying
                log.warning("heartbeat failed: %s", exc)
            else:
                self._on_beat()
