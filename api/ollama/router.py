"""Ollama HTTP routes: parse, submit, answer. Translation lives in protocol, catalog, serving.

Model names are Ollama's: `smollm2` and `smollm2:latest` are the same model, and a registered
alias names its model (api/models.py); responses echo the name the request gave.
"""

import importlib.metadata

from fastapi import APIRouter, Response
from fastapi.responses import PlainTextResponse

from api.auth import public
from api.deps import RequestIdDep, StateDep
from api.errors import NoWorkerError
from api.models import (
    canonical,
    catalog_model,
    embedding_job_for,
    job_for,
    require_live_worker,
)
from api.models import catalog as known_catalog
from api.ollama import catalog, serving
from api.ollama.catalog import PsResponse, ShowRequest, ShowResponse, TagsResponse, VersionResponse
from api.ollama.protocol import (
    ChatDone,
    ChatRequest,
    EmbeddingsRequest,
    EmbeddingsResponse,
    EmbedRequest,
    EmbedResponse,
    GenerateDone,
    GenerateRequest,
)
from api.pipeline import ObservationDep, flavour_route_class
from api.relay import answer, collect_embeddings
from api.resume import ResumptionDep
from api.submit import embedding_dims, submit, submit_embedding
from shared.job import Flavour

router = APIRouter(
    route_class=flavour_route_class(
        serving.render_error, Flavour.OLLAMA, json_whatever_content_type=True
    )
)


@router.get("/", response_class=PlainTextResponse)
@router.head("/", response_class=PlainTextResponse, include_in_schema=False)
@public
async def root() -> str:
    """The liveness line Ollama tools look for."""
    return "Ollama is running"


@router.post("/api/generate", response_model=None)
async def generate(
    body: GenerateRequest,
    state: StateDep,
    observation: ObservationDep,
    via: ResumptionDep,
    request_id: RequestIdDep = None,
) -> GenerateDone | Response:
    if not body.prompt:
        await require_live_worker(state, await canonical(state, body.target))
        return serving.loaded_generate(body.model)
    job = await serving.fit_context(
        state, await job_for(state, body, request_id), body.options.num_ctx
    )
    fmt = serving.GenerateFormat(name=body.model)
    return await answer(await submit(state, job, observation, fmt, via), fmt)


@router.post("/api/embed")
async def embed(
    body: EmbedRequest,
    state: StateDep,
    observation: ObservationDep,
    request_id: RequestIdDep = None,
) -> EmbedResponse:
    if not body.inputs:  # Ollama answers an empty input with no vectors (a model load)
        target = await canonical(state, body.target)
        embedding_dims(await require_live_worker(state, target), target)
        return EmbedResponse(model=body.model, embeddings=[])
    job = await serving.fit_context(
        state,
        await embedding_job_for(state, body.to_job(state.job_deadline(), request_id)),
        body.options.num_ctx,
    )
    event = await collect_embeddings(await submit_embedding(state, job, observation))
    return serving.embed_response(job, body.model, event)


@router.post("/api/embeddings")
async def embeddings(
    body: EmbeddingsRequest,
    state: StateDep,
    observation: ObservationDep,
    request_id: RequestIdDep = None,
) -> EmbeddingsResponse:
    if not body.prompt:
        target = await canonical(state, body.target)
        embedding_dims(await require_live_worker(state, target), target)
        return EmbeddingsResponse(embedding=[])
    job = await serving.fit_context(
        state,
        await embedding_job_for(state, body.to_job(state.job_deadline(), request_id)),
        body.options.num_ctx,
    )
    event = await collect_embeddings(await submit_embedding(state, job, observation))
    return EmbeddingsResponse(embedding=event.floats()[0])


@router.post("/api/chat", response_model=None)
async def chat(
    body: ChatRequest,
    state: StateDep,
    observation: ObservationDep,
    via: ResumptionDep,
    request_id: RequestIdDep = None,
) -> ChatDone | Response:
    if not body.messages:
        await require_live_worker(state, await canonical(state, body.target))
        return serving.loaded_chat(body.model)
    job = await serving.fit_context(
        state, await job_for(state, body, request_id), body.options.num_ctx
    )
    fmt = serving.ChatFormat(name=body.model)
    return await answer(await submit(state, job, observation, fmt, via), fmt)


@router.get("/api/tags")
async def tags(state: StateDep) -> TagsResponse:
    """The registered models, served or not (and any served unregistered one)."""
    listed = [catalog.listed(model) for model in await known_catalog(state)]
    return TagsResponse(models=[m for m in listed if m is not None])


@router.get("/api/ps")
async def ps(state: StateDep) -> PsResponse:
    """The models loaded in a live worker: all served ones, as workers load theirs at start."""
    running = [catalog.running(model) for model in await known_catalog(state)]
    return PsResponse(models=[m for m in running if m is not None])


@router.post("/api/show")
async def show(body: ShowRequest, state: StateDep) -> ShowResponse:
    shown = catalog.show(await catalog_model(state, body.target))
    if shown is None:
        raise NoWorkerError(f"no live worker of '{body.requested}' has described its model file")
    return shown


@router.get("/api/version")
async def version() -> VersionResponse:
    return VersionResponse(version=importlib.metadata.version("tokenq"))
