"""Integration fixtures: a real redis-server, a real worker with the real model, a real API.

The session-wide stack is shared by the tests that only send requests; tests that kill or
stop things start their own processes with the factories. Every fixture stops what it started
whatever happens after (a failed start-up of a later process included): see procs.py.
"""

from collections.abc import Callable, Iterator
from contextlib import ExitStack
from pathlib import Path

import ollama
import pytest
from anthropic import Anthropic
from openai import OpenAI

from shared.settings import DEFAULT_MODEL
from tests.integration.procs import ApiProcess, Process, RedisServer, WorkerProcess, stop_all

# A model the API knows (TOKENQ_MODELS) but no worker serves: requests for it get 503.
UNSERVED_MODEL = "unserved-model"
# The queue limit and the short queue deadline of the `limited_apis` pair.
LIMIT = 3
SHORT_DEADLINE_S = 3.0


@pytest.fixture(scope="session", autouse=True)
def models_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """The model directory of every process the tests start (never the user's own)."""
    path = tmp_path_factory.mktemp("models")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("TOKENQ_MODELS_DIR", str(path))
        yield path


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path_factory.mktemp("redis"))
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def logs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("logs")


@pytest.fixture(scope="session")
def worker(redis_server: RedisServer, logs: Path) -> Iterator[WorkerProcess]:
    """The session's worker holds one sequence: tests that keep it busy (queueing, 429,
    deadlines) rely on one stream filling it. Batching is tested with workers of its own."""
    proc = WorkerProcess(redis_server, DEFAULT_MODEL, logs / "worker.log", "--slots", "1")
    try:
        yield proc
    finally:
        proc.stop()


@pytest.fixture(scope="session")
def api(redis_server: RedisServer, worker: WorkerProcess, logs: Path) -> Iterator[ApiProcess]:
    proc = ApiProcess(
        redis_server, logs / "api.log", {"TOKENQ_MODELS": f"{DEFAULT_MODEL},{UNSERVED_MODEL}"}
    )
    try:
        yield proc
    finally:
        proc.stop()


@pytest.fixture(scope="session")
def limited_apis(
    redis_server: RedisServer, worker: WorkerProcess, logs: Path
) -> Iterator[tuple[ApiProcess, ApiProcess]]:
    """Two more replicas on the session stack, each admitting at most LIMIT waiting jobs."""
    limits = {"TOKENQ_MODELS": DEFAULT_MODEL, "TOKENQ_MAX_QUEUED": str(LIMIT)}
    with ExitStack() as started:  # the first is stopped even if the second fails to start
        first = ApiProcess(redis_server, logs / "api-limited-1.log", limits)
        started.callback(first.stop)
        second = ApiProcess(redis_server, logs / "api-limited-2.log", limits)
        started.callback(second.stop)
        yield first, second


@pytest.fixture
def openai_client(api: ApiProcess) -> OpenAI:
    return OpenAI(base_url=f"{api.url}/v1", api_key="unused", max_retries=0, timeout=120)


@pytest.fixture
def anthropic_client(api: ApiProcess) -> Anthropic:
    return Anthropic(base_url=api.url, api_key="unused", max_retries=0, timeout=120)


@pytest.fixture
def ollama_client(api: ApiProcess) -> ollama.Client:
    return ollama.Client(host=api.url, timeout=120)


@pytest.fixture
def spawn(redis_server: RedisServer, logs: Path) -> Iterator[Callable[..., Process]]:
    """Start extra workers/APIs for one test; all are stopped after it."""
    started: list[Process] = []
    counter = iter(range(1_000_000))

    def start(kind: str, *args: str, **kwargs: dict[str, str]) -> Process:
        log = logs / f"{kind}-{next(counter)}.log"
        proc: Process
        if kind == "worker":
            proc = WorkerProcess(redis_server, args[0] if args else DEFAULT_MODEL, log, *args[1:])
        else:
            proc = ApiProcess(redis_server, log, kwargs.get("env"))
        started.append(proc)
        return proc

    try:
        yield start
    finally:
        stop_all(started)
