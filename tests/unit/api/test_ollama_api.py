"""The Ollama flavour over fakeredis, jobs performed by the real RQ worker on a fake engine."""

import json

import httpx
import pytest

from api.errors import ApiError, ErrorKind, QueueFullError
from api.ollama import serving
from tests.fakes import EOS
from tests.unit.api.harness import FACTS, MODEL, N_CTX, Harness

CHAT = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "stream": False}
GENERATE = {"model": MODEL, "prompt": "hi", "stream": False}

STATS = {
    "done_reason",
    "total_duration",
    "load_duration",
    "prompt_eval_count",
    "prompt_eval_duration",
    "eval_count",
    "eval_duration",
}


def lines(response: httpx.Response) -> list[dict[str, object]]:
    assert response.headers["content-type"] == "application/x-ndjson"
    assert response.text.endswith("\n")
    return [json.loads(line) for line in response.text.splitlines()]


def assert_final(line: dict[str, object], reason: str, prompt: int, output: int) -> None:
    assert line["done"] is True and line["done_reason"] == reason
    assert (line["prompt_eval_count"], line["eval_count"]) == (prompt, output)
    durations = [line[k] for k in STATS if k.endswith("duration")]
    assert all(isinstance(d, int) and d >= 0 for d in durations), line
    total = line["total_duration"]
    assert isinstance(total, int)
    assert total >= max(d for d in durations if isinstance(d, int))


async def test_chat(harness: Harness) -> None:
    response = await harness.call("/api/chat", CHAT)
    assert response.status_code == 200, response.text
    body = response.json()
    assert set(body) == {"model", "created_at", "message", "done", *STATS}
    assert body["model"] == MODEL
    assert body["message"] == {"role": "assistant", "content": "Hello, world"}
    assert body["created_at"].endswith("Z")
    assert_final(body, "stop", 4, 3)


async def test_chat_streams_ndjson_by_default(harness: Harness) -> None:
    response = await harness.call("/api/chat", {k: v for k, v in CHAT.items() if k != "stream"})
    assert response.status_code == 200
    chunks = lines(response)
    for chunk in chunks[:-1]:
        assert set(chunk) == {"model", "created_at", "message", "done"}
        assert chunk["done"] is False
    assert [c["message"] for c in chunks[:-1]] == [
        {"role": "assistant", "content": text} for text in ("Hello", ",", " world")
    ]
    assert set(chunks[-1]) == {"model", "created_at", "message", "done", *STATS}
    assert chunks[-1]["message"] == {"role": "assistant", "content": ""}
    assert_final(chunks[-1], "stop", 4, 3)


@pytest.mark.parametrize("stream", [False, True])
async def test_generate(harness: Harness, stream: bool) -> None:
    response = await harness.call("/api/generate", {**GENERATE, "stream": stream})
    assert response.status_code == 200
    if stream:
        chunks = lines(response)
        assert all(set(c) == {"model", "created_at", "response", "done"} for c in chunks[:-1])
        text = "".join(str(c["response"]) for c in chunks)
        final = chunks[-1]
    else:
        final = response.json()
        text = str(final["response"])
    assert text == "Hello, world"
    assert set(final) == {"model", "created_at", "response", "done", *STATS}
    assert_final(final, "stop", 4, 3)


async def test_latest_tag_names_the_same_model_and_is_echoed(harness: Harness) -> None:
    response = await harness.call("/api/chat", {**CHAT, "model": f"{MODEL}:latest"})
    assert response.status_code == 200
    assert response.json()["model"] == f"{MODEL}:latest"


async def test_options_reach_the_engine(harness: Harness) -> None:
    options = {
        "num_predict": 2,
        "temperature": 0.3,
        "top_k": 5,
        "top_p": 0.7,
        "min_p": 0.1,
        "seed": 42,
        "repeat_penalty": 1.3,
        "presence_penalty": 0.5,
        "frequency_penalty": 0.25,
        "typical_p": 1.0,
        "mirostat": 0,
        "repeat_last_n": 64,
        "num_keep": 5,
    }
    response = await harness.call("/api/generate", {**GENERATE, "options": options})
    assert_final(response.json(), "length", 4, 2)
    sampling, seed = harness.engine.started_with[-1]
    assert seed == 42
    assert sampling.model_dump(
        exclude={"stop", "ignore_eos", "min_tokens", "grammar", "logit_bias", "logprobs"}
    ) == {
        "max_tokens": 2,
        "temperature": 0.3,
        "top_k": 5,
        "top_p": 0.7,
        "min_p": 0.1,
        "seed": 42,
        "repeat_penalty": 1.3,
        "presence_penalty": 0.5,
        "frequency_penalty": 0.25,
    }


async def test_ollama_defaults_apply_without_options(harness: Harness) -> None:
    await harness.call("/api/chat", CHAT)
    sampling, _seed = harness.engine.started_with[-1]
    assert (sampling.temperature, sampling.top_k, sampling.top_p) == (0.8, 40, 0.9)
    assert (sampling.repeat_penalty, sampling.max_tokens) == (1.1, None)


async def test_stop_option(harness: Harness) -> None:
    response = await harness.call("/api/chat", {**CHAT, "options": {"stop": [","]}})
    body = response.json()
    assert body["message"]["content"] == "Hello"
    assert body["done_reason"] == "stop"


async def test_num_ctx_below_the_workers_limits_the_job(harness: Harness) -> None:
    # The fake prompt is 4 tokens: a context of 6 leaves room for 2.
    response = await harness.call("/api/chat", {**CHAT, "options": {"num_ctx": 6}})
    assert_final(response.json(), "length", 4, 2)
    # num_predict beyond the room left is capped to it, as Ollama caps silently.
    options = {"num_ctx": 6, "num_predict": 3}
    response = await harness.call("/api/chat", {**CHAT, "options": options})
    assert_final(response.json(), "length", 4, 2)


@pytest.mark.parametrize(
    ("options", "words"),
    [
        ({"num_ctx": N_CTX + 1}, "above this model's context"),
        ({"num_ctx": 4}, "context"),
    ],
)
async def test_num_ctx_that_cannot_fit_is_400(
    harness: Harness, options: dict[str, int], words: str
) -> None:
    response = await harness.call("/api/chat", {**CHAT, "options": options})
    assert response.status_code == 400
    assert words in response.json()["error"]


async def test_empty_prompt_loads_the_model_without_a_job(harness: Harness) -> None:
    response = await harness.client.post("/api/generate", json={"model": MODEL})
    body = response.json()
    assert (body["done"], body["done_reason"], body["response"]) == (True, "load", "")
    response = await harness.client.post("/api/chat", json={"model": MODEL, "messages": []})
    assert response.json()["done_reason"] == "load"
    assert harness.engine.started_with == []


@pytest.mark.parametrize(
    ("path", "change", "words"),
    [
        ("/api/chat", {"format": "yaml"}, "format"),
        ("/api/chat", {"tools": [{"type": "function"}]}, "tool"),
        ("/api/chat", {"think": True}, "thinking"),
        ("/api/chat", {"messages": [{"role": "robot", "content": "x"}]}, "role"),
        (
            "/api/chat",
            {"messages": [{"role": "user", "content": "x", "images": ["AAAA"]}]},
            "image",
        ),
        ("/api/chat", {"options": {"num_thread": 2}}, "num_thread"),
        ("/api/chat", {"options": {"mirostat": 2}}, "mirostat"),
        ("/api/chat", {"options": {"repeat_last_n": 128}}, "repeat_last_n"),
        ("/api/chat", {"options": {"temperature": 9}}, "temperature"),
        ("/api/chat", {"options": {"frobnicate": 1}}, "frobnicate"),
        ("/api/generate", {"raw": True, "system": "s"}, "raw"),
        ("/api/generate", {"suffix": "end"}, "suffix"),
        ("/api/generate", {"context": [1, 2]}, "context"),
        ("/api/generate", {"template": "{{ .Prompt }}"}, "template"),
    ],
)
async def test_bad_requests_are_400_with_an_error_string(
    harness: Harness, path: str, change: dict[str, object], words: str
) -> None:
    base = CHAT if path == "/api/chat" else GENERATE
    response = await harness.client.post(path, json={**base, **change})
    assert response.status_code == 400
    assert list(response.json()) == ["error"]
    assert words in response.json()["error"], response.json()


async def test_official_client_defaults_are_accepted(harness: Harness) -> None:
    body = {**CHAT, "tools": [], "format": "", "keep_alive": "5m", "think": False}
    response = await harness.call("/api/chat", body)
    assert response.status_code == 200, response.text


async def test_unknown_and_unserved_models(harness: Harness) -> None:
    response = await harness.client.post("/api/chat", json={**CHAT, "model": "nope"})
    assert response.status_code == 404
    assert response.json() == {"error": "the model 'nope' does not exist"}
    response = await harness.client.post("/api/generate", json={**GENERATE, "model": "idle"})
    assert response.status_code == 503
    response = await harness.client.post("/api/show", json={"model": "nope"})
    assert response.status_code == 404


async def test_worker_failure_mid_stream_is_an_error_line(harness: Harness) -> None:
    harness.engine.pieces = [b"Hello", RuntimeError("boom"), EOS]
    response = await harness.call("/api/generate", {**GENERATE, "stream": True})
    chunks = lines(response)
    assert chunks[0]["response"] == "Hello"
    assert chunks[-1] == {"error": "the worker failed the job"}


def test_rate_limit_is_429_with_retry_after() -> None:
    response = serving.render_error(QueueFullError("the queue is full", retry_after_s=3))
    assert response.status_code == 429
    assert response.headers["retry-after"] == "3"
    assert json.loads(response.body) == {"error": "the queue is full"}


def test_every_error_kind_renders() -> None:
    for kind in ErrorKind:
        error = ApiError("x")
        error.kind = kind
        assert json.loads(serving.render_error(error).body) == {"error": "x"}


async def test_tags_and_ps_list_the_served_model(harness: Harness) -> None:
    details = {
        "parent_model": "",
        "format": "gguf",
        "family": "llama",
        "families": ["llama"],
        "parameter_size": "134.52M",
        "quantization_level": "Q4_1",
    }
    tags = (await harness.client.get("/api/tags")).json()
    assert tags == {
        "models": [
            {
                "name": f"{MODEL}:latest",
                "model": f"{MODEL}:latest",
                "modified_at": "2023-11-14T22:13:20Z",
                "size": FACTS.size,
                "digest": FACTS.digest,
                "details": details,
            }
        ]
    }
    (running,) = (await harness.client.get("/api/ps")).json()["models"]
    assert running["details"] == details and running["digest"] == FACTS.digest
    assert (running["size_vram"], running["context_length"]) == (0, N_CTX)
    assert running["expires_at"] > "2200"  # a worker never unloads its model


async def test_show(harness: Harness) -> None:
    response = await harness.client.post("/api/show", json={"model": f"{MODEL}:latest"})
    assert response.status_code == 200
    body = response.json()
    assert body["details"]["quantization_level"] == "Q4_1"
    assert body["model_info"] == FACTS.metadata
    assert body["template"] == FACTS.chat_template
    assert body["license"] == "apache-2.0"
    assert body["capabilities"] == ["completion"]
    parameters = dict(line.split(maxsplit=1) for line in body["parameters"].splitlines())
    assert parameters == {
        "num_ctx": str(N_CTX),
        "temperature": "0.8",
        "top_k": "40",
        "top_p": "0.9",
        "repeat_penalty": "1.1",
    }
    assert "FROM /models/m.gguf" in body["modelfile"]
    verbose = await harness.client.post("/api/show", json={"model": MODEL, "verbose": True})
    assert verbose.status_code == 400


async def test_version_and_root(harness: Harness) -> None:
    assert (await harness.client.get("/api/version")).json()["version"]
    root = await harness.client.get("/")
    assert root.text == "Ollama is running"
    assert (await harness.client.head("/")).status_code == 200


async def test_body_is_json_whatever_the_content_type(harness: Harness) -> None:
    """Ollama's documented `curl -d '{...}'` declares a form body; Ollama reads it as JSON."""
    form = {"Content-Type": "application/x-www-form-urlencoded"}
    response = await harness.call("/api/chat", CHAT, headers=form)
    assert response.status_code == 200, response.text
    assert response.json()["message"]["content"] == "Hello, world"
