"""`tokenq api`: one API front end (FastAPI under uvicorn).

Registered into the `tokenq` command (shared/cli.py) through the `tokenq.commands` entry
point group, so the bottom layer never imports the API.
"""

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated

import typer

from shared import logs
from shared.metrics import MULTIPROC_DIR_ENV
from shared.settings import ApiSettings


def register(app: typer.Typer) -> None:
    app.command()(api)


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
    log_config = logs.configure(settings.log_format)
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
