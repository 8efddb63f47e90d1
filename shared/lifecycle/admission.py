"""The API's two transactions on a job's record: admit it, and reclaim it from a dead worker.

Admission's check and RQ's enqueue share one WATCH/MULTI transaction on the model's waiting
set, so any number of API replicas together never admit more than `max_queued` waiting jobs:
a replica whose transaction raced another's sees a WatchError and checks again. A worker that
died before its job's first token is handled with the same kind of transaction on the job's
record, so the job is requeued exactly once however many parties notice. Both are
synchronous (RQ's enqueue is); the API runs them in a thread.
"""

import math
import time
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import cast

from redis import Redis
from redis.client import Pipeline
from redis.exceptions import WatchError
from redis.typing import EncodableT, FieldT

from shared import keys
from shared.events import ErrorCode
from shared.job import AnyJob
from shared.lifecycle.record import JobRecord, JobStatus, as_text, queued_fields, rq_job_id
from shared.queues import model_queue, task_of
from shared.settings import Settings

_RESULT_TTL_S = 300
_FAILURE_TTL_S = 3600


@dataclass(frozen=True)
class Refusal:
    """Why a job was not admitted: its model's queue is full, or its key holds its share."""

    depth: int  # the model's waiting jobs
    key_waiting: int | None = None  # set when the key's own cap refused it
    key_cap: int | None = None


def key_cap(settings: Settings, model: str, key_max_queued: int | None) -> int:
    """The most of `model`'s waiting places one API key may hold: its fair share of the
    model's limit (`tenant_queue_share`, at least one), or less if the key says so."""
    share = max(1, math.floor(settings.limits(model).max_queued * settings.tenant_queue_share))
    return share if key_max_queued is None else min(share, key_max_queued)


@dataclass(frozen=True)
class Extras:
    """What is written with a job in its admission's transaction, besides its record.

    `spec`: the job as the API reads it back to resume its stream on any replica (None: a
    job whose stream is not resumable, as the Responses API's).
    `idempotency_key` (a Redis key, `keys.idempotency_key`): admit only if no job holds it
    yet, and hold it with the request's `fingerprint` for `idempotency_ttl_s`.
    """

    spec: str | None = None
    idempotency_key: str | None = None
    fingerprint: str = ""
    idempotency_ttl_s: int = 1


class KeyTaken(Exception):
    """The Idempotency-Key already belongs to an admitted job."""

    def __init__(self, job_id: str, fingerprint: str) -> None:
        super().__init__(f"the idempotency key belongs to job {job_id}")
        self.job_id = job_id
        self.fingerprint = fingerprint


def holder(raw: Mapping[bytes | str, bytes | str]) -> KeyTaken | None:
    """The job holding an idempotency key, from its hash as HGETALL returns it."""
    fields = {as_text(k): as_text(v) for k, v in raw.items()}
    if "job" not in fields:
        return None
    return KeyTaken(fields["job"], fields.get("fingerprint", ""))


def admit(
    redis: Redis,
    job: AnyJob,
    settings: Settings,
    extras: Extras | None = None,
    key_max_queued: int | None = None,
) -> Refusal | None:
    """Record and enqueue `job` unless its model is full, or (a job with a `tenant`) its key
    already holds its share of the model's waiting places; None when admitted.

    Raises KeyTaken when `extras` name an idempotency key another job holds.
    """
    waiting = keys.waiting_jobs(job.model)
    limit = settings.limits(job.model).max_queued
    mine = keys.tenant_waiting(job.tenant, job.model) if job.tenant is not None else None
    claim = extras.idempotency_key if extras is not None else None
    watched = [waiting, *([mine] if mine else []), *([claim] if claim else [])]
    with redis.pipeline() as pipe:
        while True:
            try:
                pipe.watch(*watched)  # type: ignore[no-untyped-call]
                if claim and (taken := holder(pipe.hgetall(claim))) is not None:
                    pipe.unwatch()
                    raise taken
                now = time.time()
                depth = int(pipe.zcount(waiting, now, "+inf"))
                if depth >= limit:
                    pipe.unwatch()
                    return Refusal(depth)
                gone: list[str] = []
                if mine is not None:
                    cap = key_cap(settings, job.model, key_max_queued)
                    held, gone = _key_waiting(pipe, mine, waiting, now)
                    if held >= cap:
                        pipe.unwatch()
                        return Refusal(depth, held, cap)
                pipe.multi()
                pipe.zremrangebyscore(waiting, "-inf", now)  # expired ids: housekeeping
                _enqueue(pipe, redis, job, settings, at_front=False)
                if mine is not None:
                    if gone:
                        pipe.zrem(mine, *gone)
                    pipe.zadd(mine, {rq_job_id(job.id, job.attempt): job.deadline})
                    pipe.expire(mine, math.ceil(settings.queue_deadline_s) + 60)
                pipe.hset(keys.job_record(job.id), mapping=queued_fields(job))
                pipe.expire(keys.job_record(job.id), settings.record_ttl_s)
                # The request that admits the job is its first listener (api/stream.py).
                pipe.set(keys.job_listeners(job.id), 1, ex=settings.record_ttl_s)
                if extras is not None:
                    if extras.spec is not None:
                        pipe.set(keys.job_spec(job.id), extras.spec, ex=settings.record_ttl_s)
                    if claim:
                        holding: dict[FieldT, EncodableT] = {
                            "job": job.id,
                            "fingerprint": extras.fingerprint,
                        }
                        pipe.hset(claim, mapping=holding)
                        pipe.expire(claim, extras.idempotency_ttl_s)
                pipe.execute()
                return None
            except WatchError:
                continue


class Reclaimed(StrEnum):
    REQUEUED = "requeued"
    FAILED = "failed"
    NOT_NEEDED = "not_needed"  # the job was no longer running on that worker


def reclaim(
    redis: Redis, job: AnyJob, dead_worker: str, settings: Settings
) -> tuple[Reclaimed, AnyJob]:
    """The job's worker died: run it again at the front of its queue if no token was sent and
    attempts are left, else record it failed. Returns what happened and the job as it is now."""
    record_key = keys.job_record(job.id)
    with redis.pipeline() as pipe:
        while True:
            try:
                pipe.watch(record_key)  # type: ignore[no-untyped-call]
                record = JobRecord.from_hash(job.id, pipe.hgetall(record_key))
                if (
                    record is None
                    or record.status is not JobStatus.RUNNING
                    or record.worker != dead_worker
                ):
                    pipe.unwatch()
                    return Reclaimed.NOT_NEEDED, job
                now = time.time()
                pipe.multi()
                pipe.zrem(keys.running_jobs(job.model), job.id)
                if record.streamed or record.attempt >= settings.job_max_attempts:
                    failed: dict[FieldT, EncodableT] = {
                        "status": JobStatus.FAILED,
                        "ended_at": now,
                        "error": ErrorCode.WORKER_LOST,
                    }
                    pipe.hset(record_key, mapping=failed)
                    pipe.execute()
                    return Reclaimed.FAILED, job
                deadline = now + settings.queue_deadline_s
                again = job.model_copy(update={"attempt": record.attempt + 1, "deadline": deadline})
                _enqueue(pipe, redis, again, settings, at_front=True)
                pipe.hset(record_key, mapping=queued_fields(again))
                pipe.execute()
                return Reclaimed.REQUEUED, again
            except WatchError:
                continue


def _key_waiting(pipe: Pipeline, mine: str, waiting: str, now: float) -> tuple[int, list[str]]:
    """How many of a key's admitted jobs still wait (are in the model's waiting set), and the
    ids of those that started, left or expired (housekeeping)."""
    ids = [i.decode() for i in cast(list[bytes], pipe.zrange(mine, 0, -1))]
    if not ids:
        return 0, []
    scores = pipe.zmscore(waiting, ids)
    live = [score is not None and score > now for score in scores]
    return sum(live), [i for i, alive in zip(ids, live, strict=True) if not alive]


def _enqueue(
    pipe: Pipeline, redis: Redis, job: AnyJob, settings: Settings, *, at_front: bool
) -> None:
    """RQ's enqueue of one attempt, as commands on the caller's MULTI."""
    rq_id = rq_job_id(job.id, job.attempt)
    model_queue(redis, job.model, job.priority).enqueue_call(
        func=task_of(job),
        args=(job.model_dump(mode="json"),),
        job_id=rq_id,
        timeout=settings.job_timeout_s,
        ttl=max(1, math.ceil(job.deadline - time.time())),
        result_ttl=_RESULT_TTL_S,
        failure_ttl=_FAILURE_TTL_S,
        at_front=at_front,
        pipeline=pipe,
    )
    pipe.zadd(keys.waiting_jobs(job.model), {rq_id: job.deadline})
