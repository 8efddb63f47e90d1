"""`truncation: "auto"` in the Responses API: the fewest first turns left out of the prompt
that let it and `max_output_tokens` fit the context, call outputs going with their calls,
and the 400 when even the last item does not fit; and `POST /v1/responses/input_tokens`,
which counts the prompt a response would have. The prompt is counted here as one token
per word (the harness's context is 64 tokens)."""

import time

from openai.types.responses import InputTokenCountResponse

from api.responses.protocol import CreateResponseRequest
from shared.job import GenerationJob
from tests.unit.api.harness import MODEL, Harness
from tests.unit.api.test_responses_api import BODY, create

TEN_WORDS = " ".join(["word"] * 9)


def count_words(harness: Harness) -> list[GenerationJob]:
    """Count prompts as their words; every job counted is recorded."""
    counted: list[GenerationJob] = []

    async def words(job: GenerationJob, n_ctx: int | None = None) -> int:
        counted.append(job)
        return sum(len(m.content.split()) for m in job.messages or [])

    harness.state.tokenizers.count = words  # type: ignore[method-assign]
    return counted


def turns(count: int) -> list[dict[str, str]]:
    """`count` alternating turns of ten words, the first word each one's number."""
    roles = ("user", "assistant")
    return [{"role": roles[i % 2], "content": f"{i} {TEN_WORDS}"} for i in range(count)]


async def test_the_fewest_first_turns_are_left_out(harness: Harness) -> None:
    counted = count_words(harness)
    items = turns(9)  # 90 words; with 8 to write, 56 fit: the last five turns
    refused = await harness.client.post(
        "/v1/responses", json={**BODY, "input": items, "max_output_tokens": 8}
    )
    assert refused.status_code == 400
    assert refused.json()["error"]["code"] == "context_length_exceeded"
    body = await create(harness, input=items, max_output_tokens=8, truncation="auto")
    assert body["truncation"] == "auto" and body["status"] == "completed"
    sent = counted[-1].messages or []
    assert [m.content.split()[0] for m in sent] == ["4", "5", "6", "7", "8"]
    stored = await harness.client.get(f"/v1/responses/{body['id']}/input_items?limit=100")
    assert len(stored.json()["data"]) == 9  # what is stored is the whole input


async def test_stored_turns_are_left_out_first(harness: Harness) -> None:
    counted = count_words(harness)
    first = await create(harness, input=turns(5), max_output_tokens=8)
    follow = await create(
        harness,
        input=[{"role": "user", "content": f"9 {TEN_WORDS}"}],
        previous_response_id=first["id"],
        max_output_tokens=8,
        truncation="auto",
    )
    assert follow["status"] == "completed"
    sent = counted[-1].messages or []
    assert sent[-1].content.startswith("9 ") and sum(len(m.content.split()) for m in sent) <= 56


async def test_a_last_item_too_long_alone_is_still_a_400(harness: Harness) -> None:
    count_words(harness)
    items = [*turns(2), {"role": "user", "content": " ".join(["long"] * 80)}]
    response = await harness.client.post(
        "/v1/responses", json={**BODY, "input": items, "truncation": "auto"}
    )
    assert response.status_code == 400
    assert response.json()["error"]["param"] == "input"


def test_call_outputs_go_with_their_calls() -> None:
    body = CreateResponseRequest.model_validate(
        {
            "model": MODEL,
            "input": [
                {"role": "user", "content": "Weather?"},
                {"type": "function_call", "call_id": "c1", "name": "w", "arguments": "{}"},
                {"type": "function_call_output", "call_id": "c1", "output": "sunny"},
                {"role": "user", "content": "And so?"},
            ],
        }
    )
    deadline = time.time() + 60
    kept_call = body.skipping(1).to_job(deadline).messages or []
    assert [m.role for m in kept_call] == ["assistant", "tool", "user"]
    without_call = body.skipping(2).to_job(deadline).messages or []
    assert [m.content for m in without_call] == ["And so?"]  # its output went with it


async def test_input_tokens_counts_the_prompt_a_response_would_have(harness: Harness) -> None:
    count_words(harness)
    first = await create(harness, input="one two three")  # answered "Hello, world"
    counted = await harness.client.post(
        "/v1/responses/input_tokens",
        json={
            "model": MODEL,
            "instructions": "be brief",
            "input": "four five",
            "previous_response_id": first["id"],
        },
    )
    assert counted.status_code == 200, counted.text
    parsed = InputTokenCountResponse.model_validate(counted.json())
    assert parsed.object == "response.input_tokens"
    assert parsed.input_tokens == 2 + 3 + 2 + 2  # instructions, turn, answer, input
    cut = await harness.client.post(
        "/v1/responses/input_tokens",
        json={"model": MODEL, "input": turns(9), "truncation": "auto"},
    )
    assert cut.json()["input_tokens"] == 60  # six turns of ten words fit 64
    refused = await harness.client.post(
        "/v1/responses/input_tokens", json={"model": MODEL, "input": "x", "stream": True}
    )
    assert refused.status_code == 400 and refused.json()["error"]["param"] == "stream"
