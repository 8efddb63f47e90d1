"""Background responses over the fakeredis harness: queued at once, finished by the replica's
detached task or, when that task is gone, by whichever request reads the response next;
cancelled; their stream sent again from the job's log."""

import asyncio
from typing import Any

from openai.types.responses import Response

from api.responses.protocol import CreateResponseRequest
from api.responses.serving import ResponsesFormat
from shared.lifecycle import JobStatus
from tests.unit.api.harness import Harness
from tests.unit.api.test_responses_api import (
    BODY,
    TEXT_STREAM,
    assert_readable,
    create,
    sse_events,
)

BACKGROUND: dict[str, object] = {**BODY, "background": True}


async def settled(harness: Harness, response_id: str, timeout_s: float = 10.0) -> dict[str, Any]:
    """The response once it is no longer queued or in progress (polled; a liveness bound)."""
    deadline = asyncio.get_running_loop().time() + timeout_s
    while True:
        body: dict[str, Any] = (await harness.client.get(f"/v1/responses/{response_id}")).json()
        if body["status"] not in ("queued", "in_progress"):
            return body
        assert asyncio.get_running_loop().time() < deadline, body
        await asyncio.sleep(0.01)


async def queued_only(harness: Harness, **fields: object) -> dict[str, Any]:
    """A background response admitted, its job left in line (no worker performs it)."""
    response = await harness.client.post("/v1/responses", json={**BACKGROUND, **fields})
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


async def test_a_background_response_is_queued_then_completed(harness: Harness) -> None:
    body = await create(harness, background=True)
    parsed = Response.model_validate(body)
    assert parsed.status == "queued" and parsed.background is True and parsed.output == []
    done = Response.model_validate(await settled(harness, parsed.id))
    assert done.status == "completed" and done.output_text == "Hello, world"
    assert done.usage is not None and done.created_at == parsed.created_at
    assert len(harness.state.background) == 0  # its task has ended
    follow_up = await create(harness, input="More?", previous_response_id=parsed.id)
    assert follow_up["status"] == "completed"


async def test_an_unfinished_response_shows_its_job_and_cannot_be_continued(
    harness: Harness,
) -> None:
    body = await queued_only(harness)
    assert (await harness.client.get(f"/v1/responses/{body['id']}")).json()["status"] == "queued"
    follow = await harness.client.post(
        "/v1/responses", json={**BODY, "previous_response_id": body["id"]}
    )
    assert follow.status_code == 400
    assert follow.json()["error"]["param"] == "previous_response_id"


async def test_cancel_ends_it_cancelled(harness: Harness) -> None:
    body = await queued_only(harness)
    cancelled = await harness.client.post(f"/v1/responses/{body['id']}/cancel")
    assert cancelled.status_code == 200, cancelled.text
    assert Response.model_validate(cancelled.json()).status == "cancelled"
    assert (await settled(harness, body["id"]))["status"] == "cancelled"
    record = await harness.state.jobs.record(body["id"].removeprefix("resp_"))
    assert record is not None and record.status is JobStatus.CANCELLED
    again = await harness.client.post(f"/v1/responses/{body['id']}/cancel")
    assert again.json()["status"] == "cancelled"  # cancelling twice changes nothing


async def test_only_background_responses_are_cancelled_or_streamed_again(
    harness: Harness,
) -> None:
    body = await create(harness)
    cancel = await harness.client.post(f"/v1/responses/{body['id']}/cancel")
    assert cancel.status_code == 400 and cancel.json()["error"]["param"] == "response_id"
    replay = await harness.client.get(f"/v1/responses/{body['id']}?stream=true")
    assert replay.status_code == 400 and replay.json()["error"]["param"] == "stream"
    unstored = await harness.client.post("/v1/responses", json={**BACKGROUND, "store": False})
    assert unstored.status_code == 400 and "store" in unstored.json()["error"]["message"]


async def test_another_request_finishes_it_when_its_replica_is_gone(harness: Harness) -> None:
    conversation = (await harness.call("/v1/conversations", {})).json()["id"]
    body = await queued_only(harness, conversation=conversation)
    assert len(harness.state.background) == 1  # the task that would finish it
    await harness.state.background.aclose()  # gone, as with its replica
    harness.work()  # the job was not cancelled: it runs to its end
    done = await settled(harness, body["id"])
    assert done["status"] == "completed"
    assert Response.model_validate(done).output_text == "Hello, world"
    await harness.client.get(f"/v1/responses/{body['id']}")  # read again: finished once
    items = (await harness.client.get(f"/v1/conversations/{conversation}/items")).json()
    assert [item["role"] for item in items["data"]] == ["assistant", "user"]


async def test_its_stream_is_sent_again_from_the_log(harness: Harness) -> None:
    body = await create(harness, background=True)
    await settled(harness, body["id"])
    whole = sse_events((await harness.client.get(f"/v1/responses/{body['id']}?stream=true")).text)
    assert [name for name, _ in whole] == TEXT_STREAM
    assert_readable(whole)
    assert Response.model_validate(whole[-1][1]["response"]).output_text == "Hello, world"
    rest = sse_events(
        (await harness.client.get(f"/v1/responses/{body['id']}?stream=true&starting_after=4")).text
    )
    assert rest == whole[5:]


async def test_a_streamed_background_response_goes_on_without_its_client(
    harness: Harness,
) -> None:
    response = await harness.call("/v1/responses", {**BACKGROUND, "stream": True})
    events = sse_events(response.text)
    assert [name for name, _ in events] == TEXT_STREAM
    response_id = events[0][1]["response"]["id"]
    assert events[0][1]["response"]["background"] is True
    assert [event["response"]["status"] for _, event in events[:2]] == ["queued", "in_progress"]
    assert (await settled(harness, response_id))["status"] == "completed"


async def test_deleting_an_unfinished_response_cancels_its_job(harness: Harness) -> None:
    body = await queued_only(harness)
    deleted = await harness.client.delete(f"/v1/responses/{body['id']}")
    assert deleted.status_code == 200
    record = await harness.state.jobs.record(body["id"].removeprefix("resp_"))
    assert record is not None and record.status is JobStatus.CANCELLED
    assert (await harness.client.get(f"/v1/responses/{body['id']}")).status_code == 404


def test_the_request_kept_with_the_job_reads_back_as_it_was() -> None:
    body = {
        **BACKGROUND,
        "instructions": "Be brief.",
        "input": [
            {"role": "user", "content": "Weather?"},
            {"type": "function_call", "call_id": "c1", "name": "w", "arguments": "{}"},
            {"type": "function_call_output", "call_id": "c1", "output": "sunny"},
        ],
        "tools": [{"type": "function", "name": "w", "parameters": {"type": "object"}}],
        "tool_choice": "none",
        "text": {"format": {"type": "json_schema", "name": "x", "schema": {"type": "object"}}},
        "metadata": {"k": "v"},
        "conversation": {"id": "conv_1"},
    }
    request = CreateResponseRequest.model_validate(body)
    kept = ResponsesFormat(request=request, history=[], created_at=1)
    again = ResponsesFormat.model_validate_json(kept.model_dump_json())
    assert again == kept and again.request.input == request.input
    assert again.request.model_dump(by_alias=True) == request.model_dump(by_alias=True)
