"""Aggregate decode throughput of the batched engine against today's single-stream engine.

    .venv/bin/python -m tests.benchmarks.bench_batch [--tokens 64] [--threads 2] [--rounds 3]
        [--flash] [--split]

Greedy, the same chat prompts for every run. Only decoding is timed: from the step that gave
the last sequence its first token (every prompt evaluated) until every sequence has `tokens`
tokens (decoding goes on past an end of generation, as a benchmark may). With --flash it also
runs 8 sequences with flash attention on; with --split, 8 sequences each in its own KV cells
(`unified_kv=False`). Every configuration runs once per round, rounds
interleaved, so a burst of load from other processes hits them alike; the table gives the
median and the best round.
"""

import argparse
import statistics
import time

from shared.job import ChatMessage, SamplingParams
from shared.settings import default_gguf_path
from shared.tokenizer import PromptTokenizer
from worker.batch_engine import BatchEngine
from worker.llama_engine import LlamaEngine

GREEDY = SamplingParams(temperature=0.0)
QUESTIONS = [
    "What is the capital of France?",
    "Write a haiku about the sea.",
    "Count from one to ten.",
    "Name three fruits and their colours.",
    "Why is the sky blue?",
    "Give me a short recipe for pancakes.",
    "What does a lighthouse keeper do?",
    "Describe a cat in two sentences.",
]
N_CTX = 2048


def single_stream(engine: LlamaEngine, prompts: list[list[int]], tokens: int) -> float:
    """Decode tokens/s of LlamaEngine, one prompt after another."""
    decoded, seconds = 0, 0.0
    for prompt in prompts:
        slot = engine.start(prompt, GREEDY, seed=0)
        engine.step()  # the prompt and the first token: not timed
        started = time.perf_counter()
        for _ in range(tokens - 1):
            engine.step()
        seconds += time.perf_counter() - started
        decoded += tokens - 1
        engine.release(slot)
    return decoded / seconds


def batched(engine: BatchEngine, prompts: list[list[int]], tokens: int) -> float:
    """Decode tokens/s of all `prompts` together."""
    engine.clear_cache()  # every prompt evaluated in full, as in the single-stream runs
    slots = [engine.start(prompt, GREEDY, seed=0) for prompt in prompts]
    counts = dict.fromkeys(slots, 0)
    while min(counts.values()) == 0:  # prompts: not timed
        for sampled in engine.step():
            counts[sampled.slot] += 1
    decoded = 0
    started = time.perf_counter()
    while min(counts.values()) < tokens:
        for sampled in engine.step():
            counts[sampled.slot] += 1
            decoded += 1
        assert engine.last_batch_sequences == len(prompts)
    seconds = time.perf_counter() - started
    for slot in slots:
        engine.release(slot)
    return decoded / seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--flash", action="store_true", help="also 8 sequences, flash on")
    parser.add_argument("--split", action="store_true", help="also 8 sequences, split KV")
    args = parser.parse_args()
    gguf = default_gguf_path()
    tokenizer = PromptTokenizer.load(gguf)
    prompts = [tokenizer.chat([ChatMessage(role="user", content=q)]) for q in QUESTIONS]

    single = LlamaEngine(gguf, n_ctx=N_CTX, threads=args.threads, n_gpu_layers=0, flash_attn=False)
    variants: dict[str, dict[str, bool]] = {"BatchEngine": {}}
    if args.flash:
        variants["BatchEngine flash"] = {"flash_attn": True}
    if args.split:
        variants["BatchEngine split"] = {"unified_kv": False}
    engines = {
        name: BatchEngine(
            gguf,
            slots=8,
            n_ctx=N_CTX,  # split: N_CTX / 8 cells per sequence, enough for these prompts
            threads=args.threads,
            n_gpu_layers=0,
            flash_attn=options.get("flash_attn", False),
            unified_kv=options.get("unified_kv", True),
        )
        for name, options in variants.items()
    }
    runs: dict[tuple[str, int], list[float]] = {}
    for _ in range(args.rounds):
        runs.setdefault(("LlamaEngine", 1), []).append(
            single_stream(single, prompts[:2], args.tokens)
        )
        for name, engine in engines.items():
            for n in [1, 4, 8] if name == "BatchEngine" else [8]:
                runs.setdefault((name, n), []).append(batched(engine, prompts[:n], args.tokens))
    for engine in engines.values():
        engine.close()

    base = statistics.median(runs[("LlamaEngine", 1)])
    print(f"{args.tokens} tokens per sequence, greedy, {args.threads} threads, {gguf.name}")
    print(f"{'engine':<18} {'sequences':>9} {'median tok/s':>12} {'vs single':>9} {'best':>7}")
    for (name, n), rates in runs.items():
        median = statistics.median(rates)
        print(f"{name:<18} {n:>9} {median:>12.1f} {median / base:>9.2f} {max(rates):>7.1f}")


if __name__ == "__main__":
    main()
