"""A job's events: published on its channel for the streams listening now, and appended to
its log for those that come later (a resumed stream, a retried request).

Each event is appended before it is published, so a stream that subscribed and then read the
log has every event in one or the other (an event in both is recognised by its position). The
log expires `events_retention_s` after its last event. A job's log holds its token events at
the positions of their `index` (0, 1, ...), then its terminal event; any event after a
terminal one is never read.
"""

from collections.abc import Iterable
from typing import Protocol

from redis.asyncio import Redis as AsyncRedis

from shared import keys


class _Commands(Protocol):
    """The commands a sync or async pipeline queues (their replies come with `execute`)."""

    def rpush(self, name: str, *values: str) -> object: ...

    def expire(self, name: str, time: int) -> object: ...

    def publish(self, channel: str, message: str) -> object: ...


def append_and_publish(
    pipe: _Commands, events: Iterable[tuple[str, str]], retention_s: int
) -> None:
    """Queue on `pipe`, for each (job id, event JSON) in order: append it, publish it; then
    renew each job's log once."""
    jobs: dict[str, None] = {}
    for job_id, payload in events:
        pipe.rpush(keys.events_log(job_id), payload)
        pipe.publish(keys.events_channel(job_id), payload)
        jobs[job_id] = None
    for job_id in jobs:
        pipe.expire(keys.events_log(job_id), retention_s)


async def read_log(redis: AsyncRedis, job_id: str, start: int) -> list[bytes]:
    """The job's logged events from position `start` on (empty: none yet, or expired)."""
    raw = await redis.lrange(keys.events_log(job_id), start, -1)
    return [item.encode() if isinstance(item, str) else item for item in raw]
