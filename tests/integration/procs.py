"""Real processes for integration tests: redis-server, tokenq workers, tokenq API servers.

Every process starts in a session of its own and is stopped as a whole process group, so
what it started (uvicorn's `--workers N` children, `tokenq up`'s worker and API) goes with it;
a stop that SIGTERM does not finish in time ends with SIGKILL. A process whose start-up wait
fails is stopped before the error propagates: a failed fixture leaves nothing running.
"""

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import IO, Any, Protocol

import httpx
from redis import Redis
from redis.exceptions import RedisError

from shared import keys
from shared.model_registry.store import ModelRegistry
from shared.settings import DEFAULT_MODEL, default_gguf_path

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


def start_group(command: list[str], **popen: Any) -> "subprocess.Popen[bytes]":
    """`Popen` in a new session: the child leads a process group that `stop_group` ends."""
    return subprocess.Popen(command, start_new_session=True, **popen)


def stop_group(proc: "subprocess.Popen[bytes]", timeout_s: float = 20) -> None:
    """SIGTERM the process (it stops its own children), SIGKILL its whole group if it is not
    gone within `timeout_s`; then SIGKILL whatever is left of the group (children it left
    behind). Safe to call again."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            _signal_group(proc, signal.SIGKILL)
            proc.wait(timeout=30)
    _signal_group(proc, signal.SIGKILL)


def _signal_group(proc: "subprocess.Popen[bytes]", sig: signal.Signals) -> None:
    # The group id is the leader's pid (start_new_session); the group outlives its leader
    # while any member is left. Nothing left: ProcessLookupError.
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, sig)


class Stoppable(Protocol):
    def stop(self) -> None: ...


def stop_all(procs: Iterable[Stoppable]) -> None:
    """Stop each of `procs`, even when stopping one of them fails; then raise the first error."""
    errors: list[BaseException] = []
    for proc in procs:
        try:
            proc.stop()
        except BaseException as exc:  # re-raised below, once the others are stopped
            errors.append(exc)
    if errors:
        raise errors[0]


@contextlib.contextmanager
def stopped_on_failure(proc: Stoppable) -> Iterator[None]:
    """Stop `proc` if the block raises (a start-up wait that failed), then re-raise."""
    try:
        yield
    except BaseException:
        proc.stop()
        raise


# A throwaway Redis: nothing is written to disk.
EPHEMERAL = ["--save", "", "--appendonly", "no"]


class RedisServer:
    """A redis-server on a free loopback port, data in `tmp`; can be stopped and restarted
    (same port, same directory). `args`: its persistence options, EPHEMERAL by default."""

    def __init__(self, tmp: Path, args: list[str] | None = None) -> None:
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self._tmp = tmp
        self._args = EPHEMERAL if args is None else args
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def start(self) -> None:
        server = shutil.which("redis-server")
        assert server, "redis-server is not installed (make test installs it)"
        self._proc = start_group(
            [server, *self._args, "--port", str(self.port), "--bind", "127.0.0.1",
             "--dir", str(self._tmp)],
            stdout=subprocess.DEVNULL,
        )  # fmt: skip
        with stopped_on_failure(self):
            wait_for(self._answers, 10, "redis-server")

    def stop(self) -> None:
        """SIGTERM (Redis shuts down cleanly: a persistent one writes its data), SIGKILL if it
        takes more than 10 s."""
        if self._proc is not None:
            stop_group(self._proc, timeout_s=10)
            self._proc = None

    def kill(self) -> None:
        """SIGKILL: no clean shutdown, so nothing is saved on the way out."""
        if self._proc is not None:
            self._proc.kill()
            self._proc.wait(timeout=30)
            self.stop()

    def client(self) -> Redis:
        return Redis.from_url(self.url)

    def _answers(self) -> bool:
        assert self._proc is not None and self._proc.poll() is None, "redis-server exited"
        try:
            return bool(self.client().ping())
        except RedisError:
            return False


class Process:
    """A `tokenq` subprocess (and its children) with its output in a log file."""

    def __init__(self, args: list[str], env: dict[str, str], log: Path) -> None:
        self.log = log
        self._log_file: IO[bytes] = log.open("wb")
        try:
            self.proc = start_group(
                [sys.executable, "-m", "shared.cli", *args],
                cwd=ROOT,
                env={**os.environ, **env},
                stdout=self._log_file,
                stderr=subprocess.STDOUT,
            )
        except BaseException:
            self._log_file.close()
            raise

    @property
    def pid(self) -> int:
        return self.proc.pid

    def signal(self, sig: signal.Signals) -> None:
        """Send `sig` to the process itself (not its children): what a supervisor would do."""
        self.proc.send_signal(sig)

    def stop(self, timeout_s: float = 20) -> None:
        """SIGTERM, SIGKILL after `timeout_s`; its children go with it. Safe to call again."""
        try:
            stop_group(self.proc, timeout_s)
        finally:
            self._log_file.close()

    def wait_ready(self, check: Callable[[], bool], timeout_s: float, what: str) -> None:
        """Wait until `check()`; if it never comes (or the check fails), stop the process."""
        with stopped_on_failure(self):
            wait_for(check, timeout_s, what)

    def output(self) -> str:
        return self.log.read_text(errors="replace")


class Sentinel:
    """A Redis Sentinel (`redis-server --sentinel`) on a free loopback port, watching the
    primary `master` as `name`, quick to fail over (`down_after_ms`, `failover_timeout_ms`)."""

    def __init__(
        self,
        tmp: Path,
        master: RedisServer,
        name: str,
        quorum: int,
        down_after_ms: int = 1000,
        failover_timeout_ms: int = 3000,
    ) -> None:
        self.port = free_port()
        config = tmp / f"sentinel-{self.port}.conf"  # Sentinel rewrites it: its own file
        config.write_text(
            f"port {self.port}\nbind 127.0.0.1\ndir {tmp}\n"
            f"sentinel monitor {name} 127.0.0.1 {master.port} {quorum}\n"
            f"sentinel down-after-milliseconds {name} {down_after_ms}\n"
            f"sentinel failover-timeout {name} {failover_timeout_ms}\n"
            f"sentinel parallel-syncs {name} 1\n"
        )
        server = shutil.which("redis-server")
        assert server, "redis-server is not installed (make test installs it)"
        self._proc = start_group([server, str(config), "--sentinel"], stdout=subprocess.DEVNULL)
        with stopped_on_failure(self):
            wait_for(self._answers, 10, "redis sentinel")

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def client(self) -> Redis:
        return Redis(host="127.0.0.1", port=self.port, socket_timeout=2)

    def stop(self) -> None:
        stop_group(self._proc, timeout_s=10)

    def _answers(self) -> bool:
        assert self._proc.poll() is None, "redis sentinel exited"
        try:
            return bool(self.client().ping())
        except RedisError:
            return False


class WorkerProcess(Process):
    """A worker of `model`: a registered one (the default model registers itself), or any
    other name served from the default model's file (`--gguf`, bypassing the registry)."""

    def __init__(
        self,
        redis: RedisServer,
        model: str,
        log: Path,
        *extra: str,
        env: dict[str, str] | None = None,
    ) -> None:
        unregistered = ModelRegistry(redis.client()).get(model) is None
        if model != DEFAULT_MODEL and "--gguf" not in extra and unregistered:
            extra = (*extra, "--gguf", str(default_gguf_path()))
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
            {"TOKENQ_REDIS_URL": redis.url, **(env or {})},
            log,
        )
        self.model = model
        self.wait_ready(lambda: self.registered(redis), 60, f"worker for {model} ({log})")

    def registered(self, redis: RedisServer) -> bool:
        """Whether its heartbeat is in `redis` (it re-registers after a Redis restart)."""
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
        self.wait_ready(self._healthy, 30, f"api ({log})")

    def _healthy(self) -> bool:
        assert self.proc.poll() is None, self.output()
        try:
            return httpx.get(f"{self.url}/healthz", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False
