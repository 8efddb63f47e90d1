"""Ollama HTTP routes: parse, submit, answer. Translation lives in protocol, catalog, serving.

Model names are Ollama's: `smollm2` and `smollm2:latest` are the same model; responses echo
the name the request gave.
"""

import importlib.metadata

from fastapi import APIRouter, Response
from fastapi.responses import PlainTextResponse

from api.deps import RequestIdDep, StateDep
from api.errors import NoWorkerError
from api.models import live_models, require_live_worker
from api.ollama import catalog, serving
from api.ollama.catalog import PsResponse, ShowRequest, ShowResponse, TagsResponse, VersionResponse
from api.ollama.protocol import ChatDone, ChatRequest, GenerateDone, GenerateRequest
from api.pipeline import ObservationDep, flavour_route_class
from api.relay import answer
from api.resume import ResumptionDep
from api.submit import submit
from shared.job import Flavour

router = APIRouter(
    route_class=flavour_route_class(
        serving.render_error, Flavour.OLLAMA, json_whatever_content_type=True
    )
)


@router.get("/", response_class=PlainTextResponse)
@router.head("/", response_class=PlainTextResponse, include_in_schema=False)
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
        await require_live_worker(state, body.target)
        return serving.loaded_generate(body.model)
    job = await serving.fit_context(
        state, body.to_job(state.job_deadline(), request_id), body.options.num_ctx
    )
    fmt = serving.GenerateFormat(name=body.model)
    return await answer(await submit(state, job, observation, fmt, via), fmt)


@router.post("/api/chat", response_model=None)
async def chat(
    body: ChatRequest,
    state: StateDep,
    observation: ObservationDep,
    via: ResumptionDep,
    request_id: RequestIdDep = None,
) -> ChatDone | Response:
    if not body.messages:
        await require_live_worker(state, body.target)
        return serving.loaded_chat(body.model)
    job = await serving.fit_context(
        state, body.to_job(state.job_deadline(), request_id), body.options.num_ctx
    )
    fmt = serving.ChatFormat(name=body.model)
    return await answer(await submit(state, job, observation, fmt, via), fmt)


@router.get("/api/tags")
async def tags(state: StateDep) -> TagsResponse:
    """The models with a live worker."""
    models = catalog.served_models(await live_models(state))
    return TagsResponse(models=[catalog.listed(served) for served in models])


@router.get("/api/ps")
async def ps(state: StateDep) -> PsResponse:
    """The models loaded in a live worker: all of them, as workers load theirs at start."""
    models = catalog.served_models(await live_models(state))
    return PsResponse(models=[catalog.running(served) for served in models])


@router.post("/api/show")
async def show(body: ShowRequest, state: StateDep) -> ShowResponse:
    served = catalog.served(body.target, await require_live_worker(state, body.target))
    if served is None:
        raise NoWorkerError(f"no live worker of '{body.requested}' has described its model file")
    return catalog.show(served)


@router.get("/api/version")
async def version() -> VersionResponse:
    return VersionResponse(version=importlib.metadata.version("tokenq"))
