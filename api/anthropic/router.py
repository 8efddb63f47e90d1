"""Anthropic HTTP routes: parse, submit, answer. Translation lives in protocol and serving.

The `anthropic-version` and `x-api-key` headers the client sends are accepted and ignored.
"""

import time

from fastapi import APIRouter, Response

from api.anthropic import serving
from api.anthropic.protocol import CountTokensRequest, Message, MessagesRequest, TokenCount
from api.deps import RequestIdDep, StateDep
from api.models import job_for
from api.pipeline import ObservationDep, flavour_route_class
from api.relay import answer
from api.resume import ResumptionDep
from api.submit import count_prompt, submit
from shared.job import Flavour

router = APIRouter(
    prefix="/v1", route_class=flavour_route_class(serving.render_error, Flavour.ANTHROPIC)
)


@router.post("/messages", response_model=None)
async def messages(
    body: MessagesRequest,
    state: StateDep,
    observation: ObservationDep,
    via: ResumptionDep,
    request_id: RequestIdDep = None,
) -> Message | Response:
    job = await job_for(state, body, request_id)
    fmt = serving.MessagesFormat()
    return await answer(await submit(state, job, observation, fmt, via), fmt)


@router.post("/messages/count_tokens")
async def count_tokens(body: CountTokensRequest, state: StateDep) -> TokenCount:
    """The prompt's tokens with the model's own template and tokenizer, as a request counts."""
    job = await job_for(state, body, None, deadline=time.time())
    return TokenCount(input_tokens=await count_prompt(state, job))
