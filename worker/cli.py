"""`tokenq worker`: one worker pinned to one model.

Registered into the `tokenq` command (shared/cli.py) through the `tokenq.commands` entry
point group, so the bottom layer never imports the worker.
"""

from pathlib import Path
from typing import Annotated

import typer

from shared import logs
from shared.settings import WorkerSettings


def register(app: typer.Typer) -> None:
    app.command()(worker)


def worker(
    model: Annotated[
        str | None, typer.Option(help="Registered model (or alias) this worker serves.")
    ] = None,
    gguf: Annotated[
        Path | None, typer.Option(help="Serve this GGUF file as is, bypassing the registry.")
    ] = None,
    n_ctx: Annotated[int | None, typer.Option("--n-ctx", help="Context window.")] = None,
    threads: Annotated[int | None, typer.Option(help="CPU threads.")] = None,
    slots: Annotated[
        int | None, typer.Option(help="Jobs decoded together in one batch (default 8).")
    ] = None,
    kv_cells: Annotated[
        int | None,
        typer.Option("--kv-cells", help="KV cache tokens shared by the slots (n-ctx x slots)."),
    ] = None,
    kv_unified: Annotated[
        bool | None,
        typer.Option("--kv-unified/--kv-per-slot", help="One cache shared by all slots."),
    ] = None,
    prefill_chunk: Annotated[
        int | None, typer.Option("--prefill-chunk", help="Prompt tokens evaluated per step.")
    ] = None,
    flash_attn: Annotated[
        bool | None, typer.Option("--flash-attn/--no-flash-attn", help="Flash attention.")
    ] = None,
    n_gpu_layers: Annotated[
        int | None, typer.Option("--n-gpu-layers", help="Layers to offload, -1 for all.")
    ] = None,
    embeddings: Annotated[
        bool | None,
        typer.Option("--embeddings/--no-embeddings", help="Serve embedding jobs too."),
    ] = None,
    metrics_port: Annotated[
        int | None,
        typer.Option("--metrics-port", help="Serve /metrics, /healthz and /readyz on this port."),
    ] = None,
    metrics_host: Annotated[
        str | None, typer.Option("--metrics-host", help="Address for the metrics port.")
    ] = None,
) -> None:
    """Run one worker pinned to one model: its file is found through the registry and must
    have its registered digest (exit status 4 otherwise)."""
    from worker.main import run_worker

    given = {
        "model": model,
        "gguf": gguf,
        "n_ctx": n_ctx,
        "threads": threads,
        "slots": slots,
        "kv_cells": kv_cells,
        "kv_unified": kv_unified,
        "prefill_chunk": prefill_chunk,
        "flash_attn": flash_attn,
        "n_gpu_layers": n_gpu_layers,
        "embeddings": embeddings,
        "metrics_port": metrics_port,
        "metrics_host": metrics_host,
    }
    settings = WorkerSettings(**{k: v for k, v in given.items() if v is not None})  # type: ignore[arg-type]
    logs.configure(settings.log_format)
    run_worker(settings)
