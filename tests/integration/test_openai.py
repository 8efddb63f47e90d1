"""The official `openai` client against a real API, a real worker and the real model."""

import json

import httpx
import openai
import pytest
from openai import OpenAI

from shared.job import ChatMessage
from shared.settings import DEFAULT_MODEL, default_gguf_path
from shared.tokenizer import PromptTokenizer
from tests.integration.conftest import UNSERVED_MODEL
from tests.integration.procs import ApiProcess

pytestmark = pytest.mark.integration

QUESTION = [{"role": "user", "content": "Name three colours of the rainbow."}]


def chat(client: OpenAI, stream: bool, **params: object) -> tuple[str, str | None, object]:
    """Content, finish_reason and usage, by either transport."""
    params = {"model": DEFAULT_MODEL, "messages": QUESTION, **params}
    if not stream:
        response = client.chat.completions.create(**params)  # type: ignore[call-overload]
        return (
            response.choices[0].message.content,
            response.choices[0].finish_reason,
            response.usage,
        )
    chunks = list(
        client.chat.completions.create(
            **params, stream=True, stream_options={"include_usage": True}
        )  # type: ignore[call-overload]
    )
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    finish = next(
        c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason
    )
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    return text, finish, chunks[-1].usage


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "stream"])
def test_chat_generates_text_with_usage(openai_client: OpenAI, stream: bool) -> None:
    text, finish, usage = chat(openai_client, stream, max_tokens=40, temperature=0)
    assert text.strip()
    assert finish in ("stop", "length")
    assert usage.completion_tokens >= 1 and usage.prompt_tokens > 10  # type: ignore[attr-defined]


def test_stream_and_plain_agree_under_greedy(openai_client: OpenAI) -> None:
    plain = chat(openai_client, False, max_tokens=30, temperature=0)
    streamed = chat(openai_client, True, max_tokens=30, temperature=0)
    assert plain[0] == streamed[0]
    assert plain[2].completion_tokens == streamed[2].completion_tokens  # type: ignore[attr-defined]


def test_stream_delivers_several_chunks(openai_client: OpenAI) -> None:
    chunks = list(
        openai_client.chat.completions.create(
            model=DEFAULT_MODEL,
            messages=QUESTION,
            max_tokens=20,
            temperature=0,
            stream=True,  # type: ignore[arg-type]
        )
    )
    deltas = [
        c.choices[0].delta.content for c in chunks if c.choices and c.choices[0].delta.content
    ]
    assert len(deltas) >= 5
    assert chunks[0].choices[0].delta.role == "assistant"


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "stream"])
def test_completions(openai_client: OpenAI, stream: bool) -> None:
    params = {
        "model": DEFAULT_MODEL,
        "prompt": "The capital of France is",
        "max_tokens": 8,
        "temperature": 0,
    }
    if stream:
        chunks = list(openai_client.completions.create(**params, stream=True))  # type: ignore[call-overload]
        text = "".join(c.choices[0].text for c in chunks if c.choices)
        finish = chunks[-1].choices[0].finish_reason
    else:
        response = openai_client.completions.create(**params)  # type: ignore[call-overload]
        text, finish = response.choices[0].text, response.choices[0].finish_reason
        assert response.usage.completion_tokens == 8
    assert text.strip()
    assert finish == "length"


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "stream"])
def test_multi_turn_with_system_prompt_reaches_the_model(
    openai_client: OpenAI, stream: bool
) -> None:
    messages = [
        {"role": "system", "content": "You are a pirate. Answer like one."},
        {"role": "user", "content": "What is your ship called?"},
        {"role": "assistant", "content": "The Black Pearl, matey."},
        {"role": "user", "content": "And who is your captain?"},
    ]
    text, _finish, usage = chat(
        openai_client, stream, messages=messages, max_tokens=20, temperature=0
    )
    expected = PromptTokenizer.load(default_gguf_path()).chat(
        [ChatMessage.model_validate(m) for m in messages]
    )
    assert usage.prompt_tokens == len(expected)  # type: ignore[attr-defined]
    assert text.strip()


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "stream"])
def test_stop_sequence_cuts_output(openai_client: OpenAI, stream: bool) -> None:
    full, _, _ = chat(openai_client, False, max_tokens=40, temperature=0)
    words = full.split()
    assert len(words) > 4, full
    stop = " " + words[3]
    cut = full[: full.index(stop)]
    text, finish, _ = chat(openai_client, stream, max_tokens=40, temperature=0, stop=[stop, "zzzz"])
    assert finish == "stop"
    assert text == cut


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "stream"])
def test_max_tokens_reached(openai_client: OpenAI, stream: bool) -> None:
    _text, finish, usage = chat(openai_client, stream, max_tokens=5, temperature=0)
    assert finish == "length"
    assert usage.completion_tokens == 5  # type: ignore[attr-defined]


def test_max_completion_tokens_is_honoured(openai_client: OpenAI) -> None:
    _text, finish, usage = chat(openai_client, False, max_completion_tokens=3)
    assert finish == "length" and usage.completion_tokens == 3  # type: ignore[attr-defined]


def test_greedy_is_repeatable(openai_client: OpenAI) -> None:
    first = chat(openai_client, False, max_tokens=40, temperature=0)[0]
    second = chat(openai_client, False, max_tokens=40, temperature=0)[0]
    assert first == second


def test_seed_makes_sampling_repeatable(openai_client: OpenAI) -> None:
    def sample(seed: int) -> str:
        return chat(openai_client, False, max_tokens=30, temperature=1.5, seed=seed)[0]

    assert sample(1234) == sample(1234)
    # The seed really drives sampling: different seeds do not all give one answer.
    assert len({sample(s) for s in range(1, 5)}) > 1


def test_unknown_model_is_404(openai_client: OpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as info:
        openai_client.chat.completions.create(model="no-such-model", messages=QUESTION)  # type: ignore[arg-type]
    assert info.value.code == "model_not_found"


def test_model_without_worker_is_503(openai_client: OpenAI) -> None:
    with pytest.raises(openai.InternalServerError) as info:
        openai_client.chat.completions.create(model=UNSERVED_MODEL, messages=QUESTION)  # type: ignore[arg-type]
    assert info.value.status_code == 503


@pytest.mark.parametrize(
    "params",
    [
        {"messages": []},
        {"temperature": 5},
        {"max_tokens": -1},
        {"n": 2},  # more sequences than the session worker's one slot
        {"logprobs": True, "top_logprobs": 21},
        {"tool_choice": "required"},  # and no tools
    ],
    ids=[
        "no-messages",
        "temperature",
        "negative-max-tokens",
        "n",
        "top-logprobs-21",
        "tool-choice-without-tools",
    ],
)
def test_bad_body_is_400(openai_client: OpenAI, params: dict[str, object]) -> None:
    body = {"model": DEFAULT_MODEL, "messages": QUESTION, **params}
    with pytest.raises(openai.BadRequestError) as info:
        openai_client.chat.completions.create(**body)  # type: ignore[call-overload]
    assert info.value.status_code == 400


@pytest.mark.parametrize(
    ("path", "body", "param"),
    [
        (
            "/v1/chat/completions",
            {"messages": [{"role": "user", "content": "Hi \ud800"}]},
            "messages.0.content",
        ),
        ("/v1/completions", {"prompt": "Hi \ud800"}, "prompt"),
        ("/v1/completions", {"prompt": ""}, "prompt"),
        ("/v1/completions", {"prompt": [""], "stream": True}, "prompt"),
        ("/v1/chat/completions", {"messages": QUESTION, "max_tokens": "4"}, "max_tokens"),
    ],
    ids=["surrogate-content", "surrogate-prompt", "empty-prompt", "empty-prompt-list", "str-int"],
)
def test_what_the_fuzzer_found_is_400(
    api: ApiProcess, path: str, body: dict[str, object], param: str
) -> None:
    """Before: 500 from the real tokenizer, 502 from llama.cpp, 200 by coercion."""
    content = json.dumps({"model": DEFAULT_MODEL, **body}).encode()  # \ud800 as an escape
    response = httpx.post(
        f"{api.url}{path}", content=content, headers={"Content-Type": "application/json"}
    )
    assert response.status_code == 400, response.text
    assert response.json()["error"]["param"] == param


def test_malformed_json_is_400_in_openai_shape(api: ApiProcess) -> None:
    response = httpx.post(
        f"{api.url}/v1/chat/completions",
        content=b"{not json",
        headers={"Content-Type": "application/json"},
    )
    assert response.status_code == 400
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["type"] == "invalid_request_error" and "JSON" in error["message"]


def test_models_lists_served_models_only(openai_client: OpenAI) -> None:
    ids = [m.id for m in openai_client.models.list()]
    assert ids == [DEFAULT_MODEL]
    assert openai_client.models.retrieve(DEFAULT_MODEL).id == DEFAULT_MODEL
    with pytest.raises(openai.NotFoundError):
        openai_client.models.retrieve(UNSERVED_MODEL)


def test_readiness(api: ApiProcess) -> None:
    assert httpx.get(f"{api.url}/healthz").status_code == 200
    ready = httpx.get(f"{api.url}/readyz")
    assert ready.status_code == 200 and ready.json()["models"] == {DEFAULT_MODEL: 1}
