"""Structured output and tool calls with the official clients, the real worker and SmolLM2.

The model is tiny: what makes its JSON and its tool arguments reliable is the grammar, so
every test here constrains the output (a schema, json_object, a forced call) and checks that
it parses and validates; the schemas are small and bounded so the answers end quickly.
"""

import json
from typing import Any, Literal

import httpx
import jsonschema
import ollama
import pytest
from anthropic import Anthropic
from openai import OpenAI
from pydantic import BaseModel, Field

from shared.settings import DEFAULT_MODEL
from tests.integration.procs import ApiProcess

pytestmark = pytest.mark.integration


class Colour(BaseModel):
    name: Literal["red", "green", "blue"]
    bright: bool


class Weather(BaseModel):
    city: str = Field(max_length=12)
    unit: Literal["celsius", "fahrenheit"]


WEATHER_SCHEMA = {
    "type": "object",
    "properties": {
        "city": {"type": "string", "maxLength": 12},
        "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
    },
    "required": ["city", "unit"],
}
OPENAI_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The current weather in a city",
        "parameters": WEATHER_SCHEMA,
    },
}
ASK = [{"role": "user", "content": "What is the weather in Paris?"}]


def test_parse_into_a_pydantic_model(openai_client: OpenAI) -> None:
    completion = openai_client.chat.completions.parse(
        model=DEFAULT_MODEL,
        messages=[{"role": "user", "content": "Pick a colour."}],
        response_format=Colour,
        temperature=0,
        max_tokens=60,
    )
    parsed = completion.choices[0].message.parsed
    assert isinstance(parsed, Colour)


def test_parse_streamed_into_a_pydantic_model(openai_client: OpenAI) -> None:
    with openai_client.chat.completions.stream(
        model=DEFAULT_MODEL,
        messages=[{"role": "user", "content": "Pick a colour."}],
        response_format=Colour,
        temperature=0,
        max_tokens=60,
    ) as stream:
        deltas = [e.delta for e in stream if e.type == "content.delta"]
        final = stream.get_final_completion()
    assert len(deltas) > 1  # it did stream
    assert isinstance(final.choices[0].message.parsed, Colour)


def test_json_object_output_parses(openai_client: OpenAI) -> None:
    response = openai_client.chat.completions.create(
        model=DEFAULT_MODEL,
        messages=[{"role": "user", "content": "Describe a cat as JSON."}],
        response_format={"type": "json_object"},
        temperature=0,
        max_tokens=200,
        seed=1,
    )
    choice = response.choices[0]
    if choice.finish_reason == "stop":  # within max_tokens, the object is complete
        assert isinstance(json.loads(choice.message.content or ""), dict)
    else:
        assert (choice.message.content or "").lstrip().startswith("{")


def test_ollama_format_with_a_schema(ollama_client: ollama.Client) -> None:
    response = ollama_client.chat(
        model=DEFAULT_MODEL,
        messages=[{"role": "user", "content": "Pick a colour."}],
        format=Colour.model_json_schema(),
        options={"temperature": 0, "num_predict": 60},
    )
    Colour.model_validate_json(response.message.content or "")


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "stream"])
def test_openai_forced_tool_call(openai_client: OpenAI, stream: bool) -> None:
    params: dict[str, Any] = {
        "model": DEFAULT_MODEL,
        "messages": ASK,
        "tools": [OPENAI_TOOL],
        "tool_choice": {"type": "function", "function": {"name": "get_weather"}},
        "temperature": 0,
        "max_tokens": 80,
    }
    if stream:
        with openai_client.chat.completions.stream(**params) as events:
            kinds = {e.type for e in events}
            completion = events.get_final_completion()
        assert "tool_calls.function.arguments.done" in kinds  # the SDK reassembled the deltas
        choice = completion.choices[0]
    else:
        choice = openai_client.chat.completions.create(**params).choices[0]
    assert choice.finish_reason == "tool_calls"
    [call] = choice.message.tool_calls or []
    assert call.id.startswith("call_") and call.function.name == "get_weather"  # type: ignore[union-attr]
    Weather.model_validate_json(call.function.arguments)  # type: ignore[union-attr]


def test_openai_tool_result_in_history(openai_client: OpenAI) -> None:
    first = openai_client.chat.completions.create(
        model=DEFAULT_MODEL,
        messages=ASK,  # type: ignore[arg-type]
        tools=[OPENAI_TOOL],  # type: ignore[list-item]
        tool_choice="required",
        parallel_tool_calls=False,
        temperature=0,
        max_tokens=80,
    )
    message = first.choices[0].message
    [call] = message.tool_calls or []
    history: list[Any] = [
        *ASK,
        message.model_dump(exclude_none=True),
        {"role": "tool", "tool_call_id": call.id, "content": "Sunny, 22 degrees."},
    ]
    answer = openai_client.chat.completions.create(
        model=DEFAULT_MODEL, messages=history, tools=[OPENAI_TOOL], max_tokens=30, temperature=0
    )
    assert answer.choices[0].finish_reason in ("stop", "length", "tool_calls")
    assert answer.usage is not None and answer.usage.prompt_tokens > first.usage.prompt_tokens  # type: ignore[union-attr]


ANTHROPIC_TOOL = {
    "name": "get_weather",
    "description": "The current weather in a city",
    "input_schema": WEATHER_SCHEMA,
}


def test_anthropic_forced_tool_use(anthropic_client: Anthropic) -> None:
    message = anthropic_client.messages.create(
        model=DEFAULT_MODEL,
        max_tokens=80,
        messages=ASK,  # type: ignore[arg-type]
        tools=[ANTHROPIC_TOOL],  # type: ignore[list-item]
        tool_choice={"type": "tool", "name": "get_weather"},
    )
    assert message.stop_reason == "tool_use"
    [block] = message.content
    assert block.type == "tool_use" and block.id.startswith("toolu_")
    jsonschema.validate(block.input, WEATHER_SCHEMA)
    # the tool result goes back in history
    answer = anthropic_client.messages.create(
        model=DEFAULT_MODEL,
        max_tokens=30,
        messages=[
            *ASK,  # type: ignore[list-item]
            {"role": "assistant", "content": [block.model_dump()]},  # type: ignore[list-item]
            {
                "role": "user",
                "content": [
                    {"type": "tool_result", "tool_use_id": block.id, "content": "Sunny, 22C."}
                ],
            },
        ],
        tools=[ANTHROPIC_TOOL],  # type: ignore[list-item]
    )
    assert answer.usage.input_tokens > message.usage.input_tokens


def test_anthropic_streamed_tool_use(anthropic_client: Anthropic) -> None:
    with anthropic_client.messages.stream(
        model=DEFAULT_MODEL,
        max_tokens=80,
        messages=ASK,  # type: ignore[arg-type]
        tools=[ANTHROPIC_TOOL],  # type: ignore[list-item]
        tool_choice={"type": "any"},
    ) as stream:
        kinds = [e.type for e in stream]
        final = stream.get_final_message()
    assert "input_json" in kinds  # the SDK's event for each input_json_delta
    assert final.stop_reason == "tool_use"
    blocks = [b for b in final.content if b.type == "tool_use"]
    assert blocks  # parallel calls are allowed: one or more
    for block in blocks:
        jsonschema.validate(block.input, WEATHER_SCHEMA)


def test_ollama_forced_tool_call_and_tool_result(
    api: ApiProcess, ollama_client: ollama.Client
) -> None:
    # tool_choice is tokenq's extension (Ollama has none), so this request is sent by hand and
    # its answer read with the official client's own response type.
    body = {
        "model": DEFAULT_MODEL,
        "messages": ASK,
        "tools": [OPENAI_TOOL],
        "tool_choice": "required",
        "stream": False,
        "options": {"temperature": 0, "num_predict": 80},
    }
    raw = httpx.post(f"{api.url}/api/chat", json=body, timeout=120)
    assert raw.status_code == 200, raw.text
    response = ollama.ChatResponse.model_validate(raw.json())
    [call] = response.message.tool_calls or []
    jsonschema.validate(dict(call.function.arguments), WEATHER_SCHEMA)
    answer = ollama_client.chat(
        model=DEFAULT_MODEL,
        messages=[
            *ASK,
            response.message,
            {"role": "tool", "content": "Sunny, 22C.", "tool_name": call.function.name},
        ],
        tools=[OPENAI_TOOL],
        options={"temperature": 0, "num_predict": 30},
    )
    assert answer.done and (answer.prompt_eval_count or 0) > (response.prompt_eval_count or 0)


def test_bad_schemas_are_400_in_each_flavour(
    openai_client: OpenAI, anthropic_client: Anthropic, ollama_client: ollama.Client
) -> None:
    import anthropic
    import openai

    bad = {"type": "object", "properties": {"n": {"type": "integer", "minimum": 1}}}
    with pytest.raises(openai.BadRequestError) as refused:
        openai_client.chat.completions.create(
            model=DEFAULT_MODEL,
            messages=ASK,  # type: ignore[arg-type]
            response_format={"type": "json_schema", "json_schema": {"name": "n", "schema": bad}},
        )
    assert "'minimum'" in str(refused.value)
    with pytest.raises(anthropic.BadRequestError) as rejected:
        anthropic_client.messages.create(
            model=DEFAULT_MODEL,
            max_tokens=10,
            messages=ASK,  # type: ignore[arg-type]
            tools=[{"name": "n", "input_schema": bad}],  # type: ignore[list-item]
            tool_choice={"type": "any"},
        )
    assert "'minimum'" in str(rejected.value)
    with pytest.raises(ollama.ResponseError) as failed:
        ollama_client.chat(model=DEFAULT_MODEL, messages=ASK, format=bad)
    assert failed.value.status_code == 400 and "'minimum'" in failed.value.error
