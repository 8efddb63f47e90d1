"""Continuous batching with the real model: several jobs in one worker's batch, and every
guarantee of a job (cancellation, reruns after a worker's death, SIGTERM drain) per job.

Each test gets a worker of its own, for a model name of its own, so what it measures (the
worker's metrics, which worker ran what) is only its own.
"""

import signal
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import httpx
import openai
import pytest
from openai import OpenAI
from redis import Redis

from shared import keys
from shared.lifecycle import JobRecord, JobStatus
from tests.integration.clients import record, wait_until
from tests.integration.procs import ApiProcess, Process, RedisServer, WorkerProcess
from tests.integration.test_observability import scrape

pytestmark = pytest.mark.integration

QUESTIONS = [
    "What is the capital of France?",
    "Write a haiku about the sea.",
    "Count from one to ten.",
    "Name three fruits.",
    "Why is the sky blue?",
    "Describe a cat in one sentence.",
    "What is two plus two?",
    "Give me a synonym for happy.",
]


@dataclass
class Stream:
    """One streamed chat completion, timed."""

    question: str
    tokens: int = 0
    text: str = ""
    first_at: float | None = None
    ended_at: float | None = None
    finish: str | None = None
    job_id: str | None = None
    error: str | None = None
    started: threading.Event = field(default_factory=threading.Event)


def stream_chat(client: OpenAI, model: str, stream: Stream, max_tokens: int) -> Stream:
    try:
        for chunk in client.chat.completions.create(
            model=model,
            messages=[{"role": "user", "content": stream.question}],
            max_tokens=max_tokens,
            temperature=0,
            stream=True,
            extra_body={"ignore_eos": True},
        ):
            stream.job_id = stream.job_id or chunk.id.removeprefix("chatcmpl-")
            choice = chunk.choices[0] if chunk.choices else None
            if choice is not None and choice.delta.content:
                stream.first_at = stream.first_at or time.monotonic()
                stream.tokens += 1
                stream.text += choice.delta.content
                stream.started.set()
            if choice is not None and choice.finish_reason:
                stream.finish = choice.finish_reason
    except openai.APIError as exc:
        stream.error = exc.message
    stream.ended_at = time.monotonic()
    stream.started.set()
    return stream


def client_of(api: ApiProcess) -> OpenAI:
    return OpenAI(base_url=f"{api.url}/v1", api_key="unused", max_retries=0, timeout=300)


def metric(worker: WorkerProcess, name: str, **labels: str) -> float:
    samples = scrape(f"{worker.metrics_url}/metrics")
    key = (name, tuple(sorted({"model": worker.model, **labels}.items())))
    return samples.get(key, 0.0)


def test_eight_streams_decode_together(api: ApiProcess, spawn: Callable[..., Process]) -> None:
    worker = spawn("worker", "batch-eight", "--slots", "8")
    assert isinstance(worker, WorkerProcess)
    client = client_of(api)
    streams = [Stream(q) for q in QUESTIONS]
    with ThreadPoolExecutor(len(streams)) as pool:
        done = list(pool.map(lambda s: stream_chat(client, "batch-eight", s, 48), streams))
    assert all(s.error is None and s.finish == "length" for s in done), done
    # Every stream had its first token before any stream finished: they ran together ...
    assert max(s.first_at or 0 for s in done) < min(s.ended_at or 0 for s in done)
    # ... in the same batches: the worker saw steps of more than one sequence.
    steps = metric(worker, "tokenq_worker_batch_size_count")
    sequences = metric(worker, "tokenq_worker_batch_size_sum")
    assert steps > 0 and sequences / steps > 1.5
    assert metric(worker, "tokenq_worker_batch_size_bucket", le="1.0") < steps


def test_a_job_cancelled_mid_batch_frees_its_slot_while_the_other_goes_on(
    api: ApiProcess, redis_server: RedisServer, spawn: Callable[..., Process]
) -> None:
    spawn("worker", "batch-cancel", "--slots", "2")
    client = client_of(api)
    doomed, survivor, newcomer = Stream(QUESTIONS[0]), Stream(QUESTIONS[1]), Stream(QUESTIONS[2])
    with ThreadPoolExecutor(3) as pool:
        first = pool.submit(stream_chat, client, "batch-cancel", doomed, 400)
        second = pool.submit(stream_chat, client, "batch-cancel", survivor, 400)
        assert doomed.started.wait(120) and survivor.started.wait(120)
        assert doomed.job_id is not None
        deleted = httpx.delete(f"{api.url}/v1/jobs/{doomed.job_id}", timeout=30)
        assert deleted.status_code == 200
        # The freed slot takes a new job while the survivor is still decoding.
        third = pool.submit(stream_chat, client, "batch-cancel", newcomer, 8)
        assert third.result(timeout=120).finish == "length"
        assert survivor.ended_at is None  # still going when the newcomer finished
        first.result(timeout=120)
        assert second.result(timeout=300).finish == "length"
    assert doomed.error is not None and "cancel" in doomed.error
    assert survivor.tokens == 400
    cancelled = record(redis_server.client(), doomed.job_id)
    assert cancelled.status is JobStatus.CANCELLED


def test_a_worker_killed_with_four_jobs_reruns_those_without_output(
    api: ApiProcess, redis_server: RedisServer, spawn: Callable[..., Process]
) -> None:
    model = "batch-kill"
    # Small prefill chunks: the two long prompts are still being evaluated when it dies.
    doomed = spawn("worker", model, "--slots", "4", "--prefill-chunk", "8")
    client = client_of(api)
    long_prompt = "Summarise this. " + "The quick brown fox jumps over the lazy dog. " * 120
    talking = [Stream(QUESTIONS[0]), Stream(QUESTIONS[1])]
    thinking = [Stream(long_prompt), Stream(long_prompt + " Again.")]
    with ThreadPoolExecutor(4) as pool:
        futures = [pool.submit(stream_chat, client, model, s, 2000) for s in talking]
        assert all(s.started.wait(120) for s in talking)
        futures += [pool.submit(stream_chat, client, model, s, 4) for s in thinking]
        redis = redis_server.client()

        def all_four_running() -> bool:
            jobs = [r for r in _records_of(redis, model) if r.status is JobStatus.RUNNING]
            return len(jobs) == 4 and sum(not r.streamed for r in jobs) == 2

        wait_until(all_four_running, 60, "four jobs in the worker's slots, two without output")
        doomed.signal(signal.SIGKILL)
        spawn("worker", model, "--slots", "4")  # takes the reruns
        results = [f.result(timeout=300) for f in futures]
    for stream in results[:2]:  # they had streamed: their clients are told
        assert stream.error is not None and "worker" in stream.error, stream
    for stream in results[2:]:  # they had not: they ran again and answered in full
        assert stream.error is None and stream.finish == "length" and stream.tokens == 4
        assert stream.job_id is not None
        assert record(redis, stream.job_id).attempt == 2


def _records_of(redis: Redis, model: str) -> list[JobRecord]:
    """The records of `model`'s jobs that have not ended."""
    found = []
    for key in redis.scan_iter(match=keys.job_record("*")):
        job_id = key.decode().rsplit(":", 1)[-1]
        rec = JobRecord.from_hash(job_id, redis.hgetall(key))
        if rec is not None and rec.model == model and not rec.status.terminal:
            found.append(rec)
    return found


def test_sigterm_with_full_slots_finishes_them_all(
    api: ApiProcess, spawn: Callable[..., Process]
) -> None:
    model = "batch-term"
    worker = spawn("worker", model, "--slots", "4")
    client = client_of(api)
    streams = [Stream(q) for q in QUESTIONS[:4]]
    with ThreadPoolExecutor(4) as pool:
        futures = [pool.submit(stream_chat, client, model, s, 64) for s in streams]
        assert all(s.started.wait(120) for s in streams)
        worker.signal(signal.SIGTERM)
        results = [f.result(timeout=300) for f in futures]
    assert all(s.error is None and s.finish == "length" and s.tokens == 64 for s in results)
    assert worker.proc.wait(timeout=60) == 0


def test_the_second_turn_of_a_conversation_reuses_the_first(
    api: ApiProcess, spawn: Callable[..., Process]
) -> None:
    # One slot each: the reply is compared with a fresh worker's at the same cache offset.
    reusing = spawn("worker", "batch-reuse", "--slots", "1")
    fresh = spawn("worker", "batch-fresh", "--slots", "1")
    assert isinstance(reusing, WorkerProcess) and isinstance(fresh, WorkerProcess)
    client = client_of(api)
    turn = [
        {"role": "system", "content": "You are a helpful assistant who answers briefly."},
        {"role": "user", "content": "What is the capital of France?"},
    ]
    first = client.chat.completions.create(
        model="batch-reuse",
        messages=turn,
        max_tokens=24,
        temperature=0,  # type: ignore[arg-type]
    )
    assert first.usage is not None
    turn += [
        {"role": "assistant", "content": first.choices[0].message.content or ""},
        {"role": "user", "content": "And of Italy?"},
    ]
    before = metric(reusing, "tokenq_worker_prefix_reused_tokens_total")
    second = client.chat.completions.create(
        model="batch-reuse",
        messages=turn,
        max_tokens=24,
        temperature=0,  # type: ignore[arg-type]
    )
    reused = metric(reusing, "tokenq_worker_prefix_reused_tokens_total") - before
    assert reused >= first.usage.prompt_tokens - 1  # the whole first turn's prompt at least
    alone = client.chat.completions.create(
        model="batch-fresh",
        messages=turn,
        max_tokens=24,
        temperature=0,  # type: ignore[arg-type]
    )
    assert second.choices[0].message.content == alone.choices[0].message.content
    assert second.usage is not None and alone.usage is not None
    assert second.usage.prompt_tokens == alone.usage.prompt_tokens
