"""Real processes for integration tests: redis-server, tokenq workers, tokenq API servers."""

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import httpx
from redis import Redis
from redis.exceptions import RedisError

from shared import keys

ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def wait_for(check: Callable[[], bool], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.05)
    raise TimeoutError(f"timed out after {timeout_s}s waiting for {what}")


class RedisServer:
    """A throwaway redis-server on a free loopback port; can be stopped and restarted."""

    def __init__(self, tmp: Path) -> None:
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self._tmp = tmp
        self._proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        server = shutil.which("redis-server")
        assert server, "redis-server is not installed (make test installs it)"
        self._proc = subprocess.Popen(
            [
                server,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(self._tmp),
            ],
            stdout=subprocess.DEVNULL,
        )
        try:
            wait_for(self._answers, 10, "redis-server")
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        if self._proc is not None:
            self._proc.terminate()
            self._proc.wait(timeout=10)
            self._proc = None

    def client(self) -> Redis:
        return Redis.from_url(self.url)

    def _answers(self) -> bool:
        try:
            return bool(self.client().ping())
        except RedisError:
            return False


class Process:
    """A `tokenq` subprocess with its output in a log file."""

    def __init__(self, args: list[str], env: dict[str, str], log: Path) -> None:
        self.log = log
        self._log_file = log.open("wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "shared.cli", *args],
            cwd=ROOT,
            env={**os.environ, **env},
            stdout=self._log_file,
            stderr=subprocess.STDOUT,
        )

    @property
    def pid(self) -> int:
        return self.proc.pid

    def signal(self, sig: signal.Signals) -> None:
        self.proc.send_signal(sig)

    def stop(self, timeout_s: float = 20) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log_file.close()

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def _wait_ready(self, check: Callable[[], bool], timeout_s: float, what: str) -> None:
        """Wait until `check` passes; a process that never gets there is stopped, not leaked."""
        try:
            wait_for(check, timeout_s, what)
        except BaseException:
            self.stop()
            raise


class WorkerProcess(Process):
    def __init__(self, redis: RedisServer, model: str, log: Path, *extra: str) -> None:
        self.metrics_port = free_port()
        self.metrics_url = f"http://127.0.0.1:{self.metrics_port}"
        super().__init__(
            [
                "worker",
                "--model",
                model,
                "--threads",
                "2",
                "--metrics-port",
                str(self.metrics_port),
                *extra,
            ],
            {"TOKENQ_REDIS_URL": redis.url},
            log,
        )
        self.model = model
        self._wait_ready(lambda: self._registered(redis), 60, f"worker for {model} ({log})")

    def _registered(self, redis: RedisServer) -> bool:
        assert self.proc.poll() is None, self.output()
        ids = redis.client().zrange(keys.workers_index(self.model), 0, -1)
        return any(f"-{self.pid}-" in i.decode() for i in ids)


class ApiProcess(Process):
    def __init__(
        self, redis: RedisServer, log: Path, env: dict[str, str] | None = None, *extra: str
    ) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        super().__init__(
            ["api", "--port", str(self.port), *extra],
            {"TOKENQ_REDIS_URL": redis.url, **(env or {})},
            log,
        )
        self._wait_ready(self._healthy, 30, f"api ({log})")

    def _healthy(self) -> bool:
        assert self.proc.poll() is None, self.output()
        try:
            return httpx.get(f"{self.url}/healthz", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False
