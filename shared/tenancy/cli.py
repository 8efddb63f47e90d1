"""`tokenq keys`: create, list, rotate and revoke API keys in Redis (`TOKENQ_REDIS_URL`).

A new or rotated key's secret is written once, alone on standard output (so
`KEY=$(tokenq keys create web)` works); nothing keeps it, only its sha256.
"""

import datetime
from typing import Annotated

import typer
from pydantic import ValidationError
from redis import Redis
from rich.console import Console
from rich.table import Table

from shared.job import Priority
from shared.settings import Settings
from shared.tenancy.apikeys import (
    NAME_PATTERN,
    ApiKey,
    KeyExistsError,
    KeyStore,
    NoSuchKeyError,
    valid_name,
)

keys_app = typer.Typer(help="API keys: create, list, rotate, revoke.", no_args_is_help=True)
_err = Console(stderr=True)
_out = Console(highlight=False, soft_wrap=True)


def _store() -> KeyStore:
    settings = Settings()
    return KeyStore(Redis.from_url(settings.redis_url, socket_timeout=settings.redis_timeout_s))


def _name(name: str) -> str:
    if not valid_name(name):
        raise typer.BadParameter(f"a key's name matches {NAME_PATTERN}")
    return name


Name = Annotated[str, typer.Argument(help="The key's name (metrics and logs show it).")]


@keys_app.command()
def create(
    name: Name,
    rpm: Annotated[int | None, typer.Option(min=1, help="Requests per minute.")] = None,
    tpm: Annotated[
        int | None, typer.Option(min=1, help="Tokens per minute (prompt and generated).")
    ] = None,
    max_queued: Annotated[
        int | None, typer.Option(min=1, help="Jobs waiting per model at once.")
    ] = None,
    priority: Annotated[
        Priority, typer.Option(help="Class of its jobs (a request may lower itself to batch).")
    ] = Priority.INTERACTIVE,
    models: Annotated[
        str | None, typer.Option(help="Models it may use, comma-separated (default: all).")
    ] = None,
) -> None:
    """Create a key; its secret is shown once."""
    allowed = [m.strip() for m in (models or "").split(",") if m.strip()]
    try:
        key = ApiKey(
            name=_name(name),
            digest="",
            rpm=rpm,
            tpm=tpm,
            max_queued=max_queued,
            priority=priority,
            models=allowed,
        )
        secret = _store().create(key)
    except KeyExistsError:
        _err.print(f"[red]a key named '{name}' exists[/] (rotate it, or revoke it first)")
        raise typer.Exit(1) from None
    except ValidationError as exc:
        raise typer.BadParameter(str(exc)) from None
    _err.print(f"created key [bold]{name}[/]; its secret, shown only now:")
    _out.print(secret)


@keys_app.command("list")
def list_keys() -> None:
    """Every key with its limits (never a secret)."""
    table = Table("name", "priority", "rpm", "tpm", "max queued", "models", "created")
    for key in _store().all():
        table.add_row(
            key.name,
            str(key.priority),
            _opt(key.rpm),
            _opt(key.tpm),
            _opt(key.max_queued),
            ",".join(key.models) or "all",
            _when(key.created_at),
        )
    Console().print(table)


@keys_app.command()
def revoke(name: Name) -> None:
    """Delete a key: every replica refuses it from the next request on."""
    try:
        _store().revoke(name)
    except NoSuchKeyError:
        _err.print(f"[red]no key named '{name}'[/]")
        raise typer.Exit(1) from None
    _err.print(f"revoked key [bold]{name}[/]")


@keys_app.command()
def rotate(name: Name) -> None:
    """A new secret for a key (the old one stops working at once); shown once."""
    try:
        secret = _store().rotate(name)
    except NoSuchKeyError:
        _err.print(f"[red]no key named '{name}'[/]")
        raise typer.Exit(1) from None
    _err.print(f"rotated key [bold]{name}[/]; its new secret, shown only now:")
    _out.print(secret)


def _opt(value: int | None) -> str:
    return "-" if value is None else str(value)


def _when(timestamp: float) -> str:
    return datetime.datetime.fromtimestamp(timestamp, datetime.UTC).strftime("%Y-%m-%d %H:%M")
