"""The worker's side of the job record over fakeredis: start, cancel between tokens, end."""

import threading
import time
from dataclasses import dataclass

import fakeredis
import pytest

from shared import keys
from shared.events import DoneEvent, ErrorCode, ErrorEvent, TokenEvent
from shared.job import ChatMessage, Flavour, GenerationJob
from shared.lifecycle import JobRecord, JobStatus
from shared.lifecycle.admission import admit
from shared.lifecycle.worker_side import RedisJobControl, RunGate
from shared.queues import model_queue
from shared.settings import Settings, WorkerSettings
from tests.fakes import EOS, FakeEngine, RecordingPublisher
from worker.engine import Sampled
from worker.rq_worker import ModelWorker
from worker.runner import JobRunner

MODEL = "m"


@pytest.fixture
def redis() -> fakeredis.FakeRedis:
    return fakeredis.FakeRedis(server=fakeredis.FakeServer())


def admitted(redis: fakeredis.FakeRedis, deadline_in: float = 60) -> GenerationJob:
    job = GenerationJob(
        model=MODEL,
        messages=[ChatMessage(role="user", content="hi")],
        flavour=Flavour.OPENAI,
        deadline=time.time() + deadline_in,
    )
    assert admit(redis, job, Settings()) is None
    return job


def record(redis: fakeredis.FakeRedis, job: GenerationJob) -> JobRecord:
    found = JobRecord.from_hash(job.id, redis.hgetall(keys.job_record(job.id)))
    assert found is not None
    return found


def runner(
    redis: fakeredis.FakeRedis, engine: FakeEngine, worker: str = "w1"
) -> tuple[JobRunner, RecordingPublisher]:
    publisher = RecordingPublisher()
    control = RedisJobControl(redis, worker, WorkerSettings(model=MODEL, cancel_check_s=0.001))
    return JobRunner(engine, publisher, control), publisher


def test_a_run_is_recorded_from_start_to_done(redis: fakeredis.FakeRedis) -> None:
    job = admitted(redis)
    run, publisher = runner(redis, FakeEngine([b"a", b"b", EOS]))
    terminal = run.run(job)
    assert isinstance(terminal, DoneEvent)
    assert [e.type for _, e in publisher.events] == ["token", "token", "done"]
    done = record(redis, job)
    assert done.status is JobStatus.DONE and done.worker == "w1" and done.streamed
    assert done.started_at and done.ended_at and done.ended_at >= done.started_at
    assert redis.zcard(keys.waiting_jobs(MODEL)) == 0
    assert redis.zcard(keys.running_jobs(MODEL)) == 0
    assert redis.zcard(keys.finished_jobs(MODEL)) == 1


def test_a_cancelled_queued_job_never_starts(redis: fakeredis.FakeRedis) -> None:
    job = admitted(redis)
    redis.hset(keys.job_record(job.id), "status", JobStatus.CANCELLED)
    engine = FakeEngine([b"a", EOS])
    run, publisher = runner(redis, engine)
    assert run.run(job) is None
    assert engine.started_with == [] and publisher.events == []


def test_an_expired_job_never_starts_and_its_client_hears_why(
    redis: fakeredis.FakeRedis,
) -> None:
    job = admitted(redis, deadline_in=-1)
    engine = FakeEngine([b"a", EOS])
    run, publisher = runner(redis, engine)
    terminal = run.run(job)
    assert isinstance(terminal, ErrorEvent) and terminal.code is ErrorCode.DEADLINE_EXCEEDED
    assert [e.type for _, e in publisher.events] == ["error"]
    assert engine.started_with == []
    assert record(redis, job).status is JobStatus.EXPIRED


@dataclass
class CancellingEngine(FakeEngine):
    """Cancels its own job (as a DELETE from elsewhere would) after `cancel_after` tokens."""

    redis: fakeredis.FakeRedis | None = None
    job_id: str = ""
    cancel_after: int = 2

    def step(self) -> list[Sampled]:
        sampled = super().step()
        if self._position == self.cancel_after and self.redis is not None:
            self.redis.hset(keys.job_record(self.job_id), "status", JobStatus.CANCELLED)
            time.sleep(0.002)  # past the control's check interval
        return sampled


def test_a_running_job_stops_at_the_next_check_and_frees_the_slot(
    redis: fakeredis.FakeRedis,
) -> None:
    job = admitted(redis)
    engine = CancellingEngine([b"x"] * 50, redis=redis, job_id=job.id)
    run, publisher = runner(redis, engine)
    terminal = run.run(job)
    assert isinstance(terminal, ErrorEvent) and terminal.code is ErrorCode.CANCELLED
    tokens = [e for _, e in publisher.events if isinstance(e, TokenEvent)]
    assert len(tokens) == 2  # stopped right after the cancel, not after 50
    # The canceller publishes the terminal event; the worker only frees itself.
    assert all(e.type == "token" for _, e in publisher.events)
    assert engine._position is None  # slot released
    ended = record(redis, job)
    assert ended.status is JobStatus.CANCELLED and ended.ended_at is not None
    assert redis.zcard(keys.running_jobs(MODEL)) == 0


def test_a_job_taken_over_by_another_worker_publishes_nothing(
    redis: fakeredis.FakeRedis,
) -> None:
    """A worker wrongly thought dead must not mix its tokens into the rerun's stream."""

    @dataclass
    class Overtaken(FakeEngine):
        def step(self) -> list[Sampled]:
            redis.hset(keys.job_record(job.id), mapping={"status": "queued", "worker": ""})
            return super().step()

    job = admitted(redis)
    run, publisher = runner(redis, Overtaken([b"a", b"b", EOS]))
    assert isinstance(run.run(job), ErrorEvent)
    assert publisher.events == []


def test_the_heartbeat_renews_the_running_lease(redis: fakeredis.FakeRedis) -> None:
    job = admitted(redis)
    control = RedisJobControl(redis, "w1", WorkerSettings(model=MODEL))
    control.begin(job)
    before = redis.zscore(keys.running_jobs(MODEL), job.id)
    control.running.renew(redis, ttl_s=100)
    after = redis.zscore(keys.running_jobs(MODEL), job.id)
    assert before is not None and after is not None and after > before + 50


def test_run_gate_caps_workers_taking_jobs(redis: fakeredis.FakeRedis) -> None:
    one, two, three = (RunGate(redis, MODEL, w, max_running=2) for w in ("a", "b", "c"))
    assert one.acquire(5) and two.acquire(5)
    assert not three.acquire(5)
    assert one.acquire(5)  # renewing a held slot
    one.release()
    assert three.acquire(5)
    # A slot whose lease lapsed (a dead worker) is taken over.
    redis.zadd(keys.run_slots(MODEL), {"b": time.time() - 1})
    assert one.acquire(5)


def test_a_worker_without_a_run_slot_takes_no_job(redis: fakeredis.FakeRedis) -> None:
    job = admitted(redis)
    queue = model_queue(redis, MODEL)
    holder = RunGate(redis, MODEL, "other", max_running=1)
    assert holder.acquire(60)
    run, _ = runner(redis, FakeEngine([b"a", EOS]))
    gated = ModelWorker(run, queue, gate=RunGate(redis, MODEL, "w1", max_running=1))
    taken: list[object] = []
    waiting = threading.Thread(target=lambda: taken.append(gated.dequeue_job_and_maintain_ttl(1)))
    waiting.start()
    time.sleep(0.3)
    assert taken == [] and queue.count == 1  # blocked on the gate, not on the queue
    holder.release()
    waiting.join(timeout=5)
    assert taken and taken[0] is not None and queue.count == 0
    assert record(redis, job).status is JobStatus.QUEUED  # dequeued, about to begin
