"""Serving under concurrency: llama-cpp-python in process, llama.cpp's llama-server, tokenq.

    .venv/bin/python -m tests.benchmarks.bench_serving [--concurrency 1 8 16] [--tokens 128]
        [--requests 4] [--slots N] [--out DIR] [--llama-server PATH]

On this machine, one system at a time, with the same prompts and settings (the default GGUF,
greedy, --threads CPU threads, --n-ctx tokens of context per stream, --flash-attn for all (on by
default, as in the worker), no GPU layers):
  in process    llama-cpp-python `Llama.generate`, one stream: the baseline
  llama-server  llama.cpp's server built by `make llama-server` from the same vendored llama.cpp
                with the same CPU flags; restarted for each level with `-np C -c n_ctx*C`
                (without --kv-unified each slot gets its share of -c)
  tokenq        its own redis-server, one worker (`--slots N` passed through when given) and
                one API, on free loopback ports
At each concurrency C, C clients each send --requests streaming chat completions back to back
(httpx, `/v1/chat/completions`, `max_tokens=--tokens`), so C streams are in flight. Every
request's prompt is different (no prefix cache helps one system more than another) and the
same list is sent to every system. A server that accepts `ignore_eos` (or vLLM's
`min_tokens`), found by a probe, is asked to generate exactly --tokens tokens; otherwise a
stream may stop early and the table's tok/req shows the real count.

Per level: aggregate tokens/s (all generated tokens / wall time of the level), time to first
content chunk p50/p95, inter-chunk latency p50 over all streams, per-stream decode tokens/s, and
`others`: the CPU cores processes outside this benchmark took meanwhile (ggml's threads wait
for each other at every step, so a busy neighbour on 2 cores can slow a level many times over).
Prints the table and the ratios the continuous-batching issue names, writes serving.json and
serving.png (tokens/s and TTFT p50 against concurrency, one line per system) under --out.
Only 127.0.0.1 is contacted; every process started is stopped whatever happens.
Not a test: nothing here asserts on speed.
"""

import argparse
import asyncio
import gc
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import ExitStack
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx

from shared.settings import DEFAULT_MODEL, default_gguf_path
from tests.integration.procs import (
    ROOT,
    ApiProcess,
    RedisServer,
    WorkerProcess,
    free_port,
    wait_for,
)

TOPICS = [
    "a dragon who learns to bake bread",
    "a lighthouse keeper who finds a message in a bottle",
    "two robots repairing a bridge during a storm",
    "a cartographer mapping an island that moves",
    "a chess tournament on a night train",
    "a beekeeper whose bees speak in riddles",
    "a child who builds a radio from scrap",
    "a city where it rains only on Tuesdays",
]
WARM_UP = -1  # a prompt number no measured request uses
PROBE_TOKENS = 24
REQUEST_TIMEOUT_S = 300.0


def prompt(n: int) -> str:
    return f"Story number {n}. Write a long story about {TOPICS[n % len(TOPICS)]}."


@dataclass
class Stream:
    """One request: when it was sent, when each content chunk arrived, tokens generated."""

    start: float
    chunks: list[float] = field(default_factory=list)
    tokens: int = 0

    @property
    def ttft(self) -> float:
        return self.chunks[0] - self.start

    @property
    def gaps(self) -> list[float]:
        return [b - a for a, b in zip(self.chunks, self.chunks[1:], strict=False)]

    @property
    def decode_rate(self) -> float:
        """Tokens/s after the first, as bench_stack measures it."""
        span = self.chunks[-1] - self.chunks[0]
        return (self.tokens - 1) / span if span > 0 else 0.0


@dataclass
class Level:
    system: str
    concurrency: int
    agg_tps: float
    ttft_p50_ms: float
    ttft_p95_ms: float
    itl_p50_ms: float
    stream_tps: float
    tokens_per_request: float
    requests: int
    others_cores: float

    @classmethod
    def of(cls, system: str, concurrency: int, window: "Window", streams: list[Stream]) -> "Level":
        wall, others = window.close()
        ttfts = [s.ttft * 1000 for s in streams]
        gaps = [g * 1000 for s in streams for g in s.gaps]
        total = sum(s.tokens for s in streams)
        return cls(
            system=system,
            concurrency=concurrency,
            agg_tps=total / wall,
            ttft_p50_ms=percentile(ttfts, 50),
            ttft_p95_ms=percentile(ttfts, 95),
            itl_p50_ms=percentile(gaps, 50) if gaps else float("nan"),
            stream_tps=statistics.median(s.decode_rate for s in streams),
            tokens_per_request=total / len(streams),
            requests=len(streams),
            others_cores=others,
        )


def percentile(values: list[float], q: float) -> float:
    """Linear interpolation between closest ranks (numpy's default)."""
    ordered = sorted(values)
    pos = (len(ordered) - 1) * q / 100
    low = int(pos)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (pos - low)


class Window:
    """A measurement's wall time, and the CPU that processes other than this one and its
    children took meanwhile: on a shared machine, a sign that the numbers are not clean."""

    def __init__(self) -> None:
        self._busy, self._own = busy_ticks(), own_ticks()
        self._start = time.perf_counter()

    def close(self) -> tuple[float, float]:
        wall = time.perf_counter() - self._start
        others = (busy_ticks() - self._busy) - (own_ticks() - self._own)
        return wall, max(others, 0) / os.sysconf("SC_CLK_TCK") / wall


def busy_ticks() -> int:
    """CPU time all processes took since boot (Linux /proc/stat: all but idle and iowait)."""
    fields = [int(f) for f in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
    return sum(fields) - fields[3] - fields[4]


def own_ticks() -> int:
    """CPU time of this process and every process it started, directly or not."""
    parent, ticks = {}, {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:  # gone meanwhile
            continue
        fields = stat[stat.rindex(")") + 2 :].split()  # after "pid (comm) "
        pid = int(entry.name)
        parent[pid], ticks[pid] = int(fields[1]), int(fields[11]) + int(fields[12])
    mine = {os.getpid()}
    grew = True
    while grew:
        more = {pid for pid, ppid in parent.items() if ppid in mine} - mine
        mine |= more
        grew = bool(more)
    return sum(ticks[pid] for pid in mine)


# --- in process -------------------------------------------------------------------------------


def in_process(tokens: int, requests: int, n_ctx: int, threads: int, flash_attn: bool) -> Level:
    import llama_cpp

    from shared.job import ChatMessage
    from shared.tokenizer import PromptTokenizer

    llama = llama_cpp.Llama(
        str(default_gguf_path()),
        n_ctx=n_ctx,
        n_threads=threads,
        n_threads_batch=threads,
        flash_attn=flash_attn,
        verbose=False,
    )
    tokenizer = PromptTokenizer(llama)

    def one(n: int, count: int) -> Stream:
        llama.reset()  # type: ignore[no-untyped-call]  # no prefix reuse from the previous request
        stream = Stream(start=time.perf_counter())
        ids = tokenizer.chat([ChatMessage(role="user", content=prompt(n))])
        # generate() never stops by itself: exactly `count` tokens, like ignore_eos.
        for stream.tokens, _ in enumerate(
            llama.generate(ids, temp=0, top_k=0, top_p=1, min_p=0), 1
        ):
            stream.chunks.append(time.perf_counter())
            if stream.tokens == count:
                break
        return stream

    one(WARM_UP, 8)  # warm up
    window = Window()
    streams = [one(n, tokens) for n in range(requests)]
    return Level.of("in process", 1, window, streams)


# --- over HTTP --------------------------------------------------------------------------------


async def chat_stream(
    client: httpx.AsyncClient, n: int, tokens: int, extra: dict[str, Any]
) -> Stream:
    body = {
        "model": DEFAULT_MODEL,
        "messages": [{"role": "user", "content": prompt(n)}],
        "max_tokens": tokens,
        "temperature": 0,
        "stream": True,
        "stream_options": {"include_usage": True},
        **extra,
    }
    stream = Stream(start=time.perf_counter())
    usage: int | None = None
    async with client.stream("POST", "/v1/chat/completions", json=body) as response:
        if response.status_code != 200:
            await response.aread()
            raise RuntimeError(f"HTTP {response.status_code}: {response.text[:300]}")
        async for line in response.aiter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[len("data: ") :])
            if "error" in chunk:
                raise RuntimeError(f"error in stream: {chunk['error']}")
            choices = chunk.get("choices") or []
            if choices and (choices[0].get("delta") or {}).get("content"):
                stream.chunks.append(time.perf_counter())
            if chunk.get("usage"):
                usage = chunk["usage"]["completion_tokens"]
    if not stream.chunks:
        raise RuntimeError(f"request {n}: no content")
    stream.tokens = usage if usage is not None else len(stream.chunks)
    return stream


async def run_level(
    url: str, system: str, concurrency: int, tokens: int, requests: int, extra: dict[str, Any]
) -> Level:
    """`concurrency` clients, each sending `requests` requests back to back."""
    # A new connection per request, as separate clients would open: llama-server (cpp-httplib)
    # closes a kept-alive connection after its 5 s keep-alive timeout, long streams included,
    # and a request sent on it then fails.
    limits = httpx.Limits(max_connections=concurrency + 4, max_keepalive_connections=0)
    async with httpx.AsyncClient(
        base_url=url, timeout=REQUEST_TIMEOUT_S, limits=limits, trust_env=False
    ) as client:
        await chat_stream(client, WARM_UP, 8, {})  # warm up

        async def client_loop(i: int) -> list[Stream]:
            return [
                await chat_stream(client, r * concurrency + i, tokens, extra)
                for r in range(requests)
            ]

        window = Window()
        per_client = await asyncio.wait_for(
            asyncio.gather(*(client_loop(i) for i in range(concurrency))),
            timeout=REQUEST_TIMEOUT_S * requests,
        )
    return Level.of(system, concurrency, window, [s for c in per_client for s in c])


def probe_exact_length(url: str) -> dict[str, Any]:
    """The extra request fields that make this server generate exactly max_tokens, if any."""
    for extra in ({"ignore_eos": True}, {"min_tokens": PROBE_TOKENS}):
        response = httpx.post(
            f"{url}/v1/chat/completions",
            json={
                "model": DEFAULT_MODEL,
                "messages": [{"role": "user", "content": "Reply with one word: yes."}],
                "max_tokens": PROBE_TOKENS,
                "temperature": 0,
                **extra,
            },
            timeout=60,
            trust_env=False,
        )
        if (
            response.status_code == 200
            and response.json()["usage"]["completion_tokens"] == PROBE_TOKENS
        ):
            return extra
    return {}


def measure(
    url: str, system: str, concurrency: int, args: argparse.Namespace, extra: dict[str, Any]
) -> Level:
    if "min_tokens" in extra:
        extra = {"min_tokens": args.tokens}
    return asyncio.run(run_level(url, system, concurrency, args.tokens, args.requests, extra))


# --- llama-server ------------------------------------------------------------------------------


class LlamaServer:
    """llama.cpp's server on a free loopback port, its output in a log file."""

    def __init__(self, binary: Path, args: list[str], log: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.command = [str(binary), *args, "--host", "127.0.0.1", "--port", str(self.port)]
        self.log = log
        self._log_file = log.open("wb")
        self.proc = subprocess.Popen(self.command, stdout=self._log_file, stderr=subprocess.STDOUT)
        try:
            wait_for(self._healthy, 120, f"llama-server ({log})")
        except BaseException:
            self.stop()
            raise

    def _healthy(self) -> bool:
        assert self.proc.poll() is None, self.log.read_text(errors="replace")[-3000:]
        try:
            return httpx.get(f"{self.url}/health", timeout=1, trust_env=False).status_code == 200
        except httpx.HTTPError:
            return False

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log_file.close()


def llama_server_binary() -> Path:
    """Build it if needed (`make llama-server` runs the same script) and return its path."""
    print("llama-server: deploy/build-llama-server.sh (a no-op once built)", flush=True)
    out = subprocess.run(
        ["bash", str(ROOT / "deploy/build-llama-server.sh"), sys.executable],
        check=True,
        stdout=subprocess.PIPE,
        text=True,
    ).stdout
    return Path(out.strip().splitlines()[-1])


def llama_server_levels(
    binary: Path, args: argparse.Namespace, tmp: Path
) -> tuple[list[Level], dict[str, Any], list[str]]:
    levels, extra, command = [], {}, []
    for c in args.concurrency:
        flags = [
            "-m", str(default_gguf_path()),
            "-np", str(c),
            "-c", str(args.n_ctx * c),
            "-t", str(args.threads),
            "-tb", str(args.threads),
            "-fa", args.flash_attn,
            "-ngl", "0",
        ]  # fmt: skip
        server = LlamaServer(binary, flags, tmp / f"llama-server-{c}.log")
        try:
            command = server.command
            extra = probe_exact_length(server.url)
            levels.append(measure(server.url, "llama-server", c, args, extra))
        finally:
            server.stop()
        print(row(levels[-1]), flush=True)
    return levels, extra, command


# --- tokenq ------------------------------------------------------------------------------------


def worker_has_slots() -> bool:
    out = subprocess.run(
        [sys.executable, "-m", "shared.cli", "worker", "--help"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env={**os.environ, "COLUMNS": "200"},
    ).stdout
    return "--slots" in out


def tokenq_levels(args: argparse.Namespace, tmp: Path) -> tuple[list[Level], dict[str, Any]]:
    worker_args = ["--n-ctx", str(args.n_ctx), "--threads", str(args.threads)]
    worker_args.append("--flash-attn" if args.flash_attn == "on" else "--no-flash-attn")
    if args.slots is not None:
        worker_args += ["--slots", str(args.slots)]
    # The API admits and expires jobs: streams waiting behind others (one sequence at a time)
    # must be neither refused nor expired.
    env = {"TOKENQ_QUEUE_DEADLINE_S": str(REQUEST_TIMEOUT_S), "TOKENQ_MAX_QUEUED": "256"}
    levels = []
    with ExitStack() as stack:
        redis = RedisServer(tmp)
        redis.start()
        stack.callback(redis.stop)
        worker = WorkerProcess(redis, DEFAULT_MODEL, tmp / "worker.log", *worker_args)
        stack.callback(worker.stop)
        api = ApiProcess(redis, tmp / "api.log", env)
        stack.callback(api.stop)
        extra = probe_exact_length(api.url)
        for c in args.concurrency:
            levels.append(measure(api.url, "tokenq", c, args, extra))
            print(row(levels[-1]), flush=True)
    return levels, extra


# --- report ------------------------------------------------------------------------------------

HEADER = (
    f"{'system':<13}{'conc':>5}{'agg tok/s':>11}{'TTFT p50':>10}{'TTFT p95':>10}"
    f"{'ITL p50':>10}{'stream tok/s':>14}{'tok/req':>9}{'reqs':>6}{'others':>8}"
)


def row(level: Level) -> str:
    return (
        f"{level.system:<13}{level.concurrency:>5}{level.agg_tps:>11.1f}"
        f"{level.ttft_p50_ms:>8.1f}ms{level.ttft_p95_ms:>8.1f}ms{level.itl_p50_ms:>8.2f}ms"
        f"{level.stream_tps:>14.1f}{level.tokens_per_request:>9.1f}{level.requests:>6}"
        f"{level.others_cores:>8.2f}"
    )


def ratios(levels: list[Level]) -> list[str]:
    at = {(lv.system, lv.concurrency): lv for lv in levels}
    lines = []
    tq8, ls8 = at.get(("tokenq", 8)), at.get(("llama-server", 8))
    if tq8 and ls8:
        lines.append(f"agg tok/s at 8, tokenq / llama-server: {tq8.agg_tps / ls8.agg_tps:.2f}")
        lines.append(
            f"TTFT p50 at 8, tokenq / llama-server: {tq8.ttft_p50_ms / ls8.ttft_p50_ms:.2f} "
            f"({tq8.ttft_p50_ms:.0f} ms vs {ls8.ttft_p50_ms:.0f} ms)"
        )
    tq1, ip1 = at.get(("tokenq", 1)), at.get(("in process", 1))
    if tq1 and ip1:
        lines.append(f"decode at 1, tokenq / in process: {tq1.stream_tps / ip1.stream_tps:.3f}")
        lines.append(
            f"TTFT p50 at 1, tokenq - in process: {tq1.ttft_p50_ms - ip1.ttft_p50_ms:+.1f} ms"
        )
    for system in ("llama-server", "tokenq"):
        one = at.get((system, 1))
        for (name, c), lv in sorted(at.items()):
            if one and name == system and c > 1:
                lines.append(f"{system} agg tok/s at {c} / at 1: {lv.agg_tps / one.agg_tps:.2f}")
    return lines


def draw(levels: list[Level], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (tps, ttft) = plt.subplots(1, 2, figsize=(11, 4.2))
    systems = dict.fromkeys(lv.system for lv in levels)
    for system in systems:
        mine = sorted((lv for lv in levels if lv.system == system), key=lambda lv: lv.concurrency)
        xs = [lv.concurrency for lv in mine]
        line = tps.plot(xs, [lv.agg_tps for lv in mine], marker="o", label=system)[0]
        ttft.plot(xs, [lv.ttft_p50_ms for lv in mine], marker="o", label=system)
        if len(mine) == 1:  # the single-stream baseline: its rate as a reference line
            tps.axhline(mine[0].agg_tps, linestyle="--", color=line.get_color(), linewidth=0.8)
    concurrencies = sorted({lv.concurrency for lv in levels})
    tps.set_ylim(bottom=0)
    ttft.set_yscale("log")  # milliseconds next to seconds of queueing
    for ax, label in ((tps, "aggregate tokens/s"), (ttft, "TTFT p50 (ms, log)")):
        ax.set_xlabel("concurrent streams")
        ax.set_ylabel(label)
        ax.set_xticks(concurrencies)
        ax.grid(alpha=0.3, which="both")
        ax.legend()
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 16])
    parser.add_argument("--tokens", type=int, default=128, help="max_tokens of each request")
    parser.add_argument("--requests", type=int, default=4, help="requests per client per level")
    parser.add_argument("--slots", type=int, default=None, help="tokenq worker --slots")
    parser.add_argument("--n-ctx", type=int, default=4096, help="context per stream")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument(
        "--flash-attn",
        choices=["on", "off"],
        default="on",
        help="for every system (tokenq's default is on: measured faster when batching)",
    )
    parser.add_argument("--llama-server", type=Path, default=None, help="the binary to use")
    parser.add_argument("--out", type=Path, default=ROOT / "tests/benchmarks/out")
    args = parser.parse_args()
    if args.slots is not None and not worker_has_slots():
        parser.error("this tokenq worker has no --slots option")

    binary = args.llama_server or llama_server_binary()
    args.out.mkdir(parents=True, exist_ok=True)
    print(HEADER, flush=True)
    levels = [
        in_process(args.tokens, args.requests, args.n_ctx, args.threads, args.flash_attn == "on")
    ]
    gc.collect()  # the model's memory back before the servers load theirs
    print(row(levels[0]), flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        server_levels, server_extra, command = llama_server_levels(binary, args, Path(tmp))
        tq_levels, tq_extra = tokenq_levels(args, Path(tmp))
    levels += server_levels + tq_levels

    print()
    print(HEADER)
    for level in levels:
        print(row(level))
    print()
    for line in ratios(levels):
        print(line)
    busiest = max(level.others_cores for level in levels)
    if busiest > 0.1:
        print(
            f"others: other processes took up to {busiest:.2f} of {os.cpu_count()} cores "
            "during a level: those numbers are not clean"
        )
    print(f"exact length: llama-server {server_extra or 'no'}, tokenq {tq_extra or 'no'}")
    print(f"llama-server: {' '.join(command)}")

    slots = f", tokenq --slots {args.slots}" if args.slots is not None else ""
    title = (
        f"{default_gguf_path().name}, {args.threads} threads, {args.tokens} tokens/request{slots}"
    )
    results = {
        "settings": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "llama_server_command": command,
        "exact_length": {"llama-server": server_extra, "tokenq": tq_extra},
        "levels": [asdict(level) for level in levels],
    }
    (args.out / "serving.json").write_text(json.dumps(results, indent=2) + "\n")
    draw(levels, args.out / "serving.png", title)
    print(f"wrote {args.out / 'serving.json'} and {args.out / 'serving.png'}")


if __name__ == "__main__":
    main()
