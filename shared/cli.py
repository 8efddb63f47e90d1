"""The `tokenq` command: `up` (all in one, for development), `api`, `worker`."""

import logging
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Annotated
from urllib.parse import urlparse

import typer
from redis import Redis
from redis.exceptions import RedisError
from rich.console import Console

from shared.settings import DEFAULT_MODEL, ApiSettings, WorkerSettings

app = typer.Typer(help="tokenq: an LLM API that scales out on Redis.", no_args_is_help=True)
console = Console(stderr=True)


def _logging() -> None:
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )


@app.command()
def api(
    host: Annotated[str | None, typer.Option(help="Address to bind.")] = None,
    port: Annotated[int | None, typer.Option(help="Port to bind.")] = None,
) -> None:
    """Run one API front end (FastAPI under uvicorn)."""
    import uvicorn

    from api.app import create_app

    _logging()
    overrides = {k: v for k, v in {"host": host, "port": port}.items() if v is not None}
    settings = ApiSettings(**overrides)  # type: ignore[arg-type]
    # On SIGTERM uvicorn stops accepting at once and gives open streams the grace period.
    uvicorn.run(
        create_app(settings),
        host=settings.host,
        port=settings.port,
        log_level="info",
        timeout_graceful_shutdown=int(settings.shutdown_grace_s),
    )


@app.command()
def worker(
    model: Annotated[str | None, typer.Option(help="Model name this worker serves.")] = None,
    gguf: Annotated[Path | None, typer.Option(help="GGUF file (default: SmolLM2).")] = None,
    n_ctx: Annotated[int | None, typer.Option("--n-ctx", help="Context window.")] = None,
    threads: Annotated[int | None, typer.Option(help="CPU threads.")] = None,
    n_gpu_layers: Annotated[
        int | None, typer.Option("--n-gpu-layers", help="Layers to offload, -1 for all.")
    ] = None,
) -> None:
    """Run one worker pinned to one model."""
    from worker.main import run_worker

    _logging()
    given = {
        "model": model,
        "gguf": gguf,
        "n_ctx": n_ctx,
        "threads": threads,
        "n_gpu_layers": n_gpu_layers,
    }
    run_worker(WorkerSettings(**{k: v for k, v in given.items() if v is not None}))  # type: ignore[arg-type]


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
                    f'[{{"role": "user", "content": "Hello!"}}]}}\''
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
