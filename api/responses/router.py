"""Responses API HTTP routes: `/v1/responses` and `/v1/conversations`. Parse, load the stored
turns, submit, answer; translation lives in protocol, serving and store."""

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Annotated, Literal

from fastapi import APIRouter, Depends, Query, Response

from api.deps import RequestIdDep, StateDep
from api.errors import ApiError, ContextLengthExceededError, InvalidRequestError
from api.models import job_for
from api.openai.serving import render_error as openai_render_error
from api.pipeline import ObservationDep, flavour_route_class
from api.relay import collect, stream_response
from api.responses import background, serving
from api.responses.items import Item, ItemList, page
from api.responses.objects import (
    ANSWERED,
    UNFINISHED,
    Conversation,
    DeletedConversation,
    DeletedResponse,
    InputTokens,
    ResponseObject,
)
from api.responses.protocol import (
    CountInputTokensRequest,
    CreateConversationRequest,
    CreateItemsRequest,
    CreateResponseRequest,
    UpdateConversationRequest,
)
from api.responses.store import ResponseStore, StoredConversation
from api.resume import Resumption
from api.state import AppState
from api.submit import check_context, count_prompt, submit
from shared.job import Flavour, GenerationJob

router = APIRouter(
    prefix="/v1", route_class=flavour_route_class(openai_render_error, Flavour.RESPONSES)
)


def _store(state: StateDep) -> ResponseStore:
    return ResponseStore(state.redis, state.settings)


# This API's parameter for each that `submit` blames when a request does not fit the context.
_CONTEXT_PARAMS = {"max_tokens": "max_output_tokens", "messages": "input"}

StoreDep = Annotated[ResponseStore, Depends(_store)]
Limit = Annotated[int, Query(ge=1, le=100)]
Order = Literal["asc", "desc"]


@router.post("/responses", response_model=None)
async def create_response(
    body: CreateResponseRequest,
    state: StateDep,
    store: StoreDep,
    observation: ObservationDep,
    request_id: RequestIdDep = None,
) -> ResponseObject | Response:
    history = await _history(store, body)
    with _context_params():
        job = await _job(state, body, history, request_id)
        draft = serving.ResponseDraft(job, body, history)
        store.check_size([*history, *draft.input_items], "input")
        fmt, via = None, None
        if body.background:  # kept with the job, which runs whether or not a client listens
            fmt = serving.ResponsesFormat(
                request=body, history=history, created_at=draft.created_at
            )
            via = Resumption(None, None, state.settings.events_retention_s)
        stream = await submit(state, job, observation, fmt, via)
    if body.background:
        queued = await background.start(state, store, draft, stream)
        if body.stream:
            return await background.replay(state, queued, None)
        return queued.response
    if body.stream:
        return await stream_response(stream, lambda: serving.ResponseStreamEncoder(draft, store))
    try:
        response = draft.collected(await collect(stream))
    except ApiError as error:  # kept `failed` or `cancelled` for `retrieve`, then answered
        await serving.keep_ended(store, draft, error)
        raise
    await serving.keep(store, draft, response)
    return response


@contextmanager
def _context_params() -> Iterator[None]:
    """A prompt that does not fit is blamed on this API's parameter, not the job's field."""
    try:
        yield
    except ContextLengthExceededError as exc:
        exc.param = _CONTEXT_PARAMS.get(exc.param or "", exc.param)
        raise


async def _job(
    state: AppState, body: CreateResponseRequest, history: list[Item], request_id: str | None
) -> GenerationJob:
    """The request's job, continuing `history`; truncated if it asks."""
    job = await job_for(state, body.with_history(history), request_id)
    if body.truncation == "auto":
        job = await _truncated(state, body, job, request_id)
    return job


async def _truncated(
    state: AppState, body: CreateResponseRequest, job: GenerationJob, request_id: str | None
) -> GenerationJob:
    """`truncation: "auto"`: the job with as few of the first stored turns and input items
    left out as lets its prompt and `max_output_tokens` fit the model's context (found by
    halving: the prompt shrinks as more are left out); the refusal of the job with all but
    the last left out when even that does not fit."""
    try:
        await check_context(state, job)
        return job
    except ContextLengthExceededError:
        pass
    low, high = 1, body.droppable
    fitted: tuple[int, GenerationJob] | None = None
    while low <= high:
        count = (low + high) // 2
        candidate = await job_for(state, body.skipping(count), request_id)
        try:
            await check_context(state, candidate)
        except ContextLengthExceededError:
            low = count + 1
            continue
        fitted, high = (count, candidate), count - 1
    if fitted is None:
        shortest = await job_for(state, body.skipping(body.droppable), request_id)
        await check_context(state, shortest)  # raises, naming what does not fit
        return shortest
    body.skipping(fitted[0])
    return fitted[1]


async def _history(store: ResponseStore, body: CreateResponseRequest) -> list[Item]:
    """The stored turns the request continues (404 naming the parameter if they are gone)."""
    if body.previous_response_id is not None:
        previous = await store.response(body.previous_response_id, "previous_response_id")
        status = previous.response.status
        if status in UNFINISHED:
            raise InvalidRequestError(
                f"Previous response with id '{body.previous_response_id}' is still "
                f"{status}; it can be continued once it has finished.",
                param="previous_response_id",
            )
        if status not in ANSWERED:
            raise InvalidRequestError(
                f"Previous response with id '{body.previous_response_id}' was {status} "
                "and has no answer to continue; continue the one before it instead.",
                param="previous_response_id",
            )
        return previous.context
    if body.conversation_id is not None:
        return (await store.conversation(body.conversation_id, "conversation")).items
    return []


@router.post("/responses/input_tokens")
async def count_input_tokens(
    body: CountInputTokensRequest,
    state: StateDep,
    store: StoreDep,
    request_id: RequestIdDep = None,
) -> InputTokens:
    """The tokens a response's prompt would be (its stored turns and tools included, as
    truncated with `truncation: "auto"`), counted with the model's own vocabulary."""
    request = body.as_response()
    with _context_params():
        job = await _job(state, request, await _history(store, request), request_id)
    return InputTokens(input_tokens=await count_prompt(state, job))


@router.get("/responses/{response_id}", response_model=None)
async def get_response(
    response_id: str,
    state: StateDep,
    store: StoreDep,
    stream: bool = False,
    starting_after: Annotated[int | None, Query(ge=-1)] = None,
) -> ResponseObject | Response:
    """The response as it stands; with `stream=true`, a background response's stream again
    (from its start, or after the event numbered `starting_after`)."""
    stored = await store.response(response_id)
    if stream:
        return await background.replay(state, stored, starting_after)
    return (await background.current(state, store, stored)).response


@router.post("/responses/{response_id}/cancel")
async def cancel_response(response_id: str, state: StateDep, store: StoreDep) -> ResponseObject:
    stored = await store.response(response_id)
    return (await background.cancel(state, store, stored)).response


@router.delete("/responses/{response_id}")
async def delete_response(response_id: str, state: StateDep, store: StoreDep) -> DeletedResponse:
    stored = await store.response(response_id)
    if stored.response.status in UNFINISHED:  # nobody could read its answer
        await state.jobs.cancel(background.job_id_of(response_id))
    await store.delete_response(response_id)
    return DeletedResponse(id=response_id)


@router.get("/responses/{response_id}/input_items")
async def list_input_items(
    response_id: str,
    store: StoreDep,
    limit: Limit = 20,
    order: Order = "desc",
    after: str | None = None,
) -> ItemList:
    return page((await store.response(response_id)).input_items, limit, order, after)


@router.post("/conversations")
async def create_conversation(body: CreateConversationRequest, store: StoreDep) -> Conversation:
    items = [item.item() for item in body.items or []]
    return (await store.create_conversation(body.metadata or {}, items)).public()


@router.get("/conversations/{conversation_id}")
async def get_conversation(conversation_id: str, store: StoreDep) -> Conversation:
    return (await store.conversation(conversation_id)).public()


@router.post("/conversations/{conversation_id}")
async def update_conversation(
    conversation_id: str, body: UpdateConversationRequest, store: StoreDep
) -> Conversation:
    def update(stored: StoredConversation) -> None:
        stored.metadata = body.metadata or {}

    return (await store.change_conversation(conversation_id, update)).public()


@router.delete("/conversations/{conversation_id}")
async def delete_conversation(conversation_id: str, store: StoreDep) -> DeletedConversation:
    await store.delete_conversation(conversation_id)
    return DeletedConversation(id=conversation_id)


@router.get("/conversations/{conversation_id}/items")
async def list_items(
    conversation_id: str,
    store: StoreDep,
    limit: Limit = 20,
    order: Order = "desc",
    after: str | None = None,
) -> ItemList:
    return page((await store.conversation(conversation_id)).items, limit, order, after)


@router.post("/conversations/{conversation_id}/items")
async def add_items(conversation_id: str, body: CreateItemsRequest, store: StoreDep) -> ItemList:
    items = [item.item() for item in body.items]
    await store.add_items(conversation_id, items)
    return ItemList(data=items, first_id=items[0].id, last_id=items[-1].id, has_more=False)


@router.get("/conversations/{conversation_id}/items/{item_id}")
async def get_item(conversation_id: str, item_id: str, store: StoreDep) -> Item:
    return (await store.conversation(conversation_id)).item(item_id)


@router.delete("/conversations/{conversation_id}/items/{item_id}")
async def delete_item(conversation_id: str, item_id: str, store: StoreDep) -> Conversation:
    def remove(stored: StoredConversation) -> None:
        stored.items.remove(stored.item(item_id))

    return (await store.change_conversation(conversation_id, remove)).public()
