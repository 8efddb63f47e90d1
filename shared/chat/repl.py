"""The read-send loop: prompt-toolkit input in a terminal (multi-line, history), plain lines
from a pipe; every failure one readable line."""

import logging
import sys
from typing import Protocol

from prompt_toolkit import PromptSession
from prompt_toolkit.formatted_text import HTML
from prompt_toolkit.history import InMemoryHistory
from prompt_toolkit.key_binding import KeyBindings, KeyPressEvent

from shared.chat.client import ChatError
from shared.chat.conversation import ChatInputError
from shared.chat.session import Next, Session

log = logging.getLogger(__name__)


class LineSource(Protocol):
    def read(self) -> str:
        """The next message or command; EOFError when the person leaves, KeyboardInterrupt
        when they abandon the line."""
        ...


class TerminalInput:
    """prompt-toolkit: Enter sends; Esc Enter, or Enter after a trailing backslash, adds a line."""

    def __init__(self) -> None:
        bindings = KeyBindings()

        @bindings.add("escape", "enter")
        def _newline(event: KeyPressEvent) -> None:
            event.current_buffer.insert_text("\n")

        @bindings.add("enter")
        def _send(event: KeyPressEvent) -> None:
            buffer = event.current_buffer
            if buffer.document.text_before_cursor.endswith("\\"):
                buffer.delete_before_cursor(1)
                buffer.insert_text("\n")
            else:
                buffer.validate_and_handle()

        self._session: PromptSession[str] = PromptSession(
            multiline=True,
            key_bindings=bindings,
            history=InMemoryHistory(),
            prompt_continuation="    ",
        )

    def read(self) -> str:
        return self._session.prompt(HTML("<ansigreen><b>you></b></ansigreen> "))


class PipedInput:
    """One message or command per line of standard input (not a terminal)."""

    def read(self) -> str:
        line = sys.stdin.readline()
        if not line:
            raise EOFError
        return line.rstrip("\n")


def line_source() -> LineSource:
    return TerminalInput() if sys.stdin.isatty() and sys.stdout.isatty() else PipedInput()


def run(session: Session, source: LineSource) -> None:
    """Read and handle lines until /quit or Ctrl-D."""
    while True:
        try:
            line = source.read().strip()
        except KeyboardInterrupt:  # abandons the line being typed, as a shell does
            continue
        except EOFError:
            break
        if not line:
            continue
        try:
            if session.handle(line) is Next.QUIT:
                break
        except (ChatError, ChatInputError) as exc:
            session.error(str(exc))
        except KeyboardInterrupt:  # during a command: it is abandoned
            session.info("interrupted")
        except Exception as exc:  # a bug of ours: one line here, the traceback in the debug log
            log.debug("chat command failed", exc_info=True)
            session.error(f"unexpected {type(exc).__name__}: {exc}")
    session.info("bye")
