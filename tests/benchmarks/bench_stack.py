"""Single-stream speed through the full stack next to llama-cpp-python in process.

    .venv/bin/python -m tests.benchmarks.bench_stack [--tokens 128] [--runs 5]

Starts its own redis-server, one worker and one API on free loopback ports, then measures, for
the same chat prompt, greedy, the same number of tokens:
  in process   llama-cpp-python `Llama.generate`, 2 threads, like the worker
  enqueue      subscribe + admit (the API's atomic RQ enqueue) -> first token event, no HTTP
  http         the official openai client, streaming: request -> first chunk, decode tokens/s
  prefill      llama-cpp-python in process: a prompt of --prefill-tokens evaluated from scratch
Prints medians over the runs. Not a test: nothing here asserts on speed.
"""

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import llama_cpp
from openai import OpenAI

from shared import keys
from shared.events import DoneEvent, TokenEvent, parse_event
from shared.job import ChatMessage, Flavour, GenerationJob, SamplingParams
from shared.lifecycle import admission
from shared.settings import DEFAULT_MODEL, Settings, default_gguf_path
from shared.tokenizer import PromptTokenizer
from tests.integration.procs import ApiProcess, RedisServer, WorkerProcess

PROMPT = "Write a long story about a dragon who learns to bake bread."


def in_process(tokens: int, runs: int) -> tuple[list[float], list[float]]:
    llama = llama_cpp.Llama(
        str(default_gguf_path()), n_ctx=4096, n_threads=2, n_threads_batch=2, verbose=False
    )
    prompt = PromptTokenizer(llama).chat([ChatMessage(role="user", content=PROMPT)])
    ttft, rate = [], []
    for _ in range(runs):
        llama.reset()
        start = time.perf_counter()
        first = 0.0
        for n, _token in enumerate(llama.generate(prompt, temp=0, top_k=0, top_p=1, min_p=0), 1):
            if n == 1:
                first = time.perf_counter()
            if n == tokens:
                break
        end = time.perf_counter()
        ttft.append(first - start)
        rate.append((tokens - 1) / (end - first))
    return ttft, rate


def prefill(tokens: int, runs: int) -> list[float]:
    """Prompt evaluation speed in tokens/s (the multi-token kernels the build compiled in)."""
    llama = llama_cpp.Llama(
        str(default_gguf_path()),
        n_ctx=max(4096, tokens + 16),
        n_batch=512,
        n_threads=2,
        n_threads_batch=2,
        verbose=False,
    )
    text = " ".join([PROMPT] * tokens)
    prompt = llama.tokenize(text.encode())[:tokens]
    rates = []
    for _ in range(runs):
        llama.reset()
        start = time.perf_counter()
        llama.eval(prompt)
        rates.append(len(prompt) / (time.perf_counter() - start))
    return rates


def via_redis(redis: RedisServer, tokens: int, runs: int) -> tuple[list[float], list[float]]:
    client = redis.client()
    settings = Settings(redis_url=redis.url)
    ttft, rate = [], []
    for _ in range(runs):
        job = GenerationJob(
            model=DEFAULT_MODEL,
            messages=[ChatMessage(role="user", content=PROMPT)],
            sampling=SamplingParams(max_tokens=tokens, temperature=0),
            flavour=Flavour.OPENAI,
            deadline=time.time() + 60,
        )
        pubsub = client.pubsub(ignore_subscribe_messages=True)
        pubsub.subscribe(keys.events_channel(job.id))
        start = time.perf_counter()
        assert admission.admit(client, job, settings) is None, "the queue is full"
        first = 0.0
        give_up = time.monotonic() + 60
        while True:
            message = pubsub.get_message(timeout=1)
            if message is None:  # nothing yet, or the subscription's confirmation
                if time.monotonic() > give_up:
                    raise TimeoutError("no event from the worker for 60 s")
                continue
            event = parse_event(message["data"])
            if isinstance(event, TokenEvent) and not first:
                first = time.perf_counter()
            if isinstance(event, DoneEvent):
                end = time.perf_counter()
                ttft.append(first - start)
                rate.append((event.usage.completion_tokens - 1) / (end - first))
                break
        pubsub.close()
    return ttft, rate


def via_http(api: ApiProcess, tokens: int, runs: int) -> tuple[list[float], list[float]]:
    client = OpenAI(base_url=f"{api.url}/v1", api_key="unused")
    ttft, rate = [], []
    for _ in range(runs):
        start = time.perf_counter()
        first = 0.0
        usage = None
        for chunk in client.chat.completions.create(
            model=DEFAULT_MODEL,
            messages=[{"role": "user", "content": PROMPT}],
            max_tokens=tokens,
            temperature=0,
            stream=True,
            stream_options={"include_usage": True},
        ):
            if chunk.choices and chunk.choices[0].delta.content and not first:
                first = time.perf_counter()
            usage = chunk.usage or usage
        end = time.perf_counter()
        assert usage is not None
        ttft.append(first - start)
        rate.append((usage.completion_tokens - 1) / (end - first))
    return ttft, rate


def report(name: str, ttft: list[float], rate: list[float]) -> None:
    print(
        f"{name:<12} first token {statistics.median(ttft) * 1000:7.1f} ms   "
        f"decode {statistics.median(rate):6.1f} tokens/s   (median of {len(rate)})"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--prefill-tokens", type=int, default=1024)
    args = parser.parse_args()
    prefill_rates = prefill(args.prefill_tokens, args.runs)
    with tempfile.TemporaryDirectory() as tmp:
        redis = RedisServer(Path(tmp))
        redis.start()
        worker = WorkerProcess(redis, DEFAULT_MODEL, Path(tmp) / "worker.log")
        api = ApiProcess(redis, Path(tmp) / "api.log")
        try:
            via_http(api, 8, 1)  # warm up
            results = {
                "in process": in_process(args.tokens, args.runs),
                "enqueue": via_redis(redis, args.tokens, args.runs),
                "http": via_http(api, args.tokens, args.runs),
            }
        finally:
            api.stop()
            worker.stop()
            redis.stop()
    for name, (ttft, rate) in results.items():
        report(name, ttft, rate)
    print(
        f"{'prefill':<12} {args.prefill_tokens} prompt tokens "
        f"{statistics.median(prefill_rates):7.1f} tokens/s   (median of {len(prefill_rates)})"
    )
    base = statistics.median(results["in process"][1])
    for name in ("enqueue", "http"):
        print(f"{name} decode / in process: {statistics.median(results[name][1]) / base:.3f}")


if __name__ == "__main__":
    main()
