"""Child processes of `tokenq up`: started, watched, reported when they die, restarted.

A child that dies is reported with its exit status or signal and the last lines it wrote.
It is restarted with a growing backoff, unless restarting cannot help: a worker whose engine
failed its start-up check or whose model file is missing or changed, or a child that keeps
dying (`max_deaths` within `death_window_s`).
"""

import os
import signal
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from shared.exits import ExitStatus

TAIL_LINES = 20


def describe_exit(returncode: int) -> str:
    """`exited with status 3` or `was killed by signal SIGSEGV (11)`."""
    if returncode < 0:
        try:
            name = signal.Signals(-returncode).name
        except ValueError:
            name = "an unknown signal"
        return f"was killed by signal {name} ({-returncode})"
    return f"exited with status {returncode}"


@dataclass
class Child:
    """One supervised program; its output is copied to ours and its last lines kept."""

    name: str
    argv: list[str]
    ready: Callable[["Child"], bool] = lambda child: True
    # Whether restarting it can help, given its exit status.
    restartable: Callable[[int], bool] = lambda returncode: True
    echo: bool = True  # copy its output to ours (else only keep its last lines)
    env: dict[str, str] | None = None  # set in its environment, over ours
    proc: "subprocess.Popen[bytes] | None" = None
    tail: deque[str] = field(default_factory=lambda: deque(maxlen=TAIL_LINES))
    was_ready: bool = False
    deaths: list[float] = field(default_factory=list)
    restart_at: float | None = None
    reader: threading.Thread | None = None

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    def start(self) -> None:
        self.tail.clear()
        self.was_ready = False
        self.restart_at = None
        # A session of its own: a terminal's Ctrl-C reaches `tokenq up` alone, which then
        # stops its children in order (see `Supervisor.stop`).
        self.proc = subprocess.Popen(
            self.argv,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            env={**os.environ, **self.env} if self.env else None,
        )
        self.reader = threading.Thread(target=self._copy, args=(self.proc,), daemon=True)
        self.reader.start()

    def drain(self, timeout_s: float = 2.0) -> None:
        """Wait (briefly) until the dead child's last lines are read from its pipe: a process
        that wrote and then crashed may be seen dead before its reader has caught up."""
        if self.reader is not None:
            self.reader.join(timeout_s)

    def _copy(self, proc: "subprocess.Popen[bytes]") -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            self.tail.append(line.decode(errors="replace").rstrip())
            if self.echo:
                sys.stderr.buffer.write(line)
                sys.stderr.flush()

    def stop(self, timeout_s: float = 15) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.terminate()
        try:
            self.proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


@dataclass
class Death:
    child: Child
    pid: int
    returncode: int
    tail: list[str]
    restart_in_s: float | None  # None: not restarted

    def message(self) -> str:
        when = "while starting" if not self.child.was_ready else "while serving"
        return f"{self.child.name} (pid {self.pid}) {describe_exit(self.returncode)} {when}"


class Supervisor:
    """Restarts dead children with backoff (1 s, doubling, at most `max_backoff_s`)."""

    def __init__(
        self,
        children: list[Child],
        *,
        max_backoff_s: float = 30.0,
        max_deaths: int = 5,
        death_window_s: float = 600.0,
    ) -> None:
        self.children = children
        self.max_backoff_s = max_backoff_s
        self.max_deaths = max_deaths
        self.death_window_s = death_window_s

    def start(self) -> None:
        for child in self.children:
            child.start()

    def poll(self) -> list[Death]:
        """Check every child once: note readiness, report deaths, restart those due."""
        now = time.monotonic()
        deaths = []
        for child in self.children:
            if child.proc is None:
                if child.restart_at is not None and now >= child.restart_at:
                    child.start()
                continue
            returncode = child.proc.poll()
            if returncode is None:
                if not child.was_ready and child.ready(child):
                    child.was_ready = True
                continue
            deaths.append(self._died(child, returncode, now))
        return deaths

    def backoff_s(self, deaths: int) -> float:
        """The wait before restarting a child that died `deaths` times in the window."""
        return min(self.max_backoff_s, 2.0 ** (deaths - 1))

    def _died(self, child: Child, returncode: int, now: float) -> Death:
        assert child.proc is not None
        pid = child.proc.pid
        child.drain()
        child.deaths = [t for t in child.deaths if now - t < self.death_window_s] + [now]
        restart_in: float | None = None
        if child.restartable(returncode) and len(child.deaths) < self.max_deaths:
            restart_in = self.backoff_s(len(child.deaths))
            child.restart_at = now + restart_in
        death = Death(child, pid, returncode, list(child.tail), restart_in)
        child.proc = None
        return death

    def stop(self) -> None:
        """Stop every child, last started first, each gone before the next is asked (the API
        before the worker it relays, the worker before the Redis it books its jobs in)."""
        for child in reversed(self.children):
            child.stop()


def worker_restartable(returncode: int) -> bool:
    return returncode not in (ExitStatus.ENGINE_CHECK_FAILED, ExitStatus.MODEL_FILE_INVALID)
