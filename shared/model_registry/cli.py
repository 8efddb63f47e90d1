"""`tokenq model ...`: add, list, show, verify, remove, export, import and quantize models."""

import time
from pathlib import Path
from typing import Annotated

import typer
from pydantic import ValidationError
from redis import Redis
from rich.console import Console
from rich.table import Table

from shared.model_facts import parameter_size
from shared.model_registry import files, ops
from shared.model_registry.entry import GenerationDefaults, Manifest, ModelEntry
from shared.model_registry.files import Placement
from shared.model_registry.quantize import QuantType, quantize
from shared.model_registry.store import ModelRegistry, RegistryError
from shared.registry import WorkerInfo, live_workers_now
from shared.settings import Settings

app = typer.Typer(help="The models the fleet serves (kept in Redis, files found by digest).")
out = Console()
err = Console(stderr=True)

NameArg = Annotated[str, typer.Argument(help="The model's name or one of its aliases.")]
Aliases = Annotated[list[str] | None, typer.Option("--alias", help="Another name (repeatable).")]
MaxTokens = Annotated[
    int | None, typer.Option("--max-tokens", help="Default max tokens of a request.")
]
Temperature = Annotated[float | None, typer.Option(help="Default temperature.")]
TopP = Annotated[float | None, typer.Option("--top-p", help="Default top_p.")]
TopK = Annotated[int | None, typer.Option("--top-k", help="Default top_k.")]
Stop = Annotated[list[str] | None, typer.Option("--stop", help="Default stop string (repeatable).")]


class _Context:
    def __init__(self) -> None:
        settings = Settings()
        self.models_dir = settings.models_dir
        self.redis = Redis.from_url(
            settings.redis_url, socket_timeout=settings.redis_timeout_s, socket_connect_timeout=2
        )
        self.registry = ModelRegistry(self.redis)

    def entry(self, name: str) -> ModelEntry:
        entry = self.registry.get(name)
        if entry is None:
            raise fail(f"the model '{name}' is not registered (see `tokenq model list`)")
        return entry

    def workers(self, entry: ModelEntry) -> list[WorkerInfo]:
        return live_workers_now(self.redis, entry.name)


def fail(message: str, status: int = 1) -> typer.Exit:
    """Say what went wrong; the exit to raise."""
    err.print(f"[red]error:[/] {message}", highlight=False, soft_wrap=True)
    return typer.Exit(status)


def _defaults(
    max_tokens: int | None,
    temperature: float | None,
    top_p: float | None,
    top_k: int | None,
    stop: list[str] | None,
    base: GenerationDefaults | None = None,
) -> GenerationDefaults:
    given = {
        "max_tokens": max_tokens,
        "temperature": temperature,
        "top_p": top_p,
        "top_k": top_k,
        "stop": stop or None,
    }
    values = (base.given() if base else {}) | {k: v for k, v in given.items() if v is not None}
    try:
        return GenerationDefaults.model_validate(values)
    except ValidationError as exc:
        raise fail(f"invalid generation defaults: {exc.errors()[0]['msg']}") from None


@app.command()
def add(
    path: Annotated[Path, typer.Argument(help="The GGUF file.")],
    name: Annotated[str, typer.Option(help="The model's name.")],
    alias: Aliases = None,
    copy: Annotated[
        bool, typer.Option("--copy/--link", help="Copy the file into the model directory.")
    ] = False,
    max_tokens: MaxTokens = None,
    temperature: Temperature = None,
    top_p: TopP = None,
    top_k: TopK = None,
    stop: Stop = None,
) -> None:
    """Register a GGUF file (its metadata and sha256) and place it in this host's model
    directory (a link, or a copy). Adding a registered name with the same file only places it:
    how another host gets the file."""
    ctx = _Context()
    defaults = _defaults(max_tokens, temperature, top_p, top_k, stop)
    try:
        added = ops.add_file(
            ctx.registry,
            ctx.models_dir,
            path,
            name,
            aliases=alias or [],
            defaults=defaults,
            how=Placement.COPY if copy else Placement.LINK,
        )
    except (RegistryError, ValidationError) as exc:
        raise fail(str(exc)) from None
    what = "registered" if added.new else "already registered; file placed"
    out.print(f"{added.entry.name}: {what} (sha256 {added.entry.digest}) at {added.path}")


@app.command("list")
def list_models() -> None:
    """Every registered model, with the live workers serving it."""
    ctx = _Context()
    table = Table("name", "aliases", "size", "quantization", "context", "digest", "workers")
    for entry in ctx.registry.entries():
        table.add_row(
            entry.name,
            ", ".join(entry.aliases),
            _size(entry.facts.size),
            entry.facts.file_type,
            str(entry.context_length or ""),
            entry.digest[:12],
            str(len(ctx.workers(entry))),
        )
    out.print(table)


@app.command()
def show(name: NameArg) -> None:
    """One model's entry: names, file facts, generation defaults, workers."""
    ctx = _Context()
    entry = ctx.entry(name)
    facts = entry.facts
    table = Table(show_header=False, title=entry.name, title_justify="left")
    rows = {
        "aliases": ", ".join(entry.aliases) or "-",
        "digest": f"sha256:{entry.digest}",
        "size": f"{_size(facts.size)} ({facts.size} bytes)",
        "family": facts.architecture,
        "parameters": parameter_size(facts.parameter_count),
        "quantization": facts.file_type,
        "context": str(entry.context_length or "-"),
        "chat template": "yes" if facts.chat_template else "no",
        "defaults": ", ".join(f"{k}={v}" for k, v in entry.defaults.given().items()) or "-",
        "added": time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(entry.added_at)),
        "source": entry.source or "-",
        "parent": entry.parent or "-",
        "file here": str(files.locate(ctx.models_dir, entry.digest)),
        "workers": ", ".join(w.worker_id for w in ctx.workers(entry)) or "none live",
    }
    for key, value in rows.items():
        table.add_row(key, value)
    out.print(table)


@app.command()
def verify(
    name: Annotated[str | None, typer.Argument(help="A model; all of them if left out.")] = None,
) -> None:
    """Hash this host's file of each model against its registered digest; exit status 1 if any
    file is missing or changed."""
    ctx = _Context()
    entries = [ctx.entry(name)] if name else ctx.registry.entries()
    bad = 0
    for entry in entries:
        problem = files.check(ctx.models_dir, entry).problem(entry.name)
        if problem is None:
            out.print(f"{entry.name}: ok (sha256 {entry.digest})")
        else:
            bad += 1
            err.print(f"[red]{entry.name}: FAILED[/] {problem}", highlight=False, soft_wrap=True)
    if bad:
        raise typer.Exit(1)


@app.command()
def rm(
    name: NameArg,
    force: Annotated[
        bool, typer.Option("--force", help="Remove even while workers serve it.")
    ] = False,
) -> None:
    """Unregister a model (all its names) and remove this host's file unless another model
    uses it. Refused while a live worker serves the model, unless --force."""
    ctx = _Context()
    entry = ctx.entry(name)
    workers = ctx.workers(entry)
    if workers and not force:
        raise fail(
            f"'{entry.name}' is served by {len(workers)} live worker(s) "
            f"({', '.join(w.worker_id for w in workers)}): stop them first, or pass --force "
            "(they keep serving until stopped, and cannot restart)"
        )
    try:
        removed = ctx.registry.remove(entry.name)
    except RegistryError as exc:
        raise fail(str(exc)) from None
    shared = any(e.digest == removed.digest for e in ctx.registry.entries())
    gone = None if shared else files.discard(ctx.models_dir, removed.digest)
    out.print(f"{removed.name}: removed" + (f" (and {gone})" if gone else ""))


@app.command("export")
def export(
    manifest: Annotated[Path, typer.Argument(help="The manifest file to write (JSON).")],
    names: Annotated[list[str] | None, typer.Argument(help="Models; all if left out.")] = None,
) -> None:
    """Write registry entries to a manifest, for `tokenq model import` elsewhere."""
    ctx = _Context()
    entries = [ctx.entry(n) for n in names] if names else ctx.registry.entries()
    manifest.write_text(Manifest(models=entries).model_dump_json(indent=2) + "\n")
    out.print(f"{len(entries)} model(s) written to {manifest}")


@app.command("import")
def import_(
    manifest: Annotated[Path, typer.Argument(help="A manifest written by `tokenq model export`.")],
    replace: Annotated[
        bool, typer.Option("--replace", help="Replace models registered under the same name.")
    ] = False,
) -> None:
    """Register a manifest's entries. Files are found by digest on each host's model
    directory: the entries whose file this host lacks are listed."""
    ctx = _Context()
    try:
        loaded = Manifest.model_validate_json(manifest.read_bytes())
    except (OSError, ValidationError) as exc:
        raise fail(f"cannot read the manifest {manifest}: {exc}") from None
    for entry in loaded.models:
        try:
            ctx.registry.add(entry, replace=replace)
        except RegistryError as exc:
            raise fail(f"{entry.name}: {exc}") from None
        here = files.locate(ctx.models_dir, entry.digest)
        note = "" if here.exists() else f" (file not on this host: expected at {here})"
        out.print(f"{entry.name}: imported{note}", highlight=False)


@app.command("quantize")
def quantize_model(
    name: NameArg,
    kind: Annotated[QuantType, typer.Option("--type", help="Target quantization.")],
    new: Annotated[str, typer.Option("--as", help="Name of the new model.")],
    alias: Aliases = None,
    threads: Annotated[int, typer.Option(help="Threads; 0: every core.")] = 0,
    max_tokens: MaxTokens = None,
    temperature: Temperature = None,
    top_p: TopP = None,
    top_k: TopK = None,
    stop: Stop = None,
) -> None:
    """Requantize a registered model's file with llama.cpp and register the result as a new
    model (with the source's generation defaults, unless given)."""
    ctx = _Context()
    source = ctx.entry(name)
    defaults = _defaults(max_tokens, temperature, top_p, top_k, stop, base=source.defaults)
    if ctx.registry.get(new) is not None:
        raise fail(f"'{new}' is already registered")
    try:
        started = time.perf_counter()
        made = quantize(files.verified_path(ctx.models_dir, source), ctx.models_dir, kind, threads)
        seconds = time.perf_counter() - started
        try:
            added = ops.add_file(
                ctx.registry,
                ctx.models_dir,
                made,
                new,
                aliases=alias or [],
                defaults=defaults,
                how=Placement.MOVE,
                parent=f"{source.name} {kind}",
                origin=f"{source.source} quantized to {kind}",
            )
        finally:
            made.unlink(missing_ok=True)
    except (RegistryError, files.ModelFileError, ValidationError) as exc:
        raise fail(str(exc)) from None
    out.print(
        f"{new}: {source.name} quantized to {kind} in {seconds:.1f}s, "
        f"{_size(added.entry.facts.size)} (sha256 {added.entry.digest})"
    )


def _size(size: int) -> str:
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("KB", 1e3)):
        if size >= scale:
            return f"{size / scale:.1f} {unit}"
    return f"{size} B"
