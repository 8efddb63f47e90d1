"""Per-step work in one round trip: events of many slots, and their jobs' cancellation checks."""

import threading
import time

import fakeredis

from shared import keys
from shared.events import DoneEvent, FinishReason, Timings, TokenEvent, Usage
from shared.job import Flavour, GenerationJob
from shared.lifecycle.admission import admit
from shared.lifecycle.worker_side import RedisJobControl, RunningJobs
from shared.settings import Settings, WorkerSettings
from worker.publisher import BatchingPublisher

MODEL = "m"


def test_a_steps_events_go_in_one_round_trip_in_order() -> None:
    redis = fakeredis.FakeRedis()
    listener = redis.pubsub(ignore_subscribe_messages=True)
    listener.subscribe(*(keys.events_channel(f"job{i}") for i in range(8)))
    publisher = BatchingPublisher(redis, coalesce_s=0.05)
    step = threading.Barrier(8)

    def slot(i: int) -> None:  # eight slots handed their tokens of one step together
        step.wait()
        for n in range(3):
            publisher.publish(f"job{i}", TokenEvent(index=n, text=f"{i}.{n}"))

    threads = [threading.Thread(target=slot, args=(i,)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    done = DoneEvent(
        finish_reason=FinishReason.STOP,
        usage=Usage(prompt_tokens=1, completion_tokens=3),
        timings=Timings(queued=0, prompt_eval=0, decode=0),
    )
    publisher.publish("job0", done)
    publisher.close()
    assert publisher.published == 25
    assert publisher.batches <= 3  # 24 tokens of one "step" (+ the terminal) in few trips
    received: dict[str, list[str]] = {}
    deadline = time.monotonic() + 5
    while sum(map(len, received.values())) < 25 and time.monotonic() < deadline:
        message = listener.get_message(timeout=0.1)
        if message is not None:
            received.setdefault(message["channel"].decode(), []).append(message["data"].decode())
    for i in range(8):
        events = received[keys.events_channel(f"job{i}")][:3]
        texts = [TokenEvent.model_validate_json(e).text for e in events]
        assert texts == [f"{i}.0", f"{i}.1", f"{i}.2"]  # each job's events in order
    assert '"done"' in received[keys.events_channel("job0")][-1]  # the terminal comes last


def admitted(redis: fakeredis.FakeRedis) -> GenerationJob:
    job = GenerationJob(model=MODEL, prompt="hi", flavour=Flavour.OPENAI, deadline=time.time() + 60)
    assert admit(redis, job, Settings()) is None
    return job


def test_the_running_jobs_are_checked_in_one_round_trip() -> None:
    server = fakeredis.FakeServer()
    redis = fakeredis.FakeRedis(server=server)
    settings = WorkerSettings(model=MODEL, cancel_check_s=0.001)
    running = RunningJobs(redis, "w1", settings.cancel_check_s)
    controls = [RedisJobControl(redis, "w1", settings, running) for _ in range(4)]
    jobs = [admitted(redis) for _ in range(4)]
    for control, job in zip(controls, jobs, strict=True):
        control.begin(job)
    redis.hset(keys.job_record(jobs[2].id), "status", "cancelled")
    executed: list[int] = []
    real_pipeline = redis.pipeline

    def counting_pipeline(*args: object, **kwargs: object) -> object:
        pipe = real_pipeline(*args, **kwargs)  # type: ignore[arg-type]
        execute = pipe.execute

        def counted() -> object:
            executed.append(len(pipe.command_stack))
            return execute()

        pipe.execute = counted  # type: ignore[method-assign]
        return pipe

    redis.pipeline = counting_pipeline  # type: ignore[method-assign]
    time.sleep(0.01)
    answers = [control.should_stop(job) for control, job in zip(controls, jobs, strict=True)]
    assert answers == [False, False, True, False]
    assert executed == [4]  # one pipeline of four reads served all four slots
