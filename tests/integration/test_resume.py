"""Streams that survive a dropped connection, and Idempotency-Key, against the real stack:
two API replicas on one Redis and the session's worker (one slot: greedy output does not
depend on a batch).

Replica A serves the first connection; the client drops it mid-answer and comes back through
replica B, which has never seen the request.
"""

import itertools
import json
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from openai import OpenAI

from shared.lifecycle import JobStatus
from shared.settings import DEFAULT_MODEL
from tests.integration.clients import LONG, Frame, record, sse_frames
from tests.integration.procs import ApiProcess, RedisServer, WorkerProcess
from tests.integration.test_cancellation import cancelled, worker_outcome

pytestmark = pytest.mark.integration

GREEDY = {
    "model": DEFAULT_MODEL,
    "prompt": "The three primary colours are",
    "max_tokens": 80,
    "temperature": 0,
    "ignore_eos": True,
}
TIMEOUT_S = 120.0


@pytest.fixture(scope="module")
def replica_b(redis_server: RedisServer, worker: WorkerProcess, logs: Path) -> Iterator[ApiProcess]:
    proc = ApiProcess(redis_server, logs / "api-replica-b.log")
    try:
        yield proc
    finally:
        proc.stop()


def completion_text(frames: Iterator[Frame]) -> tuple[list[str], list[int | None]]:
    """The text deltas and ids of an OpenAI completion stream's chunks, to its [DONE]."""
    texts, ids = [], []
    for frame in frames:
        if frame.data == "[DONE]":
            break
        chunk = json.loads(frame.data)
        assert "error" not in chunk, chunk
        if chunk["choices"] and chunk["choices"][0]["text"]:
            texts.append(chunk["choices"][0]["text"])
            ids.append(frame.id)
    return texts, ids


def test_a_stream_dropped_on_one_replica_resumes_on_another_without_gap_or_repeat(
    api: ApiProcess, replica_b: ApiProcess
) -> None:
    whole = httpx.post(f"{api.url}/v1/completions", json=GREEDY, timeout=TIMEOUT_S)
    assert whole.status_code == 200, whole.text
    reference = whole.json()["choices"][0]["text"]

    first: list[str] = []
    ids: list[int | None] = []
    with httpx.stream(
        "POST",
        f"{api.url}/v1/completions",
        json={**GREEDY, "stream": True},
        headers={"X-Disconnect-Grace": "60"},  # the job goes on while the client is away
        timeout=TIMEOUT_S,
    ) as response:
        assert response.status_code == 200
        job_id = response.headers["X-Job-Id"]
        frames = sse_frames(response)
        for frame in frames:
            chunk = json.loads(frame.data)
            if chunk["choices"] and chunk["choices"][0]["text"]:
                first.append(chunk["choices"][0]["text"])
                ids.append(frame.id)
            if len(first) == 10:
                break
    # The connection is closed: replica B has never seen this request.
    assert ids == list(range(1, 11))
    with httpx.stream(
        "GET",
        f"{replica_b.url}/v1/jobs/{job_id}/events",
        headers={"Last-Event-ID": str(ids[-1])},
        timeout=TIMEOUT_S,
    ) as response:
        assert response.status_code == 200, response.read()
        rest, rest_ids = completion_text(sse_frames(response))
    assert "".join(first + rest) == reference
    assert rest_ids == list(range(11, 11 + len(rest)))


def test_events_after_n_in_the_anthropic_format_of_the_original_request(
    api: ApiProcess, replica_b: ApiProcess
) -> None:
    body = {
        "model": DEFAULT_MODEL,
        "max_tokens": 30,
        "temperature": 0,
        "stream": True,
        "messages": [{"role": "user", "content": "Name three colours."}],
    }
    with httpx.stream(
        "POST", f"{api.url}/v1/messages", json=body, headers={"x-api-key": "k"}, timeout=TIMEOUT_S
    ) as response:
        job_id = response.headers["X-Job-Id"]
        frames = list(sse_frames(response))
    deltas = [
        json.loads(f.data)["delta"]["text"] for f in frames if f.event == "content_block_delta"
    ]
    assert frames[0].event == "message_start" and frames[0].id == 0
    assert len(deltas) > 3

    with httpx.stream(
        "GET", f"{replica_b.url}/v1/jobs/msg_{job_id}/events?after=3", timeout=TIMEOUT_S
    ) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        later = list(sse_frames(response))
    assert [f.event for f in later if f.event != "content_block_delta"] == [
        "content_block_stop",
        "message_delta",
        "message_stop",
    ]
    again = [json.loads(f.data)["delta"]["text"] for f in later if f.event == "content_block_delta"]
    assert again == deltas[3:]
    assert later[0].id == 4

    with httpx.stream(
        "GET", f"{replica_b.url}/v1/jobs/{job_id}/events", timeout=TIMEOUT_S
    ) as response:
        replayed = list(sse_frames(response))
    assert replayed == frames  # from the start: the same frames, start frames included


def test_events_of_an_ollama_stream_are_ndjson(api: ApiProcess, replica_b: ApiProcess) -> None:
    body = {"model": DEFAULT_MODEL, "prompt": "Hello", "stream": True}
    body["options"] = {"temperature": 0, "num_predict": 20}
    with httpx.stream("POST", f"{api.url}/api/generate", json=body, timeout=TIMEOUT_S) as response:
        job_id = response.headers["X-Job-Id"]
        lines = [json.loads(line) for line in response.iter_lines() if line]
    with httpx.stream(
        "GET", f"{replica_b.url}/v1/jobs/{job_id}/events?after=2", timeout=TIMEOUT_S
    ) as response:
        assert response.headers["content-type"].startswith("application/x-ndjson")
        later = [json.loads(line) for line in response.iter_lines() if line]
    assert [x["response"] for x in later[:-1]] == [x["response"] for x in lines[2:-1]]
    assert later[-1]["done"] is True and later[-1]["eval_count"] == lines[-1]["eval_count"]


def test_a_disconnect_without_reconnect_cancels_after_the_grace(
    api: ApiProcess, worker: WorkerProcess, redis_server: RedisServer
) -> None:
    grace_s = 1.0
    with httpx.stream(
        "POST",
        f"{api.url}/v1/completions",
        json=LONG,
        headers={"X-Disconnect-Grace": str(grace_s)},
        timeout=60,
    ) as response:
        job_id = response.headers["X-Job-Id"]
        for _, _frame in zip(range(5), sse_frames(response), strict=False):
            pass
        gone_at = time.time()
    ended = cancelled(redis_server, job_id)
    assert ended.status is JobStatus.CANCELLED and ended.cancel_requested_at is not None
    assert ended.cancel_requested_at >= gone_at + grace_s, (gone_at, ended)
    assert worker_outcome(worker, job_id) == "cancelled"


def test_an_idempotent_retry_joins_the_running_job_on_another_replica(
    api: ApiProcess, replica_b: ApiProcess, redis_server: RedisServer
) -> None:
    key = {"Idempotency-Key": f"resume-{uuid.uuid4()}"}
    body = {**GREEDY, "stream": True, "max_tokens": 60}
    with httpx.stream(
        "POST", f"{api.url}/v1/completions", json=body, headers=key, timeout=TIMEOUT_S
    ) as first:
        job_id = first.headers["X-Job-Id"]
        frames = sse_frames(first)
        head, _ = completion_text(itertools.islice(frames, 3))
        # The client retries on another replica while the job runs (its answer is not over).
        assert record(redis_server.client(), job_id).status is JobStatus.RUNNING
        with httpx.stream(
            "POST", f"{replica_b.url}/v1/completions", json=body, headers=key, timeout=TIMEOUT_S
        ) as retry:
            assert retry.status_code == 200
            assert retry.headers["X-Job-Id"] == job_id  # the same job, not a second one
            joined, joined_ids = completion_text(sse_frames(retry))
        tail, _ = completion_text(frames)
    assert "".join(joined) == "".join(head + tail)
    assert joined_ids == list(range(1, len(joined) + 1))
    assert record(redis_server.client(), job_id).attempt == 1


def test_an_idempotent_retry_after_the_end_returns_the_result_and_another_body_is_422(
    api: ApiProcess, replica_b: ApiProcess
) -> None:
    key = {"Idempotency-Key": f"done-{uuid.uuid4()}"}
    params = {k: v for k, v in GREEDY.items() if k != "ignore_eos"}
    clients = [
        OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0, timeout=TIMEOUT_S)
        for url in (api.url, replica_b.url)
    ]
    first = clients[0].completions.create(**params, extra_headers=key)  # type: ignore[call-overload]
    again = clients[1].completions.create(**params, extra_headers=key)  # type: ignore[call-overload]
    assert again.id == first.id
    assert again.choices[0].text == first.choices[0].text
    assert again.usage == first.usage

    other = httpx.post(  # the same tenant (the clients' key), another body
        f"{replica_b.url}/v1/completions",
        json={**params, "max_tokens": 5},
        headers={**key, "Authorization": "Bearer unused"},
        timeout=TIMEOUT_S,
    )
    assert other.status_code == 422
    assert other.json()["error"]["code"] == "idempotency_key_reused"
    # Another tenant's same key is another request.
    theirs = httpx.post(
        f"{replica_b.url}/v1/completions",
        json={**params, "max_tokens": 5},
        headers={**key, "Authorization": "Bearer someone-else"},
        timeout=TIMEOUT_S,
    )
    assert theirs.status_code == 200 and theirs.json()["id"] != first.id


def test_bad_resume_headers_are_400(api: ApiProcess) -> None:
    for headers in ({"Last-Event-ID": "x"}, {"X-Disconnect-Grace": "-1"}):
        response = httpx.post(
            f"{api.url}/v1/completions", json={**GREEDY, "stream": True}, headers=headers
        )
        assert response.status_code == 400, response.text
    unknown = httpx.get(f"{api.url}/v1/jobs/{uuid.uuid4().hex}/events")
    assert unknown.status_code == 404
    assert unknown.json()["error"]["code"] == "job_not_found"
