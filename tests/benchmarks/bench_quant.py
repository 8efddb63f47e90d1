"""Speed and quality of the shipped Q4_1 file against its requantized copies (Q4_0, Q8_0), made
with `tokenq model quantize`'s own code, so a user can choose knowingly.

    .venv/bin/python -m tests.benchmarks.bench_quant [--threads 2] [--rounds 3] [--tokens 64]
        [--types Q4_0 Q8_0]

Speed: batched decode tokens/s of the worker's BatchEngine at 8 sequences and at 1 (greedy,
the same chat prompts; see bench_batch.py), and prefill tokens/s (evaluating the bundled text
in 512-token chunks). Quality: perplexity of the bundled text (tests/benchmarks/data/
perplexity.txt, prose written for this project, ~3.5 KB), from llama.cpp's logits over
512-token windows; lower is better. Rounds interleave the files, so a burst of load from
other processes hits them alike; the table gives medians.
"""

import argparse
import math
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
from llama_cpp import Llama

from shared.job import ChatMessage
from shared.model_registry.quantize import QuantType, quantize
from shared.settings import default_gguf_path
from shared.tokenizer import PromptTokenizer
from tests.benchmarks.bench_batch import QUESTIONS, batched
from worker.batch_engine import BatchEngine

TEXT = Path(__file__).parent / "data" / "perplexity.txt"
WINDOW = 512


def perplexity_and_prefill(path: Path, threads: int) -> tuple[float, float]:
    """Perplexity of the bundled text, and prompt tokens evaluated per second."""
    llm = Llama(
        str(path), n_ctx=WINDOW, n_batch=WINDOW, n_threads=threads, logits_all=True, verbose=False
    )
    tokens = llm.tokenize(TEXT.read_text().encode())
    nll, counted, seconds, evaluated = 0.0, 0, 0.0, 0
    for start in range(0, len(tokens) - 1, WINDOW):
        window = tokens[start : start + WINDOW]
        llm.reset()
        began = time.perf_counter()
        llm.eval(window)
        seconds += time.perf_counter() - began
        evaluated += len(window)
        logits = np.asarray(llm.scores[: len(window)], dtype=np.float64)
        shifted = logits - logits.max(axis=1, keepdims=True)
        logprobs = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
        targets = np.asarray(window[1:])
        nll -= float(logprobs[np.arange(len(window) - 1), targets].sum())
        counted += len(window) - 1
    llm.close()
    return math.exp(nll / counted), evaluated / seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--types", nargs="+", default=["Q4_0", "Q8_0"], choices=["Q4_0", "Q8_0"])
    args = parser.parse_args()
    shipped = default_gguf_path()
    with tempfile.TemporaryDirectory(prefix="bench-quant-") as tmp:
        files = {"Q4_1 (shipped)": shipped}
        for kind in args.types:
            files[f"{kind} (requantized)"] = quantize(shipped, Path(tmp), QuantType(kind), 0)
        tokenizer = PromptTokenizer.load(shipped)
        prompts = [tokenizer.chat([ChatMessage(role="user", content=q)]) for q in QUESTIONS]
        sizes = {name: path.stat().st_size for name, path in files.items()}
        quality = {name: perplexity_and_prefill(path, args.threads) for name, path in files.items()}
        engines = {
            name: BatchEngine(
                path,
                slots=8,
                n_ctx=2048,
                threads=args.threads,
                n_gpu_layers=0,
                flash_attn=False,
                unified_kv=True,
            )
            for name, path in files.items()
        }
        runs: dict[tuple[str, int], list[float]] = {}
        prefill: dict[str, list[float]] = {name: [quality[name][1]] for name in files}
        for _ in range(args.rounds):
            for name, engine in engines.items():
                for n in (8, 1):
                    runs.setdefault((name, n), []).append(batched(engine, prompts[:n], args.tokens))
        for engine in engines.values():
            engine.close()
    base = {n: statistics.median(runs[("Q4_1 (shipped)", n)]) for n in (8, 1)}
    print(
        f"{shipped.name}, {args.threads} threads, {args.tokens} tokens per sequence, greedy, "
        f"median of {args.rounds} rounds; perplexity over {TEXT.name} ({WINDOW}-token windows)"
    )
    print(
        f"{'file':<18} {'MB':>6} {'decode x8 tok/s':>16} {'vs Q4_1':>8} {'decode x1 tok/s':>16} "
        f"{'vs Q4_1':>8} {'prefill tok/s':>14} {'perplexity':>11}"
    )
    for name in files:
        x8 = statistics.median(runs[(name, 8)])
        x1 = statistics.median(runs[(name, 1)])
        print(
            f"{name:<18} {sizes[name] / 1e6:>6.1f} {x8:>16.1f} {x8 / base[8]:>8.2f} "
            f"{x1:>16.1f} {x1 / base[1]:>8.2f} {statistics.median(prefill[name]):>14.0f} "
            f"{quality[name][0]:>11.2f}"
        )


if __name__ == "__main__":
    main()
