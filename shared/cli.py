"""The `tokenq` command: `up` (all in one, for development), `api`, `worker`."""

import logging
import logging.config
import os
import shutil
import signal
import socket
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import urlparse

import typer
from redis import Redis
from redis.exceptions import RedisError
from rich.console import Console

from shared.exits import ExitStatus
from shared.logs import logging_config
from shared.metrics import MULTIPROC_DIR_ENV
from shared.registry import live_workers_now
from shared.settings import DEFAULT_MODEL, ApiSettings, Settings, WorkerSettings
from shared.supervise import Child, Death, Supervisor, worker_restartable

app = typer.Typer(help="tokenq: an LLM API that scales out on Redis.", no_args_is_help=True)
console = Console(stderr=True)


def _logging(settings: Settings) -> dict[str, Any]:
    config = logging_config(settings.log_format)
    logging.config.dictConfig(config)
    return config


@app.command()
def api(
    host: Annotated[str | None, typer.Option(help="Address to bind.")] = None,
    port: Annotated[int | None, typer.Option(help="Port to bind.")] = None,
    workers: Annotated[
        int | None, typer.Option(help="uvicorn worker processes (/metrics sums them all).")
    ] = None,
) -> None:
    """Run one API front end (FastAPI under uvicorn)."""
    import uvicorn

    from api.app import create_app

    given = {"host": host, "port": port, "workers": workers}
    settings = ApiSettings(**{k: v for k, v in given.items() if v is not None})  # type: ignore[arg-type]
    log_config = _logging(settings)
    # On SIGTERM uvicorn stops accepting at once and gives open streams the grace period.
    grace = int(settings.shutdown_grace_s)
    if settings.workers == 1 and not os.environ.get(MULTIPROC_DIR_ENV):
        uvicorn.run(
            create_app(settings),
            host=settings.host,
            port=settings.port,
            log_config=log_config,
            timeout_graceful_shutdown=grace,
        )
        return
    # Each process is a fresh interpreter that builds its app from the environment, and
    # counts its metrics in files that /metrics sums (prometheus-client multiprocess mode).
    with _multiprocess_dir():
        uvicorn.run(
            "api.app:create_app",
            factory=True,
            host=settings.host,
            port=settings.port,
            workers=settings.workers,
            log_config=log_config,
            timeout_graceful_shutdown=grace,
        )


@contextmanager
def _multiprocess_dir() -> Iterator[None]:
    """PROMETHEUS_MULTIPROC_DIR for the API's processes: the one given, emptied of a previous
    run's files, or a temporary one removed afterwards."""
    given = os.environ.get(MULTIPROC_DIR_ENV)
    if given:
        Path(given).mkdir(parents=True, exist_ok=True)
        for stale in Path(given).glob("*.db"):
            stale.unlink()
        yield
        return
    with tempfile.TemporaryDirectory(prefix="tokenq-metrics-") as path:
        os.environ[MULTIPROC_DIR_ENV] = path
        try:
            yield
        finally:
            del os.environ[MULTIPROC_DIR_ENV]


@app.command()
def worker(
    model: Annotated[str | None, typer.Option(help="Model name this worker serves.")] = None,
    gguf: Annotated[Path | None, typer.Option(help="GGUF file (default: SmolLM2).")] = None,
    n_ctx: Annotated[int | None, typer.Option("--n-ctx", help="Context window.")] = None,
    threads: Annotated[int | None, typer.Option(help="CPU threads.")] = None,
    n_gpu_layers: Annotated[
        int | None, typer.Option("--n-gpu-layers", help="Layers to offload, -1 for all.")
    ] = None,
    metrics_port: Annotated[
        int | None,
        typer.Option("--metrics-port", help="Serve /metrics, /healthz and /readyz on this port."),
    ] = None,
    metrics_host: Annotated[
        str | None, typer.Option("--metrics-host", help="Address for the metrics port.")
    ] = None,
) -> None:
    """Run one worker pinned to one model."""
    from worker.main import run_worker

    given = {
        "model": model,
        "gguf": gguf,
        "n_ctx": n_ctx,
        "threads": threads,
        "n_gpu_layers": n_gpu_layers,
        "metrics_port": metrics_port,
        "metrics_host": metrics_host,
    }
    settings = WorkerSettings(**{k: v for k, v in given.items() if v is not None})  # type: ignore[arg-type]
    _logging(settings)
    run_worker(settings)


@app.command()
def up(
    host: Annotated[str, typer.Option(help="Address for the API.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port for the API.")] = 8000,
    model: Annotated[str, typer.Option(help="Model name for the worker.")] = DEFAULT_MODEL,
) -> None:
    """Redis (if none answers), one API and one worker, in the foreground; Ctrl-C stops all.

    A child that dies is reported (exit status or signal, its last lines) and restarted with
    backoff; one that cannot recover (a failed engine check, repeated deaths) stops them all
    with exit status 1.
    """
    settings = ApiSettings()
    url = f"http://{host}:{port}"
    me = [sys.executable, "-m", "shared.cli"]
    children = []
    if not _redis_answers(settings.redis_url):
        children.append(_redis_child(settings.redis_url))
    children += [
        Child(
            "worker",
            [*me, "worker", "--model", model],
            ready=lambda child: _registered(settings.redis_url, model, child.pid),
            restartable=worker_restartable,
        ),
        Child("api", [*me, "api", "--host", host, "--port", str(port)], ready=_healthy(url)),
    ]
    supervisor = Supervisor(children)
    stopping = False

    def stop(*_: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    failed = False
    announced = False
    supervisor.start()
    try:
        while not stopping and not failed:
            for death in supervisor.poll():
                failed |= _report(death)
            if not announced and _ready(url):
                announced = True
                _announce(url, model)
            time.sleep(0.2)
    finally:
        supervisor.stop()
    raise typer.Exit(1 if failed else 0)


def _report(death: Death) -> bool:
    """Say what died and how; True if tokenq up must give up."""
    console.print(f"[bold red]{death.message()}[/]")
    if death.tail:
        console.print(f"  its last {len(death.tail)} lines:", highlight=False)
        for line in death.tail:
            console.print(f"  | {line}", highlight=False, markup=False, soft_wrap=True)
    if death.returncode == ExitStatus.ENGINE_CHECK_FAILED:
        console.print("[red]its engine failed the start-up check: restarting cannot help.[/]")
    elif death.returncode < 0 and not death.child.was_ready:
        console.print(
            "[red]a crash while starting often means a llama.cpp build this CPU cannot run: "
            "`make run` rebuilds it for this machine (see the README, 'llama.cpp build').[/]"
        )
    if death.restart_in_s is None:
        console.print("[bold red]giving up: stopping tokenq[/]")
        return True
    console.print(f"  restarting it in {death.restart_in_s:.0f}s")
    return False


def _announce(url: str, model: str) -> None:
    console.print(f"[bold green]tokenq is up[/] at {url}  (model: {model})")
    console.print(
        f"  curl {url}/v1/chat/completions -H 'Content-Type: application/json' "
        f'-d \'{{"model": "{model}", "messages": '
        f'[{{"role": "user", "content": "Hello!"}}]}}\'',
        soft_wrap=True,  # one line, so it can be copied
    )


def _registered(redis_url: str, model: str, pid: int | None) -> bool:
    """Whether the worker with this pid (on this host) has registered."""
    try:
        redis = Redis.from_url(redis_url, socket_connect_timeout=1, socket_timeout=1)
        workers = live_workers_now(redis, model)
    except RedisError:
        return False
    host = socket.gethostname()
    return any(w.pid == pid and w.worker_id.startswith(f"{host}-") for w in workers)


def _healthy(url: str) -> Callable[[Child], bool]:
    def check(child: Child) -> bool:
        return _http_ok(f"{url}/healthz")

    return check


def _redis_answers(url: str) -> bool:
    try:
        return bool(Redis.from_url(url, socket_connect_timeout=1).ping())
    except RedisError:
        return False


def _redis_child(url: str) -> Child:
    server = shutil.which("redis-server")
    if server is None:
        console.print("[red]no Redis answers at[/] " + url + " [red]and redis-server is missing[/]")
        raise typer.Exit(1)
    parsed = urlparse(url)
    argv = [server, "--port", str(parsed.port or 6379), "--bind", parsed.hostname or "127.0.0.1"]
    argv += ["--save", "", "--appendonly", "no"]
    return Child("redis", argv, ready=lambda child: _redis_answers(url), echo=False)


def _ready(url: str) -> bool:
    return _http_ok(f"{url}/readyz")


def _http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=1) as response:
            return bool(response.status == 200)
    except OSError:  # refused, timed out, or 503 (HTTPError)
        return False


if __name__ == "__main__":
    app()
