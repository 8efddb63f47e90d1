"""Background responses with the official `openai` client against real APIs, a real worker
and the real model: polled to the end, cancelled, their stream resumed after an event, and
finished through another replica when the one that admitted them is killed."""

import time
from collections.abc import Callable

import httpx
import pytest
from openai import OpenAI
from openai.types.responses import Response

from shared.settings import DEFAULT_MODEL
from tests.integration.procs import ApiProcess, Process
from tests.integration.test_responses import client_of

pytestmark = pytest.mark.integration

LONG = {
    "model": DEFAULT_MODEL,
    "input": "Count from one to one hundred in words, separated by commas.",
    "temperature": 0,
    "max_output_tokens": 160,
}


def settled(client: OpenAI, response_id: str, timeout_s: float = 120) -> Response:
    """The response once its job has ended (polled, as the SDK's users do)."""
    deadline = time.monotonic() + timeout_s
    while True:
        response = client.responses.retrieve(response_id)
        if response.status not in ("queued", "in_progress"):
            return response
        assert time.monotonic() < deadline, f"{response_id} still {response.status}"
        time.sleep(0.2)


def test_polled_to_its_end(openai_client: OpenAI) -> None:
    started = openai_client.responses.create(**LONG, background=True)  # type: ignore[arg-type]
    assert started.status == "queued" and started.background is True
    done = settled(openai_client, started.id)
    assert done.status in ("completed", "incomplete") and done.output_text.strip()
    assert done.usage is not None and done.usage.output_tokens >= 1


def test_cancelled(openai_client: OpenAI) -> None:
    started = openai_client.responses.create(**LONG, background=True)  # type: ignore[arg-type]
    cancelled = openai_client.responses.cancel(started.id)
    assert cancelled.status == "cancelled"
    assert settled(openai_client, started.id).status == "cancelled"


def test_its_stream_resumes_after_the_last_event_read(openai_client: OpenAI) -> None:
    first_part = []
    with openai_client.responses.create(  # type: ignore[call-overload]
        **LONG, background=True, stream=True
    ) as events:
        for event in events:
            first_part.append(event)
            if len(first_part) == 6:  # the client goes away mid-answer
                break
    response_id = first_part[0].response.id
    last = first_part[-1].sequence_number
    with openai_client.responses.retrieve(
        response_id, stream=True, starting_after=last
    ) as rest_events:
        rest = list(rest_events)
    events = [*first_part, *rest]
    assert [e.sequence_number for e in events] == list(range(len(events)))
    final = events[-1]
    assert final.type in ("response.completed", "response.incomplete")
    deltas = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    assert deltas == final.response.output_text
    assert openai_client.responses.retrieve(response_id).output_text == deltas


def test_finished_through_another_replica_when_its_own_is_killed(
    api: ApiProcess, openai_client: OpenAI, spawn: Callable[..., Process]
) -> None:
    doomed = spawn("api", env={"TOKENQ_MODELS": DEFAULT_MODEL})
    assert isinstance(doomed, ApiProcess)
    started = client_of(doomed).responses.create(**LONG, background=True)  # type: ignore[arg-type]
    doomed.proc.kill()  # SIGKILL: its task that would store the end is gone with it
    doomed.proc.wait(timeout=10)
    job = httpx.get(f"{api.url}/v1/jobs/{started.id}", timeout=10).json()
    assert job["status"] in ("queued", "running")  # killed before the end: the case here
    done = settled(openai_client, started.id)
    assert done.status in ("completed", "incomplete") and done.output_text.strip()
    # Read again from the same replica: the end was stored once and stands.
    assert openai_client.responses.retrieve(started.id).output_text == done.output_text
