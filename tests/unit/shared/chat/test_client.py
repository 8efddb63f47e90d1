"""The chat's client against canned HTTP answers: SSE parsing, queue notices, errors as one
line (the real server: tests/integration/test_chat.py)."""

import json

import httpx
import pytest

from shared.chat.client import ChatClient, ChatError, Finished, Queued, Started, Token

JOB = "0123456789abcdef0123456789abcdef"


def chunk(content: str | None = None, finish: str | None = None) -> bytes:
    delta = {} if content is None else {"content": content}
    body = {"id": f"chatcmpl-{JOB}", "choices": [{"delta": delta, "finish_reason": finish}]}
    return f"data: {json.dumps(body, ensure_ascii=False)}\n\n".encode()


def usage(prompt: int, completion: int) -> bytes:
    body = {"id": f"chatcmpl-{JOB}", "choices": [], "usage": {
        "prompt_tokens": prompt, "completion_tokens": completion,
        "total_tokens": prompt + completion}}  # fmt: skip
    return f"data: {json.dumps(body)}\n\n".encode()


def client(handler: httpx.MockTransport) -> ChatClient:
    return ChatClient("http://tokenq.test", transport=handler)


def streaming(body: bytes, headers: dict[str, str] | None = None) -> httpx.MockTransport:
    def answer(request: httpx.Request) -> httpx.Response:
        sent = json.loads(request.content)
        assert sent["stream"] is True and sent["stream_options"] == {"include_usage": True}
        return httpx.Response(200, headers=headers or {}, content=body)

    return httpx.MockTransport(answer)


def test_a_queued_stream_gives_position_id_tokens_and_usage() -> None:
    # U+2028 inside a token: a line separator to str.splitlines, plain text to SSE.
    body = b"".join([
        b": queued position=2\n\n", b": ping\n\n", b": queued position=1\n\n",
        chunk(""), chunk("Hello\u2028 wor"), chunk("ld"), chunk(None, "stop"), usage(5, 3),
        b"data: [DONE]\n\n",
    ])  # fmt: skip
    headers = {"X-Job-Id": JOB, "X-Queue-Position": "3"}
    items = list(client(streaming(body, headers)).stream({"model": "m", "messages": []}))
    assert items == [
        Started(JOB), Queued(3), Queued(2), Queued(1), Token("Hello\u2028 wor"), Token("ld"),
        Finished("stop", 3, 5),
    ]  # fmt: skip


def test_without_the_header_the_job_id_comes_from_the_chunk_id() -> None:
    body = chunk("Hi") + chunk(None, "length") + b"data: [DONE]\n\n"
    items = list(client(streaming(body)).stream({"model": "m", "messages": []}))
    assert items == [Started(JOB), Token("Hi"), Finished("length", None, None)]


def test_an_error_inside_the_stream_is_one_line() -> None:
    error = {"error": {"message": "the worker running the job died", "type": "server_error",
                       "param": None, "code": "worker_lost"}}  # fmt: skip
    body = chunk("Hi") + f"data: {json.dumps(error)}\n\n".encode()
    with pytest.raises(ChatError, match=r"^the worker running the job died \(worker_lost\)$"):
        list(client(streaming(body)).stream({"model": "m", "messages": []}))


def test_a_full_queue_says_when_to_retry() -> None:
    def full(request: httpx.Request) -> httpx.Response:
        error = {"error": {"message": "the queue of 'm' is full", "type": "rate_limit_error",
                           "param": None, "code": "rate_limit_exceeded"}}  # fmt: skip
        return httpx.Response(429, headers={"Retry-After": "7"}, json=error)

    with pytest.raises(ChatError, match=r"^the queue of 'm' is full \(429: try again in 7 s\)$"):
        list(client(httpx.MockTransport(full)).stream({"model": "m", "messages": []}))


def test_a_server_that_is_not_there_is_one_line() -> None:
    def refused(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("Connection refused", request=request)

    with pytest.raises(ChatError, match=r"^cannot reach tokenq at http://tokenq.test"):
        client(httpx.MockTransport(refused)).models()


def test_cancelling_a_job_that_already_ended_reports_how_it_ended() -> None:
    def jobs(request: httpx.Request) -> httpx.Response:
        if request.method == "DELETE":
            return httpx.Response(409, json={"error": {"message": "ended", "code": "x"}})
        return httpx.Response(200, json={"id": JOB, "status": "done"})

    assert client(httpx.MockTransport(jobs)).cancel(JOB) == "done"
