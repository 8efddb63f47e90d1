"""Many open streams, few Redis connections: fifty concurrent streaming requests to one API
process, whose subscriber connections are counted in CLIENT LIST while the requests wait."""

import json
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import pytest
from redis import Redis

from shared import keys
from shared.settings import DEFAULT_MODEL
from tests.integration.clients import wait_until
from tests.integration.procs import ApiProcess, RedisServer

pytestmark = pytest.mark.integration

STREAMS = 50
CONNECTIONS = 4  # the API's default `pubsub_connections`
# Each stream counts on from its own number, so a stream given another's events would show
# it. (Greedy SmolLM2 skips some numbers ending in 9: "26, 27, 28," goes on with 30.)
STARTS = [n for n in range(10, 80) if (n + 3) % 10 != 9][:STREAMS]


def count_from(n: int) -> dict[str, Any]:
    """A request whose greedy answer is known: the count goes on with n + 3."""
    return {
        "model": DEFAULT_MODEL,
        "prompt": f"{n}, {n + 1}, {n + 2},",
        "max_tokens": 5,
        "temperature": 0,
        "stream": True,
    }


def stream(api: ApiProcess, n: int) -> tuple[str, str | None, bool]:
    """The streamed text, the finish reason, and whether the stream ended with [DONE]."""
    text, finish, done = "", None, False
    with httpx.stream("POST", f"{api.url}/v1/completions", json=count_from(n), timeout=180) as r:
        assert r.status_code == 200, r.read()
        for line in r.iter_lines():
            if line == "data: [DONE]":
                done = True
            elif line.startswith("data: {"):
                chunk = json.loads(line.removeprefix("data: "))
                assert "error" not in chunk, chunk
                text += chunk["choices"][0]["text"]
                finish = chunk["choices"][0]["finish_reason"] or finish
    return text, finish, done


def subscribers(redis: Redis) -> list[dict[str, Any]]:
    """The connections subscribed to at least one channel."""
    return [c for c in redis.client_list() if int(c.get("sub", 0)) > 0]


def test_fifty_concurrent_streams_share_a_handful_of_subscriber_connections(
    redis_server: RedisServer, api: ApiProcess
) -> None:
    redis = redis_server.client()
    others = len(subscribers(redis))  # before: the worker's own (RQ's command channel)
    peak_connections = peak_channels = 0
    with ThreadPoolExecutor(STREAMS) as pool:
        answers = [pool.submit(stream, api, n) for n in STARTS]
        deadline = time.monotonic() + 300
        while not all(a.done() for a in answers):
            assert time.monotonic() < deadline, "the fifty streams did not end in time"
            subscribed = subscribers(redis)
            hub = [c for c in subscribed if c["name"] == keys.events_client_name()]
            peak_connections = max(peak_connections, len(subscribed) - others)
            peak_channels = max(peak_channels, sum(int(c["sub"]) for c in hub))
            time.sleep(0.05)
        results = [a.result() for a in answers]
    print(
        f"{STREAMS} streams: at most {peak_channels} channels open at once over at most "
        f"{peak_connections} subscriber connections"
    )
    # Every stream got its own job's answer, whole.
    for n, (text, finish, done) in zip(STARTS, results, strict=True):
        assert done and finish in ("length", "stop"), (n, text)
        assert text.strip().startswith(str(n + 3)), (n, text)
    # Many streams waited at once, over no more connections than the hub holds.
    assert peak_channels > CONNECTIONS * 2
    assert 1 <= peak_connections <= CONNECTIONS
    # Nothing stays subscribed once the streams closed.
    wait_until(lambda: len(subscribers(redis)) == others, 10, "the channels to be dropped")
