"""The official `anthropic` client against a real API, a real worker and the real model."""

import json
from typing import Any

import anthropic
import httpx
import pytest
from anthropic import Anthropic

from shared.job import ChatMessage
from shared.settings import DEFAULT_MODEL, default_gguf_path
from shared.tokenizer import PromptTokenizer
from tests.integration.conftest import UNSERVED_MODEL
from tests.integration.procs import ApiProcess

pytestmark = pytest.mark.integration

QUESTION = [{"role": "user", "content": "Name three colours of the rainbow."}]
GREEDY = {"temperature": 0}  # not a named argument of every client version


def message(client: Anthropic, stream: bool, **params: Any) -> Any:
    """The final message, by either transport (streaming through the client's own helper)."""
    params = {"model": DEFAULT_MODEL, "max_tokens": 20, "messages": QUESTION, **params}
    if not stream:
        return client.messages.create(**params)
    with client.messages.stream(**params) as events:
        text = "".join(events.text_stream)
        final = events.get_final_message()
    assert final.content[0].text == text
    return final


def text_of(reply: Any) -> str:
    return "".join(block.text for block in reply.content)


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "stream"])
def test_message_has_text_and_usage(anthropic_client: Anthropic, stream: bool) -> None:
    reply = message(anthropic_client, stream, extra_body=GREEDY)
    assert reply.type == "message" and reply.role == "assistant" and reply.id.startswith("msg_")
    assert reply.model == DEFAULT_MODEL
    assert text_of(reply).strip()
    assert reply.stop_reason in ("end_turn", "max_tokens")
    assert reply.usage.input_tokens > 10 and reply.usage.output_tokens >= 1


def test_stream_and_plain_agree_under_greedy(anthropic_client: Anthropic) -> None:
    plain = message(anthropic_client, False, extra_body=GREEDY)
    streamed = message(anthropic_client, True, extra_body=GREEDY)
    assert text_of(plain) == text_of(streamed)
    assert plain.usage == streamed.usage


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "stream"])
def test_multi_turn_with_system_counts_like_count_tokens(
    anthropic_client: Anthropic, stream: bool
) -> None:
    system = "You are a pirate. Answer like one."
    messages = [
        {"role": "user", "content": "What is your ship called?"},
        {"role": "assistant", "content": [{"type": "text", "text": "The Black Pearl, matey."}]},
        {"role": "user", "content": "And who is your captain?"},
    ]
    reply = message(anthropic_client, stream, system=system, messages=messages, extra_body=GREEDY)
    counted = anthropic_client.messages.count_tokens(
        model=DEFAULT_MODEL, system=system, messages=messages
    )
    expected = PromptTokenizer.load(default_gguf_path()).chat(
        [
            ChatMessage(role="system", content=system),
            ChatMessage(role="user", content="What is your ship called?"),
            ChatMessage(role="assistant", content="The Black Pearl, matey."),
            ChatMessage(role="user", content="And who is your captain?"),
        ]
    )
    assert reply.usage.input_tokens == counted.input_tokens == len(expected)
    assert text_of(reply).strip()


def test_prefill_is_continued(anthropic_client: Anthropic) -> None:
    messages = [*QUESTION, {"role": "assistant", "content": "The three colours are"}]
    reply = message(anthropic_client, False, messages=messages, extra_body=GREEDY)
    counted = anthropic_client.messages.count_tokens(model=DEFAULT_MODEL, messages=messages)
    assert reply.usage.input_tokens == counted.input_tokens
    plain = message(anthropic_client, False, extra_body=GREEDY)
    assert reply.usage.input_tokens > plain.usage.input_tokens
    assert text_of(reply) != text_of(plain)


@pytest.fixture(scope="module")
def full_reply(api: ApiProcess) -> str:
    """A greedy reply long enough to cut with a stop sequence."""
    client = Anthropic(base_url=api.url, api_key="unused", max_retries=0, timeout=120)
    return text_of(message(client, False, max_tokens=40, extra_body=GREEDY))


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "stream"])
def test_stop_sequence(anthropic_client: Anthropic, full_reply: str, stream: bool) -> None:
    full = full_reply
    words = full.split()
    assert len(words) > 4, full
    stop = " " + words[3]
    reply = message(
        anthropic_client, stream, max_tokens=40, stop_sequences=["zzzz", stop], extra_body=GREEDY
    )
    assert reply.stop_reason == "stop_sequence"
    assert reply.stop_sequence == stop
    assert text_of(reply) == full[: full.index(stop)]


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "stream"])
def test_max_tokens(anthropic_client: Anthropic, stream: bool) -> None:
    reply = message(anthropic_client, stream, max_tokens=5, extra_body=GREEDY)
    assert reply.stop_reason == "max_tokens"
    assert reply.usage.output_tokens == 5


def test_unknown_model_is_not_found(anthropic_client: Anthropic) -> None:
    with pytest.raises(anthropic.NotFoundError) as info:
        message(anthropic_client, False, model="no-such-model")
    assert info.value.body["error"]["type"] == "not_found_error"  # type: ignore[index]


def test_model_without_worker_is_overloaded(anthropic_client: Anthropic) -> None:
    with pytest.raises(anthropic.APIStatusError) as info:
        message(anthropic_client, True, model=UNSERVED_MODEL)
    assert info.value.status_code == 529
    assert info.value.body["error"]["type"] == "overloaded_error"  # type: ignore[index]


@pytest.mark.parametrize(
    "params",
    [
        {"max_tokens": 0},
        {"messages": []},
        {"extra_body": {"temperature": 1.5}},
        {"messages": [{"role": "user", "content": [{"type": "image", "source": {}}]}]},
        {"tools": [{"type": "web_search_20250305", "name": "web_search"}]},  # a server tool
        # max_tokens beyond the context is capped (as Anthropic's clients send large ones);
        # a prompt beyond it cannot be.
        {"messages": [{"role": "user", "content": "word " * 6000}]},
    ],
    ids=["max-tokens-0", "no-messages", "temperature", "image", "server-tool", "over-context"],
)
def test_bad_requests_are_invalid_request_errors(
    anthropic_client: Anthropic, params: dict[str, Any]
) -> None:
    with pytest.raises(anthropic.BadRequestError) as info:
        message(anthropic_client, False, **params)
    assert info.value.body["type"] == "error"  # type: ignore[index]
    assert info.value.body["error"]["type"] == "invalid_request_error"  # type: ignore[index]


@pytest.mark.parametrize(
    ("change", "param"),
    [
        ({"messages": [{"role": "user", "content": "Hi \ud800"}]}, "messages.0.content"),
        ({"system": [{"type": "text", "text": "\udfff"}]}, "system"),
        ({"stop_sequences": [f"stop {i}" for i in range(20_000)]}, "stop_sequences"),
    ],
    ids=["surrogate-content", "surrogate-system", "20000-stops"],
)
def test_what_the_fuzzer_found_is_400(api: ApiProcess, change: dict[str, Any], param: str) -> None:
    body = {"model": DEFAULT_MODEL, "max_tokens": 8, "messages": QUESTION, **change}
    response = httpx.post(
        f"{api.url}/v1/messages",
        content=json.dumps(body).encode(),  # a surrogate as its \ud800 escape
        headers={"content-type": "application/json"},
    )
    assert response.status_code == 400, response.text
    assert response.json()["error"]["message"].startswith(f"{param}: ")


def test_malformed_json_is_400_in_anthropic_shape(api: ApiProcess) -> None:
    response = httpx.post(
        f"{api.url}/v1/messages", content=b"{not json", headers={"content-type": "application/json"}
    )
    assert response.status_code == 400
    assert response.json()["type"] == "error"
    assert response.json()["error"]["type"] == "invalid_request_error"


def test_raw_sse_event_order(api: ApiProcess) -> None:
    body = {"model": DEFAULT_MODEL, "max_tokens": 12, "messages": QUESTION, "stream": True}
    headers = {"x-api-key": "unused", "anthropic-version": "2023-06-01"}
    with httpx.stream(
        "POST", f"{api.url}/v1/messages", json=body, headers=headers, timeout=120
    ) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        raw = response.read().decode()
    frames = [frame.split("\n") for frame in raw.split("\n\n") if frame]
    # Every frame: its SSE id (for Last-Event-ID), its event name, its data.
    assert all(len(f) == 3 and f[0].startswith("id: ") for f in frames), raw
    assert all(f[1].startswith("event: ") for f in frames), raw
    ids = [int(f[0].removeprefix("id: ")) for f in frames]
    assert ids == sorted(ids) and ids[0] == 0
    names = [f[1].removeprefix("event: ") for f in frames]
    data = [json.loads(f[2].removeprefix("data: ")) for f in frames]
    assert [d["type"] for d in data] == names
    deltas = names.count("content_block_delta")
    assert deltas >= 1
    assert names == [
        "message_start",
        "content_block_start",
        "ping",
        *["content_block_delta"] * deltas,
        "content_block_stop",
        "message_delta",
        "message_stop",
    ]
    assert data[0]["message"]["usage"]["input_tokens"] > 10
    assert data[-2]["delta"]["stop_reason"] in ("end_turn", "max_tokens")
    assert data[-2]["usage"]["output_tokens"] >= 1
