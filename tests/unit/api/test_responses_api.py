"""The Responses API over fakeredis: wire shapes (checked with the official SDK's own types),
the stored state, conversations, and refusals. Jobs are performed by the real RQ worker on a
fake engine that answers "Hello, world"."""

import asyncio
import json
from typing import Any

import pytest
from openai.types.conversations import Conversation, ConversationItemList
from openai.types.responses import Response, ResponseItemList, ResponseStreamEvent
from pydantic import TypeAdapter

from api.responses.items import MessageItem
from api.responses.store import ResponseStore
from api.state import AppState
from shared import keys
from shared.job import ChatMessage, GenerationJob
from tests.fakes import EOS
from tests.unit.api.harness import MODEL, Harness

BODY: dict[str, object] = {"model": MODEL, "input": "hi"}
# The events of a streamed "Hello, world" (three tokens), in order.
TEXT_STREAM = [
    "response.created",
    "response.in_progress",
    "response.output_item.added",
    "response.content_part.added",
    "response.output_text.delta",
    "response.output_text.delta",
    "response.output_text.delta",
    "response.output_text.done",
    "response.content_part.done",
    "response.output_item.done",
    "response.completed",
]
WEATHER_TOOL = {
    "type": "function",
    "name": "get_weather",
    "parameters": {
        "type": "object",
        "properties": {"city": {"type": "string"}},
        "required": ["city"],
    },
}
STREAM_EVENTS: TypeAdapter[ResponseStreamEvent] = TypeAdapter(ResponseStreamEvent)


def sse_events(text: str) -> list[tuple[str, dict[str, Any]]]:
    events = []
    for frame in text.split("\n\n"):
        if frame and not frame.startswith(":"):
            fields = dict(line.split(": ", 1) for line in frame.split("\n"))
            events.append((fields["event"], json.loads(fields["data"])))
    return events


def assert_readable(events: list[tuple[str, dict[str, Any]]]) -> None:
    """Events numbered in order, each named as its type, each read by the SDK's types."""
    assert [data["sequence_number"] for _, data in events] == list(range(len(events)))
    for name, data in events:
        assert data["type"] == name
        STREAM_EVENTS.validate_python(data)


def record_jobs(state: AppState) -> list[GenerationJob]:
    """Every job submitted from now on (seen as its prompt is counted)."""
    jobs: list[GenerationJob] = []
    count = state.tokenizers.count

    async def recording(job: GenerationJob, n_ctx: int | None = None) -> int:
        jobs.append(job)
        return await count(job, n_ctx)

    state.tokenizers.count = recording  # type: ignore[method-assign]
    return jobs


async def retrieved(harness: Harness, response_id: str) -> Response:
    answer = await harness.client.get(f"/v1/responses/{response_id}")
    assert answer.status_code == 200, answer.text
    return Response.model_validate(answer.json())


async def create(harness: Harness, **fields: object) -> dict[str, Any]:
    response = await harness.call("/v1/responses", {**BODY, **fields})
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


async def test_response_object(harness: Harness) -> None:
    body = await create(harness, instructions="Be brief.", metadata={"k": "v"}, temperature=0.5)
    parsed = Response.model_validate(body)
    assert parsed.output_text == "Hello, world"
    assert body["id"].startswith("resp_") and body["object"] == "response"
    assert body["status"] == "completed" and body["incomplete_details"] is None
    assert body["output"] == [
        {
            "id": body["output"][0]["id"],
            "type": "message",
            "role": "assistant",
            "status": "completed",
            "content": [
                {"type": "output_text", "text": "Hello, world", "annotations": [], "logprobs": []}
            ],
        }
    ]
    assert body["output"][0]["id"].startswith("msg_")
    assert body["usage"] == {
        "input_tokens": 4,
        "input_tokens_details": {"cached_tokens": 0, "cache_write_tokens": 0},
        "output_tokens": 3,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": 7,
    }
    assert (body["instructions"], body["metadata"], body["temperature"], body["top_p"]) == (
        "Be brief.",
        {"k": "v"},
        0.5,
        1.0,
    )
    assert body["store"] is True and body["tools"] == [] and body["tool_choice"] == "auto"


async def test_stream_sends_the_exact_event_sequence(harness: Harness) -> None:
    response = await harness.call("/v1/responses", {**BODY, "stream": True})
    assert response.status_code == 200
    events = sse_events(response.text)
    assert [name for name, _ in events] == TEXT_STREAM
    assert_readable(events)
    created = events[0][1]["response"]
    assert created["status"] == "in_progress" and created["output"] == []
    assert events[2][1]["item"]["content"] == [] and events[2][1]["item"]["status"] == "in_progress"
    item_id = events[2][1]["item"]["id"]
    assert {data["item_id"] for _, data in events[3:9]} == {item_id}
    assert [data["delta"] for _, data in events[4:7]] == ["Hello", ",", " world"]
    assert events[7][1]["text"] == "Hello, world"
    completed = Response.model_validate(events[-1][1]["response"])
    assert completed.status == "completed" and completed.output_text == "Hello, world"
    assert completed.id == created["id"] == f"resp_{response.headers['X-Job-Id']}"
    stored = await harness.client.get(f"/v1/responses/{completed.id}")
    assert stored.json()["output"] == events[-1][1]["response"]["output"]


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "stream"])
async def test_cut_by_max_output_tokens_is_incomplete(harness: Harness, stream: bool) -> None:
    response = await harness.call(
        "/v1/responses", {**BODY, "max_output_tokens": 2, "stream": stream}
    )
    if stream:
        name, data = sse_events(response.text)[-1]
        assert name == "response.incomplete"
        body = data["response"]
    else:
        body = response.json()
    assert body["status"] == "incomplete"
    assert body["incomplete_details"] == {"reason": "max_output_tokens"}
    assert body["output"][0]["status"] == "incomplete"
    assert body["max_output_tokens"] == 2
    Response.model_validate(body)


async def test_a_follow_up_continues_the_stored_turns(harness: Harness) -> None:
    jobs = record_jobs(harness.state)
    first = await create(harness, instructions="Be brief.")
    second = await create(harness, input="And then?", previous_response_id=first["id"])
    assert second["previous_response_id"] == first["id"]
    assert jobs[1].messages == [  # instructions are not carried over
        ChatMessage(role="user", content="hi"),
        ChatMessage(role="assistant", content="Hello, world"),
        ChatMessage(role="user", content="And then?"),
    ]
    third = await create(
        harness,
        input=[{"role": "developer", "content": [{"type": "input_text", "text": "Short."}]}],
        previous_response_id=second["id"],
    )
    assert jobs[2].messages is not None and len(jobs[2].messages) == 5
    assert jobs[2].messages[-1] == ChatMessage(role="system", content="Short.")
    assert third["status"] == "completed"


async def test_earlier_output_items_are_taken_back_as_input(harness: Harness) -> None:
    jobs = record_jobs(harness.state)
    first = await create(harness)
    await create(harness, input=[{"role": "user", "content": "hi"}, *first["output"]])
    assert jobs[1].messages == [
        ChatMessage(role="user", content="hi"),
        ChatMessage(role="assistant", content="Hello, world"),
    ]


async def test_retrieve_delete_and_input_items(harness: Harness) -> None:
    items = [{"role": "user", "content": f"m{i}"} for i in range(5)]
    body = await create(harness, input=items)
    rid = body["id"]
    got = await harness.client.get(f"/v1/responses/{rid}")
    assert got.status_code == 200 and got.json() == body

    listed = (await harness.client.get(f"/v1/responses/{rid}/input_items")).json()
    ResponseItemList.model_validate(listed)
    texts = [item["content"][0]["text"] for item in listed["data"]]
    assert texts == ["m4", "m3", "m2", "m1", "m0"]  # newest first by default
    assert listed["data"][0]["content"][0]["type"] == "input_text"
    asc = (
        await harness.client.get(
            f"/v1/responses/{rid}/input_items", params={"order": "asc", "limit": 2}
        )
    ).json()
    assert [i["content"][0]["text"] for i in asc["data"]] == ["m0", "m1"]
    assert asc["has_more"] is True and asc["last_id"] == asc["data"][1]["id"]
    rest = (
        await harness.client.get(
            f"/v1/responses/{rid}/input_items",
            params={"order": "asc", "after": asc["last_id"]},
        )
    ).json()
    assert [i["content"][0]["text"] for i in rest["data"]] == ["m2", "m3", "m4"]
    assert rest["has_more"] is False
    bad = await harness.client.get(f"/v1/responses/{rid}/input_items", params={"limit": 0})
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "limit"

    deleted = await harness.client.delete(f"/v1/responses/{rid}")
    assert deleted.json() == {"id": rid, "object": "response.deleted", "deleted": True}
    gone = await harness.client.get(f"/v1/responses/{rid}")
    assert gone.status_code == 404
    assert gone.json()["error"]["type"] == "invalid_request_error"
    assert (await harness.client.delete(f"/v1/responses/{rid}")).status_code == 404


async def test_unstored_and_unknown_responses_are_404(harness: Harness) -> None:
    unstored = await create(harness, store=False)
    assert unstored["store"] is False
    assert (await harness.client.get(f"/v1/responses/{unstored['id']}")).status_code == 404
    for previous in (unstored["id"], "resp_nope"):
        response = await harness.client.post(
            "/v1/responses", json={**BODY, "previous_response_id": previous}
        )
        assert response.status_code == 404
        error = response.json()["error"]
        assert error["param"] == "previous_response_id" and previous in error["message"]
    assert harness.recorded_jobs() == [unstored["id"].removeprefix("resp_")]  # nothing ran


async def test_stored_state_is_bounded(harness: Harness) -> None:
    limit = harness.settings.responses_max_bytes
    response = await harness.client.post("/v1/responses", json={**BODY, "input": "x" * limit})
    assert response.status_code == 400
    assert response.json()["error"]["param"] == "input"
    assert "TOKENQ_RESPONSES_MAX_BYTES" in response.json()["error"]["message"]
    conv = (await harness.client.post("/v1/conversations", json={})).json()
    big = [{"role": "user", "content": "x" * (limit // 4)}] * 5
    added = await harness.client.post(f"/v1/conversations/{conv['id']}/items", json={"items": big})
    assert added.status_code == 400 and added.json()["error"]["param"] == "items"
    items = await harness.client.get(f"/v1/conversations/{conv['id']}/items")
    assert items.json()["data"] == []  # refused whole
    assert harness.recorded_jobs() == []


async def test_conversations_and_their_items(harness: Harness) -> None:
    created = await harness.client.post(
        "/v1/conversations",
        json={
            "items": [{"type": "message", "role": "system", "content": "Be kind."}],
            "metadata": {"topic": "demo"},
        },
    )
    assert created.status_code == 200, created.text
    conv = created.json()
    Conversation.model_validate(conv)
    assert conv["id"].startswith("conv_") and conv["metadata"] == {"topic": "demo"}
    cid = conv["id"]
    assert (await harness.client.get(f"/v1/conversations/{cid}")).json() == conv

    updated = await harness.client.post(f"/v1/conversations/{cid}", json={"metadata": {"a": "b"}})
    assert updated.json()["metadata"] == {"a": "b"}

    added = await harness.client.post(
        f"/v1/conversations/{cid}/items",
        json={"items": [{"role": "user", "content": [{"type": "input_text", "text": "Hi"}]}]},
    )
    ConversationItemList.model_validate(added.json())
    assert [i["content"][0]["text"] for i in added.json()["data"]] == ["Hi"]

    jobs = record_jobs(harness.state)
    body = await create(harness, input="Go on.", conversation={"id": cid})
    assert body["conversation"] == {"id": cid}
    assert jobs[0].messages == [
        ChatMessage(role="system", content="Be kind."),
        ChatMessage(role="user", content="Hi"),
        ChatMessage(role="user", content="Go on."),
    ]
    listed = (
        await harness.client.get(f"/v1/conversations/{cid}/items", params={"order": "asc"})
    ).json()
    ConversationItemList.model_validate(listed)
    assert [(i["role"], i["content"][0]["text"]) for i in listed["data"]] == [
        ("system", "Be kind."),
        ("user", "Hi"),
        ("user", "Go on."),
        ("assistant", "Hello, world"),
    ]
    assert listed["data"][-1]["id"] == body["output"][0]["id"]

    # A second response by the conversation's id string sees the first one's turns.
    await create(harness, input="More.", conversation=cid)
    assert jobs[1].messages is not None and len(jobs[1].messages) == 5

    first_id = listed["data"][0]["id"]
    item = await harness.client.get(f"/v1/conversations/{cid}/items/{first_id}")
    assert item.json() == listed["data"][0]
    removed = await harness.client.delete(f"/v1/conversations/{cid}/items/{first_id}")
    assert removed.json()["id"] == cid
    missing = await harness.client.get(f"/v1/conversations/{cid}/items/{first_id}")
    assert missing.status_code == 404 and missing.json()["error"]["param"] == "item_id"

    deleted = await harness.client.delete(f"/v1/conversations/{cid}")
    assert deleted.json() == {"id": cid, "object": "conversation.deleted", "deleted": True}
    assert (await harness.client.get(f"/v1/conversations/{cid}")).status_code == 404
    response = await harness.client.post("/v1/responses", json={**BODY, "conversation": cid})
    assert response.status_code == 404 and response.json()["error"]["param"] == "conversation"


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({"tools": [{"type": "web_search"}]}, "tools"),
        ({"tools": [{"type": "function", "name": "f f"}]}, "tools.0.name"),
        ({"tool_choice": {"type": "file_search"}}, "tool_choice"),
        (
            {"tools": [WEATHER_TOOL], "tool_choice": {"type": "function", "name": "g"}},
            None,  # the job's own rule, as chat's
        ),
        ({"tool_choice": "required"}, None),  # no tools to call
        (
            {"input": [{"type": "function_call", "call_id": "c", "name": "f", "arguments": "[1]"}]},
            "input.0.arguments",
        ),
        (
            {
                "text": {
                    "format": {
                        "type": "json_schema",
                        "name": "x",
                        "schema": {"type": "integer", "minimum": 1},  # not enforceable
                    }
                }
            },
            "text.format.schema",
        ),
        ({"text": {"format": {"type": "xml"}}}, "text.format"),
        ({"text": {"format": {"type": "json_object"}}, "tools": [WEATHER_TOOL]}, "text.format"),
        (
            {"input": [{"type": "function_call_output", "call_id": "c", "output": "x"}]},
            "input.0.call_id",
        ),
        ({"input": [{"type": "item_reference", "id": "msg_1"}]}, "input"),
        ({"input": [{"role": "user", "content": [{"type": "input_image"}]}]}, "input.0.content"),
        ({"input": [{"role": "tool", "content": "x"}]}, "input.0.role"),
        ({"previous_response_id": "resp_x", "conversation": "conv_x"}, None),
        ({"metadata": {f"k{i}": "v" for i in range(17)}}, "metadata"),
        ({"temperature": 3}, "temperature"),
        ({"max_output_tokens": 0}, "max_output_tokens"),
        ({"reasoning": {"effort": "high"}}, "reasoning"),
        ({"frequency_penalty": 1}, "frequency_penalty"),
        ({"input": []}, "input"),
        ({"max_output_tokens": 1000}, "max_output_tokens"),  # over the context (64)
    ],
)
async def test_bad_bodies_are_400_naming_the_parameter(
    harness: Harness, fields: dict[str, object], param: str | None
) -> None:
    response = await harness.client.post("/v1/responses", json={**BODY, **fields})
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["type"] == "invalid_request_error"
    assert error["param"] == param or (param and error["param"].startswith(param)), error
    assert harness.recorded_jobs() == []


async def test_a_failure_after_the_start_is_an_error_then_response_failed(
    harness: Harness,
) -> None:
    harness.engine.pieces = [b"Hel", RuntimeError("engine broke"), EOS]
    response = await harness.call("/v1/responses", {**BODY, "stream": True})
    events = sse_events(response.text)
    assert [name for name, _ in events][-3:] == [
        "response.output_text.delta",
        "error",
        "response.failed",
    ]
    for _, data in events:
        STREAM_EVENTS.validate_python(data)
    failed = events[-1][1]["response"]
    assert failed["status"] == "failed" and failed["error"]["message"]
    # kept for `retrieve`, with what was sent of its message
    kept = await retrieved(harness, failed["id"])
    assert kept.status == "failed" and kept.error is not None
    assert kept.output_text == "Hel" and kept.output[0].status == "incomplete"


async def test_a_failed_response_is_kept_but_not_continued(harness: Harness) -> None:
    conversation = (await harness.call("/v1/conversations", {})).json()["id"]
    harness.engine.pieces = [RuntimeError("engine broke"), EOS]
    response = await harness.call("/v1/responses", {**BODY, "conversation": conversation})
    assert response.status_code == 502, response.text
    assert response.json()["error"]["code"] == "worker_error"
    (job_id,) = harness.recorded_jobs()
    response_id = f"resp_{job_id}"
    kept = await retrieved(harness, response_id)
    assert kept.status == "failed" and kept.error is not None and kept.output == []
    # its turn is not added to its conversation, and it cannot be continued
    items = await harness.client.get(f"/v1/conversations/{conversation}/items")
    assert items.json()["data"] == []
    follow_up = await harness.call("/v1/responses", {**BODY, "previous_response_id": response_id})
    assert follow_up.status_code == 400
    error = follow_up.json()["error"]
    assert error["param"] == "previous_response_id" and "was failed" in error["message"]


async def test_requests_are_counted_under_the_responses_flavour(harness: Harness) -> None:
    await create(harness)
    metrics = (await harness.client.get("/metrics")).text
    assert f'tokenq_requests_total{{flavour="responses",model="{MODEL}",status="200"}} 1.0' in (
        metrics
    )


async def test_state_expires_after_the_configured_ttl(harness: Harness) -> None:
    body = await create(harness)
    conv = (await harness.client.post("/v1/conversations", json={})).json()
    ttl = harness.settings.responses_ttl_s
    for key in (keys.stored_response(body["id"]), keys.conversation(conv["id"])):
        assert ttl - 5 <= harness.redis.ttl(key) <= ttl


async def test_appends_from_many_requests_at_once_all_land(harness: Harness) -> None:
    store = ResponseStore(harness.state.redis, harness.settings)
    conversation = await store.create_conversation({}, [])
    appends = [
        store.add_items(conversation.id, [MessageItem.of_text("user", f"m{i}")]) for i in range(20)
    ]
    await asyncio.gather(*appends)
    stored = await store.conversation(conversation.id)
    assert sorted(item.text for item in stored.items) == sorted(f"m{i}" for i in range(20))
