"""Failures against a stack of its own (its Redis is stopped, its workers killed):
SIGKILL before and after the first token, SIGTERM drains, a Redis restart.

The tests share the module's Redis, API and worker pool, and none depends on another's
outcome: each takes a live worker from the pool (starting one if a test before it killed
them all), and the Redis restart test brings Redis back up whatever happens to it.
"""

import signal
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import openai
import pytest
from openai import OpenAI

from shared import keys
from shared.lifecycle import JobStatus
from shared.settings import DEFAULT_MODEL
from tests.integration.clients import LONG, record, sse, wait_until
from tests.integration.procs import (
    ApiProcess,
    RedisServer,
    WorkerProcess,
    stop_all,
    wait_for,
)

pytestmark = pytest.mark.integration

ERROR_WITHIN_S = 10.0


class Pool:
    """This module's workers: started on demand, all stopped at the end."""

    def __init__(self, redis: RedisServer, logs: Path) -> None:
        self.redis = redis
        self.logs = logs
        self.started: list[WorkerProcess] = []

    def start(self) -> WorkerProcess:
        worker = WorkerProcess(
            self.redis, DEFAULT_MODEL, self.logs / f"fault-worker-{len(self.started)}.log"
        )
        self.started.append(worker)
        return worker

    def live(self) -> WorkerProcess:
        """A running worker, registered (again, if Redis restarted since it last beat)."""
        alive = [w for w in self.started if w.proc.poll() is None]
        if not alive:
            return self.start()
        wait_for(lambda: alive[0].registered(self.redis), 30, "the worker to register again")
        return alive[0]

    def only(self, worker: WorkerProcess) -> None:
        """Stop every other worker, so that `worker` gets the next job."""
        for other in self.started:
            if other is not worker:
                other.stop()


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[RedisServer, Pool]]:
    redis = RedisServer(tmp_path_factory.mktemp("fault-redis"))
    redis.start()
    try:
        pool = Pool(redis, tmp_path_factory.mktemp("fault-logs"))
        try:
            yield redis, pool
        finally:
            stop_all(pool.started)
    finally:
        redis.stop()


@pytest.fixture(scope="module")
def fault_api(stack: tuple[RedisServer, Pool]) -> Iterator[ApiProcess]:
    redis, pool = stack
    api = ApiProcess(redis, pool.logs / "fault-api.log", {"TOKENQ_MODELS": DEFAULT_MODEL})
    try:
        yield api
    finally:
        api.stop()


def client(api: ApiProcess) -> OpenAI:
    return OpenAI(base_url=f"{api.url}/v1", api_key="unused", max_retries=0, timeout=180)


def running_job(redis: RedisServer) -> str:
    ids = wait_until(
        lambda: redis.client().zrange(keys.running_jobs(DEFAULT_MODEL), 0, -1), 60, "a running job"
    )
    return str(ids[0].decode())


def test_worker_killed_before_the_first_token_reruns_on_another(
    stack: tuple[RedisServer, Pool], fault_api: ApiProcess
) -> None:
    redis, pool = stack
    first = pool.live()
    pool.only(first)
    # A long prompt (~1500 tokens): evaluating it keeps the worker busy before any token.
    with ThreadPoolExecutor(1) as ask:
        answer = ask.submit(
            client(fault_api).completions.create,
            model=DEFAULT_MODEL,
            prompt="1, 2, 3, 4, 5, " * 100,
            max_tokens=6,
            temperature=0,
        )
        job_id = running_job(redis)
        running = record(redis.client(), job_id)
        assert running.worker and f"-{first.pid}-" in running.worker and not running.streamed
        first.signal(signal.SIGKILL)
        second = pool.start()
        completion = answer.result(timeout=180)
    # A normal, whole answer, as if nothing had happened.
    assert completion.choices[0].finish_reason == "length"
    assert completion.choices[0].text.strip()
    assert completion.usage is not None and completion.usage.completion_tokens == 6
    done = record(redis.client(), job_id)
    assert done.status is JobStatus.DONE and done.attempt == 2
    assert done.worker and f"-{second.pid}-" in done.worker
    # Requeued exactly once: one finished attempt, nothing left waiting.
    finished = redis.client().zrange(keys.finished_jobs(DEFAULT_MODEL), 0, -1)
    assert [f.decode() for f in finished if f.decode().startswith(job_id)] == [f"{job_id}-2"]
    assert redis.client().zcard(keys.waiting_jobs(DEFAULT_MODEL)) == 0
    # The API's log names the dead worker.
    assert f"job {job_id}: worker {running.worker} died; requeued" in fault_api.output()


def test_worker_killed_after_tokens_were_sent_ends_the_stream_within_10s(
    stack: tuple[RedisServer, Pool], fault_api: ApiProcess
) -> None:
    redis, pool = stack
    worker = pool.live()
    params = {key: value for key, value in LONG.items() if key != "stream"}
    chunks = iter(client(fault_api).completions.create(**params, stream=True))  # type: ignore[call-overload]
    first = next(chunks)
    worker.signal(signal.SIGKILL)
    killed_at = time.monotonic()
    with pytest.raises(openai.APIError) as info:
        for _chunk in chunks:
            pass
    assert time.monotonic() - killed_at < ERROR_WITHIN_S
    assert "worker" in info.value.message
    failed = record(redis.client(), first.id.removeprefix("cmpl-"))
    assert failed.status is JobStatus.FAILED and failed.error == "worker_lost"
    assert f"worker {failed.worker} died; failed" in fault_api.output()
    view = httpx.get(f"{fault_api.url}/v1/jobs/{first.id}").json()
    assert view["status"] == "failed"


def test_worker_sigterm_finishes_its_job_and_takes_no_new_one(
    stack: tuple[RedisServer, Pool], fault_api: ApiProcess
) -> None:
    redis, pool = stack
    draining = pool.live()
    pool.only(draining)
    body = {**LONG, "max_tokens": 40}
    with (
        ThreadPoolExecutor(1) as later,
        httpx.stream("POST", f"{fault_api.url}/v1/completions", json=body, timeout=60) as stream,
    ):
        events = sse(stream)
        next(events)
        draining.signal(signal.SIGTERM)
        # A job sent after the SIGTERM waits for another worker.
        next_job = later.submit(
            httpx.post,
            f"{fault_api.url}/v1/completions",
            json={**body, "stream": False, "max_tokens": 3},
            timeout=120,
        )
        rest = list(events)
        assert rest[-1]["choices"][0]["finish_reason"] == "length"  # finished in full
        assert draining.proc.wait(timeout=30) == 0
        wait_until(
            lambda: redis.client().zcard(keys.waiting_jobs(DEFAULT_MODEL)) == 1,
            10,
            "the later job to wait in the queue",
        )
        assert not next_job.done()
        successor = pool.start()
        answer = next_job.result(timeout=120)
    assert answer.status_code == 200
    job_id = answer.json()["id"].removeprefix("cmpl-")
    worker = record(redis.client(), job_id).worker
    assert worker and f"-{successor.pid}-" in worker


def test_redis_restart_ends_open_streams_and_everything_recovers(
    stack: tuple[RedisServer, Pool], fault_api: ApiProcess
) -> None:
    redis, pool = stack
    worker = pool.live()
    try:
        with httpx.stream(
            "POST", f"{fault_api.url}/v1/completions", json=LONG, timeout=60
        ) as stream:
            # Data lines only (each SSE frame also carries its `id:`).
            lines = (line for line in stream.iter_lines() if line.startswith("data: "))
            next(lines)
            redis.stop()
            stopped_at = time.monotonic()
            rest = list(lines)
        assert time.monotonic() - stopped_at < ERROR_WITHIN_S
        assert '"code":"backend_unavailable"' in rest[-2] and rest[-1] == "data: [DONE]"

        assert httpx.get(f"{fault_api.url}/readyz").status_code == 503
        refused = httpx.post(f"{fault_api.url}/v1/completions", json={**LONG, "stream": False})
        assert refused.status_code == 503
        assert refused.json()["error"]["code"] == "backend_unavailable"

        redis.start()
        _answers_again(fault_api)
        # Once more, with the worker idle (blocked waiting for a job) when Redis goes.
        redis.stop()
        time.sleep(1.0)
        redis.start()
        _answers_again(fault_api)
        # The same processes recovered: nothing was restarted.
        assert worker.proc.poll() is None and fault_api.proc.poll() is None
    finally:
        if not redis.running:  # failed while Redis was down: the next test needs it up
            redis.start()


def _answers_again(api: ApiProcess) -> None:
    wait_until(lambda: httpx.get(f"{api.url}/readyz").status_code == 200, 30, "readiness", 0.2)
    again = httpx.post(
        f"{api.url}/v1/completions", json={**LONG, "stream": False, "max_tokens": 3}, timeout=60
    )
    assert again.status_code == 200, again.text


def test_api_sigterm_lets_open_streams_finish(
    stack: tuple[RedisServer, Pool], fault_api: ApiProcess
) -> None:
    redis, pool = stack
    pool.live()
    leaving = ApiProcess(redis, pool.logs / "fault-api-leaving.log")
    try:
        body = {**LONG, "max_tokens": 40}
        with httpx.stream("POST", f"{leaving.url}/v1/completions", json=body, timeout=60) as stream:
            events = sse(stream)
            next(events)
            leaving.signal(signal.SIGTERM)
            wait_until(lambda: _refused(leaving.url), 10, "the API to stop accepting", 0.05)
            rest = list(events)
        assert rest[-1]["choices"][0]["finish_reason"] == "length"
        # uvicorn exits with the signal it got once it has shut down cleanly
        assert leaving.proc.wait(timeout=30) in (0, -signal.SIGTERM)
    finally:
        leaving.stop()  # whatever happened: a no-op once it has exited


def _refused(url: str) -> bool:
    """No new request is served: refused, or (racing the listener's close) accepted from the
    backlog and closed unanswered."""
    try:
        httpx.get(f"{url}/healthz", timeout=1)
    except (httpx.ConnectError, httpx.RemoteProtocolError, httpx.ReadError):
        return True
    return False
