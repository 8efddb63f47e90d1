"""The `tokenq` command: `up` (all in one, for development) here; the role commands (`api`,
`worker`) come from the packages that own them, through the `tokenq.commands` entry point
group (see pyproject.toml), so this bottom layer imports neither the API nor the worker.
"""

import functools
import importlib.metadata
import shutil
import signal
import socket
import sys
import time
import urllib.request
from collections.abc import Callable
from typing import Annotated
from urllib.parse import urlparse

import typer
from redis.exceptions import RedisError
from rich.console import Console

from shared import logs
from shared.exits import ExitStatus
from shared.logs import LogChoice
from shared.model_registry import cli as model_cli
from shared.model_registry.store import ModelRegistry
from shared.redis_clients import sync_redis
from shared.registry import live_workers_now
from shared.settings import DEFAULT_MODEL, ApiSettings, Settings
from shared.supervise import Child, Death, Supervisor, worker_restartable
from shared.tenancy.cli import keys_app

COMMANDS_GROUP = "tokenq.commands"

app = typer.Typer(help="tokenq: an LLM API that scales out on Redis.", no_args_is_help=True)
app.add_typer(model_cli.app, name="model")
app.add_typer(keys_app, name="keys")
console = Console(stderr=True)


@functools.cache
def commands() -> typer.Typer:
    """The `tokenq` command with every registered subcommand (loaded once)."""
    for entry in importlib.metadata.entry_points(group=COMMANDS_GROUP):
        entry.load()(app)
    return app


def main() -> None:
    commands()()


@app.command()
def up(
    host: Annotated[str, typer.Option(help="Address for the API.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port for the API.")] = 8000,
    model: Annotated[
        list[str] | None,
        typer.Option(help="A registered model to start a worker for (repeatable)."),
    ] = None,
    log_format: Annotated[
        LogChoice | None,
        typer.Option(
            help="Children's logs: auto (pretty on a terminal, else json), json, text, pretty. "
            "Default: TOKENQ_LOG_FORMAT if set, else auto."
        ),
    ] = None,
) -> None:
    """Redis (if none answers), one API and a worker per model, in the foreground; Ctrl-C
    stops all. The default model is registered on first use (`tokenq model add` others).

    A child that dies is reported (exit status or signal, its last lines) and restarted with
    backoff; one that cannot recover (a failed engine check, a model file that is missing or
    changed, repeated deaths) stops them all with exit status 1.
    """
    settings = ApiSettings()
    models = list(dict.fromkeys(model or [DEFAULT_MODEL]))
    url = f"http://{host}:{port}"
    me = [sys.executable, "-m", "shared.cli"]
    if log_format is None:
        log_format = settings.log_format if "log_format" in settings.model_fields_set else "auto"
    # The children write to our pipe, not the terminal: the choice is made here, once.
    env: dict[str, str] = {"TOKENQ_LOG_FORMAT": logs.resolve(log_format, sys.stderr)}
    children = []
    if not settings.redis_sentinels and not _redis_answers(settings):
        children.append(_redis_child(settings))
    children += [_worker_child(me, settings, name, env, named=len(models) > 1) for name in models]
    children.append(
        Child(
            "api", [*me, "api", "--host", host, "--port", str(port)], ready=_healthy(url), env=env
        )
    )
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
                _announce(url, models)
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
    elif death.returncode == ExitStatus.MODEL_FILE_INVALID:
        console.print(
            "[red]its model is not registered, or its file is missing or changed (see its "
            "last lines, `tokenq model verify`): restarting cannot help.[/]"
        )
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


def _worker_child(
    me: list[str], settings: Settings, model: str, env: dict[str, str], *, named: bool
) -> Child:
    return Child(
        f"worker {model}" if named else "worker",
        [*me, "worker", "--model", model],
        ready=lambda child: _worker_registered(settings, model, child.pid),
        restartable=worker_restartable,
        env=env,
    )


def _announce(url: str, models: list[str]) -> None:
    console.print(f"[bold green]tokenq is up[/] (models: {', '.join(models)})", highlight=False)
    for name, where in (
        ("API", f"{url}/v1  (OpenAI; Anthropic at {url}, Ollama at {url})"),
        ("playground", f"{url}/playground"),
        ("chat", f"tokenq chat --url {url}"),
        ("metrics", f"{url}/metrics"),
    ):
        console.print(f"  [bold]{name:<11}[/]{where}", highlight=False, soft_wrap=True)
    model = models[0]
    console.print(
        f"  curl {url}/v1/chat/completions -H 'Content-Type: application/json' "
        f'-d \'{{"model": "{model}", "messages": '
        f'[{{"role": "user", "content": "Hello!"}}]}}\'',
        soft_wrap=True,  # one line, so it can be copied
    )


def _worker_registered(settings: Settings, model: str, pid: int | None) -> bool:
    """Whether the worker with this pid (on this host) has registered."""
    try:
        redis = sync_redis(settings, socket_connect_timeout=1, socket_timeout=1)
        entry = ModelRegistry(redis).get(model)  # the worker registers the canonical name
        workers = live_workers_now(redis, entry.name if entry else model)
    except RedisError:
        return False
    host = socket.gethostname()
    return any(w.pid == pid and w.worker_id.startswith(f"{host}-") for w in workers)


def _healthy(url: str) -> Callable[[Child], bool]:
    def check(child: Child) -> bool:
        return _http_ok(f"{url}/healthz")

    return check


def _redis_answers(settings: Settings) -> bool:
    try:
        return bool(sync_redis(settings, socket_connect_timeout=1).ping())
    except RedisError:
        return False


def _redis_child(settings: Settings) -> Child:
    url = settings.redis_url
    server = shutil.which("redis-server")
    if server is None:
        console.print("[red]no Redis answers at[/] " + url + " [red]and redis-server is missing[/]")
        raise typer.Exit(1)
    parsed = urlparse(url)
    argv = [server, "--port", str(parsed.port or 6379), "--bind", parsed.hostname or "127.0.0.1"]
    argv += ["--save", "", "--appendonly", "no"]
    return Child("redis", argv, ready=lambda child: _redis_answers(settings), echo=False)


def _ready(url: str) -> bool:
    return _http_ok(f"{url}/readyz")


def _http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=1) as response:
            return bool(response.status == 200)
    except OSError:  # refused, timed out, or 503 (HTTPError)
        return False


if __name__ == "__main__":
    main()
