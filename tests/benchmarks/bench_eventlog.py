"""The cost of keeping every event (shared/eventlog.py): one decode step's events for N jobs
sent in one pipeline, publish only (as before) against append + publish + expire (now),
on a real redis-server; rounds interleaved.

    .venv/bin/python -m tests.benchmarks.bench_eventlog [--jobs 8] [--steps 2000]
"""

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from redis import Redis

from shared import keys
from shared.eventlog import append_and_publish
from shared.events import TokenEvent
from tests.integration.procs import RedisServer


def _publish_only(redis: Redis, events: list[tuple[str, str]]) -> None:
    pipe = redis.pipeline(transaction=False)
    for job_id, payload in events:
        pipe.publish(keys.events_channel(job_id), payload)
    pipe.execute()


def _logged(redis: Redis, events: list[tuple[str, str]]) -> None:
    pipe = redis.pipeline(transaction=False)
    append_and_publish(pipe, events, 600)
    pipe.execute()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--jobs", type=int, default=8)
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        server = RedisServer(Path(tmp))
        server.start()
        try:
            redis = server.client()
            results: dict[str, list[float]] = {"publish only": [], "append+publish": []}
            for round_ in range(args.rounds):
                for name, send in (("publish only", _publish_only), ("append+publish", _logged)):
                    jobs = [f"r{round_}-{name[0]}-{j}" for j in range(args.jobs)]
                    started = time.perf_counter()
                    for step in range(args.steps):
                        text = TokenEvent(index=step, text=" word").model_dump_json()
                        send(redis, [(job, text) for job in jobs])
                    elapsed = time.perf_counter() - started
                    results[name].append(elapsed / (args.steps * args.jobs) * 1e6)
            for name, per_token in results.items():
                print(
                    f"{name:>15}: {statistics.median(per_token):.2f} us/token "
                    f"(median of {args.rounds}; {args.jobs} jobs per pipeline, one per step)"
                )
            used = redis.info("memory")["used_memory"]
            print(f"redis memory with every run's logs: {used / 1e6:.1f} MB")
        finally:
            server.stop()


if __name__ == "__main__":
    main()
