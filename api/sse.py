"""Server-sent events framing: the one place an SSE frame is built."""

PING = b": ping\n\n"


def format_sse(data: str, event: str | None = None, event_id: int | None = None) -> bytes:
    """One SSE frame; `data` may span lines, each gets its own `data:` field. `event_id`: the
    `id:` a client sends back as `Last-Event-ID` to resume after this frame."""
    lines = [f"id: {event_id}"] if event_id is not None else []
    if event:
        lines.append(f"event: {event}")
    lines.extend(f"data: {line}" for line in data.split("\n"))
    return ("\n".join(lines) + "\n\n").encode("utf-8")


def format_comment(text: str) -> bytes:
    """An SSE comment line: clients skip it; proxies see traffic."""
    return f": {text}\n\n".encode()
