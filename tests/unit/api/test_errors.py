"""Errors in every flavour's shape."""

import asyncio
import json

import pytest

from shared.events import ErrorCode, ErrorEvent, TokenEvent
from shared.queues import model_queue
from tests.unit.api.harness import MODEL, Harness
from worker.publisher import RedisPublisher

CHAT = [{"role": "user", "content": "hi"}]


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/v1/chat/completions", {"model": MODEL, "messages": CHAT, "stream": True}),
        ("/v1/messages", {"model": MODEL, "messages": CHAT, "max_tokens": 8, "stream": True}),
        ("/api/chat", {"model": MODEL, "messages": CHAT}),
    ],
    ids=["openai", "anthropic", "ollama"],
)
async def test_a_worker_lost_mid_stream_ends_the_stream_with_worker_lost(
    harness: Harness, path: str, body: dict[str, object]
) -> None:
    request = asyncio.create_task(harness.client.post(path, json=body))
    queue = model_queue(harness.redis, MODEL)
    while queue.count == 0:
        await asyncio.sleep(0.005)
    job_id = queue.jobs[0].args[0]["id"]
    # What the API's watcher sends once the dead worker's job had streamed (api/jobs.py).
    publisher = RedisPublisher(harness.redis)
    publisher.publish(job_id, TokenEvent(index=0, text="Hel"))
    lost = ErrorEvent(code=ErrorCode.WORKER_LOST, message="the worker running the job died")
    publisher.publish(job_id, lost)
    response = await request
    assert response.status_code == 200  # the stream had started
    if path.startswith("/v1/chat"):
        error = json.loads(response.text.split("data: ")[-2].split("\n")[0])["error"]
        assert error["code"] == "worker_lost" and error["type"] == "server_error", error
    elif path.startswith("/v1/messages"):
        event = response.text.split("event: ")[-1]
        assert event.startswith("error") and '"type":"api_error"' in event, event
        assert "the worker running the job died" in event
    else:
        last = json.loads(response.text.splitlines()[-1])
        assert last == {"error": "the worker running the job died"}
