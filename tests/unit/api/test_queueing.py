"""Queueing seen through the API over fakeredis: 429, position, job routes, disconnects."""

import asyncio
import json
import time
from typing import Any

import httpx
import pytest
from redis.exceptions import ConnectionError as RedisConnectionError

from shared import keys
from shared.lifecycle import JobStatus
from shared.lifecycle.queue import queue_depth
from shared.queues import model_queue
from tests.unit.api.harness import MODEL, Harness

CHAT = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}]}


async def queued(harness: Harness, body: dict[str, Any]) -> "asyncio.Task[httpx.Response]":
    """Send a request and return once its job is waiting in the queue."""
    before = model_queue(harness.redis, MODEL).count
    task = asyncio.create_task(harness.client.post("/v1/chat/completions", json=body))
    while model_queue(harness.redis, MODEL).count == before:
        assert not task.done(), task.result().text
        await asyncio.sleep(0.005)
    return task


def job_id_in_queue(harness: Harness, index: int = -1) -> str:
    return model_queue(harness.redis, MODEL).job_ids[index].rsplit("-", 1)[0]


@pytest.mark.settings(max_queued=2)
async def test_over_the_limit_is_429_with_retry_after_in_openai_shape(harness: Harness) -> None:
    waiting = [await queued(harness, CHAT) for _ in range(2)]
    response = await harness.client.post("/v1/chat/completions", json=CHAT)
    assert response.status_code == 429
    assert response.json()["error"]["type"] == "rate_limit_error"
    assert response.json()["error"]["code"] == "rate_limit_exceeded"
    assert 1 <= int(response.headers["Retry-After"]) <= 60
    harness.work()
    assert [(await w).status_code for w in waiting] == [200, 200]


@pytest.mark.settings(max_queued=1)
async def test_retry_after_comes_from_the_drain_rate(harness: Harness) -> None:
    for _ in range(3):  # three jobs finish: 3 per 30 s window
        assert (await harness.call("/v1/chat/completions", CHAT)).status_code == 200
    blocker = await queued(harness, CHAT)
    response = await harness.client.post("/v1/chat/completions", json=CHAT)
    assert response.headers["Retry-After"] == "10"  # 1 waiting / (3 / 30 s)
    harness.work()
    await blocker


async def test_get_job_shows_state_and_position(harness: Harness) -> None:
    first = await queued(harness, CHAT)
    second = await queued(harness, CHAT)
    job_id = job_id_in_queue(harness)
    view = (await harness.client.get(f"/v1/jobs/{job_id}")).json()
    assert view["status"] == "queued" and view["position"] == 2 and view["model"] == MODEL
    # The response id of the flavour works too.
    assert (await harness.client.get(f"/v1/jobs/chatcmpl-{job_id}")).json()["id"] == job_id
    harness.work()
    await first
    await second
    view = (await harness.client.get(f"/v1/jobs/{job_id}")).json()
    assert view["status"] == "done" and view["position"] is None and view["worker"] == "w1"
    missing = await harness.client.get(f"/v1/jobs/{'0' * 32}")
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "job_not_found"


@pytest.mark.parametrize("stream", [False, True])
async def test_delete_cancels_a_queued_job_which_never_runs(harness: Harness, stream: bool) -> None:
    waiting = await queued(harness, {**CHAT, "stream": stream})
    job_id = job_id_in_queue(harness)
    response = await harness.client.delete(f"/v1/jobs/{job_id}")
    assert response.status_code == 200 and response.json()["status"] == "cancelled"
    answer = await waiting  # cancelled before its stream started: a real status
    assert answer.status_code == 409 and answer.json()["error"]["code"] == "job_cancelled"
    assert model_queue(harness.redis, MODEL).count == 0
    harness.work()
    assert harness.engine.started_with == []
    again = await harness.client.delete(f"/v1/jobs/{job_id}")
    assert again.status_code == 409 and again.json()["error"]["code"] == "job_not_cancellable"


@pytest.mark.settings(queue_notice_after_s=0.0)
async def test_a_queued_stream_starts_with_its_position(harness: Harness) -> None:
    ahead = await queued(harness, CHAT)
    waiting = await queued(harness, {**CHAT, "stream": True})
    await asyncio.sleep(0.2)
    harness.work()
    await ahead
    response = await waiting
    assert response.status_code == 200
    assert response.headers["X-Queue-Position"] == "2"
    assert response.text.startswith(": queued position=2\n\n")
    chunks = [
        json.loads(line.removeprefix("data: "))
        for line in response.text.splitlines()
        if line.startswith("data: {")
    ]
    assert "".join(c["choices"][0]["delta"].get("content", "") for c in chunks if c["choices"]) == (
        "Hello, world"
    )


async def test_a_stream_that_does_not_wait_starts_without_a_position(harness: Harness) -> None:
    response = await harness.call("/v1/chat/completions", {**CHAT, "stream": True})
    assert "X-Queue-Position" not in response.headers
    assert len(response.headers["X-Job-Id"]) == 32
    assert not response.text.startswith(":")


@pytest.mark.settings(queue_deadline_s=0.3, queue_notice_after_s=0.05)
async def test_a_queued_stream_past_its_deadline_ends_with_an_error(harness: Harness) -> None:
    response = await harness.client.post("/v1/chat/completions", json={**CHAT, "stream": True})
    assert response.status_code == 200  # it started while queued, so the error is inside
    assert '"code":"deadline_exceeded"' in response.text
    assert response.text.endswith("data: [DONE]\n\n")
    state = await queue_depth(harness.state.redis, MODEL, 30)
    assert state.waiting == 0


async def asgi_post(harness: Harness, body: dict[str, Any], gone: asyncio.Event) -> list[Any]:
    """Drive the ASGI app by hand: the client disconnects when `gone` is set."""
    return await harness.asgi("/v1/chat/completions", body, gone=gone)


@pytest.mark.parametrize(
    "stream",
    [
        pytest.param(False, id="plain"),
        # Before the stream starts (the route class notices), and after it started early to
        # show the position (Starlette's streaming response notices).
        pytest.param(True, id="stream-held", marks=pytest.mark.settings(queue_notice_after_s=60)),
        pytest.param(True, id="stream-started", marks=pytest.mark.settings(queue_notice_after_s=0)),
    ],
)
async def test_a_client_leaving_while_queued_cancels_its_job(
    harness: Harness, stream: bool
) -> None:
    gone = asyncio.Event()
    request = asyncio.create_task(asgi_post(harness, {**CHAT, "stream": stream}, gone))
    queue = model_queue(harness.redis, MODEL)
    while queue.count == 0:
        await asyncio.sleep(0.005)
    job_id = job_id_in_queue(harness)
    gone.set()
    await asyncio.wait_for(request, 5)
    record = harness.redis.hgetall(keys.job_record(job_id))
    assert record[b"status"] == JobStatus.CANCELLED.encode()
    assert queue.count == 0
    assert (await queue_depth(harness.state.redis, MODEL, 30)).waiting == 0
    harness.work()
    assert harness.engine.started_with == []  # it never ran


async def test_redis_down_is_503_in_openai_shape(
    harness: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def down(*_args: object, **_kwargs: object) -> None:
        raise RedisConnectionError("Connection refused")

    monkeypatch.setattr(harness.state.redis, "zremrangebyscore", down)
    response = await harness.client.post("/v1/chat/completions", json=CHAT)
    assert response.status_code == 503
    assert response.json()["error"]["code"] == "backend_unavailable"
    monkeypatch.setattr(harness.state.redis, "ping", down)
    assert (await harness.client.get("/readyz")).status_code == 503


@pytest.mark.settings(queue_deadline_s=0.1)
async def test_get_job_expires_a_job_past_its_deadline(harness: Harness) -> None:
    from shared.job import ChatMessage, Flavour, GenerationJob
    from shared.lifecycle.admission import admit

    job = GenerationJob(
        model=MODEL,
        messages=[ChatMessage(role="user", content="hi")],
        flavour=Flavour.OPENAI,
        deadline=time.time() + 0.1,
    )
    assert admit(harness.redis, job, harness.settings) is None  # nobody waits for it
    await asyncio.sleep(0.2)
    view = (await harness.client.get(f"/v1/jobs/{job.id}")).json()
    assert view["status"] == "expired" and view["position"] is None
    assert model_queue(harness.redis, MODEL).count == 0
