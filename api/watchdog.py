"""One task per API process that reads the records of every job its open streams wait for.

Each `watch_interval_s` it reads all of them in one round trip (and, when some are running,
whether their workers are alive, in a second), and hands every stream its reading through the
stream's inbox. The stream decides what the reading means (api/stream.py): expire a job past
its deadline, reclaim one whose worker died, send a position notice, end one that ended
without its terminal event reaching it.

Each round also cancels the jobs whose clients all went away and did not come back within
their grace (`ApiJobs.reap_detached`): every replica reaps, so a job is cancelled even when
the replica its client left is gone.
"""

import asyncio
import contextlib
import logging

from redis.asyncio import Redis as AsyncRedis
from redis.exceptions import RedisError

from api.inbox import Inbox, Reading
from shared import registry
from shared.lifecycle import JobStatus
from shared.lifecycle.api_side import ApiJobs

log = logging.getLogger(__name__)


class Watchdog:
    """Readings of the watched jobs' records every `interval_s`; `start` it first."""

    def __init__(self, redis: AsyncRedis, jobs: ApiJobs, interval_s: float) -> None:
        self._redis = redis
        self._jobs = jobs
        self._interval_s = interval_s
        self._inboxes: dict[str, Inbox] = {}
        self._task: asyncio.Task[None] | None = None
        self._closing = False

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="watchdog")

    async def aclose(self) -> None:
        self._closing = True  # a cancellation a Redis client swallows still ends the loop
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    def watch(self, job_id: str, inbox: Inbox) -> None:
        """Put a reading of the job's record in `inbox` every interval, from the next on."""
        self._inboxes[job_id] = inbox

    def unwatch(self, job_id: str) -> None:
        self._inboxes.pop(job_id, None)

    @property
    def watched(self) -> int:
        return len(self._inboxes)

    async def _run(self) -> None:
        while not self._closing:
            await asyncio.sleep(self._interval_s)
            try:
                await self.round()
            except Exception:
                log.exception("the watchdog's round failed")
            try:
                for job_id in await self._jobs.reap_detached():
                    log.info("job %s cancelled: no client came back within its grace", job_id)
            except RedisError as exc:  # the round above has said Redis is away
                log.debug("watchdog: could not reap detached jobs: %s", exc)
            except Exception:
                log.exception("the watchdog's reaping failed")

    async def round(self) -> None:
        """Read every watched job's record and hand each stream its reading."""
        watched = dict(self._inboxes)
        if not watched:
            return
        try:
            records = await self._jobs.records(list(watched))
            workers = {
                r.worker for r in records if r and r.status is JobStatus.RUNNING and r.worker
            }
            alive = await registry.alive_among(self._redis, workers)
        except RedisError as exc:
            log.warning("watchdog: redis unavailable: %s", exc)
            for inbox in watched.values():
                inbox.fail(exc)
            return
        for inbox, record in zip(watched.values(), records, strict=True):
            running = record is not None and record.status is JobStatus.RUNNING
            worker = record.worker if running and record is not None else None
            inbox.put_reading(Reading(record, worker is None or worker in alive))
