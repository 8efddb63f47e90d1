"""The official `ollama` client against a real API, a real worker and the real model."""

import hashlib
import json
from typing import Any

import httpx
import llama_cpp
import ollama
import pytest

from shared.job import ChatMessage
from shared.settings import DEFAULT_MODEL, default_gguf_path
from shared.tokenizer import PromptTokenizer
from tests.integration.conftest import UNSERVED_MODEL
from tests.integration.procs import ApiProcess

pytestmark = pytest.mark.integration

QUESTION = [{"role": "user", "content": "Name three colours of the rainbow."}]
# Greedy without Ollama's default repeat penalty, to compare with the other flavours.
GREEDY = {"temperature": 0, "repeat_penalty": 1.0}
LINE = {"model", "created_at", "done"}
STATS = {
    "done_reason",
    "total_duration",
    "load_duration",
    "prompt_eval_count",
    "prompt_eval_duration",
    "eval_count",
    "eval_duration",
}


def chat(client: ollama.Client, stream: bool, **params: Any) -> tuple[str, Any]:
    """The reply's text and its final (done) part, by either transport."""
    params = {"model": DEFAULT_MODEL, "messages": QUESTION, **params}
    params["options"] = {"num_predict": 20, **GREEDY, **params.get("options", {})}
    if not stream:
        reply = client.chat(**params)
        return reply.message.content or "", reply
    parts = list(client.chat(**params, stream=True))
    assert all(not p.done for p in parts[:-1]) and parts[-1].done
    return "".join(p.message.content or "" for p in parts), parts[-1]


def generate(client: ollama.Client, stream: bool, **params: Any) -> tuple[str, Any]:
    params = {"model": DEFAULT_MODEL, "prompt": QUESTION[0]["content"], **params}
    params["options"] = {"num_predict": 20, **GREEDY, **params.get("options", {})}
    if not stream:
        reply = client.generate(**params)
        return reply.response, reply
    parts = list(client.generate(**params, stream=True))
    assert all(not p.done for p in parts[:-1]) and parts[-1].done
    return "".join(p.response for p in parts), parts[-1]


def assert_measured(final: Any) -> None:
    """Every duration is a real nanosecond figure, and the total spans the parts."""
    assert final.prompt_eval_duration > 0 and final.eval_duration > 0
    assert final.load_duration > 0  # at least the queue wait
    parts = final.load_duration + final.prompt_eval_duration + final.eval_duration
    assert final.total_duration >= parts


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "stream"])
def test_chat(ollama_client: ollama.Client, stream: bool) -> None:
    text, final = chat(ollama_client, stream)
    assert text.strip()
    assert final.model == DEFAULT_MODEL
    assert final.done_reason in ("stop", "length")
    assert final.prompt_eval_count > 10 and final.eval_count >= 1
    assert_measured(final)


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "stream"])
def test_generate(ollama_client: ollama.Client, stream: bool) -> None:
    text, final = generate(ollama_client, stream, model=f"{DEFAULT_MODEL}:latest")
    assert text.strip()
    assert final.model == f"{DEFAULT_MODEL}:latest"
    assert_measured(final)
    # Without `raw`, a prompt is the user turn of the model's chat template.
    expected = PromptTokenizer.load(default_gguf_path()).chat(
        [ChatMessage.model_validate(QUESTION[0])]
    )
    assert final.prompt_eval_count == len(expected)


def test_raw_generate_skips_the_template(ollama_client: ollama.Client) -> None:
    prompt = "The capital of France is"
    _text, final = generate(ollama_client, False, prompt=prompt, raw=True)
    expected = PromptTokenizer.load(default_gguf_path()).raw(prompt)
    assert final.prompt_eval_count == len(expected)


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "stream"])
def test_multi_turn_with_system(ollama_client: ollama.Client, stream: bool) -> None:
    messages = [
        {"role": "system", "content": "You are a pirate. Answer like one."},
        {"role": "user", "content": "What is your ship called?"},
        {"role": "assistant", "content": "The Black Pearl, matey."},
        {"role": "user", "content": "And who is your captain?"},
    ]
    text, final = chat(ollama_client, stream, messages=messages)
    expected = PromptTokenizer.load(default_gguf_path()).chat(
        [ChatMessage.model_validate(m) for m in messages]
    )
    assert final.prompt_eval_count == len(expected)
    assert text.strip()


@pytest.fixture(scope="module")
def full_reply(api: ApiProcess) -> str:
    """A greedy reply long enough to cut with a stop string."""
    return chat(ollama.Client(host=api.url, timeout=120), False, options={"num_predict": 40})[0]


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "stream"])
def test_stop_option(ollama_client: ollama.Client, full_reply: str, stream: bool) -> None:
    full = full_reply
    words = full.split()
    assert len(words) > 4, full
    stop = " " + words[3]
    text, final = chat(ollama_client, stream, options={"num_predict": 40, "stop": [stop]})
    assert final.done_reason == "stop"
    assert text == full[: full.index(stop)]


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "stream"])
def test_num_predict_is_length(ollama_client: ollama.Client, stream: bool) -> None:
    _text, final = chat(ollama_client, stream, options={"num_predict": 5})
    assert final.done_reason == "length"
    assert final.eval_count == 5


def test_tags_ps_and_show_describe_the_gguf(ollama_client: ollama.Client) -> None:
    path = default_gguf_path()
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    (listed,) = ollama_client.list().models
    assert listed.model == f"{DEFAULT_MODEL}:latest"
    assert (listed.digest, listed.size) == (digest, path.stat().st_size)
    assert listed.details is not None
    assert listed.details.format == "gguf"
    assert listed.details.family == "llama"
    assert listed.details.quantization_level == "Q4_1"  # the file is SmolLM2-135M-...Q4_1.gguf
    assert listed.details.parameter_size == "134.52M"

    (running,) = ollama_client.ps().models
    assert (running.model, running.digest, running.context_length) == (
        listed.model,
        digest,
        4096,
    )

    shown = ollama_client.show(DEFAULT_MODEL)
    llama = llama_cpp.Llama(model_path=str(path), vocab_only=True, verbose=False)
    assert shown.template == llama.metadata["tokenizer.chat_template"]
    assert shown.modelinfo is not None
    assert shown.modelinfo["general.architecture"] == "llama"
    assert shown.modelinfo["llama.context_length"] == int(llama.metadata["llama.context_length"])
    assert shown.modelinfo["general.parameter_count"] == llama_cpp.llama_model_n_params(
        llama._model.model
    )
    assert shown.details == listed.details
    assert "num_ctx" in (shown.parameters or "")


def test_unknown_model_is_404(ollama_client: ollama.Client) -> None:
    with pytest.raises(ollama.ResponseError) as info:
        chat(ollama_client, True, model="no-such-model")
    assert info.value.status_code == 404
    assert "no-such-model" in info.value.error


def test_model_without_worker_is_503(ollama_client: ollama.Client) -> None:
    with pytest.raises(ollama.ResponseError) as info:
        generate(ollama_client, False, model=UNSERVED_MODEL)
    assert info.value.status_code == 503


@pytest.mark.parametrize(
    "params",
    [
        # A schema keyword the grammar cannot enforce.
        {"format": {"type": "object", "properties": {"n": {"type": "integer", "minimum": 1}}}},
        {"options": {"num_ctx": 100_000}},
        {"options": {"num_gpu": 1}},
        # num_predict beyond the context is capped, as Ollama does; a prompt beyond it is not.
        {"messages": [{"role": "user", "content": "word " * 6000}]},
        {"messages": [{"role": "user", "content": "x", "images": [b"\x89PNG"]}]},
    ],
    ids=["format", "num-ctx", "load-time-option", "over-context", "image"],
)
def test_bad_requests_are_400(ollama_client: ollama.Client, params: dict[str, Any]) -> None:
    with pytest.raises(ollama.ResponseError) as info:
        chat(ollama_client, False, **params)
    assert info.value.status_code == 400
    assert info.value.error


@pytest.mark.parametrize(
    ("path", "body", "param"),
    [
        ("/api/generate", {"prompt": "Hi \ud800"}, "prompt"),
        ("/api/generate", {"prompt": "Hi", "system": "\ud800"}, "system"),
        ("/api/chat", {"messages": [{"role": "user", "content": "\ud800"}]}, "messages.0.content"),
        ("/api/chat", {"messages": QUESTION, "options": {"stop": ["x"] * 20_000}}, "options.stop"),
    ],
    ids=["surrogate-prompt", "surrogate-system", "surrogate-content", "20000-stops"],
)
def test_what_the_fuzzer_found_is_400(
    api: ApiProcess, path: str, body: dict[str, Any], param: str
) -> None:
    content = json.dumps({"model": DEFAULT_MODEL, "stream": False, **body}).encode()
    response = httpx.post(f"{api.url}{path}", content=content)
    assert response.status_code == 400, response.text
    assert response.json()["error"].startswith(f"{param}: ")


def test_an_empty_raw_generate_only_loads(api: ApiProcess) -> None:
    """As Ollama: nothing to evaluate is a load request, raw or not."""
    body = {"model": DEFAULT_MODEL, "prompt": "", "raw": True, "stream": False}
    response = httpx.post(f"{api.url}/api/generate", json=body)
    assert response.status_code == 200 and response.json()["done_reason"] == "load"


def test_raw_ndjson_lines(api: ApiProcess) -> None:
    for path, body, payload in [
        ("/api/chat", {"messages": QUESTION}, "message"),
        ("/api/generate", {"prompt": "Hello"}, "response"),
    ]:
        request = {"model": DEFAULT_MODEL, "options": {"num_predict": 6}, **body}
        with httpx.stream("POST", f"{api.url}{path}", json=request, timeout=120) as response:
            assert response.status_code == 200
            assert response.headers["content-type"] == "application/x-ndjson"
            raw = response.read().decode()
        assert raw.endswith("\n")
        lines = [json.loads(line) for line in raw.splitlines()]
        assert len(lines) >= 2
        for line in lines[:-1]:
            assert set(line) == {*LINE, payload} and line["done"] is False
        assert set(lines[-1]) == {*LINE, payload, *STATS}
        assert lines[-1]["done"] is True and lines[-1]["done_reason"] == "length"
        assert lines[-1]["eval_count"] == 6
        assert all(isinstance(lines[-1][k], int) for k in STATS - {"done_reason"})
