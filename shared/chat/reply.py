"""One reply, streamed to the terminal as it arrives: the queue position while it waits, the
text, then its speed. Ctrl-C stops it and cancels its job."""

import signal
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from rich.console import Console
from rich.markup import escape

from shared.chat.client import ChatClient, ChatError, Finished, Queued, Started, Token


@dataclass
class Reply:
    text: str
    finished: Finished | None  # None: stopped by Ctrl-C
    job_id: str | None
    ttft_s: float | None
    tokens_per_s: float | None


def decode_rate(tokens: int, first_s: float | None, last_s: float | None) -> float | None:
    """Tokens per second after the first one: what the model decodes, queue and prompt aside."""
    if tokens < 2 or first_s is None or last_s is None or last_s <= first_s:
        return None
    return (tokens - 1) / (last_s - first_s)


def stream_reply(client: ChatClient, console: Console, body: dict[str, Any]) -> Reply:
    """Stream the reply to `body`; a `ChatError` once nothing more can come. Ctrl-C stops it:
    the job is cancelled and the text so far returned."""
    model = str(body.get("model"))
    sent = time.monotonic()
    parts: list[str] = []
    job_id: str | None = None
    first: float | None = None
    last: float | None = None
    count = 0
    status = console.status("[dim]waiting for the model...[/]", spinner="dots")
    status.start()
    items = client.stream(body)
    with _interruptible():
        try:
            for item in items:
                if isinstance(item, Started):
                    job_id = item.job_id
                elif isinstance(item, Queued):
                    position = item.position if item.position is not None else "?"
                    status.update(
                        f"[yellow]queued: position {position}[/] [dim](Ctrl-C cancels)[/]"
                    )
                elif isinstance(item, Token):
                    if first is None:
                        first = time.monotonic()
                        status.stop()
                        console.print(f"[bold cyan]{escape(model)}>[/] ", end="")
                    last = time.monotonic()
                    count += 1
                    parts.append(item.text)
                    console.print(item.text, end="", markup=False, highlight=False, emoji=False)
                else:
                    status.stop()
                    return _finished(
                        console, item, "".join(parts), job_id, sent, count, first, last
                    )
        except KeyboardInterrupt:
            status.stop()
            if first is not None:
                console.print()
            _cancel(client, console, job_id)
            return Reply("".join(parts), None, job_id, _ttft(sent, first), None)
        except ChatError:
            status.stop()
            if first is not None:
                console.print()
            raise
        finally:
            status.stop()
            items.close()  # closes the connection now, not whenever the frame is collected
    raise ChatError("the answer ended without finishing")


@contextmanager
def _interruptible() -> Iterator[None]:
    """Ctrl-C raises KeyboardInterrupt while the reply streams, whatever SIGINT handling the
    line editor left behind (prompt-toolkit installs its own while it reads a line), and
    interrupts a read that waits for the server instead of letting it restart."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.siginterrupt(signal.SIGINT, True)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def _finished(
    console: Console,
    done: Finished,
    text: str,
    job_id: str | None,
    sent: float,
    count: int,
    first: float | None,
    last: float | None,
) -> Reply:
    tokens = done.completion_tokens if done.completion_tokens is not None else count
    rate = decode_rate(tokens, first, last)
    if first is None:
        console.print("[dim](no text)[/]", end="")
    ttft = _ttft(sent, first)
    facts = [f"{tokens} tokens"]
    if rate is not None:
        facts.append(f"{rate:.1f} tokens/s")
    if ttft is not None:
        facts.append(f"first token after {ttft:.2f} s")
    if done.finish_reason == "length":
        facts.append("cut at max_tokens")
    console.print()
    console.print(f"[dim]  {' · '.join(facts)}[/]")
    return Reply(text, done, job_id, ttft, rate)


def _ttft(sent: float, first: float | None) -> float | None:
    return None if first is None else first - sent


def _cancel(client: ChatClient, console: Console, job_id: str | None) -> None:
    if job_id is None:  # the answer had not started: closing the connection cancels it
        console.print("[yellow]stopped[/] [dim](the server cancels the request)[/]")
        return
    try:
        status = client.cancel(job_id)
    except ChatError as exc:
        console.print(f"[yellow]stopped[/]; cancelling job {job_id} failed: {escape(str(exc))}")
        return
    console.print(f"[yellow]stopped:[/] job {job_id} {status}")
