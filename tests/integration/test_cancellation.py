"""Cancellation against the real stack: a client that leaves, and DELETE from another replica.

"Free" is when the worker's runner released its engine slot (the record's `ended_at`, written
by the worker right after); the issue asks for that within 100 ms of the disconnect.
"""

import socket
import time

import httpx
import openai
import pytest
from openai import OpenAI

from shared import keys
from shared.lifecycle import JobRecord, JobStatus
from shared.settings import DEFAULT_MODEL
from tests.integration.clients import LONG, record, sse, wait_until
from tests.integration.procs import ApiProcess, RedisServer

pytestmark = pytest.mark.integration

FREE_WITHIN_S = 0.1


def cancelled(redis_server: RedisServer, job_id: str) -> JobRecord:
    redis = redis_server.client()
    return wait_until(
        lambda: (r := record(redis, job_id)).ended_at is not None and r, 5, "the worker to stop"
    )


def assert_free_soon_after(ended: JobRecord, gone_at: float) -> None:
    assert ended.status is JobStatus.CANCELLED
    assert ended.cancel_requested_at is not None and ended.ended_at is not None
    # The worker's own part: from the cancel flag to its slot being free.
    assert ended.ended_at - ended.cancel_requested_at < FREE_WITHIN_S, ended
    # From the client leaving to the worker being free.
    assert ended.ended_at - gone_at < FREE_WITHIN_S, (ended, gone_at)


def test_a_client_leaving_mid_stream_frees_the_worker_within_100ms(
    api: ApiProcess, redis_server: RedisServer
) -> None:
    with httpx.stream("POST", f"{api.url}/v1/completions", json=LONG, timeout=60) as response:
        job_id = response.headers["X-Job-Id"]
        events = sse(response)
        for _, _event in zip(range(5), events, strict=False):
            pass
        gone_at = time.time()
        response.close()
    assert_free_soon_after(cancelled(redis_server, job_id), gone_at)
    next_one = httpx.post(
        f"{api.url}/v1/completions", json={**LONG, "stream": False, "max_tokens": 2}, timeout=60
    )
    assert next_one.status_code == 200  # the worker took the next job


def test_a_client_leaving_a_plain_request_mid_run_frees_the_worker(
    api: ApiProcess, redis_server: RedisServer
) -> None:
    redis = redis_server.client()
    body = httpx.Request("POST", f"{api.url}/v1/completions", json={**LONG, "stream": False}).read()
    sock = socket.create_connection(("127.0.0.1", api.port))
    sock.sendall(
        b"POST /v1/completions HTTP/1.1\r\nHost: tokenq\r\nContent-Type: application/json\r\n"
        + f"Content-Length: {len(body)}\r\n\r\n".encode()
        + body
    )
    running = wait_until(
        lambda: redis.zrange(keys.running_jobs(DEFAULT_MODEL), 0, -1), 30, "the job to run"
    )
    job_id = running[0].decode()
    wait_until(lambda: record(redis, job_id).streamed, 30, "its first token")
    gone_at = time.time()
    sock.close()
    assert_free_soon_after(cancelled(redis_server, job_id), gone_at)


def test_delete_from_another_replica_ends_the_stream_with_an_error(
    api: ApiProcess, limited_apis: tuple[ApiProcess, ApiProcess], redis_server: RedisServer
) -> None:
    client = OpenAI(base_url=f"{api.url}/v1", api_key="unused", max_retries=0)
    params = {key: value for key, value in LONG.items() if key != "stream"}
    stream = client.completions.create(**params, stream=True)  # type: ignore[call-overload]
    chunks = iter(stream)
    first = next(chunks)
    job_id = first.id.removeprefix("cmpl-")
    other = limited_apis[0]
    deleted_at = time.time()
    response = httpx.delete(f"{other.url}/v1/jobs/{first.id}")
    assert response.status_code == 200 and response.json()["status"] == "cancelled"
    with pytest.raises(openai.APIError) as info:
        for _chunk in chunks:
            pass
    assert "cancelled" in info.value.message
    ended = cancelled(redis_server, job_id)
    # Stopped long before its 3000 tokens (the 100 ms bound is the disconnect tests' job).
    assert ended.ended_at is not None and ended.ended_at - deleted_at < 10
