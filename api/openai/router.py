"""OpenAI HTTP routes: parse, submit, answer. Translation lives in protocol and serving."""

from fastapi import APIRouter, Response

from api.deps import RequestIdDep, StateDep
from api.errors import ModelNotFoundError
from api.models import live_models
from api.openai import serving
from api.openai.protocol import (
    ChatCompletion,
    ChatCompletionRequest,
    Completion,
    CompletionRequest,
    ModelCard,
    ModelList,
)
from api.pipeline import ObservationDep, flavour_route_class
from api.relay import answer
from api.resume import ResumptionDep
from api.submit import submit
from shared.job import Flavour

router = APIRouter(
    prefix="/v1", route_class=flavour_route_class(serving.render_error, Flavour.OPENAI)
)


@router.post("/chat/completions", response_model=None)
async def chat_completions(
    body: ChatCompletionRequest,
    state: StateDep,
    observation: ObservationDep,
    via: ResumptionDep,
    request_id: RequestIdDep = None,
) -> ChatCompletion | Response:
    job = body.to_job(state.job_deadline(), request_id)
    fmt = serving.ChatFormat(include_usage=body.include_usage)
    return await answer(await submit(state, job, observation, fmt, via), fmt)


@router.post("/completions", response_model=None)
async def completions(
    body: CompletionRequest,
    state: StateDep,
    observation: ObservationDep,
    via: ResumptionDep,
    request_id: RequestIdDep = None,
) -> Completion | Response:
    job = body.to_job(state.job_deadline(), request_id)
    fmt = serving.CompletionFormat(include_usage=body.include_usage)
    return await answer(await submit(state, job, observation, fmt, via), fmt)


@router.get("/models")
async def list_models(state: StateDep) -> ModelList:
    models = await live_models(state)
    return ModelList(
        data=[_card(name, min(w.started_at for w in ws)) for name, ws in models.items()]
    )


@router.get("/models/{model_id:path}")
async def get_model(model_id: str, state: StateDep) -> ModelCard:
    workers = (await live_models(state)).get(model_id)
    if not workers:
        raise ModelNotFoundError(f"the model '{model_id}' does not exist", param="model")
    return _card(model_id, min(w.started_at for w in workers))


def _card(model: str, started_at: float) -> ModelCard:
    return ModelCard(id=model, created=int(started_at))
