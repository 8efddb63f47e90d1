"""SSE ids, `GET /v1/jobs/{id}/events`, Idempotency-Key and the disconnect grace, over
fakeredis with the real worker class on the fake engine (output: "Hello", ",", " world")."""

import json
import time

import fakeredis
import pytest
from redis.asyncio.sentinel import SentinelConnectionPool as AsyncSentinelPool
from redis.sentinel import SentinelConnectionPool

from shared import keys
from shared.lifecycle import JobStatus
from shared.lifecycle.api_side import ApiJobs
from shared.redis_clients import async_redis, sync_redis
from shared.settings import ApiSettings, Settings
from tests.unit.api.harness import MODEL, Harness

CHAT = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "stream": True}


def _frames(text: str) -> list[tuple[int | None, str]]:
    """(id, data) of each SSE frame with data."""
    found = []
    for frame in text.split("\n\n"):
        fields = dict(line.split(": ", 1) for line in frame.splitlines() if ": " in line)
        if "data" in fields:
            found.append((int(fields["id"]) if "id" in fields else None, fields["data"]))
    return found


async def test_every_sse_frame_has_the_id_of_its_event(harness: Harness) -> None:
    response = await harness.call("/v1/chat/completions", CHAT)
    frames = _frames(response.text)
    assert [i for i, _ in frames] == [0, 1, 2, 3, 4, 4]  # start, 3 tokens, finish + [DONE]
    assert frames[-1] == (4, "[DONE]")


async def test_events_after_n_replays_the_rest_in_the_original_format(harness: Harness) -> None:
    response = await harness.call("/v1/chat/completions", CHAT)
    job_id = response.headers["X-Job-Id"]
    rest = await harness.client.get(f"/v1/jobs/chatcmpl-{job_id}/events?after=1")
    assert rest.status_code == 200 and rest.headers["X-Job-Id"] == job_id
    frames = _frames(rest.text)
    assert [i for i, _ in frames] == [2, 3, 4, 4]
    texts = [json.loads(d)["choices"][0]["delta"].get("content") for _, d in frames[:2]]
    assert texts == [",", " world"]
    again = await harness.client.get(f"/v1/jobs/{job_id}/events", headers={"Last-Event-ID": "3"})
    assert [i for i, _ in _frames(again.text)] == [4, 4]
    whole = await harness.client.get(f"/v1/jobs/{job_id}/events")
    assert [i for i, _ in _frames(whole.text)] == [0, 1, 2, 3, 4, 4]


async def test_an_idempotent_retry_returns_the_first_answer_and_runs_nothing(
    harness: Harness,
) -> None:
    body = {**CHAT, "stream": False}
    key = {"Idempotency-Key": "order-1"}
    first = await harness.call("/v1/chat/completions", body, key)
    # Keys in another order are the same JSON body: the same request.
    again = await harness.client.post(
        "/v1/chat/completions",
        content=json.dumps(dict(reversed(body.items()))),
        headers={**key, "Content-Type": "application/json"},
    )
    assert again.status_code == 200
    assert again.json()["id"] == first.json()["id"]
    assert again.json()["choices"] == first.json()["choices"]
    assert len(harness.recorded_jobs()) == 1
    other = await harness.client.post(
        "/v1/chat/completions", json={**body, "max_tokens": 2}, headers=key
    )
    assert other.status_code == 422
    assert other.json()["error"]["code"] == "idempotency_key_reused"
    elsewhere = await harness.client.post("/api/chat", json=body, headers=key)
    assert elsewhere.status_code == 422  # another path: another request
    for flavour_path in ("/v1/messages", "/api/chat"):
        bad = await harness.client.post(flavour_path, json=body, headers={"Idempotency-Key": ""})
        assert bad.status_code == 400


async def test_a_detached_job_is_cancelled_after_its_grace_unless_attached_again() -> None:
    redis = fakeredis.FakeAsyncRedis()
    jobs = ApiJobs(redis, 3600)
    await redis.hset(keys.job_record("kept"), mapping={"model": MODEL, "status": "running"})
    await redis.hset(keys.job_record("gone"), mapping={"model": MODEL, "status": "running"})
    for job_id in ("kept", "gone"):
        await redis.set(keys.job_listeners(job_id), 1)
        await jobs.detach(job_id, grace_s=0.2)
    await jobs.attach("kept")  # a client came back
    assert await jobs.reap_detached() == []  # the grace is not over
    time.sleep(0.25)
    assert await jobs.reap_detached() == ["gone"]
    assert (await redis.hget(keys.job_record("gone"), "status")) == JobStatus.CANCELLED.encode()
    assert (await redis.hget(keys.job_record("kept"), "status")) == b"running"
    # A job with another listener left is not due.
    await redis.set(keys.job_listeners("kept"), 2)
    await jobs.detach("kept", grace_s=0)
    assert await redis.zcard(keys.detached_jobs()) == 0
    assert (await redis.hget(keys.job_record("kept"), "status")) == b"running"


def test_sentinel_settings_parse_and_build_sentinel_clients() -> None:
    settings = Settings.model_validate(
        {"redis_sentinels": "10.0.0.1:26379, 10.0.0.2:26380", "redis_url": "redis://:pw@x/3"}
    )
    assert settings.redis_sentinels == [("10.0.0.1", 26379), ("10.0.0.2", 26380)]
    client = sync_redis(settings)
    assert isinstance(client.connection_pool, SentinelConnectionPool)
    assert client.connection_pool.connection_kwargs["db"] == 3
    assert client.connection_pool.connection_kwargs["password"] == "pw"
    assert isinstance(async_redis(settings).connection_pool, AsyncSentinelPool)
    with pytest.raises(ValueError, match="host:port"):
        Settings.model_validate({"redis_sentinels": "nohostport"})
    with pytest.raises(ValueError, match="idempotency_ttl_s"):
        ApiSettings(idempotency_ttl_s=100, events_retention_s=10)
