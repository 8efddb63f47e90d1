"""A worker proves its engine before it registers, and `tokenq up` reports dead children."""

import os
import shutil
import signal
import struct
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from gguf import GGUFReader
from redis import Redis

from shared.exits import ExitStatus
from shared.registry import live_workers_now
from shared.settings import default_gguf_path
from tests.integration.procs import ApiProcess, Process, RedisServer, free_port, wait_for

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def damaged_gguf(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The shipped model with its final norm's weights set to NaN: it loads, its metadata
    reads, its tokenizer works, and every logit it computes is NaN."""
    path = tmp_path_factory.mktemp("models") / "damaged.gguf"
    shutil.copy(default_gguf_path(), path)
    (norm,) = (t for t in GGUFReader(path).tensors if t.name == "output_norm.weight")
    with path.open("r+b") as f:
        f.seek(norm.data_offset)
        f.write(struct.pack("<f", float("nan")) * (norm.n_bytes // 4))
    return path


def ended(proc: Process, timeout_s: float) -> int:
    """Its exit status once it exits by itself; stopped (and the wait's error raised) if not."""
    try:
        wait_for(lambda: proc.proc.poll() is not None, timeout_s, f"{proc.log.name} to exit")
    finally:
        proc.stop()
    return proc.proc.returncode


def test_a_worker_whose_engine_check_fails_exits_and_never_registers(
    redis_server: RedisServer, api: ApiProcess, damaged_gguf: Path, logs: Path
) -> None:
    model = "damaged-model"
    worker = Process(
        ["worker", "--model", model, "--gguf", str(damaged_gguf), "--threads", "2"],
        {"TOKENQ_REDIS_URL": redis_server.url},
        logs / "worker-damaged.log",
    )
    assert ended(worker, 60) == ExitStatus.ENGINE_CHECK_FAILED
    output = worker.output()
    assert "engine self-check failed, not registering" in output
    assert "non-finite logits (NaN or inf) after the prompt" in output
    assert live_workers_now(redis_server.client(), model) == []
    listed = httpx.get(f"{api.url}/v1/models", timeout=10).json()["data"]
    assert model not in {m["id"] for m in listed}
    answer = httpx.post(
        f"{api.url}/v1/chat/completions",
        json={"model": model, "messages": [{"role": "user", "content": "Hi"}]},
        timeout=10,
    )
    assert answer.status_code == 404


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[RedisServer]:
    """`tokenq up` gets a Redis of its own: its worker never takes the session's jobs."""
    server = RedisServer(tmp_path)
    server.start()
    try:
        yield server
    finally:
        server.stop()


def start_up(redis: RedisServer, log: Path, model: str, **env: str) -> Process:
    port = free_port()
    return Process(
        ["up", "--port", str(port), "--model", model],
        {"TOKENQ_REDIS_URL": redis.url, "TOKENQ_LOG_FORMAT": "text", **env},
        log,
    )


def worker_pids(redis: Redis, model: str) -> set[int]:
    return {w.pid for w in live_workers_now(redis, model)}


def test_up_reports_a_worker_killed_by_a_signal_and_restarts_it(
    own_redis: RedisServer, tmp_path: Path
) -> None:
    model = "up-model"  # an unregistered name, served from a file given by path
    up = start_up(own_redis, tmp_path / "up.log", model, TOKENQ_GGUF=str(default_gguf_path()))
    try:
        redis = own_redis.client()
        wait_for(lambda: len(worker_pids(redis, model)) == 1, 60, "the worker of tokenq up")
        wait_for(lambda: "tokenq is up" in up.output(), 30, "tokenq up to announce itself")
        (pid,) = worker_pids(redis, model)
        os.kill(pid, signal.SIGKILL)
        reported = f"worker (pid {pid}) was killed by signal SIGKILL (9) while serving"
        # The report is written line by line: wait for its end, then read its last lines.
        wait_for(lambda: "restarting it in" in up.output().partition(reported)[2], 10, "the report")
        assert "engine self-check passed" in up.output().split(reported)[1]  # its last lines
        wait_for(lambda: worker_pids(redis, model) - {pid} != set(), 60, "the restarted worker")
        assert up.proc.poll() is None
    finally:
        up.signal(signal.SIGINT)
        code = ended(up, 30)
    assert code == 0, up.output()


def test_up_stops_with_an_error_when_the_worker_cannot_run(
    own_redis: RedisServer, tmp_path: Path, damaged_gguf: Path
) -> None:
    up = start_up(own_redis, tmp_path / "up.log", "up-damaged", TOKENQ_GGUF=str(damaged_gguf))
    code = ended(up, 90)
    output = up.output()
    assert code == 1, output
    assert f"exited with status {int(ExitStatus.ENGINE_CHECK_FAILED)} while starting" in output
    assert "engine self-check failed, not registering" in output
    assert "restarting cannot help" in output and "giving up" in output
