"""Load test for tokenq: OpenAI chat (streaming and not) and completions, Anthropic messages and
Ollama chat (streaming).

    locust -f deploy/locust/locustfile.py --host http://127.0.0.1:8000
    locust -f deploy/locust/locustfile.py --headless -u 8 -r 2 -t 60s --host http://127.0.0.1:8000

- Time to first token is reported as its own request type, `TTFT`, one entry per user kind.
- A 429 (the model's queue is full) is reported as a success under its own name,
  `<name> [429 queue full]`, so backpressure is visible without counting as a failure.
- Anything else that is not a complete, well-formed answer is a failure.

Environment: `TOKENQ_MODEL` (default smollm2), `TOKENQ_MAX_TOKENS` (default 32),
`TOKENQ_FLAVOURS` (default `openai,anthropic,ollama`: the flavours whose users run).
"""

import json
import os
import random
import time
from collections.abc import Callable
from typing import Any

from locust import HttpUser, between, task
from locust.clients import ResponseContextManager

MODEL = os.environ.get("TOKENQ_MODEL", "smollm2")
MAX_TOKENS = int(os.environ.get("TOKENQ_MAX_TOKENS", "32"))
FLAVOURS = set(os.environ.get("TOKENQ_FLAVOURS", "openai,anthropic,ollama").split(","))
PROMPTS = [
    "Name three colours of the rainbow.",
    "Write one sentence about the sea.",
    "What is two plus two?",
    "Give me a short greeting.",
]
STARTS = ["Once upon a time", "The capital of France is", "My favourite food is", "In 1969,"]

# A line of a streamed body -> (the text it carries, whether it closes the stream).
DeltaReader = Callable[[str], tuple[str, bool]]


class StreamError(Exception):
    """An error the server reported inside the stream."""


class TokenqUser(HttpUser):
    abstract = True
    wait_time = between(0.1, 0.5)

    def prompt(self, choices: list[str] = PROMPTS) -> str:
        return random.choice(choices)

    def post(
        self, name: str, path: str, body: dict[str, object], stream: bool, **headers: str
    ) -> ResponseContextManager:
        return self.client.post(
            path, json=body, name=name, stream=stream, catch_response=True, headers=headers
        )

    def rejected(self, response: ResponseContextManager, name: str) -> bool:
        """A 429 becomes a success under its own name; True when this response was one."""
        if response.status_code != 429:
            return False
        response.request_meta["name"] = f"{name} [429 queue full]"  # type: ignore[index]
        response.success()  # type: ignore[no-untyped-call]
        return True

    def ttft(self, name: str, started: float) -> None:
        self.environment.events.request.fire(
            request_type="TTFT",
            name=name,
            response_time=(time.perf_counter() - started) * 1000,
            response_length=0,
            exception=None,
            context={},
        )

    def stream(
        self, name: str, path: str, body: dict[str, object], deltas: DeltaReader, **headers: str
    ) -> None:
        started = time.perf_counter()
        with self.post(name, path, body, True, **headers) as response:
            if self.rejected(response, name):
                return
            if response.status_code != 200:
                response.failure(f"HTTP {response.status_code}: {response.text[:200]}")
                return
            seen_first, finished = False, False
            try:
                for line in response.iter_lines(decode_unicode=True):
                    text, finished = deltas(line)
                    if text and not seen_first:
                        seen_first = True
                        self.ttft(name, started)
                    if finished:
                        break
            except (StreamError, ValueError, KeyError) as exc:
                response.failure(f"bad stream: {exc!r}")
                return
            if finished:
                response.success()
            else:
                response.failure("the stream ended without its closing event")


def _sse_data(line: str) -> str | None:
    return line[len("data: ") :] if line.startswith("data: ") else None


def openai_chat_delta(line: str) -> tuple[str, bool]:
    data = _sse_data(line)
    if data is None:
        return "", False
    if data == "[DONE]":
        return "", True
    chunk = json.loads(data)
    if "error" in chunk:
        raise StreamError(chunk["error"]["message"])
    choices = chunk.get("choices") or [{}]
    return choices[0].get("delta", {}).get("content") or "", False


def anthropic_delta(line: str) -> tuple[str, bool]:
    data = _sse_data(line)
    if data is None:
        return "", False
    event = json.loads(data)
    if event["type"] == "error":
        raise StreamError(event["error"]["message"])
    if event["type"] == "content_block_delta":
        return event["delta"].get("text", ""), False
    return "", event["type"] == "message_stop"


def ollama_delta(line: str) -> tuple[str, bool]:
    if not line:
        return "", False
    chunk = json.loads(line)
    if "error" in chunk:
        raise StreamError(chunk["error"])
    return chunk.get("message", {}).get("content", ""), bool(chunk.get("done"))


class OpenAIChatStreamUser(TokenqUser):
    abstract = "openai" not in FLAVOURS
    weight = 3

    @task
    def chat_stream(self) -> None:
        body = {
            "model": MODEL,
            "messages": [{"role": "user", "content": self.prompt()}],
            "max_tokens": MAX_TOKENS,
            "stream": True,
        }
        self.stream("openai chat stream", "/v1/chat/completions", body, openai_chat_delta)


class OpenAIUser(TokenqUser):
    """Non-streaming chat and completions."""

    abstract = "openai" not in FLAVOURS
    weight = 2

    @task(2)
    def chat(self) -> None:
        body = {
            "model": MODEL,
            "messages": [{"role": "user", "content": self.prompt()}],
            "max_tokens": MAX_TOKENS,
        }
        self.answer("openai chat", "/v1/chat/completions", body, _chat_text)

    @task(1)
    def completion(self) -> None:
        body = {"model": MODEL, "prompt": self.prompt(STARTS), "max_tokens": MAX_TOKENS}
        self.answer("openai completion", "/v1/completions", body, _completion_text)

    def answer(
        self, name: str, path: str, body: dict[str, object], text_of: Callable[[Any], str]
    ) -> None:
        with self.post(name, path, body, False) as response:
            if self.rejected(response, name):
                return
            if response.status_code != 200:
                response.failure(f"HTTP {response.status_code}: {response.text[:200]}")
                return
            try:  # well-formed; the text may be empty when the model stops at once
                payload = response.json()
                text_of(payload)
                finish = payload["choices"][0]["finish_reason"]
                tokens = payload["usage"]["completion_tokens"]
            except (ValueError, KeyError, IndexError, TypeError) as exc:
                response.failure(f"bad answer: {exc!r}")
                return
            if finish in ("stop", "length") and tokens >= 0:
                response.success()
            else:
                response.failure(f"an unfinished answer: {response.text[:200]}")


def _chat_text(payload: Any) -> str:
    return str(payload["choices"][0]["message"]["content"])


def _completion_text(payload: Any) -> str:
    return str(payload["choices"][0]["text"])


class AnthropicUser(TokenqUser):
    abstract = "anthropic" not in FLAVOURS
    weight = 2

    @task
    def messages_stream(self) -> None:
        body = {
            "model": MODEL,
            "max_tokens": MAX_TOKENS,
            "messages": [{"role": "user", "content": self.prompt()}],
            "stream": True,
        }
        headers = {"x-api-key": "unused", "anthropic-version": "2023-06-01"}
        self.stream("anthropic messages stream", "/v1/messages", body, anthropic_delta, **headers)


class OllamaUser(TokenqUser):
    abstract = "ollama" not in FLAVOURS
    weight = 2

    @task
    def chat_stream(self) -> None:
        body = {
            "model": MODEL,
            "messages": [{"role": "user", "content": self.prompt()}],
            "stream": True,
            "options": {"num_predict": MAX_TOKENS},
        }
        self.stream("ollama chat stream", "/api/chat", body, ollama_delta)
