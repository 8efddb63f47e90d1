"""A model's queue as admission and monitoring see it: waiting, running, recent drain.

Beside the records, each model has sets: `waiting` (RQ job ids scored by deadline, so an
expired id stops counting by itself), `running` (job ids scored by the worker's lease) and
`finished` (recent finish times: the drain rate).
"""

import math
import time
from dataclasses import dataclass
from typing import cast

from redis.asyncio import Redis as AsyncRedis

from shared import keys


@dataclass(frozen=True)
class QueueDepth:
    """A model's queue at one moment; `queue_depth` reads it."""

    waiting: int
    running: int
    finished: int  # attempts finished within the last `window_s`
    window_s: float

    @property
    def drain_rate(self) -> float:
        """Jobs finished per second, recently."""
        return self.finished / self.window_s

    def retry_after_s(self, max_s: int) -> int:
        """Seconds until the waiting jobs have drained at the recent finish rate."""
        if self.drain_rate <= 0:
            return max_s
        return max(1, min(max_s, math.ceil(max(self.waiting, 1) / self.drain_rate)))


async def queue_depth(redis: AsyncRedis, model: str, window_s: float) -> QueueDepth:
    """Waiting and running jobs of `model` and its recent drain, in one round trip.

    Expired and cancelled jobs do not count as waiting; jobs of dead workers stop counting as
    running once their lease lapses.
    """
    now = time.time()
    pipe = redis.pipeline(transaction=False)
    pipe.zcount(keys.waiting_jobs(model), now, "+inf")
    pipe.zcount(keys.running_jobs(model), now, "+inf")
    pipe.zcount(keys.finished_jobs(model), now - window_s, "+inf")
    waiting, running, finished = cast(list[int], await pipe.execute())
    return QueueDepth(waiting, running, finished, window_s)
