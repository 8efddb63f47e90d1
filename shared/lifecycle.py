"""A job's life in Redis, next to RQ's own bookkeeping: one record, one atomic step per change.

Each admitted job has a record (`keys.job_record`) whose `status` moves

    queued -> running -> done | failed          (a worker ran it)
    queued -> expired | cancelled               (it never started)
    running -> cancelled                        (the worker notices between tokens)
    running -> queued                           (its worker died before the first token)

Every change is a compare-and-set, so when two parties race (a worker starting a job while
its client cancels it, two replicas noticing one dead worker) exactly one of them wins.
Beside the records, each model has the sets that admission and monitoring read: `waiting`
(RQ job ids scored by deadline, so an expired id stops counting by itself), `running` (job
ids scored by the worker's lease) and `finished` (recent finish times: the drain rate).
"""

import time
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import cast

from pydantic import BaseModel
from redis.asyncio import Redis as AsyncRedis

from shared import keys


class JobStatus(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"
    CANCELLED = "cancelled"
    EXPIRED = "expired"

    @property
    def terminal(self) -> bool:
        return self not in (JobStatus.QUEUED, JobStatus.RUNNING)


class JobRecord(BaseModel):
    """What Redis holds about one job (its record hash), typed."""

    id: str
    model: str
    status: JobStatus
    rq_id: str
    attempt: int
    created_at: float
    deadline: float
    worker: str | None = None
    streamed: bool = False
    started_at: float | None = None
    ended_at: float | None = None
    cancel_requested_at: float | None = None
    error: str | None = None

    @classmethod
    def from_hash(cls, job_id: str, raw: Mapping[bytes | str, bytes | str]) -> "JobRecord | None":
        """From the record hash as HGETALL returns it (None: no such record)."""
        if not raw:
            return None
        fields = {_text(k): _text(v) for k, v in raw.items()}
        fields = {k: v for k, v in fields.items() if v != ""}
        fields["streamed"] = str(fields.get("streamed") == "1")
        return cls.model_validate({**fields, "id": job_id})


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def rq_job_id(job_id: str, attempt: int) -> str:
    """The RQ job id of one attempt at a job; each attempt is a fresh RQ job."""
    return f"{job_id}-{attempt}"


@dataclass(frozen=True)
class QueueState:
    """A model's queue at one moment; `queue_state` reads it."""

    waiting: int
    running: int
    finished: int  # attempts finished within the last `window_s`
    window_s: float

    @property
    def drain_rate(self) -> float:
        """Jobs finished per second, recently."""
        return self.finished / self.window_s


async def queue_state(redis: AsyncRedis, model: str, window_s: float) -> QueueState:
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
    return QueueState(waiting, running, finished, window_s)


# The scripts below take `now` from the caller: API and worker hosts share a clock (NTP).

# Worker: take a dequeued attempt. KEYS: record, waiting, running.
# ARGV: job id, rq id, worker id, now, lease until, record ttl.
BEGIN = """
local status = redis.call('HGET', KEYS[1], 'status')
if not status then return 'missing' end
if status ~= 'queued' or redis.call('HGET', KEYS[1], 'rq_id') ~= ARGV[2] then
  return 'stale'
end
redis.call('ZREM', KEYS[2], ARGV[2])
redis.call('EXPIRE', KEYS[1], ARGV[6])
if tonumber(redis.call('HGET', KEYS[1], 'deadline')) < tonumber(ARGV[4]) then
  redis.call('HSET', KEYS[1], 'status', 'expired', 'ended_at', ARGV[4],
             'error', 'deadline_exceeded')
  return 'expired'
end
redis.call('HSET', KEYS[1], 'status', 'running', 'worker', ARGV[3], 'started_at', ARGV[4],
           'streamed', '0')
redis.call('ZADD', KEYS[3], ARGV[5], ARGV[1])
return 'running'
"""

# Worker: about to publish the first token; refused once the job is no longer its own.
# KEYS: record. ARGV: worker id.
CLAIM_OUTPUT = """
if redis.call('HGET', KEYS[1], 'status') == 'running'
   and redis.call('HGET', KEYS[1], 'worker') == ARGV[1] then
  redis.call('HSET', KEYS[1], 'streamed', '1')
  return 1
end
return 0
"""

# Worker: the run ended (or stopped); 1 when the worker still owned the job and recorded its
# outcome, so it must publish the terminal event. KEYS: record, running, finished.
# ARGV: job id, worker id, now, status, error code or '', drain window start, record ttl,
# finished member.
END = """
if redis.call('HGET', KEYS[1], 'worker') ~= ARGV[2] then return 0 end
redis.call('ZREM', KEYS[2], ARGV[1])
redis.call('ZADD', KEYS[3], ARGV[3], ARGV[8])
redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', ARGV[6])
redis.call('HSET', KEYS[1], 'ended_at', ARGV[3])
redis.call('EXPIRE', KEYS[1], ARGV[7])
if redis.call('HGET', KEYS[1], 'status') ~= 'running' then return 0 end
redis.call('HSET', KEYS[1], 'status', ARGV[4], 'error', ARGV[5])
return 1
"""

# API: a queued job past its deadline never starts. KEYS: record, waiting, RQ queue list.
# ARGV: now, record ttl.
EXPIRE = """
local status = redis.call('HGET', KEYS[1], 'status')
if not status then return 'missing' end
if status ~= 'queued' then return status end
if tonumber(redis.call('HGET', KEYS[1], 'deadline')) > tonumber(ARGV[1]) then
  return 'queued'
end
local rq_id = redis.call('HGET', KEYS[1], 'rq_id')
redis.call('ZREM', KEYS[2], rq_id)
redis.call('LREM', KEYS[3], 0, rq_id)
redis.call('HSET', KEYS[1], 'status', 'expired', 'ended_at', ARGV[1],
           'error', 'deadline_exceeded')
redis.call('EXPIRE', KEYS[1], ARGV[2])
return 'expired'
"""

# API: cancel. A queued job leaves the queue at once; a running one is flagged and its worker
# stops at the next check. Returns the status the job had. KEYS: record, waiting, RQ queue
# list. ARGV: now, record ttl.
CANCEL = """
local status = redis.call('HGET', KEYS[1], 'status')
if not status then return 'missing' end
if status == 'queued' then
  local rq_id = redis.call('HGET', KEYS[1], 'rq_id')
  redis.call('ZREM', KEYS[2], rq_id)
  redis.call('LREM', KEYS[3], 0, rq_id)
  redis.call('HSET', KEYS[1], 'ended_at', ARGV[1])
elseif status ~= 'running' then
  return status
end
redis.call('HSET', KEYS[1], 'status', 'cancelled', 'cancel_requested_at', ARGV[1],
           'error', 'cancelled')
redis.call('EXPIRE', KEYS[1], ARGV[2])
return status
"""

# API: how many live waiting jobs are ahead of this attempt in its RQ queue (-1: not in it).
# KEYS: RQ queue list, waiting. ARGV: rq id, now.
POSITION = """
local ahead = 0
for _, id in ipairs(redis.call('LRANGE', KEYS[1], 0, -1)) do
  if id == ARGV[1] then return ahead end
  local deadline = redis.call('ZSCORE', KEYS[2], id)
  if deadline and tonumber(deadline) > tonumber(ARGV[2]) then ahead = ahead + 1 end
end
return -1
"""

# Worker: take one of a model's `max_running` slots, or renew the one it holds.
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
