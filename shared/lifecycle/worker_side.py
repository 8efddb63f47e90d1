"""The worker's side of a job's record, and the `max_running` gate.

`RedisJobControl` is what a slot's runner asks before and while it runs a job: may I start
it (not cancelled, not expired, not a stale attempt), may I publish its first token (it was
not given to another worker meanwhile), should I stop (cancelled), and records how it ended.
`RunningJobs` holds a process's running jobs: their records are checked, and their leases
renewed, together.
"""

import logging
import threading
import time
from enum import Enum

from redis import Redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from shared import keys
from shared.events import DoneEvent, ErrorEvent, TerminalEvent
from shared.job import QueuedJob
from shared.lifecycle.record import JobStatus
from shared.lifecycle.scripts import WorkerScripts
from shared.settings import WorkerSettings
from shared.tenancy.quota import charge_generated

log = logging.getLogger(__name__)

# How long a worker keeps trying to record a job's end while Redis does not answer: longer
# than a Sentinel failover takes (seconds), shorter than a stuck slot would be worth.
END_RETRY_S = 30.0


class StartDecision(Enum):
    """What a worker does with a job it dequeued."""

    RUN = "run"
    EXPIRED = "expired"  # waited past its deadline: answer with an error, never start
    SKIP = "skip"  # cancelled, or a stale attempt: not this worker's to answer


class RunningJobs:
    """The jobs running in one worker process, checked and leased together.

    Every slot asks between tokens whether its job must stop; the records of all running jobs
    are read in one round trip at most every `check_s`, and the heartbeat renews all their
    leases in one.
    """

    def __init__(self, redis: Redis, worker_id: str, check_s: float) -> None:
        self._redis = redis
        self._worker_id = worker_id
        self._check_s = check_s
        self._lock = threading.Lock()
        self._jobs: dict[str, QueuedJob] = {}
        self._stopping: set[str] = set()
        self._checked_at = 0.0

    def add(self, job: QueuedJob) -> None:
        with self._lock:
            self._jobs[job.id] = job

    def remove(self, job: QueuedJob) -> None:
        with self._lock:
            self._jobs.pop(job.id, None)
            self._stopping.discard(job.id)

    def should_stop(self, job: QueuedJob) -> bool:
        """Cancelled, or no longer this worker's (as last read, at most `check_s` ago)."""
        with self._lock:
            now = time.monotonic()
            if now - self._checked_at >= self._check_s:
                self._checked_at = now
                self._read()
            return job.id in self._stopping

    def _read(self) -> None:
        ids = list(self._jobs)
        if not ids:
            return
        pipe = self._redis.pipeline(transaction=False)
        for job_id in ids:
            pipe.hmget(keys.job_record(job_id), ["status", "worker"])
        mine = (JobStatus.RUNNING.encode(), self._worker_id.encode())
        for job_id, (status, worker) in zip(ids, pipe.execute(), strict=True):
            if (status, worker) != mine:
                self._stopping.add(job_id)

    def renew(self, redis: Redis, ttl_s: float) -> None:
        """Heartbeat: extend every running job's lease (it stops counting as running else)."""
        with self._lock:
            jobs = list(self._jobs.values())
        until = time.time() + ttl_s
        for job in jobs:
            redis.zadd(keys.running_jobs(job.model), {job.id: until}, xx=True)


class RedisJobControl:
    """One slot's control of the job it runs, through the job's record."""

    def __init__(
        self,
        redis: Redis,
        worker_id: str,
        settings: WorkerSettings,
        running: RunningJobs | None = None,
    ) -> None:
        """`running`: the process's running jobs, shared by its slots (default: its own)."""
        self._worker_id = worker_id
        self._settings = settings
        self._scripts = WorkerScripts(redis)
        self._redis = redis
        self.running = running or RunningJobs(redis, worker_id, settings.cancel_check_s)

    def begin(self, job: QueuedJob) -> StartDecision:
        now = time.time()
        outcome = self._scripts.begin(
            job,
            self._worker_id,
            now,
            lease_until=now + self._settings.heartbeat_ttl_s,
            ttl_s=self._settings.record_ttl_s,
        )
        if outcome == JobStatus.RUNNING:
            self.running.add(job)
            return StartDecision.RUN
        log.info("job %s attempt %d not run: %s", job.id, job.attempt, outcome)
        return StartDecision.EXPIRED if outcome == JobStatus.EXPIRED else StartDecision.SKIP

    def claim_output(self, job: QueuedJob) -> bool:
        return self._scripts.claim_output(job, self._worker_id)

    def should_stop(self, job: QueuedJob) -> bool:
        return self.running.should_stop(job)

    def end(self, job: QueuedJob, terminal: TerminalEvent) -> bool:
        """Record the outcome. With Redis away (restarting, failing over to a replica) it is
        tried again for up to `END_RETRY_S`, so the record does not stay `running` for a job
        that ended; then the error is raised."""
        self.running.remove(job)
        if job.tenant is not None and isinstance(terminal, DoneEvent):
            # The key's token quota learns what the job generated (its prompt was charged at
            # admission); a job whose worker died is not charged its partial output.
            charge_generated(self._redis, job.tenant, job.id, terminal.usage.completion_tokens)
        gives_up_at = time.monotonic() + END_RETRY_S
        while True:
            now = time.time()
            try:
                return self._scripts.end(
                    job,
                    self._worker_id,
                    now,
                    status=JobStatus.FAILED if isinstance(terminal, ErrorEvent) else JobStatus.DONE,
                    error=terminal.code if isinstance(terminal, ErrorEvent) else "",
                    window_start=now - self._settings.drain_window_s,
                    ttl_s=self._settings.record_ttl_s,
                )
            except (RedisConnectionError, RedisTimeoutError) as exc:
                if time.monotonic() >= gives_up_at:
                    raise
                log.warning("job %s: could not record its end, trying again: %s", job.id, exc)
                time.sleep(0.25)


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
