"""The Anthropic flavour over fakeredis, jobs performed by the real RQ worker on a fake engine."""

import json
import time

import pytest

from api.anthropic import serving
from api.anthropic.protocol import MessagesRequest
from api.errors import ApiError, ErrorKind, NoWorkerError, QueueFullError
from tests.fakes import EOS
from tests.unit.api.harness import MODEL, N_CTX, Harness

BODY = {"model": MODEL, "max_tokens": 20, "messages": [{"role": "user", "content": "hi"}]}


def sse_events(text: str) -> list[tuple[str, dict[str, object]]]:
    """(event name, data) of every SSE frame."""
    events = []
    for frame in text.split("\n\n"):
        if not frame:
            continue
        fields = dict(line.split(": ", 1) for line in frame.split("\n"))
        events.append((fields["event"], json.loads(fields["data"])))
    return events


async def test_message(harness: Harness) -> None:
    response = await harness.call(
        "/v1/messages", BODY, headers={"x-api-key": "k", "anthropic-version": "2023-06-01"}
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["id"].startswith("msg_")
    assert body == {
        "id": body["id"],
        "type": "message",
        "role": "assistant",
        "model": MODEL,
        "content": [{"type": "text", "text": "Hello, world"}],
        "stop_reason": "end_turn",
        "stop_sequence": None,
        "usage": {"input_tokens": 4, "output_tokens": 3},
    }


async def test_stream_sends_the_exact_event_sequence(harness: Harness) -> None:
    response = await harness.call("/v1/messages", {**BODY, "stream": True})
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/event-stream")
    events = sse_events(response.text)
    assert [name for name, _ in events] == [
        "message_start",
        "content_block_start",
        "ping",
        "content_block_delta",
        "content_block_delta",
        "content_block_delta",
        "content_block_stop",
        "message_delta",
        "message_stop",
    ]
    assert all(data["type"] == name for name, data in events)
    start = events[0][1]["message"]
    assert isinstance(start, dict)
    assert start["content"] == [] and start["stop_reason"] is None
    assert start["usage"] == {"input_tokens": 4, "output_tokens": 0}
    assert events[1][1] == {
        "type": "content_block_start",
        "index": 0,
        "content_block": {"type": "text", "text": ""},
    }
    assert [data["delta"] for _, data in events[3:6]] == [
        {"type": "text_delta", "text": "Hello"},
        {"type": "text_delta", "text": ","},
        {"type": "text_delta", "text": " world"},
    ]
    assert events[6][1] == {"type": "content_block_stop", "index": 0}
    assert events[7][1] == {
        "type": "message_delta",
        "delta": {"stop_reason": "end_turn", "stop_sequence": None},
        "usage": {"output_tokens": 3},
    }


async def test_stop_sequence(harness: Harness) -> None:
    response = await harness.call("/v1/messages", {**BODY, "stop_sequences": [",", "zz"]})
    body = response.json()
    assert body["content"] == [{"type": "text", "text": "Hello"}]
    assert (body["stop_reason"], body["stop_sequence"]) == ("stop_sequence", ",")


async def test_max_tokens(harness: Harness) -> None:
    response = await harness.call("/v1/messages", {**BODY, "max_tokens": 1, "stream": True})
    delta = next(data for name, data in sse_events(response.text) if name == "message_delta")
    assert delta["delta"] == {"stop_reason": "max_tokens", "stop_sequence": None}
    assert delta["usage"] == {"output_tokens": 1}


async def test_sampling_reaches_the_engine(harness: Harness) -> None:
    body = {**BODY, "temperature": 0, "top_p": 0.5, "top_k": 7, "metadata": {"user_id": "u"}}
    await harness.call("/v1/messages", body)
    sampling, _seed = harness.engine.started_with[-1]
    assert (sampling.temperature, sampling.top_p, sampling.top_k) == (0, 0.5, 7)
    assert sampling.max_tokens == 20


def test_system_blocks_and_prefill_make_the_job() -> None:
    request = MessagesRequest.model_validate(
        {
            **BODY,
            "system": [{"type": "text", "text": "Be "}, {"type": "text", "text": "brief."}],
            "messages": [
                {"role": "user", "content": [{"type": "text", "text": "Name a colour."}]},
                {"role": "assistant", "content": "The colour is"},
            ],
        }
    )
    job = request.to_job(time.time())
    assert job.messages is not None
    assert [(m.role, m.content) for m in job.messages] == [
        ("system", "Be brief."),
        ("user", "Name a colour."),
        ("assistant", "The colour is"),
    ]
    assert job.continue_final_message


async def test_count_tokens(harness: Harness) -> None:
    response = await harness.client.post(
        "/v1/messages/count_tokens",
        json={"model": MODEL, "system": "s", "messages": BODY["messages"]},
    )
    assert response.status_code == 200
    assert response.json() == {"input_tokens": 4}


async def test_unknown_model_is_404_in_anthropic_shape(harness: Harness) -> None:
    response = await harness.client.post("/v1/messages", json={**BODY, "model": "nope"})
    assert response.status_code == 404
    assert response.json() == {
        "type": "error",
        "error": {"type": "not_found_error", "message": "the model 'nope' does not exist"},
    }
    count = await harness.client.post(
        "/v1/messages/count_tokens", json={"model": "nope", "messages": BODY["messages"]}
    )
    assert count.status_code == 404


async def test_model_without_worker_is_overloaded(harness: Harness) -> None:
    response = await harness.client.post("/v1/messages", json={**BODY, "model": "idle"})
    assert response.status_code == 529
    assert response.json()["error"]["type"] == "overloaded_error"


@pytest.mark.parametrize(
    ("change", "words"),
    [
        ({"max_tokens": None}, "max_tokens"),
        ({"temperature": 1.5}, "temperature"),
        ({"messages": []}, "messages"),
        ({"tools": [{"name": "f"}]}, "tools"),
        ({"thinking": {"type": "enabled", "budget_tokens": 2000}}, "thinking"),
        ({"stop_sequences": [""]}, "stop"),
        ({"messages": [{"role": "system", "content": "x"}]}, "messages.0.role"),
        (
            {
                "messages": [
                    {
                        "role": "user",
                        "content": [
                            {"type": "image", "source": {"type": "base64", "data": "AAAA"}}
                        ],
                    }
                ]
            },
            "image input is not supported",
        ),
        (
            {"messages": [{"role": "user", "content": [{"type": "tool_result", "content": "x"}]}]},
            "messages.0.content.0.tool_use_id",
        ),
        (
            {
                "messages": [
                    {"role": "user", "content": "x"},
                    {"role": "assistant", "content": "y "},
                ]
            },
            "trailing whitespace",
        ),
    ],
)
async def test_bad_bodies_are_400_invalid_request_error(
    harness: Harness, change: dict[str, object], words: str
) -> None:
    body = {k: v for k, v in {**BODY, **change}.items() if v is not None}
    response = await harness.client.post("/v1/messages", json=body)
    assert response.status_code == 400
    envelope = response.json()
    assert envelope["type"] == "error"
    assert envelope["error"]["type"] == "invalid_request_error"
    assert words in envelope["error"]["message"], envelope


async def test_malformed_json_is_400(harness: Harness) -> None:
    response = await harness.client.post(
        "/v1/messages", content=b"{", headers={"content-type": "application/json"}
    )
    assert response.status_code == 400
    assert "JSON" in response.json()["error"]["message"]


async def test_max_tokens_beyond_the_context_is_capped_to_the_room_left(
    harness: Harness,
) -> None:
    # LangChain sends 4096, LiteLLM 128000: the answer ends where the context does.
    harness.engine.pieces = [b"x"] * (N_CTX * 2)
    response = await harness.call("/v1/messages", {**BODY, "max_tokens": 128000})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["stop_reason"] == "max_tokens"
    assert body["usage"]["output_tokens"] == N_CTX - harness.engine.prompt_len


async def test_worker_failure_mid_stream_is_an_error_event(harness: Harness) -> None:
    harness.engine.pieces = [b"Hello", RuntimeError("boom"), EOS]
    response = await harness.call("/v1/messages", {**BODY, "stream": True})
    events = sse_events(response.text)
    assert [name for name, _ in events][-2:] == ["content_block_delta", "error"]
    assert events[-1][1] == {
        "type": "error",
        "error": {"type": "api_error", "message": "the worker failed the job"},
    }


async def test_unstarted_job_is_a_timeout_error(harness: Harness) -> None:
    harness.state.settings.queue_deadline_s = 0.2
    response = await harness.client.post("/v1/messages", json=BODY)
    assert response.status_code == 504
    assert response.json()["error"]["type"] == "timeout_error"


def test_rate_limit_is_429_with_retry_after() -> None:
    response = serving.render_error(QueueFullError("the queue is full", retry_after_s=7))
    assert response.status_code == 429
    assert response.headers["retry-after"] == "7"
    assert json.loads(response.body)["error"] == {
        "type": "rate_limit_error",
        "message": "the queue is full",
    }


def test_every_error_kind_has_an_anthropic_type() -> None:
    for kind in ErrorKind:
        error = ApiError("x")
        error.kind = kind
        assert serving.error_body(error).error.type.endswith("_error")
    assert serving.error_status(NoWorkerError("x")) == 529
