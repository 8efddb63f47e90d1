"""Generated text to neutral tool calls: the one place output is read for calls.

The rule (the generic format of shared/tool_prompt.py): when the job offers tools, every
`<tool_call>...</tool_call>` block of the output (the closing tag may be missing at the very
end) holds a JSON array of calls, or one call, each `{"name": <a tool of the job>,
"arguments": {...}}`. If every block parses so, those are the calls and the text outside the
blocks is the answer's text; if any block does not, the whole output stays text. Under a
forced call the grammar makes the output one such block. Flavours only map the neutral
calls to their wire shapes.
"""

import json
import uuid
from dataclasses import dataclass, field
from typing import Any

from shared.job import GenerationJob, ToolCall
from shared.tool_prompt import CALL_CLOSE, CALL_OPEN


@dataclass(frozen=True)
class Reply:
    """An answer read for tool calls: its text (outside any call block) and its calls."""

    text: str
    calls: list[ToolCall] = field(default_factory=list)


def read_reply(job: GenerationJob, output: str) -> Reply:
    """The whole output of a finished job, read for calls when the job offers tools."""
    if not job.offers_tools:
        return Reply(output)
    at = output.find(CALL_OPEN)
    if at < 0:
        return Reply(output)
    tail = _read_blocks(job, output[at:])
    if tail is None:
        return Reply(output)
    rest, calls = tail
    text = output[:at] + rest
    return Reply(text if text.strip() else "", calls)


def _read_blocks(job: GenerationJob, text: str) -> tuple[str, list[ToolCall]] | None:
    """`text` starts with a call block: the text outside blocks and the calls, or None."""
    names = {tool.name for tool in job.tools}
    outside: list[str] = []
    calls: list[ToolCall] = []
    while text:
        at = text.find(CALL_OPEN)
        if at < 0:
            outside.append(text)
            break
        outside.append(text[:at])
        body = text[at + len(CALL_OPEN) :]
        end = body.find(CALL_CLOSE)
        text = "" if end < 0 else body[end + len(CALL_CLOSE) :]
        found = _calls(body if end < 0 else body[:end], names)
        if found is None:
            return None
        calls.extend(found)
    return "".join(outside), calls


def _calls(body: str, names: set[str]) -> list[ToolCall] | None:
    try:
        data: Any = json.loads(body, strict=False)
    except ValueError:
        return None
    items = data if isinstance(data, list) else [data]
    calls: list[ToolCall] = []
    for item in items:
        if not isinstance(item, dict) or "name" not in item or "arguments" not in item:
            return None
        name, arguments = item["name"], item["arguments"]
        if name not in names or not isinstance(arguments, dict):
            return None
        calls.append(ToolCall(id=uuid.uuid4().hex, name=name, arguments=arguments))
    return calls or None


class CallSplitter:
    """A streamed output read for calls: text is let through as it comes, except from the
    start of a call block on, which is held until the job ends and then read as a whole.

    The end of the text let through is held back while it could be the start of a block.
    """

    def __init__(self, job: GenerationJob) -> None:
        self._job = job
        self._held = ""
        self._block: str | None = None  # from the first block's opening tag on

    def feed(self, text: str) -> str:
        """The part of the output so far that can be sent as text now."""
        if not self._job.offers_tools:
            return text
        if self._block is not None:
            self._block += text
            return ""
        self._held += text
        at = self._held.find(CALL_OPEN)
        if at >= 0:
            sent, self._block, self._held = self._held[:at], self._held[at:], ""
            return sent
        keep = _partial_open(self._held)
        sent = self._held[: len(self._held) - keep]
        self._held = self._held[len(self._held) - keep :]
        return sent

    def finish(self) -> Reply:
        """At the end of the output: the text still to send, and the calls."""
        if self._block is None:
            return Reply(self._held)
        read = _read_blocks(self._job, self._block)
        if read is None:
            return Reply(self._block)
        rest, calls = read
        return Reply(rest if rest.strip() else "", calls)


def _partial_open(text: str) -> int:
    """How many characters at the end of `text` are the start of an opening tag."""
    for size in range(min(len(CALL_OPEN) - 1, len(text)), 0, -1):
        if CALL_OPEN.startswith(text[-size:]):
            return size
    return 0


def arguments_object(text: str) -> dict[str, Any] | None:
    """A call's arguments given back as JSON text (OpenAI's `arguments`): the object, or None
    when the text is not the JSON of an object."""
    try:
        arguments = json.loads(text)
    except ValueError:
        return None
    return arguments if isinstance(arguments, dict) else None


def arguments_json(call: ToolCall) -> str:
    """A call's arguments as JSON text (OpenAI's `arguments`, Anthropic's input_json_delta)."""
    return json.dumps(call.arguments, ensure_ascii=False)
