"""The Lua scripts that move a job's record, each next to the one typed call that runs it.

Every change is a compare-and-set inside Redis, so when two parties race (a worker starting a
job while its client cancels it, two replicas noticing one dead worker) exactly one wins. A
script's KEYS and ARGV are built only in its wrapper below, in the order its source reads them.
The scripts take `now` from the caller: API and worker hosts share a clock (NTP).
"""

from string import Template
from typing import cast

from redis import Redis
from redis.asyncio import Redis as AsyncRedis

from shared import keys
from shared.job import QueuedJob
from shared.lifecycle.record import JobRecord, JobStatus, rq_job_id


def _lua(source: str) -> str:
    """Status names come from JobStatus (`$RUNNING`), never retyped in Lua."""
    return Template(source).substitute({status.name: status.value for status in JobStatus})


# Worker: take a dequeued attempt. KEYS: record, waiting, running.
# ARGV: job id, rq id, worker id, now, lease until, record ttl.
BEGIN = _lua("""
local status = redis.call('HGET', KEYS[1], 'status')
if not status then return 'missing' end
if status ~= '$QUEUED' or redis.call('HGET', KEYS[1], 'rq_id') ~= ARGV[2] then
  return 'stale'
end
redis.call('ZREM', KEYS[2], ARGV[2])
redis.call('EXPIRE', KEYS[1], ARGV[6])
if tonumber(redis.call('HGET', KEYS[1], 'deadline')) < tonumber(ARGV[4]) then
  redis.call('HSET', KEYS[1], 'status', '$EXPIRED', 'ended_at', ARGV[4],
             'error', 'deadline_exceeded')
  return '$EXPIRED'
end
redis.call('HSET', KEYS[1], 'status', '$RUNNING', 'worker', ARGV[3], 'started_at', ARGV[4],
           'streamed', '0')
redis.call('ZADD', KEYS[3], ARGV[5], ARGV[1])
return '$RUNNING'
""")

# Worker: about to publish the first token; refused once the job is no longer its own.
# KEYS: record. ARGV: worker id.
CLAIM_OUTPUT = _lua("""
if redis.call('HGET', KEYS[1], 'status') == '$RUNNING'
   and redis.call('HGET', KEYS[1], 'worker') == ARGV[1] then
  redis.call('HSET', KEYS[1], 'streamed', '1')
  return 1
end
return 0
""")

# Worker: the run ended (or stopped); 1 when the worker still owned the job and recorded its
# outcome, so it must publish the terminal event. KEYS: record, running, finished.
# ARGV: job id, worker id, now, status, error code or '', drain window start, record ttl,
# finished member.
END = _lua("""
if redis.call('HGET', KEYS[1], 'worker') ~= ARGV[2] then return 0 end
redis.call('ZREM', KEYS[2], ARGV[1])
redis.call('ZADD', KEYS[3], ARGV[3], ARGV[8])
redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', ARGV[6])
redis.call('HSET', KEYS[1], 'ended_at', ARGV[3])
redis.call('EXPIRE', KEYS[1], ARGV[7])
if redis.call('HGET', KEYS[1], 'status') ~= '$RUNNING' then return 0 end
redis.call('HSET', KEYS[1], 'status', ARGV[4], 'error', ARGV[5])
return 1
""")

# Worker: take one of a model's `max_running` run slots, or renew the one it holds.
# KEYS: slots. ARGV: worker id, now, lease until, max running.
ACQUIRE_SLOT = """
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[2])
if redis.call('ZSCORE', KEYS[1], ARGV[1])
   or redis.call('ZCARD', KEYS[1]) < tonumber(ARGV[4]) then
  redis.call('ZADD', KEYS[1], ARGV[3], ARGV[1])
  return 1
end
return 0
"""

# API: a queued job past its deadline never starts. KEYS: record, waiting, RQ queue lists
# (interactive, batch). ARGV: now, record ttl.
EXPIRE = _lua("""
local status = redis.call('HGET', KEYS[1], 'status')
if not status then return 'missing' end
if status ~= '$QUEUED' then return status end
if tonumber(redis.call('HGET', KEYS[1], 'deadline')) > tonumber(ARGV[1]) then
  return '$QUEUED'
end
local rq_id = redis.call('HGET', KEYS[1], 'rq_id')
redis.call('ZREM', KEYS[2], rq_id)
redis.call('LREM', KEYS[3], 0, rq_id)
redis.call('LREM', KEYS[4], 0, rq_id)
redis.call('HSET', KEYS[1], 'status', '$EXPIRED', 'ended_at', ARGV[1],
           'error', 'deadline_exceeded')
redis.call('EXPIRE', KEYS[1], ARGV[2])
return '$EXPIRED'
""")

# API: cancel. A queued job leaves the queue at once; a running one is flagged and its worker
# stops at the next check. Returns the status the job had. KEYS: record, waiting, RQ queue
# lists (interactive, batch). ARGV: now, record ttl.
CANCEL = _lua("""
local status = redis.call('HGET', KEYS[1], 'status')
if not status then return 'missing' end
if status == '$QUEUED' then
  local rq_id = redis.call('HGET', KEYS[1], 'rq_id')
  redis.call('ZREM', KEYS[2], rq_id)
  redis.call('LREM', KEYS[3], 0, rq_id)
  redis.call('LREM', KEYS[4], 0, rq_id)
  redis.call('HSET', KEYS[1], 'ended_at', ARGV[1])
elseif status ~= '$RUNNING' then
  return status
end
redis.call('HSET', KEYS[1], 'status', '$CANCELLED', 'cancel_requested_at', ARGV[1],
           'error', 'cancelled')
redis.call('EXPIRE', KEYS[1], ARGV[2])
return status
""")

# API: how many live waiting jobs are ahead of this attempt: in its own RQ queue, and for a
# batch job all live interactive ones too (workers take those first); -1: not queued.
# KEYS: interactive list, batch list, waiting. ARGV: rq id, now.
POSITION = """
local function live(id)
  local deadline = redis.call('ZSCORE', KEYS[3], id)
  return deadline and tonumber(deadline) > tonumber(ARGV[2])
end
local ahead = 0
for _, id in ipairs(redis.call('LRANGE', KEYS[1], 0, -1)) do
  if id == ARGV[1] then return ahead end
  if live(id) then ahead = ahead + 1 end
end
for _, id in ipairs(redis.call('LRANGE', KEYS[2], 0, -1)) do
  if id == ARGV[1] then return ahead end
  if live(id) then ahead = ahead + 1 end
end
return -1
"""

# Worker: the queue deadline of the oldest batch job still queued for the model (its age
# decides whether it goes before the interactive ones); -1 when there is none.
# KEYS: batch list, waiting.
OLDEST_BATCH = """
local id = redis.call('LINDEX', KEYS[1], 0)
if not id then return -1 end
local deadline = redis.call('ZSCORE', KEYS[2], id)
if not deadline then return -1 end
return tostring(deadline)
"""


# API: a client listens to a job again (a resumed stream, a retried request): one more
# listener, and no longer due to be cancelled. KEYS: listeners, detached. ARGV: job id, ttl.
ATTACH = """
redis.call('INCR', KEYS[1])
redis.call('EXPIRE', KEYS[1], ARGV[2])
return redis.call('ZREM', KEYS[2], ARGV[1])
"""

# API: a client stopped listening before the job ended; with nobody left, the job is due to
# be cancelled at ARGV[2] (unless someone attaches before). Returns the listeners left.
# KEYS: listeners, detached. ARGV: job id, cancel at.
DETACH = """
local left = redis.call('DECR', KEYS[1])
if left > 0 then return left end
redis.call('SET', KEYS[1], 0, 'KEEPTTL')
redis.call('ZADD', KEYS[2], ARGV[2], ARGV[1])
return 0
"""


def status_or_none(raw: bytes | str) -> JobStatus | None:
    """A script's answer as a status (None for 'missing', 'stale')."""
    text = raw.decode() if isinstance(raw, bytes) else raw
    return JobStatus(text) if text in JobStatus.__members__.values() else None


class WorkerScripts:
    """The worker's scripts, on its synchronous client."""

    def __init__(self, redis: Redis) -> None:
        self._begin = redis.register_script(BEGIN)
        self._claim = redis.register_script(CLAIM_OUTPUT)
        self._end = redis.register_script(END)
        self._acquire = redis.register_script(ACQUIRE_SLOT)
        self._oldest_batch = redis.register_script(OLDEST_BATCH)

    def begin(
        self, job: QueuedJob, worker_id: str, now: float, lease_until: float, ttl_s: int
    ) -> str:
        """RUNNING, EXPIRED, or why not ('missing', 'stale')."""
        raw = self._begin(
            keys=[
                keys.job_record(job.id),
                keys.waiting_jobs(job.model),
                keys.running_jobs(job.model),
            ],
            args=[job.id, rq_job_id(job.id, job.attempt), worker_id, now, lease_until, ttl_s],
        )
        return cast(bytes, raw).decode()

    def claim_output(self, job: QueuedJob, worker_id: str) -> bool:
        return bool(self._claim(keys=[keys.job_record(job.id)], args=[worker_id]))

    def end(
        self,
        job: QueuedJob,
        worker_id: str,
        now: float,
        status: JobStatus,
        error: str,
        window_start: float,
        ttl_s: int,
    ) -> bool:
        return bool(
            self._end(
                keys=[
                    keys.job_record(job.id),
                    keys.running_jobs(job.model),
                    keys.finished_jobs(job.model),
                ],
                args=[
                    job.id,
                    worker_id,
                    now,
                    status,
                    error,
                    window_start,
                    ttl_s,
                    rq_job_id(job.id, job.attempt),
                ],
            )
        )

    def acquire_slot(
        self, model: str, worker_id: str, now: float, lease_until: float, max_running: int
    ) -> bool:
        return bool(
            self._acquire(
                keys=[keys.run_slots(model)], args=[worker_id, now, lease_until, max_running]
            )
        )

    def oldest_batch_deadline(self, model: str) -> float | None:
        """The queue deadline of the job at the head of the model's batch queue, if any."""
        raw = self._oldest_batch(
            keys=[keys.rq_queue_key(model, batch=True), keys.waiting_jobs(model)]
        )
        value = float(raw.decode() if isinstance(raw, bytes) else raw)
        return None if value < 0 else value


class ApiScripts:
    """The API's scripts, on its asynchronous client."""

    def __init__(self, redis: AsyncRedis) -> None:
        self._expire = redis.register_script(EXPIRE)
        self._cancel = redis.register_script(CANCEL)
        self._position = redis.register_script(POSITION)
        self._attach = redis.register_script(ATTACH)
        self._detach = redis.register_script(DETACH)

    async def attach(self, job_id: str, ttl_s: int) -> bool:
        """True when the job was due to be cancelled for want of a listener."""
        raw = await self._attach(
            keys=[keys.job_listeners(job_id), keys.detached_jobs()], args=[job_id, ttl_s]
        )
        return bool(raw)

    async def detach(self, job_id: str, cancel_at: float) -> int:
        raw = await self._detach(
            keys=[keys.job_listeners(job_id), keys.detached_jobs()], args=[job_id, cancel_at]
        )
        return int(raw)

    async def expire(self, record: JobRecord, now: float, ttl_s: int) -> JobStatus | None:
        raw = await self._expire(
            keys=[
                keys.job_record(record.id),
                keys.waiting_jobs(record.model),
                keys.rq_queue_key(record.model),
                keys.rq_queue_key(record.model, batch=True),
            ],
            args=[now, ttl_s],
        )
        return status_or_none(raw)

    async def cancel(self, job_id: str, model: str, now: float, ttl_s: int) -> JobStatus | None:
        raw = await self._cancel(
            keys=[
                keys.job_record(job_id),
                keys.waiting_jobs(model),
                keys.rq_queue_key(model),
                keys.rq_queue_key(model, batch=True),
            ],
            args=[now, ttl_s],
        )
        return status_or_none(raw)

    async def position(self, record: JobRecord, now: float) -> int:
        raw = await self._position(
            keys=[
                keys.rq_queue_key(record.model),
                keys.rq_queue_key(record.model, batch=True),
                keys.waiting_jobs(record.model),
            ],
            args=[record.rq_id, now],
        )
        return int(raw)
