"""The Responses API with the official `openai` client against a real API, a real worker and the
real model: stored turns reach the prompt (counted in tokens), through any replica."""

import json
from collections.abc import Callable
from typing import Any

import httpx
import openai
import pytest
from openai import OpenAI
from openai.types.responses import ResponseFunctionToolCall
from pydantic import BaseModel

from shared.settings import DEFAULT_MODEL
from tests.integration.procs import ApiProcess, Process
from tests.integration.test_structured import OPENAI_TOOL, Weather

pytestmark = pytest.mark.integration

QUESTION = "Name three colours of the rainbow."
FOLLOW_UP = "Now name one more."
GREEDY = {"model": DEFAULT_MODEL, "temperature": 0, "max_output_tokens": 24}


def chat_prompt_tokens(client: OpenAI, messages: list[dict[str, str]]) -> int:
    """The prompt tokens of the same turns as a chat completion (one token generated)."""
    done = client.chat.completions.create(
        model=DEFAULT_MODEL,
        messages=messages,  # type: ignore[arg-type]
        max_tokens=1,
        temperature=0,
    )
    assert done.usage is not None
    return done.usage.prompt_tokens


def client_of(api: ApiProcess | Process) -> OpenAI:
    assert isinstance(api, ApiProcess)
    return OpenAI(base_url=f"{api.url}/v1", api_key="unused", max_retries=0, timeout=120)


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "stream"])
def test_create_answers_with_output_text_and_usage(openai_client: OpenAI, stream: bool) -> None:
    if stream:
        events = list(openai_client.responses.create(**GREEDY, input=QUESTION, stream=True))
        deltas = "".join(e.delta for e in events if e.type == "response.output_text.delta")
        last = events[-1]
        assert last.type in ("response.completed", "response.incomplete")
        response = last.response
        assert response.output_text == deltas
        assert [e.sequence_number for e in events] == list(range(len(events)))
    else:
        response = openai_client.responses.create(**GREEDY, input=QUESTION)
    assert response.output_text.strip()
    assert response.status in ("completed", "incomplete")
    assert response.usage is not None
    assert response.usage.input_tokens == chat_prompt_tokens(
        openai_client, [{"role": "user", "content": QUESTION}]
    )
    assert 1 <= response.usage.output_tokens <= 24
    assert openai_client.responses.retrieve(response.id).output_text == response.output_text


def test_the_sdk_stream_helper_assembles_the_response(openai_client: OpenAI) -> None:
    # The helper wants `response.completed`: room enough for the model to end on its own.
    params = {**GREEDY, "max_output_tokens": 400}
    with openai_client.responses.stream(**params, input=QUESTION) as stream:  # type: ignore[arg-type]
        text = "".join(e.delta for e in stream if e.type == "response.output_text.delta")
        final = stream.get_final_response()
    assert text and final.output_text == text
    assert openai_client.responses.retrieve(final.id).output_text == text


class City(BaseModel):
    name: str
    country: str


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "stream"])
def test_text_format_json_schema_parses_into_a_model(openai_client: OpenAI, stream: bool) -> None:
    """`text.format` json_schema constrains the output by a grammar: the SDK's parse helper
    (and its stream helper) get an object of the model."""
    params = {**GREEDY, "max_output_tokens": 200, "input": "Name a city and its country."}
    if stream:
        with openai_client.responses.stream(**params, text_format=City) as events:  # type: ignore[arg-type]
            final = events.get_final_response()
        parsed = final.output_parsed
    else:
        response = openai_client.responses.parse(**params, text_format=City)  # type: ignore[arg-type]
        parsed = response.output_parsed
        assert response.text.format.type == "json_schema"
    assert isinstance(parsed, City)


def test_text_format_json_object_is_json(openai_client: OpenAI) -> None:
    response = openai_client.responses.create(
        **{**GREEDY, "max_output_tokens": 200},  # type: ignore[arg-type]
        input="Describe a cat as a JSON object.",
        text={"format": {"type": "json_object"}},
    )
    if response.status == "completed":  # within max_output_tokens, the object is complete
        assert isinstance(json.loads(response.output_text), dict)
    else:  # the generic JSON grammar bounds no length: cut, it is still an object's start
        assert response.output_text.lstrip().startswith("{")


def test_a_follow_up_carries_the_stored_turns_into_the_prompt(openai_client: OpenAI) -> None:
    first = openai_client.responses.create(**GREEDY, input=QUESTION, instructions="Be brief.")
    second = openai_client.responses.create(
        **GREEDY, input=FOLLOW_UP, previous_response_id=first.id
    )
    assert first.usage is not None and second.usage is not None
    turns = [
        {"role": "user", "content": QUESTION},
        {"role": "assistant", "content": first.output_text},
        {"role": "user", "content": FOLLOW_UP},
    ]
    # The prompt is the stored turns and the new input (instructions are not carried over).
    assert second.usage.input_tokens == chat_prompt_tokens(openai_client, turns)
    assert second.usage.input_tokens > first.usage.output_tokens + chat_prompt_tokens(
        openai_client, [turns[2]]
    )
    assert second.previous_response_id == first.id


def test_a_second_replica_continues_the_conversation(
    openai_client: OpenAI, spawn: Callable[..., Process]
) -> None:
    other = client_of(spawn("api", env={"TOKENQ_MODELS": DEFAULT_MODEL}))
    first = openai_client.responses.create(**GREEDY, input=QUESTION)
    second = other.responses.create(**GREEDY, input=FOLLOW_UP, previous_response_id=first.id)
    assert second.usage is not None
    turns = [
        {"role": "user", "content": QUESTION},
        {"role": "assistant", "content": first.output_text},
        {"role": "user", "content": FOLLOW_UP},
    ]
    assert second.usage.input_tokens == chat_prompt_tokens(openai_client, turns)
    # ... and the first replica reads what the second stored.
    assert openai_client.responses.retrieve(second.id).output_text == second.output_text


def test_retrieve_input_items_and_delete(openai_client: OpenAI) -> None:
    response = openai_client.responses.create(
        **GREEDY,
        input=[
            {"role": "developer", "content": "Answer in one word."},
            {"role": "user", "content": [{"type": "input_text", "text": "Sky colour?"}]},
        ],
    )
    # Pages of one item, followed by the SDK through `after`.
    items = list(openai_client.responses.input_items.list(response.id, limit=1, order="asc"))
    assert [(i.role, i.content[0].text) for i in items] == [  # type: ignore[union-attr]
        ("developer", "Answer in one word."),
        ("user", "Sky colour?"),
    ]
    openai_client.responses.delete(response.id)
    with pytest.raises(openai.NotFoundError):
        openai_client.responses.retrieve(response.id)


def test_a_response_in_a_conversation_adds_its_turns(openai_client: OpenAI) -> None:
    conversation = openai_client.conversations.create(
        items=[{"type": "message", "role": "system", "content": "You are terse."}],
        metadata={"test": "responses"},
    )
    assert conversation.metadata == {"test": "responses"}
    added = openai_client.conversations.items.create(
        conversation.id, items=[{"type": "message", "role": "user", "content": QUESTION}]
    )
    assert len(added.data) == 1
    response = openai_client.responses.create(
        **GREEDY, input=FOLLOW_UP, conversation=conversation.id
    )
    assert response.conversation is not None and response.conversation.id == conversation.id
    assert response.usage is not None
    assert response.usage.input_tokens == chat_prompt_tokens(
        openai_client,
        [
            {"role": "system", "content": "You are terse."},
            {"role": "user", "content": QUESTION},
            {"role": "user", "content": FOLLOW_UP},
        ],
    )
    items = list(openai_client.conversations.items.list(conversation.id, order="asc"))
    assert [i.role for i in items] == ["system", "user", "user", "assistant"]  # type: ignore[union-attr]
    assert items[-1].content[0].text == response.output_text  # type: ignore[union-attr]
    openai_client.conversations.delete(conversation.id)
    with pytest.raises(openai.NotFoundError):
        openai_client.conversations.retrieve(conversation.id)


def test_the_raw_event_stream_is_in_order(api: ApiProcess) -> None:
    body = {**GREEDY, "input": QUESTION, "stream": True}
    with httpx.stream("POST", f"{api.url}/v1/responses", json=body, timeout=120) as response:
        assert response.status_code == 200
        names = [
            line.removeprefix("event: ")
            for line in response.iter_lines()
            if line.startswith("event:")
        ]
    deltas = names.count("response.output_text.delta")
    assert deltas >= 1
    assert names == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
        *["response.output_text.delta"] * deltas,
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        names[-1],
    ]
    assert names[-1] in ("response.completed", "response.incomplete")


def test_a_stream_cancelled_midway_is_kept_cancelled_with_its_text(
    api: ApiProcess, openai_client: OpenAI
) -> None:
    long = {**GREEDY, "max_output_tokens": 3000, "input": "Count from 1 to 1000, one per line."}
    sent: list[str] = []
    events = openai_client.responses.create(**long, stream=True)  # type: ignore[call-overload]
    for event in events:
        if event.type == "response.created":
            response_id = event.response.id
        elif event.type == "response.output_text.delta":
            sent.append(event.delta)
            if len(sent) == 3:  # the job is cancelled as any job is, by its id
                job_id = response_id.removeprefix("resp_")
                assert httpx.delete(f"{api.url}/v1/jobs/{job_id}").status_code == 200
    assert event.type == "response.failed" and event.response.status == "cancelled"
    kept = openai_client.responses.retrieve(response_id)
    assert kept.status == "cancelled"
    assert len(sent) >= 3 and kept.output_text == "".join(sent)
    with pytest.raises(openai.BadRequestError) as continued:
        openai_client.responses.create(**GREEDY, input="And?", previous_response_id=kept.id)
    assert continued.value.body["param"] == "previous_response_id"  # type: ignore[index]


def test_unknown_previous_response_is_404_and_oversized_is_400(openai_client: OpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as missing:
        openai_client.responses.create(**GREEDY, input="hi", previous_response_id="resp_nope")
    assert missing.value.body["param"] == "previous_response_id"  # type: ignore[index]
    with pytest.raises(openai.BadRequestError) as oversized:
        openai_client.responses.create(**GREEDY, input="x" * (1024 * 1024 + 1))
    assert oversized.value.body["code"] == "stored_state_too_large"  # type: ignore[index]


# Function tools: the same tool as tests/integration/test_structured.py's chat one, in the
# Responses API's flat form. A forced call is grammar-constrained, so its arguments validate.
RESPONSES_TOOL = {"type": "function", **OPENAI_TOOL["function"]}  # type: ignore[dict-item]
FORCED_CALL = {"type": "function", "name": "get_weather"}
ASKED = "What is the weather in Paris?"


def chat_tool_prompt_tokens(
    client: OpenAI, call: ResponseFunctionToolCall, output: str, tool_choice: str = "auto"
) -> int:
    """The prompt tokens of the question, the call and its output as a chat completion."""
    call_turn = {
        "id": call.call_id,
        "type": "function",
        "function": {"name": call.name, "arguments": call.arguments},
    }
    done = client.chat.completions.create(
        model=DEFAULT_MODEL,
        messages=[  # type: ignore[list-item]
            {"role": "user", "content": ASKED},
            {"role": "assistant", "content": None, "tool_calls": [call_turn]},
            {"role": "tool", "tool_call_id": call.call_id, "content": output},
        ],
        tools=[OPENAI_TOOL],  # type: ignore[list-item]
        tool_choice=tool_choice,  # type: ignore[arg-type]
        max_tokens=1,
        temperature=0,
    )
    assert done.usage is not None
    return done.usage.prompt_tokens


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "stream"])
def test_a_forced_function_call_and_its_output_continue_the_response(
    openai_client: OpenAI, stream: bool
) -> None:
    params: dict[str, Any] = {
        "model": DEFAULT_MODEL,
        "input": ASKED,
        "tools": [RESPONSES_TOOL],
        "tool_choice": FORCED_CALL,
        "temperature": 0,
        "max_output_tokens": 80,
    }
    if stream:
        with openai_client.responses.stream(**params) as events:
            kinds = [e.type for e in events]
            first = events.get_final_response()
        assert kinds.count("response.function_call_arguments.done") == 1
        assert "response.output_text.delta" not in kinds  # a call alone: no message
    else:
        first = openai_client.responses.create(**params)
    assert first.status == "completed" and first.output_text == ""
    [call] = first.output
    assert isinstance(call, ResponseFunctionToolCall) and call.name == "get_weather"
    assert call.call_id.startswith("call_")
    Weather.model_validate_json(call.arguments)
    [stored] = openai_client.responses.retrieve(first.id).output
    assert isinstance(stored, ResponseFunctionToolCall)
    fields = ("id", "call_id", "name", "arguments", "status")
    assert [getattr(stored, f) for f in fields] == [getattr(call, f) for f in fields]

    answer = openai_client.responses.create(
        model=DEFAULT_MODEL,
        previous_response_id=first.id,
        input=[{"type": "function_call_output", "call_id": call.call_id, "output": "Sunny, 22C"}],
        tools=[RESPONSES_TOOL],  # type: ignore[list-item]
        temperature=0,
        max_output_tokens=30,
    )
    assert answer.status in ("completed", "incomplete")
    # The stored turns reach the prompt: as many tokens as the same turns as a chat.
    assert answer.usage is not None
    assert answer.usage.input_tokens == chat_tool_prompt_tokens(openai_client, call, "Sunny, 22C")


def test_output_items_given_back_statelessly(openai_client: OpenAI) -> None:
    """The pattern of OpenAI's function-calling guide: the output items, then each call's
    output, sent back as input with `store` off."""
    turns: list[Any] = [{"role": "user", "content": ASKED}]
    first = openai_client.responses.create(
        model=DEFAULT_MODEL,
        input=turns,
        tools=[RESPONSES_TOOL],  # type: ignore[list-item]
        tool_choice="required",
        parallel_tool_calls=False,
        temperature=0,
        max_output_tokens=80,
        store=False,
    )
    calls = [item for item in first.output if isinstance(item, ResponseFunctionToolCall)]
    assert len(calls) == 1
    turns += first.output
    turns.append({"type": "function_call_output", "call_id": calls[0].call_id, "output": "Rain"})
    answer = openai_client.responses.create(
        model=DEFAULT_MODEL,
        input=turns,
        tools=[RESPONSES_TOOL],  # type: ignore[list-item]
        tool_choice="none",
        temperature=0,
        max_output_tokens=30,
        store=False,
    )
    assert answer.output_text.strip() and answer.output[0].type == "message"
    # Every turn given back reached the prompt: as many tokens as the same turns as a chat
    # (tools not shown under "none", as in chat).
    assert answer.usage is not None
    assert answer.usage.input_tokens == chat_tool_prompt_tokens(
        openai_client, calls[0], "Rain", tool_choice="none"
    )


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "stream"])
def test_logprobs_of_each_token_under_greedy(openai_client: OpenAI, stream: bool) -> None:
    params: dict[str, Any] = {
        **GREEDY,
        "input": QUESTION,
        "include": ["message.output_text.logprobs"],
        "top_logprobs": 3,
    }
    if stream:
        events = list(openai_client.responses.create(**params, stream=True))
        streamed = [
            lp for e in events if e.type == "response.output_text.delta" for lp in e.logprobs
        ]
        last = events[-1]
        assert last.type in ("response.completed", "response.incomplete")
        response = last.response
        assert [lp.token for lp in streamed] == [
            lp.token
            for lp in response.output[0].content[0].logprobs  # type: ignore[union-attr]
        ]
    else:
        response = openai_client.responses.create(**params)
    assert response.top_logprobs == 3
    part = response.output[0].content[0]  # type: ignore[union-attr]
    assert part.logprobs  # type: ignore[union-attr]
    assert "".join(lp.token for lp in part.logprobs) == response.output_text  # type: ignore[union-attr]
    for lp in part.logprobs:  # type: ignore[union-attr]
        top = [t.logprob for t in lp.top_logprobs]
        assert len(top) == 3 and top == sorted(top, reverse=True)
        assert lp.top_logprobs[0].token == lp.token  # greedy: the most likely token
        assert lp.logprob == pytest.approx(top[0]) and lp.logprob <= 0


def test_truncation_auto_fits_a_conversation_longer_than_the_context(
    openai_client: OpenAI,
) -> None:
    filler = "The quick brown fox jumps over the lazy dog. " * 12  # about 120 tokens
    turns: list[Any] = [
        {"role": ("user", "assistant")[i % 2], "content": f"Note {i}: {filler}"} for i in range(41)
    ]  # about 5,000 tokens: more than the worker's context of 4,096
    params: dict[str, Any] = {**GREEDY, "input": turns, "max_output_tokens": 16}
    with pytest.raises(openai.BadRequestError) as refused:
        openai_client.responses.create(**params)
    assert refused.value.code == "context_length_exceeded"
    response = openai_client.responses.create(**params, truncation="auto")
    assert response.truncation == "auto" and response.status in ("completed", "incomplete")
    assert response.usage is not None
    # As few turns left out as fit: the prompt is within about two turns of the room left.
    assert 4096 - 16 - 300 < response.usage.input_tokens <= 4096 - 16


def test_input_tokens_count_is_the_prompt_of_the_response(openai_client: OpenAI) -> None:
    first = openai_client.responses.create(**GREEDY, input=QUESTION)
    shape: dict[str, Any] = {
        "model": DEFAULT_MODEL,
        "instructions": "Answer in one word.",
        "input": FOLLOW_UP,
        "previous_response_id": first.id,
        "tools": [RESPONSES_TOOL],
    }
    counted = openai_client.responses.input_tokens.count(**shape)
    assert counted.object == "response.input_tokens"
    answered = openai_client.responses.create(**shape, temperature=0, max_output_tokens=4)
    assert answered.usage is not None
    assert counted.input_tokens == answered.usage.input_tokens
