"""`tokenq chat`, registered into the `tokenq` command through the `tokenq.commands` entry
point group (see pyproject.toml)."""

from typing import Annotated

import typer
from rich.console import Console

from shared.chat.client import ChatClient, ChatError
from shared.chat.conversation import ConversationStore
from shared.chat.repl import line_source, run
from shared.chat.session import Session
from shared.settings import ChatSettings


def register(app: typer.Typer) -> None:
    app.command()(chat)


def chat(
    url: Annotated[
        str | None, typer.Option(help="The tokenq server (TOKENQ_CHAT_URL; default local).")
    ] = None,
    model: Annotated[
        str | None, typer.Option(help="Model to start with (default: the first one served).")
    ] = None,
    system: Annotated[str | None, typer.Option(help="System prompt to start with.")] = None,
) -> None:
    """Chat with a model in the terminal: streamed replies, /help for the commands."""
    given = {"url": url, "model": model}
    settings = ChatSettings(**{k: v for k, v in given.items() if v is not None})  # type: ignore[arg-type]
    console = Console(highlight=False)
    client = ChatClient(settings.url)
    try:
        session = Session(
            client, ConversationStore(settings.conversations_dir()), console, settings.model
        )
        session.conversation.system = system
        _greet(session, model is not None)
        run(session, line_source())
    finally:
        client.close()


def _greet(session: Session, model_given: bool) -> None:
    """Say where the chat goes; without --model, start with a served model."""
    client, conversation = session.client, session.conversation
    try:
        served = client.models()
    except ChatError as exc:
        session.error(str(exc))
        session.info(f"messages go to {client.url} once it answers; /help lists the commands")
        return
    if not model_given and served and conversation.model not in served:
        conversation.model = served[0]
    session.console.print(
        f"[bold]tokenq chat[/] with [cyan]{conversation.model}[/] at {client.url}",
        highlight=False,
    )
    if conversation.model not in served:
        others = ", ".join(served) or "none"
        session.error(f"no worker serves '{conversation.model}' right now (served: {others})")
    session.info("Enter sends, Esc Enter adds a line, Ctrl-C stops a reply, Ctrl-D leaves, /help")
