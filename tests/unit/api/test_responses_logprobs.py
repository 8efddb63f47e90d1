"""Log-probabilities in the Responses API: asked with `include` (and `top_logprobs`), carried by
the job, and given per token on the answer's text part and on the stream's text deltas."""

import json
import time

import pytest
from openai.types.responses import Response

from api.responses.protocol import CreateResponseRequest
from api.responses.serving import ResponseDraft, ResponseStreamEncoder
from shared.events import (
    DoneEvent,
    FinishReason,
    Timings,
    TokenEvent,
    TokenLogprob,
    TopLogprob,
    Usage,
)
from tests.unit.api.harness import MODEL, Harness
from tests.unit.api.test_responses_api import BODY, assert_readable, record_jobs, sse_events

INCLUDE = ["message.output_text.logprobs"]


def entry(token: str, logprob: float) -> TokenLogprob:
    top = [TopLogprob(token=token, bytes=list(token.encode()), logprob=logprob)]
    return TokenLogprob(token=token, bytes=list(token.encode()), logprob=logprob, top=top)


async def test_include_asks_the_job_for_logprobs(harness: Harness) -> None:
    jobs = record_jobs(harness.state)
    response = await harness.call("/v1/responses", {**BODY, "include": INCLUDE, "top_logprobs": 3})
    assert response.status_code == 200, response.text
    assert response.json()["top_logprobs"] == 3
    await harness.call("/v1/responses", {**BODY, "include": INCLUDE})
    await harness.call("/v1/responses", BODY)
    assert [job.sampling.logprobs for job in jobs] == [3, 0, None]


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({"top_logprobs": 2}, None),  # without include: nothing would carry them
        ({"include": INCLUDE, "top_logprobs": 21}, "top_logprobs"),
        ({"include": ["reasoning.encrypted_content"]}, "include.0"),
    ],
)
async def test_bad_asks_are_400(harness: Harness, fields: dict[str, object], param: str) -> None:
    response = await harness.client.post("/v1/responses", json={**BODY, **fields})
    assert response.status_code == 400, response.text
    assert response.json()["error"]["param"] == param


def draft() -> ResponseDraft:
    body = CreateResponseRequest.model_validate(
        {"model": MODEL, "input": "hi", "include": INCLUDE, "top_logprobs": 1, "stream": True}
    )
    return ResponseDraft(body.to_job(time.time() + 60), body, [])


def test_each_delta_carries_its_tokens_and_the_text_all_of_them() -> None:
    encoder = ResponseStreamEncoder(draft(), None)
    tokens = [("Hel", -0.5), ("lo", -0.25)]
    frames = encoder.start()
    for index, (text, logprob) in enumerate(tokens):
        frames += encoder.token(TokenEvent(index=index, text=text, logprobs=[entry(text, logprob)]))
    usage = Usage(prompt_tokens=1, completion_tokens=2, total_tokens=3)
    timings = Timings(queued=0, prompt_eval=0, decode=0)
    frames += encoder.done(DoneEvent(finish_reason=FinishReason.STOP, usage=usage, timings=timings))
    events = sse_events(b"".join(frames).decode())
    assert_readable(events)
    deltas = [data for name, data in events if name == "response.output_text.delta"]
    assert [[lp["token"] for lp in d["logprobs"]] for d in deltas] == [["Hel"], ["lo"]]
    done = next(data for name, data in events if name == "response.output_text.done")
    assert [lp["logprob"] for lp in done["logprobs"]] == [-0.5, -0.25]
    final = Response.model_validate(events[-1][1]["response"])
    part = final.output[0].content[0]  # type: ignore[union-attr]
    assert [lp.token for lp in part.logprobs or []] == ["Hel", "lo"]  # type: ignore[union-attr]
    assert part.logprobs[0].top_logprobs[0].bytes == list(b"Hel")  # type: ignore[union-attr]
    assert json.loads(frames[-1].decode().split("data: ", 1)[1])["response"]["top_logprobs"] == 1
