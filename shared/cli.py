"""The `tokenq` command: `up` (all in one, for development), `api`, `worker`."""

import logging
import logging.config
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import urlparse

import typer
from redis import Redis
from redis.exceptions import RedisError
from rich.console import Console

from shared.logs import logging_config
from shared.metrics import MULTIPROC_DIR_ENV
from shared.settings import DEFAULT_MODEL, ApiSettings, Settings, WorkerSettings

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
    """Redis (if none answers), one API and one worker, in the foreground; Ctrl-C stops all."""
    settings = ApiSettings()
    procs: list[subprocess.Popen[bytes]] = []
    if not _redis_answers(settings.redis_url):
        procs.append(_start_redis(settings.redis_url))
    me = [sys.executable, "-m", "shared.cli"]
    procs.append(subprocess.Popen([*me, "worker", "--model", model]))
    procs.append(subprocess.Popen([*me, "api", "--host", host, "--port", str(port)]))
    stopping = False

    def stop(*_: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    url = f"http://{host}:{port}"
    announced = False
    try:
        while not stopping and all(p.poll() is None for p in procs):
            if not announced and _ready(url):
                announced = True
                console.print(f"[bold green]tokenq is up[/] at {url}  (model: {model})")
                console.print(
                    f"  curl {url}/v1/chat/completions -H 'Content-Type: application/json' "
                    f'-d \'{{"model": "{model}", "messages": '
                    f'[{{"role": "user", "content": "Hello!"}}]}}\'',
                    soft_wrap=True,  # one line, so it can be copied
                )
            time.sleep(0.5)
    finally:
        for proc in reversed(procs):
            if proc.poll() is None:
                proc.terminate()
        for proc in reversed(procs):
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
    failed = [p for p in procs if p.returncode not in (0, -signal.SIGTERM, None)]
    raise typer.Exit(1 if failed and not stopping else 0)


def _redis_answers(url: str) -> bool:
    try:
        return bool(Redis.from_url(url, socket_connect_timeout=1).ping())
    except RedisError:
        return False


def _start_redis(url: str) -> "subprocess.Popen[bytes]":
    server = shutil.which("redis-server")
    if server is None:
        console.print("[red]no Redis answers at[/] " + url + " [red]and redis-server is missing[/]")
        raise typer.Exit(1)
    parsed = urlparse(url)
    proc = subprocess.Popen(
        [
            server,
            "--port",
            str(parsed.port or 6379),
            "--bind",
            parsed.hostname or "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
        ],
        stdout=subprocess.DEVNULL,
    )
    for _ in range(50):
        if _redis_answers(url):
            return proc
        time.sleep(0.1)
    proc.terminate()
    console.print(f"[red]redis-server did not come up at[/] {url}")
    raise typer.Exit(1)


def _ready(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/readyz", timeout=1) as response:
            return bool(response.status == 200)
    except OSError:  # refused, timed out, or 503 (HTTPError)
        return False


if __name__ == "__main__":
    app()
