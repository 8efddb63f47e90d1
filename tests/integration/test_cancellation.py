"""Cancellation against the real stack: a client that leaves, and DELETE from another replica.

"Free" is when the worker's runner released its engine slot (the record's `ended_at`, written
by the worker right after). The tests check what happened and in which order, never how
fast: the job is recorded cancelled after its client left, its worker stopped it mid-run (its
log says `cancelled`, where a job run to its end says `length`), and the same worker then
took the next job. How long the disconnect-to-free takes is a figure the benchmark reports
(tests/benchmarks/queue_timings.py, `disconnect_to_worker_free`), which a test on a shared,
loaded machine cannot bound.
"""

import json
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
from tests.integration.procs import ApiProcess, RedisServer, WorkerProcess

pytestmark = pytest.mark.integration

# A liveness bound on waits, far above what they take: 3000 tokens take longer than this on
# the test machine, and the worker's log line (below) tells a stop from a run to the end.
WAIT_S = 30.0


def cancelled(redis_server: RedisServer, job_id: str) -> JobRecord:
    redis = redis_server.client()
    return wait_until(
        lambda: (r := record(redis, job_id)).ended_at is not None and r,
        WAIT_S,
        "the worker to stop",
    )


def worker_outcome(worker: WorkerProcess, job_id: str) -> str:
    """The outcome of the worker's `job finished` log line for the job."""

    def finished() -> list[dict[str, object]]:
        lines = [json.loads(line) for line in worker.output().splitlines() if line.startswith("{")]
        return [
            line
            for line in lines
            if line.get("job_id") == job_id and line.get("message") == "job finished"
        ]

    (line,) = wait_until(finished, WAIT_S, f"the worker's log line for job {job_id}")
    return str(line["outcome"])


def assert_stopped_then_free(
    ended: JobRecord,
    gone_at: float,
    worker: WorkerProcess,
    api: ApiProcess,
    redis_server: RedisServer,
) -> None:
    assert ended.status is JobStatus.CANCELLED
    assert ended.cancel_requested_at is not None and ended.ended_at is not None
    # In this order: the client left, the API flagged the job, the worker stopped it.
    assert gone_at <= ended.cancel_requested_at <= ended.ended_at, (gone_at, ended)
    # Stopped at a check between tokens, not run to its 3000 tokens.
    assert worker_outcome(worker, ended.id) == "cancelled"
    assert_took_the_next_job(ended, api, redis_server)


def assert_took_the_next_job(ended: JobRecord, api: ApiProcess, redis: RedisServer) -> None:
    """The worker that ran `ended` runs the next job, after it ended."""
    next_one = httpx.post(
        f"{api.url}/v1/completions", json={**LONG, "stream": False, "max_tokens": 2}, timeout=60
    )
    assert next_one.status_code == 200
    ran = record(redis.client(), next_one.json()["id"].removeprefix("cmpl-"))
    assert ran.status is JobStatus.DONE and ran.worker == ended.worker
    assert ran.started_at is not None and ended.ended_at is not None
    assert ran.started_at >= ended.ended_at


def test_a_client_leaving_mid_stream_frees_the_worker(
    api: ApiProcess, worker: WorkerProcess, redis_server: RedisServer
) -> None:
    with httpx.stream("POST", f"{api.url}/v1/completions", json=LONG, timeout=60) as response:
        job_id = response.headers["X-Job-Id"]
        events = sse(response)
        for _, _event in zip(range(5), events, strict=False):
            pass
        gone_at = time.time()
        response.close()
    ended = cancelled(redis_server, job_id)
    assert_stopped_then_free(ended, gone_at, worker, api, redis_server)


def test_a_client_leaving_a_plain_request_mid_run_frees_the_worker(
    api: ApiProcess, worker: WorkerProcess, redis_server: RedisServer
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
    ended = cancelled(redis_server, job_id)
    assert_stopped_then_free(ended, gone_at, worker, api, redis_server)


def test_delete_from_another_replica_ends_the_stream_with_an_error(
    api: ApiProcess,
    limited_apis: tuple[ApiProcess, ApiProcess],
    worker: WorkerProcess,
    redis_server: RedisServer,
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
    assert ended.cancel_requested_at is not None and ended.ended_at is not None
    assert deleted_at <= ended.cancel_requested_at <= ended.ended_at, (deleted_at, ended)
    # Stopped long before its 3000 tokens (the worker's log says so), and free for the next.
    assert worker_outcome(worker, job_id) == "cancelled"
    assert_took_the_next_job(ended, api, redis_server)
