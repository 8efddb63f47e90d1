"""API keys, quotas, priorities and CORS through the app, over fakeredis."""

import pytest

from shared.job import Priority
from shared.queues import model_queue
from shared.tenancy.apikeys import ApiKey, KeyStore
from tests.unit.api.harness import MODEL, Harness

USER = [{"role": "user", "content": "hi"}]
OPENAI = ("/v1/chat/completions", {"model": MODEL, "messages": USER})
ANTHROPIC = ("/v1/messages", {"model": MODEL, "max_tokens": 8, "messages": USER})
OLLAMA = ("/api/chat", {"model": MODEL, "messages": USER, "stream": False})
AUTH = {"auth": "required"}
ORIGIN = "https://app.example"


def make_key(harness: Harness, name: str = "team", **limits: object) -> str:
    return KeyStore(harness.redis).create(
        ApiKey.model_validate({"name": name, "digest": "", **limits})
    )


def bearer(secret: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {secret}"}


@pytest.mark.settings(**AUTH)
async def test_no_key_or_a_wrong_one_is_a_401_in_each_flavours_shape(harness: Harness) -> None:
    secret = make_key(harness)
    for headers in ({}, bearer(secret + "x"), {"x-api-key": "tq-nope"}):
        openai = await harness.client.post(OPENAI[0], json=OPENAI[1], headers=headers)
        assert openai.status_code == 401
        assert openai.json()["error"]["code"] == "invalid_api_key"
        anthropic = await harness.client.post(ANTHROPIC[0], json=ANTHROPIC[1], headers=headers)
        assert anthropic.status_code == 401
        assert anthropic.json() == {
            "type": "error",
            "error": {
                "type": "authentication_error",
                "message": anthropic.json()["error"]["message"],
            },
        }
        ollama = await harness.client.post(OLLAMA[0], json=OLLAMA[1], headers=headers)
        assert ollama.status_code == 401 and set(ollama.json()) == {"error"}
        for response in (openai, anthropic, ollama):
            assert secret not in response.text and "tq-nope" not in response.text
    # Decided before the body is read: a body that is not even JSON still gets the 401.
    garbage = await harness.client.post(OPENAI[0], content=b"{not json")
    assert garbage.status_code == 401
    assert not model_queue(harness.redis, MODEL).count


@pytest.mark.settings(**AUTH)
async def test_each_flavour_takes_the_key_where_its_clients_send_it(harness: Harness) -> None:
    secret = make_key(harness)
    assert (await harness.call(*OPENAI, headers=bearer(secret))).status_code == 200
    assert (await harness.call(*ANTHROPIC, headers={"x-api-key": secret})).status_code == 200
    assert (await harness.call(*ANTHROPIC, headers=bearer(secret))).status_code == 200
    assert (await harness.call(*OLLAMA, headers=bearer(secret))).status_code == 200
    # Probes, metrics and Ollama's root need no key.
    for path in ("/healthz", "/metrics", "/"):
        assert (await harness.client.get(path)).status_code == 200, path
    page = (await harness.client.get("/metrics")).text
    assert 'tokenq_key_requests_total{key="team",status="200"} 4.0' in page
    assert secret not in page


@pytest.mark.settings(**AUTH)
async def test_a_model_the_key_may_not_use_is_a_403(harness: Harness) -> None:
    secret = make_key(harness, models=["other"])
    openai = await harness.client.post(OPENAI[0], json=OPENAI[1], headers=bearer(secret))
    assert openai.status_code == 403 and openai.json()["error"]["code"] == "model_not_allowed"
    anthropic = await harness.client.post(ANTHROPIC[0], json=ANTHROPIC[1], headers=bearer(secret))
    assert anthropic.status_code == 403
    assert anthropic.json()["error"]["type"] == "permission_error"
    ollama = await harness.client.post(OLLAMA[0], json=OLLAMA[1], headers=bearer(secret))
    assert ollama.status_code == 403 and "may not use" in ollama.json()["error"]
    assert not model_queue(harness.redis, MODEL).count


@pytest.mark.settings(**AUTH)
async def test_rate_limit_headers_then_a_429_with_retry_after(harness: Harness) -> None:
    secret = make_key(harness, rpm=2, tpm=10_000)
    for remaining in (1, 0):
        ok = await harness.call(*OPENAI, headers=bearer(secret))
        assert ok.status_code == 200
        assert ok.headers["x-ratelimit-limit-requests"] == "2"
        assert ok.headers["x-ratelimit-remaining-requests"] == str(remaining)
        assert ok.headers["x-ratelimit-limit-tokens"] == "10000"
        assert int(ok.headers["x-ratelimit-remaining-tokens"]) < 10_000
        assert ok.headers["x-ratelimit-reset-requests"].endswith("s")
    over = await harness.client.post(OPENAI[0], json=OPENAI[1], headers=bearer(secret))
    assert over.status_code == 429 and over.json()["error"]["code"] == "rate_limit_exceeded"
    assert 1 <= int(over.headers["retry-after"]) <= 60
    assert over.headers["x-ratelimit-remaining-requests"] == "0"


@pytest.mark.settings(**AUTH)
async def test_a_request_may_lower_itself_to_batch_but_never_rise(harness: Harness) -> None:
    batch_key = make_key(harness, "bulk", priority="batch")
    interactive_key = make_key(harness, "web")
    lowered = await harness.submit(
        *OPENAI, headers={**bearer(interactive_key), "x-tokenq-priority": "batch"}
    )
    raised = await harness.submit(
        *OPENAI, headers={**bearer(batch_key), "x-tokenq-priority": "interactive"}
    )
    assert model_queue(harness.redis, MODEL, Priority.BATCH).count == 2
    assert model_queue(harness.redis, MODEL).count == 0
    harness.work()
    assert (await lowered).status_code == 200 and (await raised).status_code == 200
    bad = await harness.client.post(
        OPENAI[0], json=OPENAI[1], headers={**bearer(batch_key), "x-tokenq-priority": "urgent"}
    )
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "x-tokenq-priority"


async def test_without_auth_no_key_is_needed_and_none_is_looked_at(harness: Harness) -> None:
    assert (await harness.call(*OPENAI)).status_code == 200
    assert (await harness.call(*OPENAI, headers=bearer("anything"))).status_code == 200


@pytest.mark.settings(cors_origins=[ORIGIN], **AUTH)
async def test_cors_preflight_is_answered_for_listed_origins_only(harness: Harness) -> None:
    preflight = {
        "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "authorization, content-type, x-api-key",
    }
    for path in ("/v1/chat/completions", "/v1/messages", "/api/chat", "/v1/jobs/abc"):
        allowed = await harness.client.options(path, headers={"Origin": ORIGIN, **preflight})
        assert allowed.status_code == 200, path
        assert allowed.headers["access-control-allow-origin"] == ORIGIN
        assert allowed.headers["access-control-allow-credentials"] == "true"
        assert "authorization" in allowed.headers["access-control-allow-headers"]
        denied = await harness.client.options(
            path, headers={"Origin": "https://evil.example", **preflight}
        )
        assert denied.status_code == 400
        assert "access-control-allow-origin" not in denied.headers
        assert "access-control-allow-credentials" not in denied.headers
    # An actual (401) response to a listed origin is readable by its page.
    unauthorized = await harness.client.post(OPENAI[0], json=OPENAI[1], headers={"Origin": ORIGIN})
    assert unauthorized.status_code == 401
    assert unauthorized.headers["access-control-allow-origin"] == ORIGIN
