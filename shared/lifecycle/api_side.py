"""The API's view of job records: read one, expire it, cancel it, find its queue position."""

import time
from collections.abc import Sequence

from redis.asyncio import Redis as AsyncRedis

from shared import keys
from shared.eventlog import append_and_publish
from shared.events import ErrorCode, ErrorEvent
from shared.lifecycle.record import JobRecord, JobStatus
from shared.lifecycle.scripts import ApiScripts


class ApiJobs:
    def __init__(self, redis: AsyncRedis, record_ttl_s: int, events_retention_s: int = 600) -> None:
        self._redis = redis
        self._ttl = record_ttl_s
        self._retention_s = events_retention_s
        self._scripts = ApiScripts(redis)

    async def record(self, job_id: str) -> JobRecord | None:
        return JobRecord.from_hash(job_id, await self._redis.hgetall(keys.job_record(job_id)))

    async def records(self, job_ids: Sequence[str]) -> list[JobRecord | None]:
        """The records of many jobs, in order, read in one round trip."""
        pipe = self._redis.pipeline(transaction=False)
        for job_id in job_ids:
            pipe.hgetall(keys.job_record(job_id))
        raw = await pipe.execute()
        return [JobRecord.from_hash(i, fields) for i, fields in zip(job_ids, raw, strict=True)]

    async def expire(self, record: JobRecord) -> JobStatus | None:
        """Expire the job if it is still queued past its deadline; its status afterwards."""
        return await self._scripts.expire(record, time.time(), self._ttl)

    async def cancel(self, job_id: str) -> JobStatus | None:
        """Cancel a queued or running job; the status it had (None: no such job).

        Its listeners get a terminal `cancelled` error event; a running job's worker stops at
        its next check and publishes nothing more.
        """
        raw = await self._redis.hget(keys.job_record(job_id), "model")
        if raw is None:
            return None
        model = raw.decode() if isinstance(raw, bytes) else raw
        before = await self._scripts.cancel(job_id, model, time.time(), self._ttl)
        if before in (JobStatus.QUEUED, JobStatus.RUNNING):
            event = ErrorEvent(code=ErrorCode.CANCELLED, message="the job was cancelled")
            pipe = self._redis.pipeline(transaction=False)
            append_and_publish(pipe, [(job_id, event.model_dump_json())], self._retention_s)
            await pipe.execute()
        return before

    async def position(self, record: JobRecord) -> int | None:
        """How many waiting jobs are ahead of this one in its model's queue."""
        ahead = await self._scripts.position(record, time.time())
        return ahead if ahead >= 0 else None

    async def attach(self, job_id: str) -> None:
        """One more client listens to the job (on any replica): it is not cancelled for want
        of one."""
        await self._scripts.attach(job_id, self._ttl)

    async def detach(self, job_id: str, grace_s: float) -> None:
        """A client stopped listening before the job ended. When it was the last, the job is
        cancelled after `grace_s` unless a client attaches meanwhile (`reap_detached`); at
        once with no grace."""
        left = await self._scripts.detach(job_id, time.time() + grace_s)
        if left == 0 and grace_s <= 0 and await self._redis.zrem(keys.detached_jobs(), job_id):
            await self.cancel(job_id)

    async def reap_detached(self) -> list[str]:
        """Cancel the jobs whose grace without a listener is over; their ids. Each is taken
        by one replica (the one whose ZREM removed it)."""
        due = await self._redis.zrangebyscore(keys.detached_jobs(), "-inf", time.time())
        reaped = []
        for raw in due:
            job_id = raw.decode() if isinstance(raw, bytes) else str(raw)
            if await self._redis.zrem(keys.detached_jobs(), job_id):
                await self.cancel(job_id)
                reaped.append(job_id)
        return reaped
