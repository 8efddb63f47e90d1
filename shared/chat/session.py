"""A chat session: the conversation, the server, and the slash commands a person types."""

from collections.abc import Callable
from enum import Enum

from rich.console import Console
from rich.markup import escape

from shared.chat.client import ChatClient
from shared.chat.conversation import ChatInputError, Conversation, ConversationStore, Turn
from shared.chat.reply import stream_reply

HELP = """\
Type a message and press Enter to send it. Esc then Enter (or a line ending in \\) starts a
new line; pasted text keeps its lines. Ctrl-C stops a reply (and cancels its job), Ctrl-D leaves.

  /models               the models the server serves now
  /model NAME           talk to another model from the next message on
  /system [TEXT]        set the system prompt (no TEXT: remove it)
  /set [NAME VALUE]     set a sampling parameter (no NAME: show them all), e.g. /set temperature 0.2
  /unset NAME           back to the server's default
  /new                  start a new conversation (model, system prompt and parameters stay)
  /save NAME            save the conversation
  /load [NAME]          load a saved conversation (no NAME: list them)
  /history              show the conversation so far
  /help                 this help
  /quit                 leave (as Ctrl-D does)"""


class Next(Enum):
    CONTINUE = "continue"
    QUIT = "quit"


class Session:
    """One person's chat; `handle` takes each line they type."""

    def __init__(
        self, client: ChatClient, store: ConversationStore, console: Console, model: str
    ) -> None:
        self.client = client
        self.store = store
        self.console = console
        self.conversation = Conversation(model=model)
        self._commands: dict[str, Callable[[str], Next | None]] = {
            "help": self._help,
            "models": self._models,
            "model": self._model,
            "system": self._system,
            "set": self._set,
            "unset": self._unset,
            "new": self._new,
            "save": self._save,
            "load": self._load,
            "history": self._history,
            "quit": lambda _: Next.QUIT,
            "exit": lambda _: Next.QUIT,
        }

    def handle(self, line: str) -> Next:
        """Run a command or send a message; `ChatError`/`ChatInputError` say what failed."""
        if not line.startswith("/"):
            self.send(line)
            return Next.CONTINUE
        name, _, argument = line[1:].partition(" ")
        command = self._commands.get(name)
        if command is None:
            raise ChatInputError(f"unknown command /{name} (/help lists them)")
        return command(argument.strip()) or Next.CONTINUE

    def send(self, text: str) -> None:
        """Send a user turn; it stays in the conversation with the reply, finished or stopped
        (a stopped one with the text that had come). A failed request leaves no turn."""
        reply = stream_reply(self.client, self.console, self.conversation.request(text))
        if reply.finished is None and not reply.text:
            return
        self.conversation.turns += [
            Turn(role="user", content=text),
            Turn(role="assistant", content=reply.text, model=self.conversation.model),
        ]

    def info(self, text: str) -> None:
        self.console.print(f"[dim]{text}[/]", highlight=False)

    def error(self, text: str) -> None:
        self.console.print(f"[bold red]error:[/] {escape(text)}", highlight=False)

    def _help(self, _: str) -> None:
        self.console.print(HELP, markup=False, highlight=False)

    def _models(self, _: str) -> None:
        served = self.client.models()
        if not served:
            self.info("no model has a live worker right now")
        for name in served:
            mark = "*" if name == self.conversation.model else " "
            self.console.print(f" {mark} {escape(name)}", highlight=False)

    def _model(self, name: str) -> None:
        if not name:
            self.info(f"model: {self.conversation.model} (/model NAME switches)")
            return
        if not self.client.has_model(name):
            served = ", ".join(self.client.models()) or "none"
            raise ChatInputError(f"no model '{name}' is served at {self.client.url} ({served})")
        self.conversation.model = name
        self.info(f"model: {name}")

    def _system(self, text: str) -> None:
        self.conversation.system = text or None
        self.info(f"system prompt: {text}" if text else "system prompt removed")

    def _set(self, argument: str) -> None:
        if not argument:
            fields = self.conversation.params.request_fields()
            shown = ", ".join(f"{k}={v}" for k, v in fields.items()) or "server defaults"
            self.info(f"parameters: {shown}")
            return
        name, _, value = argument.partition(" ")
        if not value.strip():
            raise ChatInputError(f"/set {name} VALUE (/unset {name} goes back to the default)")
        self.conversation.params = self.conversation.params.with_value(name, value.strip())
        self.info(f"{name} = {getattr(self.conversation.params, name)}")

    def _unset(self, name: str) -> None:
        self.conversation.params = self.conversation.params.with_value(name, None)
        self.info(f"{name}: server default")

    def _new(self, _: str) -> None:
        self.conversation = self.conversation.model_copy(update={"turns": []})
        self.info("new conversation")

    def _save(self, name: str) -> None:
        if not name:
            raise ChatInputError("/save NAME")
        path = self.store.save(name, self.conversation)
        self.info(f"saved {len(self.conversation.turns)} turns to {path}")

    def _load(self, name: str) -> None:
        if not name:
            names = self.store.names()
            where = self.store.directory
            self.info(f"saved: {', '.join(names)}" if names else f"nothing saved in {where}")
            return
        loaded = self.conversation = self.store.load(name)
        self.info(f"loaded '{name}': {len(loaded.turns)} turns, model {loaded.model}")

    def _history(self, _: str) -> None:
        conversation = self.conversation
        if conversation.system:
            self.console.print(f"[magenta]system>[/] {escape(conversation.system)}")
        if not conversation.turns:
            self.info("(no turns yet)")
        for turn in conversation.turns:
            who = "[green]you>[/]"
            if turn.role == "assistant":
                who = f"[cyan]{escape(turn.model or 'assistant')}>[/]"
            self.console.print(f"{who} {escape(turn.content)}", highlight=False)
