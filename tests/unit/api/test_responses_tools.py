"""Function tools in the Responses API over the fakeredis harness: calls as `function_call`
output items (checked with the official SDK's types), their stream events, call outputs and
calls given back in input, stored turns and conversations, and refusals."""

from typing import Any

from openai.types.conversations import ConversationItemList
from openai.types.responses import Response, ResponseFunctionToolCall

from shared.job import ChatMessage, NamedToolChoice, ToolCall
from tests.unit.api.harness import MODEL, Harness
from tests.unit.api.test_responses_api import (
    WEATHER_TOOL,
    assert_readable,
    create,
    record_jobs,
    sse_events,
)

PIECES = [
    b"<tool_",
    b'call>[{"name": "get_weather", ',
    b'"arguments": {"city": "Paris"}}]',
    b"</tool_call>",
]
FORCED = {
    "tools": [WEATHER_TOOL],
    "tool_choice": {"type": "function", "name": "get_weather"},
}


def sent_grammar(harness: Harness) -> str | None:
    return harness.engine.started_with[-1][0].grammar


async def test_a_forced_call_is_a_function_call_item(harness: Harness) -> None:
    harness.engine.pieces = list(PIECES)
    body = await create(harness, **FORCED)
    parsed = Response.model_validate(body)
    assert parsed.status == "completed" and parsed.output_text == ""
    [call] = parsed.output
    assert isinstance(call, ResponseFunctionToolCall)
    assert call.id is not None and call.id.startswith("fc_")
    assert call.call_id.startswith("call_") and call.status == "completed"
    assert (call.name, call.arguments) == ("get_weather", '{"city": "Paris"}')
    assert body["tools"] == [{**WEATHER_TOOL, "description": None, "strict": None}]
    assert body["tool_choice"] == {"type": "function", "name": "get_weather"}
    assert body["parallel_tool_calls"] is True
    grammar = sent_grammar(harness)
    assert grammar is not None and grammar.startswith('root ::= "<tool_call>"')


async def test_auto_answers_in_text_without_a_grammar(harness: Harness) -> None:
    jobs = record_jobs(harness.state)
    body = await create(harness, tools=[WEATHER_TOOL], parallel_tool_calls=False)
    assert Response.model_validate(body).output_text == "Hello, world"
    assert [item["type"] for item in body["output"]] == ["message"]
    assert body["tool_choice"] == "auto" and body["parallel_tool_calls"] is False
    assert sent_grammar(harness) is None
    assert jobs[0].tools[0].name == "get_weather" and jobs[0].parallel_tool_calls is False
    assert jobs[0].tool_choice == "auto"


async def test_stream_sends_text_then_each_call(harness: Harness) -> None:
    harness.engine.pieces = [b"Sure. ", *PIECES]
    response = await harness.call(
        "/v1/responses", {**FORCED, "model": MODEL, "input": "hi", "stream": True}
    )
    events = sse_events(response.text)
    assert [name for name, _ in events] == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
        "response.output_text.delta",
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.output_item.added",
        "response.function_call_arguments.delta",
        "response.function_call_arguments.done",
        "response.output_item.done",
        "response.completed",
    ]
    assert_readable(events)
    assert events[4][1]["delta"] == "Sure. " and events[5][1]["text"] == "Sure. "
    added, delta, done, item_done = (data for _, data in events[8:12])
    assert added["output_index"] == 1 and added["item"]["type"] == "function_call"
    assert added["item"]["arguments"] == "" and added["item"]["status"] == "in_progress"
    call_item = item_done["item"]
    assert {delta["item_id"], done["item_id"]} == {call_item["id"]}
    assert delta["delta"] == done["arguments"] == call_item["arguments"] == '{"city": "Paris"}'
    assert done["name"] == "get_weather" and call_item["status"] == "completed"
    completed = events[-1][1]["response"]
    assert [item["type"] for item in completed["output"]] == ["message", "function_call"]
    assert completed["output"][1] == call_item
    stored = await harness.client.get(f"/v1/responses/{completed['id']}")
    assert stored.json()["output"] == completed["output"]


async def test_a_stream_of_calls_alone_has_no_message(harness: Harness) -> None:
    harness.engine.pieces = [b"\n", *PIECES]  # white space before the call is no answer
    body = {**FORCED, "model": MODEL, "input": "hi", "stream": True}
    events = sse_events((await harness.call("/v1/responses", body)).text)
    names = [name for name, _ in events]
    assert "response.output_text.delta" not in names and "response.content_part.added" not in names
    assert events[2][1]["output_index"] == 0 and events[2][1]["item"]["type"] == "function_call"
    completed = Response.model_validate(events[-1][1]["response"])
    assert [item.type for item in completed.output] == ["function_call"]


async def test_the_call_and_its_output_reach_the_next_job(harness: Harness) -> None:
    jobs = record_jobs(harness.state)
    harness.engine.pieces = list(PIECES)
    first = await create(harness, input="Weather in Paris?", **FORCED)
    [call] = first["output"]
    harness.engine.pieces = [b"Sunny."]
    second = await create(
        harness,
        previous_response_id=first["id"],
        tools=[WEATHER_TOOL],
        input=[{"type": "function_call_output", "call_id": call["call_id"], "output": "22C"}],
    )
    assert Response.model_validate(second).output_text == "Sunny."
    assert jobs[0].tool_choice == NamedToolChoice(name="get_weather")
    assert jobs[1].messages == [
        ChatMessage(role="user", content="Weather in Paris?"),
        ChatMessage(
            role="assistant",
            content="",
            tool_calls=[
                ToolCall(id=call["call_id"], name="get_weather", arguments={"city": "Paris"})
            ],
        ),
        ChatMessage(role="tool", content="22C", tool_call_id=call["call_id"], name="get_weather"),
    ]
    listed = await harness.client.get(f"/v1/responses/{second['id']}/input_items")
    [output_item] = listed.json()["data"]
    assert output_item["type"] == "function_call_output" and output_item["id"].startswith("fco_")


async def test_calls_given_back_in_input_join_the_assistant_turn(harness: Harness) -> None:
    jobs = record_jobs(harness.state)
    call = {"type": "function_call", "call_id": "call_a", "name": "get_weather"}
    items: list[dict[str, Any]] = [
        {"role": "user", "content": "Paris and Rome?"},
        {"type": "message", "role": "assistant", "content": "Looking."},
        {**call, "arguments": '{"city": "Paris"}', "id": "fc_x", "status": "completed"},
        {**call, "call_id": "call_b", "arguments": '{"city": "Rome"}'},
        {"type": "function_call_output", "call_id": "call_a", "output": "sunny"},
        {
            "type": "function_call_output",
            "call_id": "call_b",
            "output": [{"type": "input_text", "text": "rain"}],
        },
    ]
    await create(harness, input=items, tools=[WEATHER_TOOL], store=False)
    messages = jobs[0].messages
    assert messages is not None and len(messages) == 4
    assert messages[1].content == "Looking."
    assert [c.id for c in messages[1].tool_calls] == ["call_a", "call_b"]
    assert [(m.content, m.name) for m in messages[2:]] == [
        ("sunny", "get_weather"),
        ("rain", "get_weather"),
    ]


async def test_conversations_keep_calls_and_their_outputs(harness: Harness) -> None:
    conversation = (await harness.call("/v1/conversations", {})).json()
    cid = conversation["id"]
    harness.engine.pieces = list(PIECES)
    first = await create(harness, conversation=cid, input="Weather?", **FORCED)
    call_id = first["output"][0]["call_id"]
    added = await harness.call(
        f"/v1/conversations/{cid}/items",
        {"items": [{"type": "function_call_output", "call_id": call_id, "output": "22C"}]},
    )
    assert added.status_code == 200, added.text
    listed = (await harness.client.get(f"/v1/conversations/{cid}/items?order=asc")).json()
    ConversationItemList.model_validate(listed)
    assert [item["type"] for item in listed["data"]] == [
        "message",
        "function_call",
        "function_call_output",
    ]
    call_item = listed["data"][1]["id"]
    got = await harness.client.get(f"/v1/conversations/{cid}/items/{call_item}")
    assert got.json()["type"] == "function_call" and got.json()["call_id"] == call_id
    harness.engine.pieces = [b"Warm."]
    jobs = record_jobs(harness.state)
    await create(harness, conversation=cid, input="So?", tools=[WEATHER_TOOL])
    assert jobs[0].messages is not None
    assert [m.role for m in jobs[0].messages] == ["user", "assistant", "tool", "user"]
