"""The request pipeline: keep-alives on quiet streams, and unrouted requests in each
flavour's shape (with a `request finished` line)."""

import logging

import pytest

from shared.lifecycle import JobStatus
from tests.unit.api.harness import MODEL, Harness

CHAT = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "stream": True}


@pytest.mark.settings(sse_keepalive_s=0.2, queue_notice_after_s=30, queue_deadline_s=1.0)
async def test_a_quiet_stream_sends_keepalive_comments(harness: Harness) -> None:
    # Nobody performs the job: it stays queued, silent, with no position notice due, until
    # its deadline ends the stream with an error event.
    response = await harness.client.post("/v1/chat/completions", json=CHAT)
    assert response.status_code == 200
    frames = response.text.split("\n\n")
    assert frames[:3] == [": ping", ": ping", ": ping"]
    assert '"code": "deadline_exceeded"' in frames[-3].replace('":"', '": "')
    record = await harness.state.jobs.record(response.headers["X-Job-Id"])
    assert record is not None and record.status is JobStatus.EXPIRED


@pytest.mark.settings(sse_keepalive_s=0.2, queue_notice_after_s=30)
async def test_ndjson_streams_send_no_keepalive(harness: Harness) -> None:
    body = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}]}
    response = await harness.call("/api/chat", body)  # streams by default
    lines = response.text.splitlines()
    assert lines and all(line.startswith("{") for line in lines)


@pytest.mark.parametrize(
    ("method", "path", "status", "shape"),
    [
        ("GET", "/v1/nope", 404, "openai"),
        ("POST", "/v1/chat/completion", 404, "openai"),
        ("GET", "/v1/chat/completions", 405, "openai"),
        ("POST", "/v1/messages/nope", 404, "anthropic"),
        ("GET", "/v1/messages", 405, "anthropic"),
        ("GET", "/api/nope", 404, "ollama"),
        ("GET", "/api/chat", 405, "ollama"),
    ],
)
async def test_unrouted_requests_answer_in_the_flavours_shape(
    harness: Harness,
    caplog: pytest.LogCaptureFixture,
    method: str,
    path: str,
    status: int,
    shape: str,
) -> None:
    with caplog.at_level(logging.INFO, logger="tokenq.requests"):
        response = await harness.client.request(method, path, json={})
    assert response.status_code == status
    body = response.json()
    if shape == "openai":
        assert body["error"]["message"] and body["error"]["type"] == "invalid_request_error"
    elif shape == "anthropic":
        assert body["type"] == "error" and body["error"]["type"] == "invalid_request_error"
        assert body["error"]["message"]
    else:
        assert set(body) == {"error"} and body["error"]
    if status == 405:
        assert "POST" in response.headers["Allow"]
    finished = [r for r in caplog.records if r.getMessage() == "request finished"]
    assert [r.__dict__["status"] for r in finished] == [status]
    assert harness.state.metrics.registry.get_sample_value(
        "tokenq_requests_total", {"model": "", "flavour": shape, "status": str(status)}
    )


async def test_other_paths_keep_the_default_answer(harness: Harness) -> None:
    response = await harness.client.get("/nowhere")
    assert response.status_code == 404
    assert response.json() == {"detail": "Not Found"}
