"""Admission, deadlines and queued disconnects against the real stack, with two API replicas."""

import asyncio
import socket
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from typing import cast

import httpx
import openai
import pytest
from openai import OpenAI

from shared import keys
from shared.lifecycle import JobStatus
from shared.settings import DEFAULT_MODEL
from tests.integration.clients import busy_worker, record, sse, wait_until
from tests.integration.conftest import LIMIT, SHORT_DEADLINE_S
from tests.integration.procs import ApiProcess, Process, RedisServer

pytestmark = pytest.mark.integration

SHORT = {
    "model": DEFAULT_MODEL,
    "messages": [{"role": "user", "content": "Say hi."}],
    "max_tokens": 1,
}


async def burst(
    urls: list[str], per_api: int, busy: ExitStack, check: Callable[[], object]
) -> tuple[list[httpx.Response], object]:
    """Send the burst; once all but LIMIT requests have answered, note `check()` and release
    the busy worker so that the admitted ones can run."""
    async with httpx.AsyncClient(timeout=120) as client:
        requests = [
            asyncio.create_task(client.post(f"{url}/v1/chat/completions", json=SHORT))
            for _ in range(per_api)
            for url in urls
        ]
        deadline = time.monotonic() + 30
        while sum(r.done() for r in requests) < len(requests) - LIMIT:
            if time.monotonic() > deadline:
                break  # more than LIMIT were admitted: the assertions below will say so
            await asyncio.sleep(0.05)
        observed = check()
        busy.close()
        return list(await asyncio.gather(*requests)), observed


def test_a_burst_from_two_replicas_admits_no_more_than_the_limit(
    api: ApiProcess, limited_apis: tuple[ApiProcess, ApiProcess], redis_server: RedisServer
) -> None:
    redis = redis_server.client()
    for replica in limited_apis:  # load their tokenizers first, so the burst is one burst
        warm = httpx.post(f"{replica.url}/v1/chat/completions", json={**SHORT, "max_tokens": 10**6})
        assert warm.json()["error"]["code"] == "context_length_exceeded"
    with ExitStack() as busy:
        busy_job = busy.enter_context(busy_worker(api.url))  # nothing leaves the queue
        answers, busy_status = asyncio.run(
            burst(
                [a.url for a in limited_apis],
                per_api=8,
                busy=busy,
                check=lambda: record(redis, busy_job).status,
            )
        )
    assert busy_status is JobStatus.RUNNING  # so no slot freed during the burst
    refused = [r for r in answers if r.status_code == 429]
    admitted = [r for r in answers if r.status_code != 429]
    assert len(admitted) == LIMIT, [r.status_code for r in answers]
    assert {r.status_code for r in admitted} == {200}  # they ran once the worker was free
    for response in refused:
        error = response.json()["error"]
        assert error["type"] == "rate_limit_error" and error["code"] == "rate_limit_exceeded"
        assert 1 <= int(response.headers["Retry-After"]) <= 60
    assert redis.zcard(keys.waiting_jobs(DEFAULT_MODEL)) == 0


def test_the_openai_client_sees_429_as_rate_limit_error(
    api: ApiProcess, limited_apis: tuple[ApiProcess, ApiProcess], redis_server: RedisServer
) -> None:
    url = limited_apis[0].url
    client = OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0)
    redis = redis_server.client()
    with ThreadPoolExecutor(LIMIT) as pool:
        with busy_worker(api.url):
            fillers = [
                pool.submit(httpx.post, f"{url}/v1/chat/completions", json=SHORT, timeout=60)
                for _ in range(LIMIT)
            ]
            wait_until(
                lambda: redis.zcard(keys.waiting_jobs(DEFAULT_MODEL)) == LIMIT, 10, "a full queue"
            )
            with pytest.raises(openai.RateLimitError) as info:
                client.chat.completions.create(**SHORT)  # type: ignore[call-overload]
            assert info.value.code == "rate_limit_exceeded"
            assert int(info.value.response.headers["retry-after"]) >= 1
        assert [f.result().status_code for f in fillers] == [200] * LIMIT


def test_a_job_waiting_past_its_deadline_never_starts(
    api: ApiProcess, spawn: Callable[..., Process], redis_server: RedisServer
) -> None:
    env = {
        "TOKENQ_QUEUE_DEADLINE_S": str(SHORT_DEADLINE_S),
        "TOKENQ_QUEUE_NOTICE_AFTER_S": "0.3",
    }
    short_deadline = cast(ApiProcess, spawn("api", env=env))
    redis = redis_server.client()
    with busy_worker(api.url):
        started = time.monotonic()
        plain = httpx.post(f"{short_deadline.url}/v1/chat/completions", json=SHORT, timeout=60)
        waited = time.monotonic() - started
        assert plain.status_code == 504, plain.text
        assert plain.json()["error"]["code"] == "deadline_exceeded"
        assert SHORT_DEADLINE_S <= waited < SHORT_DEADLINE_S + 5

        with httpx.stream(
            "POST",
            f"{short_deadline.url}/v1/chat/completions",
            json={**SHORT, "stream": True},
            timeout=60,
        ) as stream:
            # It had to wait, so its stream started early and shows its place in line.
            assert stream.status_code == 200
            assert stream.headers["X-Queue-Position"] == "1"
            job_id = stream.headers["X-Job-Id"]
            lines = [line for line in stream.iter_lines() if line]
        assert lines[0] == ": queued position=1"
        errors = [line for line in lines if '"error"' in line]
        assert len(errors) == 1 and "deadline_exceeded" in errors[0]
        assert lines[-1] == "data: [DONE]"
    expired = record(redis, job_id)
    assert expired.status is JobStatus.EXPIRED and expired.started_at is None
    assert redis.zcard(keys.waiting_jobs(DEFAULT_MODEL)) == 0


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "stream"])
def test_a_client_leaving_while_queued_removes_its_job(
    api: ApiProcess, redis_server: RedisServer, stream: bool
) -> None:
    redis = redis_server.client()
    with busy_worker(api.url):
        before = set(redis.zrange(keys.waiting_jobs(DEFAULT_MODEL), 0, -1))
        sock = _send_raw(api.url, {**SHORT, "stream": stream})
        rq_id = wait_until(
            lambda: set(redis.zrange(keys.waiting_jobs(DEFAULT_MODEL), 0, -1)) - before,
            10,
            "the job to be queued",
        ).pop()
        job_id = rq_id.decode().rsplit("-", 1)[0]
        sock.close()  # the client goes away while its job waits
        # Cancelled once the disconnect grace (TOKENQ_DISCONNECT_GRACE_S, 5 s) has passed
        # without a client coming back for it.
        wait_until(
            lambda: record(redis, job_id).status is JobStatus.CANCELLED, 20, "the cancellation"
        )
        assert redis.zcard(keys.waiting_jobs(DEFAULT_MODEL)) == 0
    # The worker is free again and the cancelled job never ran.
    assert httpx.post(f"{api.url}/v1/chat/completions", json=SHORT, timeout=60).status_code == 200
    assert record(redis, job_id).started_at is None


def _send_raw(url: str, body: dict[str, object]) -> socket.socket:
    """A POST whose connection the test closes by hand, as a client that gives up would."""
    payload = httpx.Request("POST", f"{url}/v1/chat/completions", json=body)
    host, port = payload.url.host, payload.url.port
    assert port is not None
    sock = socket.create_connection((host, port))
    content = payload.read()
    head = (
        f"POST /v1/chat/completions HTTP/1.1\r\nHost: {host}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(content)}\r\n\r\n"
    )
    sock.sendall(head.encode() + content)
    return sock


def test_get_job_reports_the_state_from_any_replica(
    api: ApiProcess, limited_apis: tuple[ApiProcess, ApiProcess]
) -> None:
    with httpx.stream(
        "POST", f"{api.url}/v1/chat/completions", json={**SHORT, "stream": True}, timeout=60
    ) as response:
        job_id = response.headers["X-Job-Id"]
        events = list(sse(response))
    assert events[-1]["choices"][0]["finish_reason"] == "length"
    view = httpx.get(f"{limited_apis[0].url}/v1/jobs/chatcmpl-{job_id}").json()
    assert view["status"] == "done" and view["id"] == job_id and view["attempt"] == 1
