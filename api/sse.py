"""Server-sent events framing: the one place an SSE frame is built."""

PING = b": ping\n\n"


def format_sse(data: str, event: str | None = None) -> bytes:
    """One SSE frame; `data` may span lines, each gets its own `data:` field."""
    lines = [f"event: {event}"] if event else []
    lines.extend(f"data: {line}" for line in data.split("\n"))
    return ("\n".join(lines) + "\n\n").encode("utf-8")


def format_comment(text: str) -> bytes:
    """An SSE comment line: clients skip it; proxies see traffic."""
    return f": {text}\n\n".encode()
