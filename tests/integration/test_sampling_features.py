"""Per-sequence sampling features through the whole stack, with the real model: a grammar
through the queue, logprobs, n > 1 and logit_bias with the official `openai` client, Ollama's
logprobs with the official `ollama` client.

The features model has a worker of its own with 4 slots (n=3 takes 3 of them); the session's
one-slot worker shows the 400 for an n it cannot hold.
"""

import json
import math
import time
from collections.abc import Iterator
from pathlib import Path

import llama_cpp
import ollama
import openai
import pytest
from llama_cpp.llama_grammar import json_schema_to_gbnf
from openai import OpenAI

from shared import keys
from shared.events import DoneEvent, ErrorEvent, TokenEvent, parse_event
from shared.job import Flavour, GenerationJob, SamplingParams
from shared.lifecycle.admission import admit
from shared.settings import DEFAULT_MODEL, Settings, default_gguf_path
from tests.integration.procs import ApiProcess, RedisServer, WorkerProcess

pytestmark = pytest.mark.integration

MODEL = "features"
QUESTION = [{"role": "user", "content": "Name three colours of the rainbow."}]
PERSON = {
    "type": "object",
    "properties": {"name": {"type": "string"}, "age": {"type": "integer"}},
    "required": ["name", "age"],
}


@pytest.fixture(scope="module")
def features_worker(redis_server: RedisServer, logs: Path) -> Iterator[WorkerProcess]:
    proc = WorkerProcess(redis_server, MODEL, logs / "worker-features.log", "--slots", "4")
    try:
        yield proc
    finally:
        proc.stop()


@pytest.fixture
def client(api: ApiProcess, features_worker: WorkerProcess) -> OpenAI:
    return OpenAI(base_url=f"{api.url}/v1", api_key="unused", max_retries=0, timeout=300)


def run_job(redis_server: RedisServer, job: GenerationJob) -> tuple[str, DoneEvent | ErrorEvent]:
    """Admit a neutral job as the API does and read its events off its channel."""
    redis = redis_server.client()
    pubsub = redis.pubsub()
    pubsub.subscribe(keys.events_channel(job.id))
    try:
        assert admit(redis, job, Settings()) is None
        text, deadline = "", time.monotonic() + 300
        while time.monotonic() < deadline:
            message = pubsub.get_message(ignore_subscribe_messages=True, timeout=1.0)
            if message is None:
                continue
            event = parse_event(message["data"])
            if isinstance(event, TokenEvent):
                text += event.text
            elif isinstance(event, DoneEvent | ErrorEvent):
                return text, event
        raise AssertionError("the job did not end")
    finally:
        pubsub.close()


def neutral(sampling: SamplingParams) -> GenerationJob:
    return GenerationJob(
        model=MODEL,
        prompt="A person, as JSON: ",
        sampling=sampling,
        flavour=Flavour.OPENAI,
        deadline=time.time() + 120,
    )


def test_a_grammar_constrained_job_matches_its_json_schema(
    redis_server: RedisServer, features_worker: WorkerProcess
) -> None:
    grammar = json_schema_to_gbnf(json.dumps(PERSON))
    text, end = run_job(
        redis_server, neutral(SamplingParams(temperature=0.7, seed=3, grammar=grammar))
    )
    assert isinstance(end, DoneEvent) and end.finish_reason == "stop", end
    person = json.loads(text)
    assert isinstance(person["name"], str) and isinstance(person["age"], int)


def test_an_invalid_grammar_fails_its_job_and_the_worker_goes_on(
    redis_server: RedisServer, features_worker: WorkerProcess
) -> None:
    _, end = run_job(redis_server, neutral(SamplingParams(grammar="root ::= nowhere")))
    assert isinstance(end, ErrorEvent) and end.code == "invalid_request", end
    text, end = run_job(redis_server, neutral(SamplingParams(temperature=0, max_tokens=4)))
    assert isinstance(end, DoneEvent) and text


def check_entries(content: list, text: str, k: int) -> None:
    """Chat logprobs that make sense for a greedy reply `text`."""
    assert "".join(e.token for e in content) == text
    for e in content:
        assert e.logprob <= 0 and bytes(e.bytes).decode("utf-8", "replace") == e.token
        top = [t.logprob for t in e.top_logprobs]
        assert len(top) == k and top == sorted(top, reverse=True)
        assert sum(math.exp(t) for t in top) <= 1 + 1e-6
        # Greedy: the sampled token is the most likely one.
        assert e.top_logprobs[0].token == e.token
        assert e.top_logprobs[0].logprob == pytest.approx(e.logprob)


@pytest.mark.parametrize("stream", [False, True])
def test_chat_logprobs_under_greedy(client: OpenAI, stream: bool) -> None:
    params = dict(
        model=MODEL,
        messages=QUESTION,
        max_tokens=12,
        temperature=0,
        logprobs=True,
        top_logprobs=5,
    )
    if not stream:
        reply = client.chat.completions.create(**params)
        choice = reply.choices[0]
        assert choice.logprobs is not None and choice.logprobs.content
        check_entries(choice.logprobs.content, choice.message.content or "", 5)
        return
    text, content = "", []
    for chunk in client.chat.completions.create(**params, stream=True):
        for choice in chunk.choices:
            text += choice.delta.content or ""
            if choice.logprobs is not None and choice.logprobs.content:
                content += choice.logprobs.content
    check_entries(content, text, 5)


def test_completion_logprobs(client: OpenAI) -> None:
    reply = client.completions.create(
        model=MODEL, prompt="The capital of France is", max_tokens=8, temperature=0, logprobs=3
    )
    choice = reply.choices[0]
    lp = choice.logprobs
    assert lp is not None and lp.tokens and lp.token_logprobs and lp.top_logprobs
    assert "".join(lp.tokens) == choice.text
    assert lp.text_offset == [sum(len(t) for t in lp.tokens[:i]) for i in range(len(lp.tokens))]
    for token, logprob, top in zip(lp.tokens, lp.token_logprobs, lp.top_logprobs, strict=True):
        assert len(top) <= 3 and max(top.values()) == pytest.approx(logprob)
        assert token in top


@pytest.mark.parametrize("stream", [False, True])
def test_n_choices_share_one_prompt(client: OpenAI, stream: bool) -> None:
    params = dict(
        model=MODEL,
        messages=QUESTION,
        max_tokens=6,
        temperature=1.0,
        seed=7,
        extra_body={"ignore_eos": True},
    )
    one = client.chat.completions.create(**params)
    assert one.usage is not None
    if not stream:
        reply = client.chat.completions.create(**params, n=3)
        assert [c.index for c in reply.choices] == [0, 1, 2]
        assert all(c.finish_reason == "length" and c.message.content for c in reply.choices)
        usage = reply.usage
    else:
        texts, finishes, usage = ["", "", ""], [None] * 3, None
        for chunk in client.chat.completions.create(
            **params, n=3, stream=True, stream_options={"include_usage": True}
        ):
            usage = chunk.usage or usage
            for choice in chunk.choices:
                texts[choice.index] += choice.delta.content or ""
                finishes[choice.index] = choice.finish_reason or finishes[choice.index]
        assert finishes == ["length"] * 3 and all(texts)
    assert usage is not None
    assert usage.prompt_tokens == one.usage.prompt_tokens  # the prompt counts once
    assert usage.completion_tokens == 3 * 6


def test_n_completions(client: OpenAI) -> None:
    reply = client.completions.create(
        model=MODEL,
        prompt="Once upon a time",
        max_tokens=5,
        n=2,
        temperature=0.9,
        extra_body={"ignore_eos": True},
    )
    assert [c.index for c in reply.choices] == [0, 1]
    assert reply.usage is not None and reply.usage.completion_tokens == 10


def test_n_above_the_workers_slots_is_a_400(api: ApiProcess) -> None:
    session = OpenAI(base_url=f"{api.url}/v1", api_key="unused", max_retries=0, timeout=60)
    with pytest.raises(openai.BadRequestError) as caught:
        session.chat.completions.create(model=DEFAULT_MODEL, messages=QUESTION, n=3)
    assert caught.value.body["param"] == "n"  # type: ignore[index]


def test_logit_bias_against_the_greedy_first_token_changes_it(client: OpenAI) -> None:
    params = dict(model=MODEL, prompt="The capital of France is", max_tokens=1, temperature=0)
    first = client.completions.create(**params, logprobs=1).choices[0].logprobs
    assert first is not None and first.tokens
    vocab = llama_cpp.Llama(str(default_gguf_path()), vocab_only=True, verbose=False)
    target = first.tokens[0].encode()
    ids = [t for t in range(vocab.n_vocab()) if vocab.detokenize([t]) == target]
    assert ids, f"no token is {target!r}"
    biased = client.completions.create(**params, logit_bias={str(ids[0]): -100})
    assert biased.choices[0].text != first.tokens[0]
    with pytest.raises(openai.BadRequestError) as caught:
        client.completions.create(**params, logit_bias={str(vocab.n_vocab()): 1})
    assert caught.value.body["param"] == "logit_bias"  # type: ignore[index]


@pytest.mark.parametrize("stream", [False, True])
def test_ollama_logprobs(api: ApiProcess, features_worker: WorkerProcess, stream: bool) -> None:
    local = ollama.Client(host=api.url, timeout=300)
    params = dict(
        model=MODEL,
        prompt="Why is the sky blue?",
        logprobs=True,
        top_logprobs=3,
        options={"temperature": 0, "num_predict": 8, "repeat_penalty": 1.0},
    )
    if stream:
        parts = list(local.generate(**params, stream=True))
        text = "".join(p.response for p in parts)
        entries = [e for p in parts for e in (p.logprobs or [])]
    else:
        reply = local.generate(**params)
        text, entries = reply.response, list(reply.logprobs or [])
    assert entries and "".join(e.token for e in entries) == text
    for e in entries:
        top = e.top_logprobs or []
        assert len(top) == 3 and top[0].token == e.token
        assert top[0].logprob == pytest.approx(e.logprob)
