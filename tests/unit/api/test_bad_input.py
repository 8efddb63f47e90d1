"""Bad input gets a clear 4xx in the OpenAI shape: body cap, malformed bodies, schema fuzzing."""

import fakeredis
import pytest
import schemathesis
from hypothesis import HealthCheck, settings

from api.app import create_app
from api.state import AppState
from shared.settings import ApiSettings
from tests.fakes import FakeTokenizers
from tests.unit.api.harness import MODEL, Harness

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
    path="/readyz"  # 503 is its right answer with no worker up
)


@schema.parametrize()
@settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
def test_no_request_gets_a_5xx(case: schemathesis.Case) -> None:
    response = case.call()
    assert response.status_code < 500, (case.method, case.path, case.body, response.text)
    if response.status_code < 400 or not case.path.startswith(("/v1", "/api")):
        return
    body = response.json()
    if "detail" in body:  # the router's own answer: no such method or path
        assert response.status_code in (404, 405), response.text
    elif case.path.startswith("/v1/messages"):  # Anthropic's envelope
        assert body["type"] == "error" and set(body["error"]) == {"type", "message"}, body
    elif case.path.startswith("/api"):  # Ollama's
        assert set(body) == {"error"} and isinstance(body["error"], str), body
    else:
        assert set(body["error"]) == {"message", "type", "param", "code"}, response.text


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
