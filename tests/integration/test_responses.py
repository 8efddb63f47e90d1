"""The Responses API with the official `openai` client against a real API, a real worker and the
real model: stored turns reach the prompt (counted in tokens), through any replica."""

import json
from collections.abc import Callable

import httpx
import openai
import pytest
from openai import OpenAI
from pydantic import BaseModel

from shared.settings import DEFAULT_MODEL
from tests.integration.procs import ApiProcess, Process

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


def test_unknown_previous_response_is_404_and_oversized_is_400(openai_client: OpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as missing:
        openai_client.responses.create(**GREEDY, input="hi", previous_response_id="resp_nope")
    assert missing.value.body["param"] == "previous_response_id"  # type: ignore[index]
    with pytest.raises(openai.BadRequestError) as oversized:
        openai_client.responses.create(**GREEDY, input="x" * (1024 * 1024 + 1))
    assert oversized.value.body["code"] == "stored_state_too_large"  # type: ignore[index]
