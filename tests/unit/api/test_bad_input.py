"""Bad input gets a clear 4xx in each flavour's shape: body cap, malformed bodies, the cases a
fuzzer found, schema fuzzing."""

import asyncio
import json
from typing import Any

import fakeredis
import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from api.app import create_app
from api.state import AppState
from shared.job import MAX_STOP_LENGTH, MAX_STOP_STRINGS
from shared.queues import model_queue
from shared.settings import ApiSettings
from tests.fakes import FakeTokenizers
from tests.unit.api.bodies import GENERATION_PATHS, bodies
from tests.unit.api.harness import MODEL, Harness, open_harness

CHAT = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}]}


@pytest.mark.settings(max_body_bytes=2048)
async def test_an_oversized_body_is_413_in_openai_shape(harness: Harness) -> None:
    big = {**CHAT, "messages": [{"role": "user", "content": "x" * 4096}]}
    response = await harness.client.post("/v1/chat/completions", json=big)
    assert response.status_code == 413
    assert response.json()["error"] == {
        "message": "the request body is over 2048 bytes",
        "type": "invalid_request_error",
        "param": None,
        "code": "request_too_large",
    }


@pytest.mark.settings(max_body_bytes=2048)
async def test_an_oversized_chunked_body_is_413(harness: Harness) -> None:
    """No Content-Length: the cap counts the bytes as they arrive."""

    async def chunks():  # type: ignore[no-untyped-def]
        for _ in range(8):
            yield b" " * 512

    response = await harness.client.post(
        "/v1/chat/completions", content=chunks(), headers={"Content-Type": "application/json"}
    )
    assert response.status_code == 413


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        (b"[" * 100_000 + b"]" * 100_000, "JSON"),  # nesting deeper than the parser allows
        (b'{"model": "m", "messages": "hi"}', "messages"),
        (b"\xff\xfe not utf-8", ""),
        (b"", ""),
    ],
    ids=["deep-nesting", "wrong-type", "not-utf8", "empty"],
)
async def test_malformed_bodies_are_400(harness: Harness, body: bytes, fragment: str) -> None:
    response = await harness.client.post(
        "/v1/chat/completions", content=body, headers={"Content-Type": "application/json"}
    )
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["type"] == "invalid_request_error" and fragment in error["message"]


S = "\ud800"  # an unpaired surrogate: JSON's "\ud800" escape carries one
USER = [{"role": "user", "content": "hi"}]
ANTHROPIC = {"model": MODEL, "max_tokens": 8, "messages": USER}
COMPLETION = {"model": MODEL, "prompt": "hi"}
GENERATE = {"model": MODEL, "prompt": "hi", "stream": False}
OLLAMA_CHAT = {"model": MODEL, "messages": USER, "stream": False}
MANY_STOPS = [f"stop {i}" for i in range(20_000)]  # ~300 KB, well under the body cap


def _param(path: str, response: httpx.Response) -> str | None:
    """The parameter a 400 names, in each flavour's shape (Anthropic's and Ollama's messages
    begin with it)."""
    body = response.json()
    if path.startswith("/api"):
        return str(body["error"]).split(": ")[0]
    if path == "/v1/messages":
        return str(body["error"]["message"]).split(": ")[0]
    param: str | None = body["error"]["param"]
    return param


@pytest.mark.parametrize(
    ("path", "body", "param"),
    [
        # Unpaired surrogates, in every text the job holds (found: 500 on all five endpoints).
        (
            "/v1/chat/completions",
            {**CHAT, "messages": [{"role": "user", "content": S}]},
            "messages.0.content",
        ),
        (
            "/v1/chat/completions",
            {**CHAT, "messages": [{"role": "user", "content": [{"type": "text", "text": S}]}]},
            "messages.0.content",
        ),
        ("/v1/chat/completions", {**CHAT, "stop": ["x", "Hi " + S]}, "stop.1"),
        ("/v1/chat/completions", {**CHAT, "model": S}, "model"),
        ("/v1/completions", {**COMPLETION, "prompt": "Hi " + S}, "prompt"),
        ("/v1/completions", {**COMPLETION, "prompt": [S]}, "prompt"),
        (
            "/v1/messages",
            {**ANTHROPIC, "messages": [{"role": "user", "content": "Hi " + S}]},
            "messages.0.content",
        ),
        ("/v1/messages", {**ANTHROPIC, "system": S}, "system"),
        ("/v1/messages", {**ANTHROPIC, "system": [{"type": "text", "text": S}]}, "system"),
        (
            "/v1/messages",
            {
                **ANTHROPIC,
                "system": "s",
                "messages": [{"role": "user", "content": [{"type": "text", "text": S}]}],
            },
            "messages.0.content",
        ),
        ("/v1/messages", {**ANTHROPIC, "stop_sequences": [S]}, "stop_sequences.0"),
        ("/api/generate", {**GENERATE, "prompt": "Hi " + S}, "prompt"),
        ("/api/generate", {**GENERATE, "system": S}, "system"),
        ("/api/generate", {**GENERATE, "raw": True, "prompt": S}, "prompt"),
        ("/api/generate", {**GENERATE, "options": {"stop": [S]}}, "options.stop.0"),
        (
            "/api/chat",
            {**OLLAMA_CHAT, "messages": [*USER, {"role": "user", "content": S}]},
            "messages.1.content",
        ),
        ("/api/chat", {**OLLAMA_CHAT, "messages": [], "model": S}, "model"),
        # An empty raw prompt (found: 502 worker_error, a worker job spent).
        ("/v1/completions", {**COMPLETION, "prompt": ""}, "prompt"),
        ("/v1/completions", {**COMPLETION, "prompt": [""]}, "prompt"),
        ("/v1/completions", {**COMPLETION, "prompt": "", "stream": True}, "prompt"),
        ("/v1/completions", {**COMPLETION, "prompt": [""], "stream": True}, "prompt"),
        # Wrong types, no longer coerced (found: 200).
        ("/v1/chat/completions", {**CHAT, "max_tokens": "4"}, "max_tokens"),
        ("/v1/chat/completions", {**CHAT, "max_tokens": True}, "max_tokens"),
        ("/v1/chat/completions", {**CHAT, "max_tokens": 4.0}, "max_tokens"),
        ("/v1/chat/completions", {**CHAT, "stream": "true"}, "stream"),
        ("/v1/completions", {**COMPLETION, "temperature": "0.5"}, "temperature"),
        ("/v1/messages", {**ANTHROPIC, "max_tokens": "8"}, "max_tokens"),
        ("/api/chat", {**OLLAMA_CHAT, "options": {"num_predict": "4"}}, "options.num_predict"),
        ("/api/generate", {**GENERATE, "raw": 1}, "raw"),
        # The job's limits, each named as the flavour names it.
        ("/v1/messages", {**ANTHROPIC, "stop_sequences": MANY_STOPS}, "stop_sequences"),
        ("/api/chat", {**OLLAMA_CHAT, "options": {"stop": MANY_STOPS}}, "options.stop"),
        ("/api/generate", {**GENERATE, "options": {"stop": MANY_STOPS}}, "options.stop"),
        ("/v1/chat/completions", {**CHAT, "stop": ["x"] * (MAX_STOP_STRINGS + 1)}, "stop"),
        ("/v1/chat/completions", {**CHAT, "stop": "x" * (MAX_STOP_LENGTH + 1)}, "stop.0"),
        ("/v1/messages", {**ANTHROPIC, "stop_sequences": [""]}, "stop_sequences.0"),
        ("/v1/chat/completions", {**CHAT, "repetition_penalty": 0}, "repetition_penalty"),
        ("/api/chat", {**OLLAMA_CHAT, "options": {"repeat_penalty": 0}}, "options.repeat_penalty"),
        (
            "/api/chat",
            {**OLLAMA_CHAT, "options": {"num_predict": 0, "top_k": 2**40}},
            "options.top_k",
        ),
        ("/v1/chat/completions", {**CHAT, "max_completion_tokens": 0}, "max_completion_tokens"),
        ("/v1/chat/completions", {**CHAT, "temperature": 2.5}, "temperature"),
        ("/v1/chat/completions", {**CHAT, "seed": 2**40}, "seed"),
        ("/v1/chat/completions", {**CHAT, "messages": []}, "messages"),
        ("/v1/messages", {**ANTHROPIC, "temperature": 1.5}, "temperature"),  # Anthropic's 0-1
        ("/v1/messages", {**ANTHROPIC, "top_p": 0}, "top_p"),
        ("/api/generate", {**GENERATE, "options": {"min_p": 2}}, "options.min_p"),
    ],
)
async def test_bad_values_are_400_naming_the_flavours_parameter(
    harness: Harness, path: str, body: dict[str, object], param: str
) -> None:
    content = json.dumps(body).encode()  # ensure_ascii: a surrogate travels as its escape
    response = await harness.client.post(
        path, content=content, headers={"Content-Type": "application/json"}
    )
    assert response.status_code == 400, response.text
    assert _param(path, response) == param, response.text
    assert model_queue(harness.redis, MODEL).count == 0  # refused before any job was queued


async def test_a_float_field_takes_a_json_integer(harness: Harness) -> None:
    """Strict parsing refuses "1" and true, but JSON does not tell 1 from 1.0."""
    response = await harness.call("/v1/chat/completions", {**CHAT, "temperature": 1, "top_p": 1})
    assert response.status_code == 200, response.text


@pytest.mark.parametrize(
    "body", [{**GENERATE, "prompt": ""}, {**GENERATE, "raw": True, "prompt": ""}]
)
async def test_ollama_generate_with_an_empty_prompt_only_loads(
    harness: Harness, body: dict[str, object]
) -> None:
    """As Ollama: no prompt, raw or not, answers done_reason "load"; no job is run."""
    response = await harness.client.post("/api/generate", json=body)
    assert response.status_code == 200 and response.json()["done_reason"] == "load"
    assert harness.engine.started_with == []


async def test_ollama_chat_with_empty_messages_is_generated_from_the_template(
    harness: Harness,
) -> None:
    """The chat template renders the turns' markers, so the prompt is not empty; Ollama also
    answers it. (Were it empty, the worker refuses it: worker/runner.py.)"""
    body = {**OLLAMA_CHAT, "messages": [{"role": "user", "content": ""}]}
    response = await harness.call("/api/chat", body)
    assert response.status_code == 200 and response.json()["done_reason"] == "stop"


def _fuzz_app() -> object:
    """The app over fakeredis, no worker up, no known model: nothing may answer 5xx."""
    config = ApiSettings(models=[], max_body_bytes=64 * 1024)
    server = fakeredis.FakeServer()
    state = AppState.build(
        config,
        fakeredis.FakeAsyncRedis(server=server),
        fakeredis.FakeRedis(server=server),
        FakeTokenizers(prompt_len=4),
    )
    return create_app(config, state)


schema = schemathesis.openapi.from_asgi("/openapi.json", _fuzz_app()).exclude(
    path=["/readyz", "/health"]  # 503 is their right answer with no worker up
)


def _assert_error_shape(path: str, status: int, body: Any) -> None:
    """An error in the flavour's own envelope (or the router's, for no such route)."""
    if "detail" in body:  # the router's own answer: no such method or path
        assert status in (404, 405), body
    elif path.startswith("/v1/messages"):  # Anthropic's envelope
        assert body["type"] == "error" and set(body["error"]) == {"type", "message"}, body
    elif path.startswith("/api"):  # Ollama's
        assert set(body) == {"error"} and isinstance(body["error"], str), body
    else:
        assert set(body["error"]) == {"message", "type", "param", "code"}, body


@schema.parametrize()
@settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
def test_no_request_gets_a_5xx(case: schemathesis.Case) -> None:
    response = case.call()
    assert response.status_code < 500, (case.method, case.path, case.body, response.text)
    if response.status_code >= 400 and case.path.startswith(("/v1", "/api")):
        _assert_error_shape(case.path, response.status_code, response.json())


def _frames(path: str, text: str) -> list[dict[str, Any]]:
    """A streamed answer's JSON payloads: NDJSON lines, or SSE data lines."""
    if path.startswith("/api"):
        return [json.loads(line) for line in text.splitlines() if line]
    data = [line.removeprefix("data: ") for line in text.splitlines() if line.startswith("data: ")]
    return [json.loads(d) for d in data if d != "[DONE]"]


async def _send(path: str, body: bytes) -> None:
    async for harness in open_harness():  # one; asyncio.run closes it even on a failure
        response = await harness.call(path, body)
        assert response.status_code < 500, response.text[:300]
        if response.status_code >= 400:
            _assert_error_shape(path, response.status_code, response.json())
        elif "stream" in response.headers.get("content-type", "") or path.startswith("/api"):
            # A stream can only report an error inside itself: none may be there.
            frames = _frames(path, response.text)
            assert not [f for f in frames if "error" in f or f.get("type") == "error"], frames


@pytest.mark.parametrize("path", GENERATION_PATHS)
@settings(
    max_examples=60,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(data=st.data())
def test_no_generated_body_gets_a_5xx(path: str, data: st.DataObject) -> None:
    """Bodies of every type, size, nesting and encoding (tests/unit/api/bodies.py), sent to
    the app with a live (fake) worker: a 4xx in the flavour's shape or an answer, never a
    5xx, and never a hang."""
    body = data.draw(bodies(path), label="body")
    asyncio.run(asyncio.wait_for(_send(path, body), timeout=10))


def test_the_fuzzed_schema_covers_the_routes() -> None:
    paths = {result.ok().path for result in schema.get_all_operations()}
    assert {
        "/v1/chat/completions",
        "/v1/completions",
        "/v1/jobs/{job_id}",
        "/v1/messages",
        "/api/chat",
        "/api/generate",
    } <= paths
