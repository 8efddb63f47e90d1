"""The API watching a running job, over fakeredis: the real worker class runs in a thread
while the request is in flight, its engine paused mid-job, and the test cancels the job or
drops the worker's heartbeat as if it had died."""

import asyncio
import json
from collections.abc import Sequence

import pytest

from shared import keys
from shared.lifecycle import JobRecord, JobStatus
from tests.fakes import EOS, FakeEngine
from tests.unit.api.harness import MODEL, N_CTX, WORKER_ID, Harness, until

CHAT: dict[str, object] = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}]}
MANY = 50  # far more pieces than a stopped job gets to


def record(harness: Harness, job_id: str) -> JobRecord:
    found = JobRecord.from_hash(job_id, harness.redis.hgetall(keys.job_record(job_id)))
    assert found is not None
    return found


async def status_becomes(harness: Harness, job_id: str, status: JobStatus, what: str) -> JobRecord:
    """The job's record once its status is `status`."""

    def reached() -> JobRecord | None:
        now = record(harness, job_id)
        return now if now.status is status else None

    return await until(reached, what)


def only_job(harness: Harness) -> str:
    (job_id,) = harness.recorded_jobs()
    return job_id


def count_watches(harness: Harness, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The job ids the API's watch has read a record of, one entry a read."""
    seen: list[str] = []
    jobs = harness.state.jobs
    read = jobs.records

    async def counted(job_ids: Sequence[str]) -> list[JobRecord | None]:
        seen.extend(job_ids)
        return await read(job_ids)

    monkeypatch.setattr(jobs, "records", counted)
    return seen


async def test_delete_of_a_running_job_flags_it_and_its_worker_stops(harness: Harness) -> None:
    harness.engine.pieces = [b"x"] * MANY
    harness.engine.pause_at = 1  # one token out, the job mid-run
    request = await harness.submit("/v1/chat/completions", CHAT)
    worker = harness.start_worker()
    await until(harness.engine.paused.is_set, "the job to run")
    job_id = only_job(harness)
    assert record(harness, job_id).status is JobStatus.RUNNING

    deleted = await harness.client.delete(f"/v1/jobs/{job_id}")
    assert deleted.status_code == 200 and deleted.json()["status"] == "cancelled"
    flagged = record(harness, job_id)
    assert flagged.status is JobStatus.CANCELLED and flagged.cancel_requested_at is not None

    harness.engine.resume.set()
    await worker.finished()
    # The worker stopped at its next check, not after its MANY pieces, and freed itself.
    assert harness.engine.steps < MANY
    ended = record(harness, job_id)
    assert ended.status is JobStatus.CANCELLED and ended.ended_at is not None
    assert harness.redis.zcard(keys.running_jobs(MODEL)) == 0
    answer = await request
    assert answer.status_code == 409 and answer.json()["error"]["code"] == "job_cancelled"


async def test_a_client_leaving_a_running_job_cancels_it_and_its_worker_stops(
    harness: Harness,
) -> None:
    harness.engine.pieces = [b"x"] * MANY
    harness.engine.pause_at = 1
    gone = asyncio.Event()
    request = asyncio.create_task(harness.asgi("/v1/chat/completions", CHAT, gone=gone))
    await until(harness.recorded_jobs, "the job to be queued")
    worker = harness.start_worker()
    await until(harness.engine.paused.is_set, "the job to run")
    job_id = only_job(harness)

    gone.set()
    await asyncio.wait_for(request, 10)
    assert record(harness, job_id).status is JobStatus.CANCELLED
    harness.engine.resume.set()
    await worker.finished()
    assert harness.engine.steps < MANY
    assert record(harness, job_id).ended_at is not None


async def test_a_live_workers_running_job_is_left_to_it(
    harness: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    watches = count_watches(harness, monkeypatch)
    harness.engine.pause_at = 0  # running, nothing sent yet
    request = await harness.submit("/v1/chat/completions", CHAT)
    worker = harness.start_worker()
    await until(harness.engine.paused.is_set, "the job to run")
    job_id = only_job(harness)
    # The API looks at the running job a few times while its worker is alive ...
    already = len(watches)
    await until(lambda: len(watches) >= already + 3, "the API to watch the running job")
    # ... and leaves it where it is: not requeued, not failed.
    running = record(harness, job_id)
    assert running.status is JobStatus.RUNNING
    assert (running.attempt, running.worker) == (1, WORKER_ID)

    harness.engine.resume.set()
    await worker.finished()
    answer = await request
    assert answer.status_code == 200
    assert answer.json()["choices"][0]["message"]["content"] == "Hello, world"
    done = record(harness, job_id)
    assert (done.status, done.attempt, done.worker) == (JobStatus.DONE, 1, WORKER_ID)


async def test_a_dead_workers_job_without_output_is_rerun_by_another(harness: Harness) -> None:
    harness.engine.pause_at = 0  # dies before its first token
    request = await harness.submit("/v1/chat/completions", CHAT)
    dying = harness.start_worker()
    await until(harness.engine.paused.is_set, "the job to run")
    job_id = only_job(harness)
    dying.die()

    requeued = await status_becomes(
        harness, job_id, JobStatus.QUEUED, "the API to requeue the dead worker's job"
    )
    assert requeued.attempt == 2 and requeued.worker is None
    # The dead one, resumed (as a worker cut off from Redis would be), publishes nothing.
    harness.engine.resume.set()
    await dying.finished()
    successor = harness.start_worker("w2", FakeEngine([b"Hello", b",", b" world", EOS]))
    await successor.finished()

    answer = await request
    assert answer.status_code == 200, answer.text
    assert answer.json()["choices"][0]["message"]["content"] == "Hello, world"
    done = record(harness, job_id)
    assert (done.status, done.attempt, done.worker) == (JobStatus.DONE, 2, "w2")


async def test_a_dead_workers_job_that_streamed_fails_as_worker_lost(harness: Harness) -> None:
    harness.engine.pieces = [b"x"] * MANY
    harness.engine.pause_at = 2  # two tokens out
    body = {**CHAT, "stream": True}
    request = await harness.submit("/v1/chat/completions", body)
    dying = harness.start_worker()
    await until(harness.engine.paused.is_set, "the job to run")
    job_id = only_job(harness)
    dying.die()

    failed = await status_becomes(
        harness, job_id, JobStatus.FAILED, "the API to fail the dead worker's job"
    )
    assert failed.error == "worker_lost"
    answer = await request
    assert answer.status_code == 200  # streaming had started: the error is inside
    frames = [  # each frame's data (after its `id:` line)
        f.split("\n")[-1].removeprefix("data: ") for f in answer.text.split("\n\n") if f
    ]
    assert frames[-1] == "[DONE]"
    error = json.loads(frames[-2])["error"]
    # Ended by the API's reclaim, not by the worker's silence running out (event_timeout_s).
    assert error["message"] == "the worker running the job died", error
    assert harness.redis.llen(keys.rq_queue_key(MODEL)) == 0  # not requeued
    harness.engine.resume.set()
    await dying.finished()
    assert harness.engine.steps < MANY


@pytest.mark.parametrize(
    ("max_tokens", "status"),
    [(N_CTX - 4, 200), (N_CTX - 4 + 1, 400)],
    ids=["exactly-fills-the-context", "one-over"],
)
async def test_the_context_check_admits_a_request_that_exactly_fits(
    harness: Harness, max_tokens: int, status: int
) -> None:
    # The fake prompt is 4 tokens: 4 + max_tokens against a context of N_CTX.
    response = await harness.call("/v1/chat/completions", {**CHAT, "max_tokens": max_tokens})
    assert response.status_code == status, response.text
    if status == 400:
        assert response.json()["error"]["code"] == "context_length_exceeded"
        assert harness.recorded_jobs() == []  # refused by the API: never enqueued
