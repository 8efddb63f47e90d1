"""The worker's side of a job's record, and the `max_running` gate.

`RedisJobControl` is what the runner asks before and while it runs a job: may I start it
(not cancelled, not expired, not a stale attempt), may I publish its first token (it was not
given to another worker meanwhile), should I stop (cancelled), and records how it ended.
"""

import logging
import time
from enum import Enum

from redis import Redis

from shared import keys
from shared.events import DoneEvent, ErrorEvent, TerminalEvent
from shared.job import GenerationJob
from shared.lifecycle.record import JobStatus
from shared.lifecycle.scripts import WorkerScripts
from shared.settings import WorkerSettings

log = logging.getLogger(__name__)


class StartDecision(Enum):
    """What a worker does with a job it dequeued."""

    RUN = "run"
    EXPIRED = "expired"  # waited past its deadline: answer with an error, never start
    SKIP = "skip"  # cancelled, or a stale attempt: not this worker's to answer


class RedisJobControl:
    def __init__(self, redis: Redis, worker_id: str, settings: WorkerSettings) -> None:
        self._redis = redis
        self._worker_id = worker_id
        self._settings = settings
        self._scripts = WorkerScripts(redis)
        self.current: GenerationJob | None = None  # read by the heartbeat thread
        self._checked_at = 0.0

    def begin(self, job: GenerationJob) -> StartDecision:
        now = time.time()
        outcome = self._scripts.begin(
            job,
            self._worker_id,
            now,
            lease_until=now + self._settings.heartbeat_ttl_s,
            ttl_s=self._settings.record_ttl_s,
        )
        if outcome == JobStatus.RUNNING:
            self.current = job
            self._checked_at = time.monotonic()
            return StartDecision.RUN
        log.info("job %s attempt %d not run: %s", job.id, job.attempt, outcome)
        return StartDecision.EXPIRED if outcome == JobStatus.EXPIRED else StartDecision.SKIP

    def claim_output(self, job: GenerationJob) -> bool:
        return self._scripts.claim_output(job, self._worker_id)

    def should_stop(self, job: GenerationJob) -> bool:
        """Cancelled, or no longer this worker's; asks Redis at most every `cancel_check_s`."""
        now = time.monotonic()
        if now - self._checked_at < self._settings.cancel_check_s:
            return False
        self._checked_at = now
        status, worker = self._redis.hmget(keys.job_record(job.id), ["status", "worker"])
        return status != JobStatus.RUNNING.encode() or worker != self._worker_id.encode()

    def end(self, job: GenerationJob, terminal: TerminalEvent) -> bool:
        self.current = None
        now = time.time()
        return self._scripts.end(
            job,
            self._worker_id,
            now,
            status=JobStatus.DONE if isinstance(terminal, DoneEvent) else JobStatus.FAILED,
            error=terminal.code if isinstance(terminal, ErrorEvent) else "",
            window_start=now - self._settings.drain_window_s,
            ttl_s=self._settings.record_ttl_s,
        )

    def renew(self, redis: Redis, ttl_s: float) -> None:
        """Heartbeat: extend the running job's lease (it stops counting as running otherwise)."""
        job = self.current
        if job is not None:
            redis.zadd(keys.running_jobs(job.model), {job.id: time.time() + ttl_s}, xx=True)


class RunGate:
    """At most `max_running` workers of a model take jobs at once (slots with leases).

    A worker holds its slot while it waits for a job and while it runs one; a slot of a dead
    worker lapses with its lease, which the heartbeat renews.
    """

    def __init__(self, redis: Redis, model: str, worker_id: str, max_running: int) -> None:
        self._model = model
        self._worker_id = worker_id
        self._max = max_running
        self._scripts = WorkerScripts(redis)
        self._redis = redis
        self.held = False

    def acquire(self, ttl_s: float) -> bool:
        now = time.time()
        self.held = self._scripts.acquire_slot(
            self._model, self._worker_id, now, now + ttl_s, self._max
        )
        return self.held

    def release(self) -> None:
        self.held = False
        self._redis.zrem(keys.run_slots(self._model), self._worker_id)

    def renew(self, redis: Redis, ttl_s: float) -> None:
        if self.held:
            redis.zadd(keys.run_slots(self._model), {self._worker_id: time.time() + ttl_s}, xx=True)
