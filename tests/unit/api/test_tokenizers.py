"""Where the API gets a model's tokenizer, and refusing a hopeless prompt before tokenizing it.

The real SmolLM2 vocabulary over fakeredis: the registered file when it is on this host, the
vocab-only GGUF a worker published in Redis when it is not, a 503 when neither is.
"""

import time
from collections.abc import Iterator
from pathlib import Path

import fakeredis
import gguf
import pytest

from api.errors import BackendUnavailableError, ContextLengthExceededError
from api.tokenizers import Tokenizers
from shared import keys, registry, vocab
from shared.job import ChatMessage, Flavour, GenerationJob
from shared.model_facts import ModelFacts
from shared.registry import WorkerInfo
from shared.settings import default_gguf_path
from shared.tokenizer import PromptTokenizer, RenderedPrompt
from tests.unit.api.harness import FACTS, MODEL, N_CTX, WORKER_ID, Harness

GGUF = default_gguf_path()
# What the worker registers about the file; the digest only names its Redis keys here.
SERVED = FACTS.model_copy(update={"size": GGUF.stat().st_size})
MISSING = "/models/on-the-worker-host/model.gguf"


@pytest.fixture(scope="module")
def published() -> bytes:
    """The vocab-only GGUF a worker of the real file publishes."""
    return vocab.build(gguf.GGUFReader(GGUF))


@pytest.fixture(scope="module")
def full() -> PromptTokenizer:
    return PromptTokenizer.load(GGUF)


@pytest.fixture
def server() -> fakeredis.FakeServer:
    return fakeredis.FakeServer()


def register(server: fakeredis.FakeServer, path: str, facts: ModelFacts | None = SERVED) -> None:
    registry.heartbeat(fakeredis.FakeRedis(server=server), worker(path, facts), ttl_s=60)


def worker(path: str, facts: ModelFacts | None = SERVED) -> WorkerInfo:
    """The harness's worker, serving the file at `path`."""
    return WorkerInfo(
        worker_id=WORKER_ID,
        model=MODEL,
        n_ctx=N_CTX,
        backend="cpu",
        gguf=path,
        started_at=time.time(),
        pid=1,
        facts=facts,
    )


def publish(server: fakeredis.FakeServer, data: bytes) -> None:
    fakeredis.FakeRedis(server=server).set(keys.model_vocab(SERVED.digest), data)


def tokenizers(server: fakeredis.FakeServer, cache: Path) -> Tokenizers:
    return Tokenizers(fakeredis.FakeAsyncRedis(server=server), cache)


def chat_job(content: str, *, continue_final: bool = False) -> GenerationJob:
    messages = [ChatMessage(role="user", content=content)]
    if continue_final:
        messages.append(ChatMessage(role="assistant", content="Sure:"))
    return job(messages=messages, continue_final=continue_final)


def job(
    messages: list[ChatMessage] | None = None,
    prompt: str | None = None,
    continue_final: bool = False,
) -> GenerationJob:
    return GenerationJob(
        model=MODEL,
        messages=messages,
        prompt=prompt,
        continue_final_message=continue_final,
        flavour=Flavour.OPENAI,
        deadline=time.time() + 60,
    )


JOBS = [
    chat_job("Name a colour."),
    chat_job("naïve café ☕ <|im_end|>\n\n  ok", continue_final=True),
    job(prompt="Once upon a time"),
]


def exact(full: PromptTokenizer, counted: GenerationJob) -> int:
    return len(full.tokens(counted.messages, counted.prompt, counted.continue_final_message))


async def test_without_the_file_it_counts_with_the_published_vocabulary(
    server: fakeredis.FakeServer, tmp_path: Path, published: bytes, full: PromptTokenizer
) -> None:
    register(server, MISSING)
    publish(server, published)
    api = tokenizers(server, tmp_path)
    for counted in JOBS:
        assert await api.count(counted) == exact(full, counted)
    assert (tmp_path / f"{SERVED.digest}.vocab.gguf").read_bytes() == published


async def test_a_file_of_another_size_is_not_the_served_one(
    server: fakeredis.FakeServer, tmp_path: Path, published: bytes, full: PromptTokenizer
) -> None:
    other = tmp_path / "model.gguf"
    other.write_bytes(b"not this model")  # llama.cpp would refuse it
    register(server, str(other))
    publish(server, published)
    assert await tokenizers(server, tmp_path / "cache").count(JOBS[0]) == exact(full, JOBS[0])


async def test_the_file_itself_is_used_where_it_is(
    server: fakeredis.FakeServer, tmp_path: Path, full: PromptTokenizer
) -> None:
    register(server, str(GGUF))  # and nothing published
    assert await tokenizers(server, tmp_path).count(JOBS[0]) == exact(full, JOBS[0])
    assert not list(tmp_path.iterdir())


async def test_a_fetched_vocabulary_is_kept_on_this_host(
    server: fakeredis.FakeServer, tmp_path: Path, published: bytes, full: PromptTokenizer
) -> None:
    register(server, MISSING)
    publish(server, published)
    await tokenizers(server, tmp_path).get(MODEL)
    fakeredis.FakeRedis(server=server).delete(keys.model_vocab(SERVED.digest))
    assert await tokenizers(server, tmp_path).count(JOBS[0]) == exact(full, JOBS[0])


@pytest.mark.parametrize("facts", [SERVED, None], ids=["unpublished", "no-facts"])
async def test_no_tokenizer_anywhere_is_503(
    server: fakeredis.FakeServer, tmp_path: Path, facts: ModelFacts | None
) -> None:
    register(server, MISSING, facts)
    with pytest.raises(BackendUnavailableError) as raised:
        await tokenizers(server, tmp_path).count(JOBS[0])
    assert raised.value.status == 503
    assert f"the tokenizer of the model '{MODEL}' could not be obtained" in raised.value.message
    assert MISSING not in raised.value.message  # the worker's file system is not the client's


async def test_no_tokenizer_is_503_in_the_callers_shape(harness: Harness, tmp_path: Path) -> None:
    harness.state.tokenizers = Tokenizers(harness.state.redis, tmp_path)  # "/models/m.gguf"
    body = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}]}
    response = await harness.client.post("/v1/chat/completions", json=body)
    assert response.status_code == 503
    error = response.json()["error"]
    assert error["code"] == "backend_unavailable"
    assert "tokenizer" in error["message"] and "could not be obtained" in error["message"]


@pytest.fixture
def spy(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[RenderedPrompt]]:
    """Every prompt a PromptTokenizer tokenizes."""
    seen: list[RenderedPrompt] = []
    tokenize = PromptTokenizer.tokenize

    def spied(self: PromptTokenizer, rendered: RenderedPrompt) -> list[int]:
        seen.append(rendered)
        return tokenize(self, rendered)

    monkeypatch.setattr(PromptTokenizer, "tokenize", spied)
    yield seen


async def test_a_prompt_too_long_for_the_context_is_refused_untokenized(
    server: fakeredis.FakeServer, tmp_path: Path, spy: list[RenderedPrompt]
) -> None:
    register(server, str(GGUF))
    huge = "All work and no play makes Jack a dull boy. " * 70_000  # 3 MB
    with pytest.raises(ContextLengthExceededError) as raised:
        await tokenizers(server, tmp_path).count(chat_job(huge), n_ctx=8192)
    assert raised.value.param == "messages"
    assert "the context is 8192 tokens; the prompt has at least" in raised.value.message
    assert spy == []


async def test_a_prompt_near_the_limit_is_counted_exactly(
    server: fakeredis.FakeServer, tmp_path: Path, spy: list[RenderedPrompt], full: PromptTokenizer
) -> None:
    register(server, str(GGUF))
    api = tokenizers(server, tmp_path)
    # 80 '#' are one token of this vocabulary, one of its longest: the bound is nearly tight.
    dense = chat_job("#" * 80 * 100)
    # A bound just under the context: the count is far above it.
    sparse = chat_job("a " * 3000)
    least = full.min_tokens(full.render(sparse.messages, None))
    dense_count, sparse_count = exact(full, dense), exact(full, sparse)
    spy.clear()
    assert await api.count(dense, n_ctx=dense_count + 1) == dense_count
    assert await api.count(dense, n_ctx=dense_count) == dense_count  # _check_context refuses it
    assert await api.count(sparse, n_ctx=least + 1) == sparse_count > least + 1
    assert len(spy) == 3


async def test_the_api_refuses_a_huge_prompt_with_the_context_error(
    harness: Harness, tmp_path: Path, spy: list[RenderedPrompt]
) -> None:
    registry.heartbeat(harness.redis, worker(str(GGUF)), ttl_s=60)  # with the real file
    harness.state.tokenizers = Tokenizers(harness.state.redis, tmp_path)
    body = {"model": MODEL, "messages": [{"role": "user", "content": "word " * 20_000}]}
    response = await harness.client.post("/v1/chat/completions", json=body)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert (error["code"], error["param"]) == ("context_length_exceeded", "messages")
    assert f"the context is {N_CTX} tokens" in error["message"]
    assert spy == []
