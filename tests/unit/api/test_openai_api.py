"""The OpenAI flavour over fakeredis, jobs performed by the real RQ worker on a fake engine."""

import json

import pytest

from tests.unit.api.harness import MODEL, Harness

CHAT = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}]}


async def test_chat_completion(harness: Harness) -> None:
    response = await harness.call("/v1/chat/completions", CHAT)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["object"] == "chat.completion"
    assert body["choices"][0]["message"] == {"role": "assistant", "content": "Hello, world"}
    assert body["choices"][0]["finish_reason"] == "stop"
    assert body["usage"] == {"prompt_tokens": 4, "completion_tokens": 3, "total_tokens": 7}


async def test_chat_stream_frames_in_order(harness: Harness) -> None:
    body = {**CHAT, "stream": True, "stream_options": {"include_usage": True}}
    response = await harness.call("/v1/chat/completions", body)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/event-stream")
    frames = [  # each frame's data (after its `id:` line)
        f.split("\n")[-1].removeprefix("data: ") for f in response.text.split("\n\n") if f
    ]
    assert frames[-1] == "[DONE]"
    chunks = [json.loads(f) for f in frames[:-1]]
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert [c["choices"][0]["delta"].get("content") for c in chunks[1:4]] == [
        "Hello",
        ",",
        " world",
    ]
    assert chunks[4]["choices"][0] == {
        "index": 0,
        "delta": {},
        "finish_reason": "stop",
        "logprobs": None,
    }
    assert chunks[5]["choices"] == [] and chunks[5]["usage"]["completion_tokens"] == 3


async def test_stop_maps_to_openai_stop(harness: Harness) -> None:
    response = await harness.call("/v1/completions", {"model": MODEL, "prompt": "x", "stop": ","})
    assert response.json()["choices"][0] == {
        "index": 0,
        "text": "Hello",
        "finish_reason": "stop",
        "logprobs": None,
    }


async def test_length_maps_to_openai_length(harness: Harness) -> None:
    response = await harness.call(
        "/v1/completions", {"model": MODEL, "prompt": "x", "max_tokens": 1}
    )
    assert response.json()["choices"][0]["finish_reason"] == "length"
    assert response.json()["usage"]["completion_tokens"] == 1


async def test_context_overflow_is_400_before_streaming(harness: Harness) -> None:
    body = {**CHAT, "max_tokens": 1000, "stream": True}
    response = await harness.call("/v1/chat/completions", body)
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "context_length_exceeded"
    # The API refused it itself: it never admitted a job (which the worker would refuse too).
    assert harness.recorded_jobs() == []


async def test_unknown_model_is_404(harness: Harness) -> None:
    response = await harness.client.post("/v1/chat/completions", json={**CHAT, "model": "nope"})
    assert response.status_code == 404
    assert response.json() == {
        "error": {
            "message": "the model 'nope' does not exist",
            "type": "invalid_request_error",
            "param": "model",
            "code": "model_not_found",
        }
    }


async def test_known_model_without_worker_is_503(harness: Harness) -> None:
    response = await harness.client.post("/v1/chat/completions", json={**CHAT, "model": "idle"})
    assert response.status_code == 503
    assert response.json()["error"]["code"] == "model_unavailable"


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"model": MODEL}, "messages"),
        ({**CHAT, "temperature": 3}, "temperature"),
        ({**CHAT, "max_tokens": 0}, "max_tokens"),
        ({**CHAT, "frobnicate": 1}, "frobnicate"),
        ({**CHAT, "messages": [{"role": "tool", "content": "x"}]}, "messages.0"),
        (
            {
                **CHAT,
                "messages": [
                    {
                        "role": "user",
                        "content": [{"type": "image_url", "image_url": {"url": "http://x"}}],
                    }
                ],
            },
            "messages.0.content",
        ),
    ],
)
async def test_bad_bodies_are_400_naming_the_parameter(
    harness: Harness, body: dict[str, object], param: str
) -> None:
    response = await harness.client.post("/v1/chat/completions", json=body)
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["type"] == "invalid_request_error"
    assert error["param"].startswith(param), error


async def test_no_worker_picks_the_job_up_is_a_deadline_error(harness: Harness) -> None:
    harness.state.settings.queue_deadline_s = 0.2
    response = await harness.client.post("/v1/chat/completions", json=CHAT)
    assert response.status_code == 504
    assert response.json()["error"]["code"] == "deadline_exceeded"


async def test_vllm_load_generator_extensions_reach_the_job(harness: Harness) -> None:
    body = {**CHAT, "ignore_eos": True, "min_tokens": 5, "max_tokens": 8}
    response = await harness.call("/v1/chat/completions", body)
    assert response.status_code == 200
    ((sampling, _seed),) = harness.engine.started_with
    assert (sampling.ignore_eos, sampling.min_tokens) == (True, 5)
    assert sampling.suppress_eog(4) and sampling.suppress_eog(100)


async def test_min_tokens_below_zero_is_400_naming_it(harness: Harness) -> None:
    response = await harness.client.post(
        "/v1/completions", json={"model": MODEL, "prompt": "hi", "min_tokens": -1}
    )
    assert response.status_code == 400
    assert response.json()["error"]["param"] == "min_tokens"
