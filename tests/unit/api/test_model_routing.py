"""Requests meet the model registry: aliases resolve to the canonical name, the model's
generation defaults fill what a request leaves out, and every catalog lists registered models."""

import pytest

from shared.model_registry.entry import GenerationDefaults, ModelEntry
from shared.model_registry.store import ModelRegistry
from tests.unit.api.harness import FACTS, MODEL, Harness

USER = [{"role": "user", "content": "hi"}]
OTHER_DIGEST = "0" * 64


@pytest.fixture
def registered(harness: Harness) -> Harness:
    """MODEL registered with an alias and defaults; another model registered, not served."""
    registry = ModelRegistry(harness.redis)
    defaults = GenerationDefaults(max_tokens=2, temperature=0.5, stop=["zzz"])
    registry.add(ModelEntry(name=MODEL, aliases=["nick"], facts=FACTS, defaults=defaults))
    other = FACTS.model_copy(update={"digest": OTHER_DIGEST, "file_type": "Q4_0"})
    registry.add(
        ModelEntry(name="other", facts=other, defaults=GenerationDefaults(max_tokens=9, top_k=3))
    )
    return harness


async def test_an_alias_routes_to_its_model_with_the_canonical_name(registered: Harness) -> None:
    response = await registered.call("/v1/chat/completions", {"model": "nick", "messages": USER})
    assert response.status_code == 200, response.text
    assert response.json()["model"] == MODEL
    body = {"model": "nick", "max_tokens": 5, "messages": USER}
    reply = await registered.call("/v1/messages", body)
    assert reply.status_code == 200, reply.text
    assert reply.json()["model"] == MODEL
    ollama = await registered.call(
        "/api/chat", {"model": "nick", "messages": USER, "stream": False}
    )
    assert ollama.status_code == 200, ollama.text
    assert ollama.json()["model"] == "nick"  # Ollama echoes the name it was given


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/v1/chat/completions", {"model": MODEL, "messages": USER}),
        ("/v1/completions", {"model": MODEL, "prompt": "hi"}),
        ("/api/generate", {"model": MODEL, "prompt": "hi", "stream": False}),
        ("/api/chat", {"model": f"{MODEL}:latest", "messages": USER, "stream": False}),
    ],
)
async def test_defaults_fill_what_the_request_left_out(
    registered: Harness, path: str, body: dict[str, object]
) -> None:
    response = await registered.call(path, body)
    assert response.status_code == 200, response.text
    sampling, _ = registered.engine.started_with[-1]
    assert (sampling.max_tokens, sampling.temperature, sampling.stop) == (2, 0.5, ["zzz"])


@pytest.mark.parametrize(
    ("path", "body"),
    [
        (
            "/v1/chat/completions",
            {"max_completion_tokens": 3, "temperature": 1.5, "stop": [], "messages": USER},
        ),
        ("/v1/messages", {"max_tokens": 3, "temperature": 1.0, "messages": USER}),
        (
            "/api/chat",
            {"options": {"num_predict": 3, "temperature": 1.5, "stop": []}, "messages": USER},
        ),
    ],
)
async def test_what_the_request_sent_wins(
    registered: Harness, path: str, body: dict[str, object]
) -> None:
    response = await registered.call(path, {"model": MODEL, "stream": False, **body})
    assert response.status_code == 200, response.text
    sampling, _ = registered.engine.started_with[-1]
    assert sampling.max_tokens == 3
    assert sampling.temperature == body.get("temperature", 1.5)
    if path != "/v1/messages":  # the Anthropic request left stop_sequences out
        assert sampling.stop == []


async def test_a_registered_model_without_a_worker_is_503_an_unknown_one_404(
    registered: Harness,
) -> None:
    served_nowhere = await registered.client.post(
        "/v1/chat/completions", json={"model": "other", "messages": USER}
    )
    assert served_nowhere.status_code == 503
    unknown = await registered.client.post(
        "/v1/chat/completions", json={"model": "nobody", "messages": USER}
    )
    assert unknown.status_code == 404


async def test_every_catalog_lists_registered_models_with_their_digests(
    registered: Harness,
) -> None:
    cards = {c["id"]: c for c in (await registered.client.get("/v1/models")).json()["data"]}
    assert cards[MODEL]["digest"] == f"sha256:{FACTS.digest}"
    assert cards[MODEL]["aliases"] == ["nick"] and cards[MODEL]["live_workers"] == 1
    assert cards["other"]["digest"] == f"sha256:{OTHER_DIGEST}"
    assert cards["other"]["live_workers"] == 0
    by_alias = (await registered.client.get("/v1/models/nick")).json()
    assert by_alias["id"] == MODEL
    tags = {m["name"]: m for m in (await registered.client.get("/api/tags")).json()["models"]}
    assert tags[f"{MODEL}:latest"]["digest"] == FACTS.digest
    assert tags["other:latest"]["digest"] == OTHER_DIGEST
    assert tags["other:latest"]["details"]["quantization_level"] == "Q4_0"
    running = (await registered.client.get("/api/ps")).json()["models"]
    assert [m["name"] for m in running] == [f"{MODEL}:latest"]
    shown = (await registered.client.post("/api/show", json={"model": "other"})).json()
    assert "num_predict                    9" in shown["parameters"]
    assert "top_k                          3" in shown["parameters"]
    missing = await registered.client.post("/api/show", json={"model": "nobody"})
    assert missing.status_code == 404
