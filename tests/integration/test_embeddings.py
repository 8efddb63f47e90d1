"""Embeddings, the probes and tokenizer routes, and max_tokens beyond the context, with the
official clients, the real model and real workers."""

import base64
import struct
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import ollama
import openai
import pytest
from anthropic import Anthropic
from openai import OpenAI

from shared import keys
from shared.settings import DEFAULT_MODEL
from tests.integration.clients import busy_worker, wait_until
from tests.integration.conftest import LIMIT
from tests.integration.procs import ApiProcess, Process, RedisServer

pytestmark = pytest.mark.integration

DIMS = 576  # SmolLM2-135M's hidden size
TEXTS = ["The cat sat on the mat.", "Paris is the capital of France.", "The cat sat on the mat."]


def test_three_inputs_give_three_unit_vectors_of_the_model_dimension(
    openai_client: OpenAI,
) -> None:
    result = openai_client.embeddings.create(model=DEFAULT_MODEL, input=TEXTS)
    vectors = [np.array(d.embedding) for d in result.data]
    assert [d.index for d in result.data] == [0, 1, 2]
    assert all(v.shape == (DIMS,) and abs(np.linalg.norm(v) - 1) < 1e-4 for v in vectors)
    assert np.array_equal(vectors[0], vectors[2])  # identical input, identical vector
    assert float(vectors[0] @ vectors[1]) < 0.99
    assert result.usage.prompt_tokens == result.usage.total_tokens > 3
    # base64 (what the SDK asks for by default when numpy is around) decodes to the floats.
    raw = httpx.post(
        f"{openai_client.base_url}embeddings",
        json={"model": DEFAULT_MODEL, "input": TEXTS[0], "encoding_format": "base64"},
        timeout=120,
    ).json()
    packed = base64.b64decode(raw["data"][0]["embedding"])
    assert list(struct.unpack(f"<{DIMS}f", packed)) == result.data[0].embedding


def test_token_arrays_embed_like_their_text(openai_client: OpenAI, api: ApiProcess) -> None:
    tokens = httpx.post(
        f"{api.url}/tokenize", json={"model": DEFAULT_MODEL, "prompt": TEXTS[0]}, timeout=60
    ).json()["tokens"]
    by_text = openai_client.embeddings.create(model=DEFAULT_MODEL, input=TEXTS[0])
    by_ids = openai_client.embeddings.create(model=DEFAULT_MODEL, input=[tokens, tokens[:3]])
    assert by_ids.data[0].embedding == by_text.data[0].embedding
    assert len(by_ids.data) == 2 and by_ids.usage.prompt_tokens == len(tokens) + 3


def test_bad_embedding_requests_are_400(openai_client: OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as too_long:
        openai_client.embeddings.create(model=DEFAULT_MODEL, input=["ok", "word " * 5000])
    assert too_long.value.code == "context_length_exceeded"
    with pytest.raises(openai.BadRequestError) as other_size:
        openai_client.embeddings.create(model=DEFAULT_MODEL, input="hi", dimensions=64)
    assert other_size.value.param == "dimensions"
    with pytest.raises(openai.BadRequestError) as empty:
        openai_client.embeddings.create(model=DEFAULT_MODEL, input="")
    assert empty.value.param == "input"


def test_ollama_embed_and_the_older_embeddings(
    ollama_client: ollama.Client, openai_client: OpenAI
) -> None:
    embedded = ollama_client.embed(model=f"{DEFAULT_MODEL}:latest", input=TEXTS[:2])
    assert len(embedded.embeddings) == 2 and len(embedded.embeddings[0]) == DIMS
    assert embedded.prompt_eval_count and embedded.total_duration
    one = ollama_client.embeddings(model=DEFAULT_MODEL, prompt=TEXTS[0])
    reference = openai_client.embeddings.create(model=DEFAULT_MODEL, input=TEXTS[0])
    assert list(one.embedding) == embedded.embeddings[0] == reference.data[0].embedding
    # Ollama's truncate (on by default) cuts an input to the context instead of refusing it.
    small = {"num_ctx": 64}
    cut = ollama_client.embed(model=DEFAULT_MODEL, input="word " * 200, options=small)
    assert len(cut.embeddings) == 1 and cut.prompt_eval_count == 64
    with pytest.raises(ollama.ResponseError) as refused:
        ollama_client.embed(model=DEFAULT_MODEL, input="word " * 200, truncate=False, options=small)
    assert refused.value.status_code == 400


def test_embeddings_beside_a_running_stream_leave_its_text_unchanged(
    api: ApiProcess, spawn: Callable[..., Process]
) -> None:
    spawn("worker", "embed-beside", "--slots", "2")
    client = OpenAI(base_url=f"{api.url}/v1", api_key="unused", max_retries=0, timeout=300)
    question = [{"role": "user", "content": "Write a short story about a lighthouse."}]

    def story(embed_meanwhile: bool) -> str:
        text, started = "", threading.Event()
        with ThreadPoolExecutor(1) as pool:
            if embed_meanwhile:
                embeds = pool.submit(
                    lambda: [
                        client.embeddings.create(model="embed-beside", input=TEXTS)
                        for _ in (started.wait(120), 1, 2)
                    ]
                )
            for chunk in client.chat.completions.create(
                model="embed-beside",
                messages=question,  # type: ignore[arg-type]
                max_tokens=60,
                temperature=0,
                stream=True,
                extra_body={"ignore_eos": True},
            ):
                if chunk.choices and chunk.choices[0].delta.content:
                    text += chunk.choices[0].delta.content
                    started.set()
            if embed_meanwhile:
                assert all(len(r.data) == 3 for r in embeds.result(timeout=300))
        return text

    assert story(embed_meanwhile=True) == story(embed_meanwhile=False)


def test_a_model_whose_workers_do_not_embed_is_400(
    api: ApiProcess, spawn: Callable[..., Process]
) -> None:
    spawn("worker", "no-embed", "--slots", "1", "--no-embeddings")
    client = OpenAI(base_url=f"{api.url}/v1", api_key="unused", max_retries=0, timeout=60)
    with pytest.raises(openai.BadRequestError) as refused:
        client.embeddings.create(model="no-embed", input="hi")
    assert refused.value.param == "model" and "embeddings" in refused.value.message
    with pytest.raises(ollama.ResponseError) as ollama_refused:
        ollama.Client(host=api.url, timeout=60).embed(model="no-embed", input="hi")
    assert ollama_refused.value.status_code == 400


def test_embeddings_get_429_when_the_queue_is_full(
    api: ApiProcess, limited_apis: tuple[ApiProcess, ApiProcess], redis_server: RedisServer
) -> None:
    url = limited_apis[0].url
    client = OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0, timeout=120)
    redis = redis_server.client()
    with ThreadPoolExecutor(LIMIT) as pool, busy_worker(api.url):
        fillers = [
            pool.submit(client.embeddings.create, model=DEFAULT_MODEL, input="filler")
            for _ in range(LIMIT)
        ]
        wait_until(
            lambda: redis.zcard(keys.waiting_jobs(DEFAULT_MODEL)) == LIMIT, 30, "a full queue"
        )
        with pytest.raises(openai.RateLimitError) as info:
            client.embeddings.create(model=DEFAULT_MODEL, input="one too many")
        assert int(info.value.response.headers["retry-after"]) >= 1
    assert all(len(f.result(timeout=120).data) == 1 for f in fillers)


def test_health_tokenize_and_detokenize(api: ApiProcess, openai_client: OpenAI) -> None:
    assert httpx.get(f"{api.url}/health", timeout=30).json()["status"] == "ready"
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "What is two plus two?"},
    ]
    counted = httpx.post(
        f"{api.url}/tokenize", json={"model": DEFAULT_MODEL, "messages": messages}, timeout=60
    ).json()
    chat = openai_client.chat.completions.create(
        model=DEFAULT_MODEL,
        messages=messages,  # type: ignore[arg-type]
        max_tokens=1,
    )
    assert chat.usage is not None
    assert counted["count"] == len(counted["tokens"]) == chat.usage.prompt_tokens
    assert counted["max_model_len"] == 4096
    text = "Hello there, tokenizer!"
    tokens = httpx.post(
        f"{api.url}/tokenize", json={"model": DEFAULT_MODEL, "prompt": text}, timeout=60
    ).json()["tokens"]
    back = httpx.post(
        f"{api.url}/detokenize", json={"model": DEFAULT_MODEL, "tokens": tokens}, timeout=60
    )
    assert back.json() == {"prompt": text}
    bad = httpx.post(
        f"{api.url}/detokenize", json={"model": DEFAULT_MODEL, "tokens": [10**7]}, timeout=60
    )
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "tokens"


def test_max_tokens_beyond_the_context(
    anthropic_client: Anthropic, openai_client: OpenAI, ollama_client: ollama.Client
) -> None:
    # LiteLLM's default: Anthropic's answer is capped to the context, not refused. A prompt
    # that nearly fills the 4096-token context keeps the answer short on a slow machine.
    message = anthropic_client.messages.create(
        model=DEFAULT_MODEL,
        max_tokens=128000,
        messages=[{"role": "user", "content": "word " * 4000}],
    )
    assert message.stop_reason in ("end_turn", "max_tokens")
    assert message.usage.input_tokens + message.usage.output_tokens <= 4096
    generated = ollama_client.generate(
        model=DEFAULT_MODEL,
        prompt="1, 2, 3, 4, 5, 6, 7, 8, 9, 10,",  # greedy SmolLM2 counts on and on
        raw=True,
        options={"num_ctx": 64, "num_predict": 1000, "temperature": 0},
    )
    assert generated.done_reason == "length" and generated.prompt_eval_count is not None
    assert generated.eval_count == 64 - generated.prompt_eval_count
    # OpenAI refuses what OpenAI refuses.
    with pytest.raises(openai.BadRequestError) as refused:
        openai_client.chat.completions.create(
            model=DEFAULT_MODEL, messages=[{"role": "user", "content": "Hi"}], max_tokens=128000
        )
    assert refused.value.code == "context_length_exceeded"
