"""OpenAI HTTP routes: parse, submit, answer. Translation lives in protocol and serving."""

from fastapi import APIRouter, Response

from api.deps import RequestIdDep, StateDep
from api.models import CatalogModel, catalog, catalog_model, job_for
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
    request_id: RequestIdDep = None,
) -> ChatCompletion | Response:
    job = await job_for(state, body, request_id)
    return await answer(
        await submit(state, job, observation),
        body.stream,
        lambda: serving.ChatStreamEncoder(job, body.include_usage),
        lambda out: serving.chat_completion(job, out),
    )


@router.post("/completions", response_model=None)
async def completions(
    body: CompletionRequest,
    state: StateDep,
    observation: ObservationDep,
    request_id: RequestIdDep = None,
) -> Completion | Response:
    job = await job_for(state, body, request_id)
    return await answer(
        await submit(state, job, observation),
        body.stream,
        lambda: serving.CompletionStreamEncoder(job, body.include_usage),
        lambda out: serving.completion(job, out),
    )


@router.get("/models")
async def list_models(state: StateDep) -> ModelList:
    """The registered models (served or not) and any served unregistered one."""
    return ModelList(data=[_card(model) for model in await catalog(state)])


@router.get("/models/{model_id:path}")
async def get_model(model_id: str, state: StateDep) -> ModelCard:
    """A model by its name or an alias (its card carries the canonical name)."""
    return _card(await catalog_model(state, model_id))


def _card(model: CatalogModel) -> ModelCard:
    facts = model.facts
    return ModelCard(
        id=model.name,
        created=int(model.created),
        aliases=model.entry.aliases if model.entry is not None else [],
        digest=f"sha256:{facts.digest}" if facts is not None else None,
        live_workers=len(model.workers),
    )
