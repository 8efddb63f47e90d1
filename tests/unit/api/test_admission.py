"""Admission over fakeredis: the limit holds under concurrency, and reclaiming is exactly-once."""

import threading
import time

import fakeredis
import pytest

from shared import keys
from shared.job import ChatMessage, Flavour, GenerationJob, Priority
from shared.lifecycle import JobRecord, JobStatus, rq_job_id
from shared.lifecycle.admission import Reclaimed, Refusal, admit, key_cap, reclaim
from shared.lifecycle.queue import QueueDepth, queue_depth
from shared.queues import model_queue
from shared.settings import ModelLimits, Settings

MODEL = "m"


def job(
    deadline_in: float = 60, tenant: str | None = None, priority: Priority = Priority.INTERACTIVE
) -> GenerationJob:
    return GenerationJob(
        model=MODEL,
        messages=[ChatMessage(role="user", content="hi")],
        flavour=Flavour.OPENAI,
        deadline=time.time() + deadline_in,
        tenant=tenant,
        priority=priority,
    )


@pytest.fixture
def redis() -> fakeredis.FakeRedis:
    return fakeredis.FakeRedis(server=fakeredis.FakeServer())


def settings(max_queued: int = 3, **extra: object) -> Settings:
    return Settings.model_validate(
        {"model_limits": {MODEL: ModelLimits(max_queued=max_queued)}, **extra}
    )


def record(redis: fakeredis.FakeRedis, job_id: str) -> JobRecord:
    found = JobRecord.from_hash(job_id, redis.hgetall(keys.job_record(job_id)))
    assert found is not None
    return found


def test_admits_up_to_the_limit_then_refuses_with_the_depth(
    redis: fakeredis.FakeRedis,
) -> None:
    config = settings(max_queued=2)
    first, second, third = job(), job(), job()
    assert admit(redis, first, config) is None
    assert admit(redis, second, config) is None
    assert admit(redis, third, config) == Refusal(2)
    queue = model_queue(redis, MODEL)
    assert queue.job_ids == [rq_job_id(first.id, 1), rq_job_id(second.id, 1)]
    assert record(redis, first.id).status is JobStatus.QUEUED
    assert not redis.exists(keys.job_record(third.id))


def test_concurrent_admissions_never_exceed_the_limit(redis: fakeredis.FakeRedis) -> None:
    config = settings(max_queued=5)
    outcomes: list[Refusal | None] = []
    lock = threading.Lock()
    start = threading.Barrier(8)

    def hammer() -> None:
        start.wait()
        for _ in range(5):
            outcome = admit(redis, job(), config)
            with lock:
                outcomes.append(outcome)

    threads = [threading.Thread(target=hammer) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert outcomes.count(None) == 5
    assert model_queue(redis, MODEL).count == 5


async def test_expired_and_cancelled_jobs_stop_counting() -> None:
    server = fakeredis.FakeServer()
    redis = fakeredis.FakeRedis(server=server)
    config = settings(max_queued=2)
    assert admit(redis, job(deadline_in=0.05), config) is None
    doomed = job()
    assert admit(redis, doomed, config) is None
    assert admit(redis, job(), config) == Refusal(2)
    time.sleep(0.1)  # the first one's deadline passes
    assert admit(redis, job(), config) is None
    # Cancelling takes a job out of the waiting set at once.
    from shared.lifecycle.api_side import ApiJobs

    jobs = ApiJobs(fakeredis.FakeAsyncRedis(server=server), 60)
    assert await jobs.cancel(doomed.id) is JobStatus.QUEUED
    assert admit(redis, job(), config) is None
    state = await queue_depth(fakeredis.FakeAsyncRedis(server=server), MODEL, 30)
    assert state.waiting == 2


def started(redis: fakeredis.FakeRedis, the_job: GenerationJob, worker: str) -> None:
    """What a worker's BEGIN does to the record."""
    redis.hset(keys.job_record(the_job.id), mapping={"status": "running", "worker": worker})
    redis.zrem(keys.waiting_jobs(MODEL), rq_job_id(the_job.id, the_job.attempt))
    redis.zadd(keys.running_jobs(MODEL), {the_job.id: time.time() + 5})


def test_reclaim_requeues_at_the_front_exactly_once(redis: fakeredis.FakeRedis) -> None:
    config = settings()
    lost, other = job(), job()
    admit(redis, lost, config)
    admit(redis, other, config)
    model_queue(redis, MODEL).pop_job_id()  # a worker dequeued `lost` ...
    started(redis, lost, "dead")  # ... started it, and died
    outcome, again = reclaim(redis, lost, "dead", config)
    assert outcome is Reclaimed.REQUEUED and again.attempt == 2
    assert model_queue(redis, MODEL).job_ids == [rq_job_id(lost.id, 2), rq_job_id(other.id, 1)]
    now = record(redis, lost.id)
    assert now.status is JobStatus.QUEUED and now.worker is None and now.attempt == 2
    # A second party noticing the same death changes nothing.
    assert reclaim(redis, lost, "dead", config)[0] is Reclaimed.NOT_NEEDED
    assert model_queue(redis, MODEL).count == 2


def test_reclaim_fails_a_job_that_had_streamed(redis: fakeredis.FakeRedis) -> None:
    config = settings()
    lost = job()
    admit(redis, lost, config)
    model_queue(redis, MODEL).pop_job_id()
    started(redis, lost, "dead")
    redis.hset(keys.job_record(lost.id), "streamed", "1")
    assert reclaim(redis, lost, "dead", config)[0] is Reclaimed.FAILED
    assert record(redis, lost.id).status is JobStatus.FAILED
    assert model_queue(redis, MODEL).count == 0
    assert redis.zcard(keys.running_jobs(MODEL)) == 0


def test_reclaim_gives_up_after_the_last_attempt(redis: fakeredis.FakeRedis) -> None:
    config = settings(job_max_attempts=1)
    lost = job()
    admit(redis, lost, config)
    started(redis, lost, "dead")
    assert reclaim(redis, lost, "dead", config)[0] is Reclaimed.FAILED


@pytest.mark.parametrize(
    ("waiting", "finished", "expected"),
    [(4, 0, 60), (4, 30, 4), (1, 300, 1), (100, 3, 60), (0, 30, 1)],
)
def test_retry_after_follows_the_drain_rate(waiting: int, finished: int, expected: int) -> None:
    state = QueueDepth(waiting=waiting, running=1, finished=finished, window_s=30)
    assert state.retry_after_s(max_s=60) == expected


def test_a_key_holds_at_most_its_share_of_the_queue(redis: fakeredis.FakeRedis) -> None:
    config = settings(max_queued=8)  # share 0.5: 4 places per key
    assert key_cap(config, MODEL, None) == 4
    assert key_cap(config, MODEL, 2) == 2
    outcomes = [admit(redis, job(tenant="flood"), config) for _ in range(6)]
    assert outcomes[:4] == [None] * 4
    assert outcomes[4] == Refusal(depth=4, key_waiting=4, key_cap=4)
    # Another key still has the rest of the queue.
    assert [admit(redis, job(tenant="calm"), config) for _ in range(4)] == [None] * 4
    assert admit(redis, job(tenant="calm"), config) == Refusal(8)  # the model's limit


def test_a_keys_started_or_cancelled_jobs_stop_counting(redis: fakeredis.FakeRedis) -> None:
    config = settings(max_queued=8)
    first = job(tenant="k")
    assert admit(redis, first, config, key_max_queued=1) is None
    assert admit(redis, job(tenant="k"), config, key_max_queued=1) == Refusal(1, 1, 1)
    # A worker starting the job takes it out of the model's waiting set (BEGIN).
    redis.zrem(keys.waiting_jobs(MODEL), rq_job_id(first.id, 1))
    assert admit(redis, job(tenant="k"), config, key_max_queued=1) is None
    assert redis.zcard(keys.tenant_waiting("k", MODEL)) == 1  # the started one was dropped


async def test_batch_jobs_go_to_their_own_queue_and_cancel_from_there() -> None:
    server = fakeredis.FakeServer()
    redis = fakeredis.FakeRedis(server=server)
    config = settings(max_queued=8)
    batch = [job(priority=Priority.BATCH) for _ in range(2)]
    for each in batch:
        assert admit(redis, each, config) is None
    interactive = job()
    assert admit(redis, interactive, config) is None
    assert model_queue(redis, MODEL, Priority.BATCH).count == 2
    assert model_queue(redis, MODEL).count == 1
    from shared.lifecycle.api_side import ApiJobs

    jobs = ApiJobs(fakeredis.FakeAsyncRedis(server=server), 60)
    # Position: the interactive job is next; a batch job waits behind it too.
    assert await jobs.position(record(redis, interactive.id)) == 0
    assert await jobs.position(record(redis, batch[1].id)) == 2
    assert await jobs.cancel(batch[0].id) is JobStatus.QUEUED
    assert model_queue(redis, MODEL, Priority.BATCH).job_ids == [rq_job_id(batch[1].id, 1)]
