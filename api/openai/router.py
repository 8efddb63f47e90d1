"""OpenAI HTTP routes: parse, submit, answer. Translation lives in protocol and serving."""

from fastapi import APIRouter, Response

from api.deps import RequestIdDep, StateDep
from api.errors import InvalidRequestError
from api.models import (
    CatalogModel,
    canonical,
    catalog,
    catalog_model,
    embedding_job_for,
    job_for,
    require_live_worker,
)
from api.openai import serving
from api.openai.protocol import (
    ChatCompletion,
    ChatCompletionRequest,
    Completion,
    CompletionRequest,
    DetokenizeRequest,
    DetokenizeResponse,
    EmbeddingList,
    EmbeddingRequest,
    ModelCard,
    ModelList,
    TokenizeRequest,
    TokenizeResponse,
)
from api.pipeline import ObservationDep, flavour_route_class
from api.relay import answer, collect_embeddings
from api.resume import ResumptionDep
from api.submit import submit, submit_embedding
from shared.job import Flavour

router = APIRouter(
    prefix="/v1", route_class=flavour_route_class(serving.render_error, Flavour.OPENAI)
)
# vLLM's tokenizer routes, at the root as vLLM serves them; errors in OpenAI's shape.
tokenizer_router = APIRouter(route_class=flavour_route_class(serving.render_error, Flavour.OPENAI))


@router.post("/chat/completions", response_model=None)
async def chat_completions(
    body: ChatCompletionRequest,
    state: StateDep,
    observation: ObservationDep,
    via: ResumptionDep,
    request_id: RequestIdDep = None,
) -> ChatCompletion | Response:
    job = await job_for(state, body, request_id)
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
    job = await job_for(state, body, request_id)
    fmt = serving.CompletionFormat(include_usage=body.include_usage)
    return await answer(await submit(state, job, observation, fmt, via), fmt)


@router.post("/embeddings")
async def embeddings(
    body: EmbeddingRequest,
    state: StateDep,
    observation: ObservationDep,
    request_id: RequestIdDep = None,
) -> EmbeddingList:
    job = await embedding_job_for(state, body.to_job(state.job_deadline(), request_id))
    event = await collect_embeddings(await submit_embedding(state, job, observation))
    return serving.embedding_list(job, event, body.encoding_format)


@tokenizer_router.post("/tokenize")
async def tokenize(body: TokenizeRequest, state: StateDep) -> TokenizeResponse:
    """The prompt's tokens as a request's worker evaluates them (its usage.prompt_tokens)."""
    job = body.to_job(state.job_deadline())
    job = job.model_copy(update={"model": await canonical(state, job.model)})
    workers = await require_live_worker(state, job.model)
    tokens = await state.tokenizers.tokens(job)
    return TokenizeResponse(
        count=len(tokens), max_model_len=min(w.n_ctx for w in workers), tokens=tokens
    )


@tokenizer_router.post("/detokenize")
async def detokenize(body: DetokenizeRequest, state: StateDep) -> DetokenizeResponse:
    model = await canonical(state, body.model)
    await require_live_worker(state, model)
    tokenizer = await state.tokenizers.get(model)
    try:
        text = tokenizer.detokenize(body.tokens)
    except ValueError as exc:
        raise InvalidRequestError(str(exc), param="tokens") from None
    return DetokenizeResponse(prompt=text)


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
