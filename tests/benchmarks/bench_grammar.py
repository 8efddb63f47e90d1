"""Grammar cost: decode tokens/s of a JSON-schema request next to a free one in one batch.

    .venv/bin/python -m tests.benchmarks.bench_grammar [--tokens 48] [--threads 2] [--rounds 3]

Two sequences decode together in one BatchEngine, greedy: a free pair (both unconstrained),
and a pair where one is constrained to a JSON schema (llama-cpp-python's converter to GBNF)
and the other is free. Each pair decodes one token per sequence per step, so tokens/s per
sequence is the batch's step rate: the grammar's cost shows in its neighbour's speed too.
Only decoding is timed (after both prompts are evaluated), until either sequence has `tokens`
tokens or ends. Rounds are interleaved so a burst of load from other processes hits both alike;
the table gives the median and the best round, and how many of the constrained sequence's
tokens the grammar rejected (each costs a resample over the whole vocabulary).
"""

import argparse
import json
import statistics
import time

from llama_cpp.llama_grammar import json_schema_to_gbnf

from shared.job import ChatMessage, SamplingParams
from shared.settings import default_gguf_path
from shared.tokenizer import PromptTokenizer
from worker.batch_engine import BatchEngine

SCHEMA = {
    "type": "object",
    "properties": {
        "title": {"type": "string"},
        "story": {"type": "string"},
        "tags": {"type": "array", "items": {"type": "string"}},
    },
    "required": ["title", "story", "tags"],
}
CONSTRAINED_PROMPT = "Write a long story about a lighthouse, as JSON with title, story and tags."
FREE_PROMPT = "Write a long story about a lighthouse keeper."


def pair(
    engine: BatchEngine, prompts: list[list[int]], samplings: list[SamplingParams], tokens: int
) -> tuple[float, int, int]:
    """Per-sequence decode tokens/s of the two together; tokens decoded and resampled."""
    engine.clear_cache()
    slots = [engine.start(p, s, seed=0) for p, s in zip(prompts, samplings, strict=True)]
    counts = dict.fromkeys(slots, 0)
    while min(counts.values()) == 0:  # prompts: not timed
        for sampled in engine.step():
            counts[sampled.slot] += 1
    resampled = engine.grammar_resampled
    steps, ended = 0, False
    started = time.perf_counter()
    while not ended and max(counts.values()) < tokens:
        for sampled in engine.step():
            counts[sampled.slot] += 1
            ended = ended or sampled.end_of_generation
        steps += 1
    seconds = time.perf_counter() - started
    for slot in slots:
        engine.release(slot)
    return steps / seconds, steps, engine.grammar_resampled - resampled


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tokens", type=int, default=48)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    gguf = default_gguf_path()
    tokenizer = PromptTokenizer.load(gguf)
    constrained_prompt = tokenizer.chat([ChatMessage(role="user", content=CONSTRAINED_PROMPT)])
    free_prompt = tokenizer.chat([ChatMessage(role="user", content=FREE_PROMPT)])
    greedy = SamplingParams(temperature=0.0)
    schema = SamplingParams(temperature=0.0, grammar=json_schema_to_gbnf(json.dumps(SCHEMA)))
    engine = BatchEngine(
        gguf, slots=2, n_ctx=4096, threads=args.threads, n_gpu_layers=0, flash_attn=False
    )
    prompts = [constrained_prompt, free_prompt]
    cases = {"free + free": [greedy, greedy], "json-schema + free": [schema, greedy]}
    rates: dict[str, list[float]] = {name: [] for name in cases}
    decoded: dict[str, list[tuple[int, int]]] = {name: [] for name in cases}
    for _ in range(args.rounds):
        for name, samplings in cases.items():
            rate, steps, resampled = pair(engine, prompts, samplings, args.tokens)
            rates[name].append(rate)
            decoded[name].append((steps, resampled))
    engine.close()
    base = statistics.median(rates["free + free"])
    print(f"2 sequences in one batch, greedy, {args.threads} threads, {gguf.name}")
    print(f"{'batch':<20} {'tok/s/seq':>9} {'vs free':>7} {'best':>7} {'resampled':>10}")
    for name, values in rates.items():
        median = statistics.median(values)
        steps = sum(s for s, _ in decoded[name])
        resampled = sum(r for _, r in decoded[name])
        print(
            f"{name:<20} {median:>9.1f} {median / base:>7.2f} {max(values):>7.1f} "
            f"{resampled:>4}/{steps:<5}"
        )


if __name__ == "__main__":
    main()
