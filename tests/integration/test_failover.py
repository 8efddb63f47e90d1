"""Redis failover under load: a primary, a replica and three Sentinels started here, a worker
and an API that reach Redis only through the Sentinels, a steady stream of requests from a
thread pool, and the primary SIGKILLed in the middle.

Counted: requests answered 200, 503 (with Retry-After, as during the switch), other errors,
and hangs (no answer within a generous client timeout), which must be none; the time from the
kill to the first success after it; and, once it settled, no job the new primary knows is
left waiting or running. Replication is asynchronous: a job admitted just before the kill may
be missing on the new primary; its request must then end with an error, not hang.
"""

import logging
import threading
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from redis import Redis

from shared import keys
from shared.lifecycle import JobRecord
from shared.settings import DEFAULT_MODEL
from tests.integration.procs import (
    EPHEMERAL,
    ApiProcess,
    RedisServer,
    Sentinel,
    WorkerProcess,
    stop_all,
    wait_for,
)

pytestmark = pytest.mark.integration

log = logging.getLogger(__name__)

MASTER = "tokenq-primary"
CLIENTS = 4
BEFORE_KILL_S = 5.0
AFTER_KILL_S = 25.0
CLIENT_TIMEOUT_S = 90.0  # a request still unanswered after this is a hang
BODY = {"model": DEFAULT_MODEL, "prompt": "Once upon a time", "max_tokens": 8, "temperature": 0}


@dataclass(frozen=True)
class Outcome:
    started: float
    ended: float
    status: int | str  # HTTP status, "hang" or "connection error"
    retry_after: str | None = None


@dataclass
class Cluster:
    primary: RedisServer
    replica: RedisServer
    sentinels: list[Sentinel]

    def env(self) -> dict[str, str]:
        return {
            "TOKENQ_REDIS_SENTINELS": ",".join(s.address for s in self.sentinels),
            "TOKENQ_REDIS_MASTER_NAME": MASTER,
        }

    def current_primary(self) -> Redis:
        host, port = self.sentinels[0].client().sentinel_get_master_addr_by_name(MASTER)
        return Redis(host=host, port=int(port), socket_timeout=5)


def _replicating(replica: RedisServer) -> bool:
    info = replica.client().info("replication")
    return bool(info.get("master_link_status") == "up")


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    started: list[RedisServer | Sentinel] = []
    try:
        (tmp_path / "primary").mkdir()
        primary = RedisServer(tmp_path / "primary")
        started.append(primary)
        primary.start()
        (tmp_path / "replica").mkdir()
        replica = RedisServer(
            tmp_path / "replica", [*EPHEMERAL, "--replicaof", "127.0.0.1", str(primary.port)]
        )
        started.append(replica)
        replica.start()
        wait_for(lambda: _replicating(replica), 20, "the replica to sync")
        (tmp_path / "sentinels").mkdir()
        sentinels = []
        for _ in range(3):
            sentinel = Sentinel(tmp_path / "sentinels", primary, MASTER, quorum=2)
            started.append(sentinel)
            sentinels.append(sentinel)

        def known() -> bool:  # each sentinel sees the replica and the two other sentinels
            return all(
                len(s.client().sentinel_slaves(MASTER)) == 1
                and len(s.client().sentinel_sentinels(MASTER)) == 2
                for s in sentinels
            )

        wait_for(known, 30, "the sentinels to discover each other and the replica")
        yield Cluster(primary, replica, sentinels)
    finally:
        stop_all(reversed(started))


def _request(url: str) -> Outcome:
    started = time.time()
    try:
        response = httpx.post(f"{url}/v1/completions", json=BODY, timeout=CLIENT_TIMEOUT_S)
    except httpx.TimeoutException:
        return Outcome(started, time.time(), "hang")
    except httpx.HTTPError:
        return Outcome(started, time.time(), "connection error")
    return Outcome(started, time.time(), response.status_code, response.headers.get("Retry-After"))


def _open_jobs(redis: Redis) -> list[JobRecord]:
    found = []
    for key in redis.scan_iter(match=keys.job_record("*")):
        job_id = key.decode().rsplit(":", 1)[1]
        record = JobRecord.from_hash(job_id, redis.hgetall(key))
        if record is not None and not record.status.terminal:
            found.append(record)
    return found


def test_a_primary_killed_under_load_fails_over_without_hangs(
    cluster: Cluster, tmp_path: Path
) -> None:
    env = cluster.env()
    # Short waits, so a job lost in the switch ends its request quickly (with an error).
    api_env = {**env, "TOKENQ_QUEUE_DEADLINE_S": "10", "TOKENQ_EVENT_TIMEOUT_S": "10"}
    procs: list[WorkerProcess | ApiProcess] = []
    try:
        procs.append(
            WorkerProcess(
                cluster.primary, DEFAULT_MODEL, tmp_path / "worker.log", "--slots", "4", env=env
            )
        )
        api = ApiProcess(cluster.primary, tmp_path / "api.log", api_env)
        procs.append(api)
        assert httpx.post(f"{api.url}/v1/completions", json=BODY, timeout=60).status_code == 200

        outcomes: list[Outcome] = []
        lock = threading.Lock()
        stop_at = time.time() + BEFORE_KILL_S + AFTER_KILL_S

        def client() -> None:
            while time.time() < stop_at:
                outcome = _request(api.url)
                with lock:
                    outcomes.append(outcome)
                time.sleep(0.05)

        with ThreadPoolExecutor(CLIENTS) as pool:
            running = [pool.submit(client) for _ in range(CLIENTS)]
            time.sleep(BEFORE_KILL_S)
            killed_at = time.time()
            cluster.primary.kill()
            for future in running:
                future.result()

        counts = Counter(o.status for o in outcomes)
        after = sorted((o for o in outcomes if o.started >= killed_at), key=lambda o: o.ended)
        recovered = next((o for o in after if o.status == 200), None)
        failed = [o for o in outcomes if o.status != 200]
        figures = {
            "requests": len(outcomes),
            "outcomes": dict(counts),
            "before_kill_ok": sum(1 for o in outcomes if o.ended < killed_at and o.status == 200),
            "time_to_recover_s": (
                None if recovered is None else round(recovered.ended - killed_at, 2)
            ),
            "failed_window_s": (
                round(max(o.ended for o in failed) - min(o.started for o in failed), 2)
                if failed
                else 0
            ),
            "longest_request_s": round(max(o.ended - o.started for o in outcomes), 2),
        }
        print(f"failover figures: {figures}")
        assert counts["hang"] == 0, figures
        assert recovered is not None, figures
        assert set(counts) <= {200, 503}, figures  # only clear, retryable errors
        assert all(o.retry_after for o in outcomes if o.status == 503), figures

        # Every job the new primary knows has ended (done, failed, cancelled or expired).
        new_primary = cluster.current_primary()
        assert new_primary.connection_pool.connection_kwargs["port"] == cluster.replica.port

        # A job still queued past its deadline counts as expired: nothing can start it, and
        # `GET /v1/jobs/{id}` shows it expired.
        def open_jobs() -> list[JobRecord]:
            return [r for r in _open_jobs(new_primary) if r.deadline > time.time() or r.worker]

        try:
            wait_for(lambda: not open_jobs(), 60, "every admitted job to end")
        except TimeoutError:
            raise AssertionError(f"jobs left open: {open_jobs()}") from None
    finally:
        stop_all(reversed(procs))
