"""The closing figures of issue 3, measured on a stack of real processes on 127.0.0.1:

1. latency of a 429 under overload (p50/p99),
2. time from a worker's SIGKILL to its client's error event,
3. time from a client's disconnect to the worker being free.

    .venv/bin/python -m tests.benchmarks.queue_timings [--rejections 400] [--kills 3]
        [--disconnects 10]

Every loop is bounded in count and time; all processes are stopped at the end.
"""

import argparse
import asyncio
import json
import signal
import statistics
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path

import httpx

from shared import keys
from shared.settings import DEFAULT_MODEL
from tests.integration.clients import LONG, record, sse, wait_until
from tests.integration.procs import ApiProcess, RedisServer, WorkerProcess

MAX_QUEUED = 4
SHORT = {"model": DEFAULT_MODEL, "prompt": "Hi", "max_tokens": 1}


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


async def rejections(api: ApiProcess, count: int, concurrency: int) -> dict[str, object]:
    """Fill the queue behind a busy worker, then time `count` requests that get 429."""
    latencies: list[float] = []
    statuses: dict[int, int] = {}
    limit = asyncio.Semaphore(concurrency)
    async with httpx.AsyncClient(timeout=30) as client:

        async def one() -> None:
            async with limit:
                started = time.perf_counter()
                response = await client.post(f"{api.url}/v1/completions", json=SHORT)
                elapsed = time.perf_counter() - started
                statuses[response.status_code] = statuses.get(response.status_code, 0) + 1
                if response.status_code == 429:
                    latencies.append(elapsed)

        await asyncio.gather(*(one() for _ in range(count)))
    return {
        "requests": count,
        "concurrency": concurrency,
        "statuses": statuses,
        "p50_ms": round(percentile(latencies, 50) * 1000, 2),
        "p99_ms": round(percentile(latencies, 99) * 1000, 2),
        "max_ms": round(max(latencies) * 1000, 2),
    }


def overload(api: ApiProcess, redis: RedisServer, count: int) -> dict[str, object]:
    with httpx.Client(timeout=120) as client:
        busy = client.stream("POST", f"{api.url}/v1/completions", json=LONG)
        response = busy.__enter__()
        events = sse(response)
        next(events)
        fillers = [
            client.stream("POST", f"{api.url}/v1/completions", json={**SHORT, "stream": True})
            for _ in range(MAX_QUEUED)
        ]
        opened = [f.__enter__() for f in fillers]  # each returns once its job is queued
        depth = redis.client().zcard(keys.waiting_jobs(DEFAULT_MODEL))
        assert depth == MAX_QUEUED, depth
        asyncio.run(rejections(api, 50, 16))  # warm-up, not reported
        result = {
            "sequential": asyncio.run(rejections(api, count // 2, 1)),
            "concurrent": asyncio.run(rejections(api, count, 16)),
        }
        for filler, response_ in zip(fillers, opened, strict=True):
            response_.close()
            filler.__exit__(None, None, None)
        busy.__exit__(None, None, None)
    return result


def kill_to_error(api: ApiProcess, redis: RedisServer, logs: Path, runs: int) -> dict[str, object]:
    seconds = []
    for run in range(runs):
        worker = WorkerProcess(redis, DEFAULT_MODEL, logs / f"kill-{run}.log")
        try:
            with httpx.stream("POST", f"{api.url}/v1/completions", json=LONG, timeout=60) as stream:
                lines = (line for line in stream.iter_lines() if line.startswith("data: "))
                next(lines)
                worker.signal(signal.SIGKILL)
                killed = time.perf_counter()
                for line in lines:
                    if '"error"' in line:
                        seconds.append(time.perf_counter() - killed)
                        break
                else:
                    raise AssertionError("the stream ended without an error event")
        finally:
            worker.stop()
    return {
        "runs": runs,
        "seconds": [round(s, 3) for s in seconds],
        "median_s": round(statistics.median(seconds), 3),
    }


def disconnect_to_free(api: ApiProcess, redis: RedisServer, runs: int) -> dict[str, object]:
    client = redis.client()
    total, worker_part = [], []
    for _ in range(runs):
        with httpx.stream("POST", f"{api.url}/v1/completions", json=LONG, timeout=60) as stream:
            job_id = stream.headers["X-Job-Id"]
            events = sse(stream)
            for _, _event in zip(range(5), events, strict=False):
                pass
            gone = time.time()
            stream.close()
        ended = wait_until(
            lambda job_id=job_id: (r := record(client, job_id)).ended_at is not None and r,
            10,
            "the worker to stop",
        )
        assert ended.ended_at is not None and ended.cancel_requested_at is not None
        total.append(ended.ended_at - gone)
        worker_part.append(ended.ended_at - ended.cancel_requested_at)
    return {
        "runs": runs,
        "disconnect_to_free_ms": {
            "p50": round(statistics.median(total) * 1000, 1),
            "max": round(max(total) * 1000, 1),
        },
        "cancel_flag_to_free_ms": {
            "p50": round(statistics.median(worker_part) * 1000, 1),
            "max": round(max(worker_part) * 1000, 1),
        },
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rejections", type=int, default=400)
    parser.add_argument("--kills", type=int, default=3)
    parser.add_argument("--disconnects", type=int, default=10)
    args = parser.parse_args()
    # Everything started is stopped, in reverse order, even when a later start fails.
    with tempfile.TemporaryDirectory() as tmp, ExitStack() as started:
        logs = Path(tmp)
        redis = RedisServer(logs)
        redis.start()
        started.callback(redis.stop)
        worker = WorkerProcess(redis, DEFAULT_MODEL, logs / "worker.log")
        started.callback(worker.stop)
        api = ApiProcess(
            redis,
            logs / "api.log",
            {"TOKENQ_MODELS": DEFAULT_MODEL, "TOKENQ_MAX_QUEUED": str(MAX_QUEUED)},
        )
        started.callback(api.stop)
        figures = {
            "429_latency": overload(api, redis, args.rejections),
            "disconnect_to_worker_free": disconnect_to_free(api, redis, args.disconnects),
        }
        worker.stop()
        figures["sigkill_to_client_error"] = kill_to_error(api, redis, logs, args.kills)
    print(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
