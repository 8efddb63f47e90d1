"""`tokenq up`'s supervisor with real (tiny) child processes."""

import subprocess
import sys
import time

import pytest

from shared.exits import ExitStatus
from shared.supervise import Child, Death, Supervisor, describe_exit, worker_restartable


def python(code: str) -> list[str]:
    return [sys.executable, "-c", code]


def wait_for_deaths(supervisor: Supervisor, count: int, timeout_s: float = 10) -> list[Death]:
    deaths: list[Death] = []
    deadline = time.monotonic() + timeout_s
    while len(deaths) < count:
        assert time.monotonic() < deadline, f"only {len(deaths)} deaths"
        deaths += supervisor.poll()
        time.sleep(0.02)
    return deaths


def test_exit_descriptions() -> None:
    assert describe_exit(3) == "exited with status 3"
    assert describe_exit(-11) == "was killed by signal SIGSEGV (11)"
    assert describe_exit(-9) == "was killed by signal SIGKILL (9)"


def test_a_child_killed_by_a_signal_is_reported_with_its_last_lines_and_restarted() -> None:
    crash = "import os, signal; print('loading', flush=True); os.kill(os.getpid(), signal.SIGSEGV)"
    child = Child("worker", python(crash), ready=lambda c: False, echo=False)
    supervisor = Supervisor([child], max_backoff_s=0.2)
    supervisor.start()
    first_pid = child.pid
    (death,) = wait_for_deaths(supervisor, 1)
    assert death.returncode == -11 and death.pid == first_pid
    assert death.message() == (
        f"worker (pid {first_pid}) was killed by signal SIGSEGV (11) while starting"
    )
    assert death.tail == ["loading"]
    assert death.restart_in_s == 0.2
    # restarted after its backoff, as a new process
    deadline = time.monotonic() + 5
    while child.proc is None:
        assert time.monotonic() < deadline
        supervisor.poll()
        time.sleep(0.02)
    assert child.pid != first_pid
    supervisor.stop()


class SlowReader(Child):
    """A child whose output is read late, as on a loaded machine."""

    def _copy(self, proc: "subprocess.Popen[bytes]") -> None:
        time.sleep(0.5)
        super()._copy(proc)


def test_a_dead_childs_last_lines_are_read_before_it_is_reported() -> None:
    child = SlowReader("worker", python("print('its last words'); raise SystemExit(3)"), echo=False)
    supervisor = Supervisor([child])
    supervisor.start()
    assert child.proc is not None
    child.proc.wait()  # dead before its reader has read a line
    (death,) = wait_for_deaths(supervisor, 1)
    assert death.returncode == 3
    assert death.tail == ["its last words"]


def test_backoff_grows_and_repeated_deaths_give_up() -> None:
    child = Child("api", python("raise SystemExit(1)"), echo=False)
    supervisor = Supervisor([child], max_backoff_s=0.1, max_deaths=3, death_window_s=60)
    supervisor.start()
    deaths = wait_for_deaths(supervisor, 3)
    assert [d.restart_in_s for d in deaths] == [0.1, 0.1, None]
    assert all(d.returncode == 1 for d in deaths)
    assert child.proc is None and child.restart_at is None
    default = Supervisor([])
    assert [default.backoff_s(n) for n in range(1, 8)] == [1, 2, 4, 8, 16, 30, 30]


@pytest.mark.parametrize("status", [ExitStatus.ENGINE_CHECK_FAILED, ExitStatus.MODEL_FILE_INVALID])
def test_a_worker_that_cannot_recover_is_not_restarted(status: ExitStatus) -> None:
    code = f"raise SystemExit({int(status)})"
    child = Child("worker", python(code), restartable=worker_restartable, echo=False)
    supervisor = Supervisor([child])
    supervisor.start()
    (death,) = wait_for_deaths(supervisor, 1)
    assert death.returncode == status
    assert death.restart_in_s is None


def test_readiness_is_noted_and_stop_ends_every_child() -> None:
    sleeper = Child("api", python("import time; time.sleep(60)"), ready=lambda c: True)
    supervisor = Supervisor([sleeper])
    supervisor.start()
    assert supervisor.poll() == []
    assert sleeper.was_ready
    supervisor.stop()
    assert sleeper.proc is not None and sleeper.proc.returncode is not None
