"""Client-side helpers for the integration tests: keeping a worker busy, reading SSE."""

import json
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import httpx
from redis import Redis

from shared import keys
from shared.lifecycle import JobRecord
from shared.settings import DEFAULT_MODEL

# Greedy SmolLM2 keeps counting for thousands of tokens without an end-of-sequence.
LONG = {
    "model": DEFAULT_MODEL,
    "prompt": "1, 2, 3, 4, 5, 6, 7, 8, 9, 10,",
    "max_tokens": 3000,
    "temperature": 0,
    "stream": True,
}


@contextmanager
def busy_worker(api_url: str) -> Iterator[str]:
    """Keep the (single) worker busy with a long stream; yields its job id. Leaving closes the
    stream, which cancels the job."""
    with (
        httpx.Client(timeout=60) as client,
        client.stream("POST", f"{api_url}/v1/completions", json=LONG) as response,
    ):
        assert response.status_code == 200, response.read()
        # Keep the iterator referenced: a generator closed early closes the connection.
        events = sse(response)
        for event in events:
            if event.get("choices") and event["choices"][0]["text"]:
                break
        yield response.headers["X-Job-Id"]


def sse(response: httpx.Response) -> Iterator[dict[str, Any]]:
    """The JSON payloads of a streamed OpenAI response (comments and [DONE] skipped)."""
    for line in response.iter_lines():
        if line.startswith("data: {"):
            yield json.loads(line.removeprefix("data: "))


def record(redis: Redis, job_id: str) -> JobRecord:
    found = JobRecord.from_hash(job_id, redis.hgetall(keys.job_record(job_id)))
    assert found is not None, f"no record for job {job_id}"
    return found


def wait_until(check: Any, timeout_s: float, what: str, every_s: float = 0.01) -> Any:
    """Poll `check()` until it returns something truthy; that value."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if value := check():
            return value
        time.sleep(every_s)
    raise TimeoutError(f"timed out after {timeout_s}s waiting for {what}")


@dataclass(frozen=True)
class Frame:
    """One SSE frame: its id (None: none), event name (None: none) and data."""

    id: int | None
    event: str | None
    data: str


def sse_frames(response: httpx.Response) -> Iterator[Frame]:
    """The frames of an SSE response (comments skipped)."""
    fields: dict[str, list[str]] = {}
    for line in response.iter_lines():
        if line == "":
            if "data" in fields:
                ids = fields.get("id")
                events = fields.get("event")
                yield Frame(
                    int(ids[-1]) if ids else None,
                    events[-1] if events else None,
                    "\n".join(fields["data"]),
                )
            fields = {}
        elif not line.startswith(":"):
            name, _, value = line.partition(":")
            fields.setdefault(name, []).append(value.removeprefix(" "))
