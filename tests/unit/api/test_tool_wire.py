"""Structured output and tool calls on each flavour's wire, over the fakeredis harness: the
grammar the job carries, calls in responses and streams, tool turns in history, 400s."""

import json
from typing import Any

import pytest

from shared.job import ChatMessage
from tests.unit.api.harness import MODEL, Harness

WEATHER = {
    "type": "object",
    "properties": {"city": {"type": "string"}},
    "required": ["city"],
}
OPENAI_TOOL = {"type": "function", "function": {"name": "get_weather", "parameters": WEATHER}}
PIECES = [
    b"<tool_",
    b'call>[{"name": "get_weather", ',
    b'"arguments": {"city": "Paris"}}]',
    b"</tool_call>",
]
CHAT = {"model": MODEL, "messages": [{"role": "user", "content": "Weather in Paris?"}]}


def sse_payloads(text: str) -> list[dict[str, Any]]:
    return [
        json.loads(line.removeprefix("data: "))
        for line in text.splitlines()
        if line.startswith("data: {")
    ]


def sent_grammar(harness: Harness) -> str | None:
    return harness.engine.started_with[-1][0].grammar


async def test_openai_forced_call(harness: Harness) -> None:
    harness.engine.pieces = list(PIECES)
    body = {**CHAT, "tools": [OPENAI_TOOL], "tool_choice": "required"}
    response = await harness.call("/v1/chat/completions", body)
    assert response.status_code == 200, response.text
    choice = response.json()["choices"][0]
    assert choice["finish_reason"] == "tool_calls"
    assert choice["message"]["content"] is None
    [call] = choice["message"]["tool_calls"]
    assert call["id"].startswith("call_") and call["type"] == "function"
    assert call["function"] == {"name": "get_weather", "arguments": '{"city": "Paris"}'}
    grammar = sent_grammar(harness)
    assert grammar is not None and grammar.startswith('root ::= "<tool_call>"')


async def test_openai_auto_answers_in_text_without_a_grammar(harness: Harness) -> None:
    response = await harness.call("/v1/chat/completions", {**CHAT, "tools": [OPENAI_TOOL]})
    choice = response.json()["choices"][0]
    assert choice["message"] == {"role": "assistant", "content": "Hello, world"}
    assert choice["finish_reason"] == "stop"
    assert sent_grammar(harness) is None


async def test_openai_streamed_call_deltas(harness: Harness) -> None:
    harness.engine.pieces = [b"Sure. ", *PIECES]
    body = {
        **CHAT,
        "tools": [OPENAI_TOOL],
        "tool_choice": {"type": "function", "function": {"name": "get_weather"}},
        "stream": True,
    }
    response = await harness.call("/v1/chat/completions", body)
    deltas = [c["choices"][0] for c in sse_payloads(response.text)]
    assert "".join(d["delta"].get("content") or "" for d in deltas) == "Sure. "
    calls = [d["delta"]["tool_calls"][0] for d in deltas if "tool_calls" in d["delta"]]
    assert calls[0]["index"] == 0 and calls[0]["id"].startswith("call_")
    assert calls[0]["function"] == {"name": "get_weather", "arguments": ""}
    assert "".join(c["function"]["arguments"] for c in calls) == '{"city": "Paris"}'
    assert deltas[-1]["finish_reason"] == "tool_calls"


async def test_openai_tool_turns_reach_the_job(harness: Harness) -> None:
    history = [
        {"role": "user", "content": "Weather in Paris?"},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "call_1",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
                }
            ],
        },
        {"role": "tool", "tool_call_id": "call_1", "content": "sunny"},
    ]
    body = {"model": MODEL, "messages": history, "tools": [OPENAI_TOOL]}
    job = harness_job(await harness.call("/v1/chat/completions", body), harness)
    assert job[1].tool_calls[0].arguments == {"city": "Paris"}
    assert job[2] == ChatMessage(
        role="tool", content="sunny", tool_call_id="call_1", name="get_weather"
    )


def harness_job(response: Any, harness: Harness) -> list[ChatMessage]:
    assert response.status_code == 200, response.text
    messages = harness.engine.seen[-1].messages
    assert messages is not None
    return messages


async def test_openai_response_formats(harness: Harness) -> None:
    schema = {"type": "object", "properties": {"n": {"type": "integer"}}, "required": ["n"]}
    rf = {"type": "json_schema", "json_schema": {"name": "N", "schema": schema, "strict": True}}
    await harness.call("/v1/chat/completions", {**CHAT, "response_format": rf})
    assert "integer" in (sent_grammar(harness) or "")
    await harness.call(
        "/v1/completions",
        {"model": MODEL, "prompt": "x", "response_format": {"type": "json_object"}},
    )
    assert (sent_grammar(harness) or "").startswith("\nroot   ::= object")


@pytest.mark.parametrize(
    ("change", "param", "words"),
    [
        (
            {
                "response_format": {
                    "type": "json_schema",
                    "json_schema": {"name": "x", "schema": {"type": "integer", "minimum": 1}},
                }
            },
            "response_format.json_schema.schema",
            "'minimum'",
        ),
        (
            {
                "tools": [OPENAI_TOOL],
                "tool_choice": {"type": "function", "function": {"name": "nope"}},
            },
            None,
            "nope",
        ),
        ({"tool_choice": "required"}, None, "needs tools"),
        (
            {
                "tools": [
                    {
                        "type": "function",
                        "function": {"name": "f", "parameters": {"type": "string"}},
                    }
                ]
            },
            "tools.0.function.parameters",
            "object",
        ),
        (
            {"tools": [{"type": "function", "function": {"name": "bad name"}}]},
            "tools.0.function.name",
            "pattern",
        ),
        (
            {"tools": [OPENAI_TOOL], "response_format": {"type": "json_object"}},
            "response_format",
            "force a call",
        ),
        (
            {
                "messages": [
                    {
                        "role": "assistant",
                        "tool_calls": [
                            {
                                "id": "c",
                                "type": "function",
                                "function": {"name": "f", "arguments": "[1]"},
                            }
                        ],
                    }
                ]
            },
            "messages.0.tool_calls.0.function.arguments",
            "object",
        ),
    ],
)
async def test_openai_bad_tools_and_schemas_are_400(
    harness: Harness, change: dict[str, Any], param: str | None, words: str
) -> None:
    response = await harness.client.post("/v1/chat/completions", json={**CHAT, **change})
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["type"] == "invalid_request_error"
    assert error["param"] == param and words in error["message"], error


ANTHROPIC_TOOL = {"name": "get_weather", "description": "Weather", "input_schema": WEATHER}
MESSAGES = {"model": MODEL, "max_tokens": 50, "messages": [{"role": "user", "content": "Paris?"}]}


async def test_anthropic_forced_tool_use(harness: Harness) -> None:
    harness.engine.pieces = list(PIECES)
    body = {
        **MESSAGES,
        "tools": [ANTHROPIC_TOOL],
        "tool_choice": {"type": "tool", "name": "get_weather"},
    }
    response = await harness.call("/v1/messages", body)
    message = response.json()
    assert message["stop_reason"] == "tool_use"
    [block] = message["content"]
    assert block["type"] == "tool_use" and block["id"].startswith("toolu_")
    assert (block["name"], block["input"]) == ("get_weather", {"city": "Paris"})
    assert (sent_grammar(harness) or "").startswith('root ::= "<tool_call>"')


async def test_anthropic_streamed_tool_use(harness: Harness) -> None:
    harness.engine.pieces = [b"Let me see. ", *PIECES]
    body = {**MESSAGES, "tools": [ANTHROPIC_TOOL], "stream": True}
    response = await harness.call("/v1/messages", body)
    events = [(e["type"], e) for e in sse_payloads(response.text)]
    kinds = [k for k, _ in events]
    assert kinds == [
        "message_start",
        "ping",
        "content_block_start",
        "content_block_delta",
        "content_block_stop",
        "content_block_start",
        "content_block_delta",
        "content_block_stop",
        "message_delta",
        "message_stop",
    ]
    assert events[2][1]["content_block"] == {"type": "text", "text": ""}
    tool = events[5][1]
    assert tool["index"] == 1 and tool["content_block"]["type"] == "tool_use"
    assert tool["content_block"]["input"] == {}
    assert events[6][1]["delta"] == {
        "type": "input_json_delta",
        "partial_json": '{"city": "Paris"}',
    }
    assert events[8][1]["delta"]["stop_reason"] == "tool_use"


async def test_anthropic_tool_results_in_history(harness: Harness) -> None:
    history = [
        {"role": "user", "content": "Paris?"},
        {
            "role": "assistant",
            "content": [
                {"type": "text", "text": "Checking."},
                {
                    "type": "tool_use",
                    "id": "toolu_1",
                    "name": "get_weather",
                    "input": {"city": "Paris"},
                },
            ],
        },
        {
            "role": "user",
            "content": [
                {"type": "tool_result", "tool_use_id": "toolu_1", "content": "sunny"},
                {"type": "text", "text": "And so?"},
            ],
        },
    ]
    body = {**MESSAGES, "messages": history, "tools": [ANTHROPIC_TOOL]}
    messages = harness_job(await harness.call("/v1/messages", body), harness)
    assert [m.role for m in messages] == ["user", "assistant", "tool", "user"]
    assert messages[1].content == "Checking." and messages[1].tool_calls[0].id == "toolu_1"
    assert (messages[2].name, messages[2].content) == ("get_weather", "sunny")


@pytest.mark.parametrize(
    ("change", "words"),
    [
        (
            {
                "tools": [
                    {
                        **ANTHROPIC_TOOL,
                        "input_schema": {
                            "type": "object",
                            "properties": {"a": {"type": "integer", "maximum": 3}},
                        },
                    }
                ],
                "tool_choice": {"type": "any"},
            },
            "'maximum'",
        ),
        ({"tools": [{"type": "web_search_20250305", "name": "web_search"}]}, "tools.0"),
        ({"tool_choice": {"type": "tool", "name": "x"}}, "not a tool"),
        (
            {
                "messages": [
                    {"role": "assistant", "content": [{"type": "tool_result", "tool_use_id": "t"}]}
                ]
            },
            "tool_result",
        ),
    ],
)
async def test_anthropic_bad_tools_are_400(
    harness: Harness, change: dict[str, Any], words: str
) -> None:
    response = await harness.client.post("/v1/messages", json={**MESSAGES, **change})
    assert response.status_code == 400, response.text
    body = response.json()
    assert body["type"] == "error" and body["error"]["type"] == "invalid_request_error"
    assert words in body["error"]["message"], body


OLLAMA_CHAT = {"model": MODEL, "messages": [{"role": "user", "content": "Paris?"}], "stream": False}


async def test_ollama_tool_calls_and_history(harness: Harness) -> None:
    harness.engine.pieces = list(PIECES)
    body = {**OLLAMA_CHAT, "tools": [OPENAI_TOOL], "tool_choice": "required"}
    response = await harness.call("/api/chat", body)
    message = response.json()["message"]
    assert message["tool_calls"] == [
        {"function": {"index": 0, "name": "get_weather", "arguments": {"city": "Paris"}}}
    ]
    assert message["content"] == ""
    history = [
        *OLLAMA_CHAT["messages"],
        {"role": "assistant", "content": "", "tool_calls": message["tool_calls"]},
        {"role": "tool", "content": "sunny", "tool_name": "get_weather"},
    ]
    messages = harness_job(
        await harness.call(
            "/api/chat", {**OLLAMA_CHAT, "messages": history, "tools": [OPENAI_TOOL]}
        ),
        harness,
    )
    assert messages[1].tool_calls[0].arguments == {"city": "Paris"}
    assert (messages[2].role, messages[2].name) == ("tool", "get_weather")


async def test_ollama_streamed_tool_calls_come_in_one_chunk(harness: Harness) -> None:
    harness.engine.pieces = list(PIECES)
    body = {**OLLAMA_CHAT, "stream": True, "tools": [OPENAI_TOOL], "tool_choice": "required"}
    response = await harness.call("/api/chat", body)
    lines = [json.loads(line) for line in response.text.splitlines()]
    assert [line["done"] for line in lines] == [False, True]
    assert lines[0]["message"]["tool_calls"][0]["function"]["name"] == "get_weather"


async def test_ollama_format(harness: Harness) -> None:
    await harness.call("/api/chat", {**OLLAMA_CHAT, "format": "json"})
    assert (sent_grammar(harness) or "").startswith("\nroot   ::= object")
    schema = {"type": "object", "properties": {"n": {"type": "boolean"}}}
    await harness.call(
        "/api/generate", {"model": MODEL, "prompt": "x", "stream": False, "format": schema}
    )
    assert "boolean" in (sent_grammar(harness) or "")
    response = await harness.client.post(
        "/api/chat", json={**OLLAMA_CHAT, "format": {"type": "string", "format": "email"}}
    )
    assert response.status_code == 400 and '"email"' in response.json()["error"]
