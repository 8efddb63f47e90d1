"""The watchdog over fakeredis: one round trip a round for every open request's record, and
each stream still deciding for itself (a dead worker, Redis failing, lost events)."""

import asyncio
import logging
from typing import Any

import httpx
import pytest
from redis.asyncio.client import Pipeline
from redis.exceptions import ConnectionError as RedisConnectionError

from shared import keys
from shared.events import TokenEvent
from shared.job import GenerationJob
from shared.lifecycle import JobStatus
from shared.lifecycle.worker_side import RedisJobControl
from shared.queues import model_queue
from shared.settings import WorkerSettings
from tests.unit.api.harness import MODEL, Harness

CHAT = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}]}


async def waiting(harness: Harness, count: int, stream: bool = False) -> list[asyncio.Task[Any]]:
    """`count` requests whose jobs wait in the queue, watched by the watchdog."""
    tasks = [
        asyncio.create_task(
            harness.client.post("/v1/chat/completions", json={**CHAT, "stream": stream})
        )
        for _ in range(count)
    ]
    async with asyncio.timeout(10):
        while harness.state.watchdog.watched < count:
            await asyncio.sleep(0.01)
    return tasks


async def test_one_round_trip_reads_every_open_requests_record(
    harness: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    rounds: list[list[str]] = []  # the commands of each pipeline sent
    execute = Pipeline.execute

    async def counted(self: Pipeline, raise_on_error: bool = True) -> list[Any]:
        rounds.append([str(args[0]) for args, _ in self.command_stack])
        return await execute(self, raise_on_error)

    monkeypatch.setattr(Pipeline, "execute", counted)
    requests = await waiting(harness, 10)
    single_reads = 0
    hgetall = harness.state.redis.hgetall

    def read_one(*args: Any, **kwargs: Any) -> Any:
        nonlocal single_reads
        single_reads += 1
        return hgetall(*args, **kwargs)

    monkeypatch.setattr(harness.state.redis, "hgetall", read_one)
    rounds.clear()
    async with asyncio.timeout(10):
        while len([r for r in rounds if "HGETALL" in r]) < 3:
            await asyncio.sleep(0.01)
    reads = [r for r in rounds if "HGETALL" in r]
    assert all(r == ["HGETALL"] * 10 for r in reads)  # all ten in each, nothing else
    assert single_reads == 0
    harness.work()
    for request in requests:
        assert (await request).status_code == 200


async def test_a_dead_workers_job_is_requeued_from_the_watchdogs_reading(
    harness: Harness, caplog: pytest.LogCaptureFixture
) -> None:
    [request] = await waiting(harness, 1)
    job = GenerationJob.model_validate(model_queue(harness.redis, MODEL).jobs[0].args[0])
    # A worker that never registered (or whose heartbeat lapsed) started it.
    control = RedisJobControl(harness.redis, "ghost", WorkerSettings(model=MODEL))
    with caplog.at_level(logging.WARNING, logger="api.stream"):
        control.begin(job)
        async with asyncio.timeout(10):
            while harness.redis.hget(keys.job_record(job.id), "attempt") != b"2":
                await asyncio.sleep(0.01)
        harness.work()
        response = await request
    assert response.status_code == 200
    assert response.json()["choices"][0]["message"]["content"] == "Hello, world"
    assert f"job {job.id}: worker ghost died; requeued" in caplog.text


async def test_a_failed_round_ends_the_open_streams_with_backend_unavailable(
    harness: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    [request] = await waiting(harness, 1)

    async def down(*_args: object) -> None:
        raise RedisConnectionError("Connection refused")

    monkeypatch.setattr(harness.state.jobs, "records", down)
    response = await request
    assert response.status_code == 503
    assert response.json()["error"]["code"] == "backend_unavailable"


@pytest.mark.settings(queue_notice_after_s=60)
async def test_a_stream_missing_tokens_ends_with_an_error_and_cancels_its_job(
    harness: Harness,
) -> None:
    [request] = await waiting(harness, 1, stream=True)
    job_id = model_queue(harness.redis, MODEL).job_ids[0].rsplit("-", 1)[0]
    channel = keys.events_channel(job_id)
    harness.redis.publish(channel, TokenEvent(index=0, text="Hello").model_dump_json())
    harness.redis.publish(channel, TokenEvent(index=2, text="world").model_dump_json())
    response: httpx.Response = await request
    assert response.status_code == 200  # it had started with the first token
    assert '"code":"backend_unavailable"' in response.text
    assert "world" not in response.text
    record = harness.redis.hgetall(keys.job_record(job_id))
    assert record[b"status"] == JobStatus.CANCELLED.encode()
