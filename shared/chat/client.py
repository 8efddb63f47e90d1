"""The chat's HTTP client: OpenAI chat completions streamed over SSE, the job routes, and every
failure turned into one readable line (`ChatError`)."""

import contextlib
import json
from collections.abc import Generator, Iterator
from dataclasses import dataclass
from typing import Any, TypeVar

import httpx
from pydantic import BaseModel, ValidationError

# Headers a streamed answer of tokenq starts with (see the README, "Queue position").
JOB_ID_HEADER = "x-job-id"
QUEUE_POSITION_HEADER = "x-queue-position"
_QUEUED_COMMENT = "queued position="
_RESPONSE_ID_PREFIX = "chatcmpl-"

M = TypeVar("M", bound=BaseModel)


class ChatError(Exception):
    """A failure to show the person as one line: the server's own message where it sent one."""


@dataclass(frozen=True)
class Queued:
    """The job waits in line; `position` 1 is the next to start (None: not known)."""

    position: int | None


@dataclass(frozen=True)
class Started:
    """The answer has started; `job_id` is what `DELETE /v1/jobs/{id}` takes."""

    job_id: str | None


@dataclass(frozen=True)
class Token:
    text: str


@dataclass(frozen=True)
class Finished:
    finish_reason: str | None
    completion_tokens: int | None
    prompt_tokens: int | None


StreamItem = Queued | Started | Token | Finished


class _Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int


class _Delta(BaseModel):
    content: str | None = None


class _Choice(BaseModel):
    delta: _Delta
    finish_reason: str | None = None


class _Chunk(BaseModel):
    id: str
    choices: list[_Choice]
    usage: _Usage | None = None


class _ErrorBody(BaseModel):
    message: str
    code: str | None = None


class _ErrorEnvelope(BaseModel):
    error: _ErrorBody


class _ModelList(BaseModel):
    class _Card(BaseModel):
        id: str

    data: list[_Card]


class _JobView(BaseModel):
    id: str
    status: str


class ChatClient:
    """A tokenq server at `url` (its root, as `tokenq up` prints it)."""

    def __init__(
        self, url: str, timeout_s: float = 120.0, transport: httpx.BaseTransport | None = None
    ) -> None:
        self.url = url.rstrip("/")
        # A queued stream sends a comment every 10 s and a ping every 15 s: a read that waits
        # longer than `timeout_s` means the server is gone.
        self._http = httpx.Client(
            base_url=self.url, timeout=httpx.Timeout(timeout_s, connect=5.0), transport=transport
        )

    def close(self) -> None:
        self._http.close()

    def models(self) -> list[str]:
        """The models a live worker serves."""
        with self._translated():
            response = self._http.get("/v1/models")
        return [card.id for card in self._parse(response, _ModelList).data]

    def has_model(self, name: str) -> bool:
        with self._translated():
            response = self._http.get(f"/v1/models/{name}")
        if response.status_code == 404:
            return False
        self._parse(response, _ModelList._Card)
        return True

    def job_status(self, job_id: str) -> str:
        with self._translated():
            response = self._http.get(f"/v1/jobs/{job_id}")
        return self._parse(response, _JobView).status

    def cancel(self, job_id: str) -> str:
        """Cancel the job; its status afterwards (`cancelled`, or how it had already ended)."""
        with self._translated():
            response = self._http.delete(f"/v1/jobs/{job_id}")
        if response.status_code == 409:  # it had already ended
            return self.job_status(job_id)
        return self._parse(response, _JobView).status

    def stream(self, body: dict[str, Any]) -> Generator[StreamItem, None, None]:
        """Stream one chat completion: `Started` once its job's id is known, `Queued` while it
        waits, the `Token`s, then `Finished`. Closing the generator early closes the
        connection (the server then cancels the job). Any failure is a `ChatError`."""
        body = {**body, "stream": True, "stream_options": {"include_usage": True}}
        with (
            self._translated(),
            self._http.stream("POST", "/v1/chat/completions", json=body) as response,
        ):
            if response.status_code != 200:
                response.read()
                raise _http_error(response)
            # tokenq names the job in a header; another server only in the chunks' ids.
            job_id = response.headers.get(JOB_ID_HEADER)
            started = job_id is not None
            if started:
                yield Started(job_id)
            position = response.headers.get(QUEUE_POSITION_HEADER)
            if position is not None:
                yield Queued(int(position) if position.isdigit() else None)
            finish: str | None = None
            for line in _lines(response.iter_bytes()):
                if line.startswith(":"):
                    queued = _queued_comment(line)
                    if queued is not None:
                        yield queued
                    continue
                if not line.startswith("data:"):
                    continue
                data = line[len("data:") :].strip()
                if data == "[DONE]":
                    break
                chunk = _chunk(data)
                if not started:
                    started = True
                    yield Started(_job_id(chunk.id))
                if chunk.usage is not None:
                    yield Finished(finish, chunk.usage.completion_tokens, chunk.usage.prompt_tokens)
                    return
                for choice in chunk.choices:
                    if choice.delta.content:
                        yield Token(choice.delta.content)
                    finish = choice.finish_reason or finish
            yield Finished(finish, None, None)

    @contextlib.contextmanager
    def _translated(self) -> Iterator[None]:
        try:
            yield
        except httpx.ConnectError:
            raise ChatError(f"cannot reach tokenq at {self.url} (is it running?)") from None
        except httpx.TimeoutException:
            raise ChatError(f"tokenq at {self.url} did not answer in time") from None
        except httpx.HTTPError as exc:
            raise ChatError(f"the connection to {self.url} failed: {exc}") from None

    @staticmethod
    def _parse(response: httpx.Response, model: type[M]) -> M:
        if response.status_code != 200:
            raise _http_error(response)
        try:
            return model.model_validate_json(response.content)
        except ValidationError:
            raise ChatError(f"unexpected answer from {response.url}") from None


def _http_error(response: httpx.Response) -> ChatError:
    try:
        message = _ErrorEnvelope.model_validate_json(response.content).error.message
    except ValidationError:
        message = response.reason_phrase or "error"
    status = response.status_code
    if status == 429:
        retry = response.headers.get("retry-after")
        return ChatError(f"{message} (429: try again in {retry} s)" if retry else message)
    return ChatError(f"{message} (HTTP {status})")


def _chunk(data: str) -> _Chunk:
    """One `data:` payload: a chunk, or the error the server sent inside the stream."""
    try:
        payload = json.loads(data)
    except json.JSONDecodeError:
        raise ChatError("the server sent a malformed stream") from None
    if isinstance(payload, dict) and "error" in payload:
        try:
            error = _ErrorEnvelope.model_validate(payload).error
        except ValidationError:
            raise ChatError("the server reported an error") from None
        raise ChatError(f"{error.message} ({error.code})" if error.code else error.message)
    try:
        return _Chunk.model_validate(payload)
    except ValidationError:
        raise ChatError("the server sent a chunk this client does not understand") from None


def _lines(chunks: Iterator[bytes]) -> Iterator[str]:
    """The stream's lines. Split on newlines only: httpx's `iter_lines` also splits at
    U+2028, U+0085 and the like, which a model's text may hold inside a JSON string."""
    pending = b""
    for chunk in chunks:
        pending += chunk
        *complete, pending = pending.split(b"\n")
        for line in complete:
            yield line.removesuffix(b"\r").decode("utf-8", errors="replace")
    if pending:
        yield pending.removesuffix(b"\r").decode("utf-8", errors="replace")


def _queued_comment(line: str) -> Queued | None:
    text = line[1:].strip()
    if not text.startswith(_QUEUED_COMMENT):
        return None
    position = text[len(_QUEUED_COMMENT) :]
    return Queued(int(position) if position.isdigit() else None)


def _job_id(response_id: str) -> str:
    return response_id.removeprefix(_RESPONSE_ID_PREFIX)
