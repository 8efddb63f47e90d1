"""Responses API state in Redis: stored responses and conversations, so that any API replica
continues any of them.

A stored response holds its whole context (the turns before it, its input, its output), so
a follow-up reads one key and deleting or expiring an earlier response breaks nothing. A
conversation is one JSON value changed under WATCH/MULTI, so replicas appending to it at once
lose nothing. Both expire `responses_ttl_s` after their last write. What a request would store
is bounded by `responses_max_bytes` (checked before the job runs: a stored object may exceed
it by one answer, and the next request that would grow it is refused).
"""

import time
import uuid
from collections.abc import Callable

from pydantic import BaseModel
from redis.asyncio import Redis as AsyncRedis
from redis.exceptions import WatchError

from api.errors import ObjectNotFoundError, StoredStateTooLargeError
from api.responses.items import Item, items_size
from api.responses.objects import UNFINISHED, Conversation, ResponseObject
from shared import keys
from shared.settings import ApiSettings


class StoredResponse(BaseModel):
    response: ResponseObject
    input_items: list[Item]  # this request's input, as `input_items` lists it
    context: list[Item]  # what a follow-up continues: earlier turns, input, output


class StoredConversation(BaseModel):
    id: str
    created_at: int
    metadata: dict[str, str]
    items: list[Item]

    def public(self) -> Conversation:
        return Conversation(id=self.id, created_at=self.created_at, metadata=self.metadata)

    def item(self, item_id: str) -> Item:
        for item in self.items:
            if item.id == item_id:
                return item
        raise ObjectNotFoundError(
            f"no item '{item_id}' in conversation '{self.id}'", param="item_id"
        )


def new_conversation_id() -> str:
    return f"conv_{uuid.uuid4().hex}"


class ResponseStore:
    def __init__(self, redis: AsyncRedis, settings: ApiSettings) -> None:
        self._redis = redis
        self._ttl_s = settings.responses_ttl_s
        self.max_bytes = settings.responses_max_bytes

    def check_size(self, items: list[Item], param: str) -> None:
        """400 when `items` are more than a stored response or conversation may hold."""
        size = items_size(items)
        if size > self.max_bytes:
            raise StoredStateTooLargeError(
                f"this would store {size} bytes of items, over the limit of {self.max_bytes} "
                "(TOKENQ_RESPONSES_MAX_BYTES); start a new conversation",
                param=param,
            )

    async def response(self, response_id: str, param: str = "response_id") -> StoredResponse:
        raw = await self._redis.get(keys.stored_response(response_id))
        if raw is None:
            raise ObjectNotFoundError(f"Response with id '{response_id}' not found.", param=param)
        return StoredResponse.model_validate_json(raw)

    async def save_response(self, stored: StoredResponse) -> None:
        key = keys.stored_response(stored.response.id)
        await self._redis.set(key, stored.model_dump_json(), ex=self._ttl_s)

    async def finish(
        self, stored: StoredResponse, conversation_id: str | None, items: list[Item]
    ) -> StoredResponse:
        """A background response's end, stored once: whichever replica ends it first, its
        end stands (and is returned to the others), and its conversation gets `items` in the
        same transaction. A response deleted meanwhile stays deleted; a conversation deleted
        meanwhile gets nothing."""
        key = keys.stored_response(stored.response.id)
        watched = [key] if conversation_id is None else [key, keys.conversation(conversation_id)]
        async with self._redis.pipeline(transaction=True) as pipe:
            while True:
                try:
                    await pipe.watch(*watched)
                    raw = await pipe.get(key)
                    if raw is None:
                        return stored
                    current = StoredResponse.model_validate_json(raw)
                    if current.response.status not in UNFINISHED:
                        return current
                    conversation = await pipe.get(watched[-1]) if len(watched) > 1 else None
                    pipe.multi()  # type: ignore[no-untyped-call]
                    pipe.set(key, stored.model_dump_json(), ex=self._ttl_s)
                    if conversation is not None and items:
                        changed = StoredConversation.model_validate_json(conversation)
                        changed.items.extend(items)
                        pipe.set(watched[-1], changed.model_dump_json(), ex=self._ttl_s)
                    await pipe.execute()
                    return stored
                except WatchError:
                    continue

    async def delete_response(self, response_id: str) -> None:
        if not await self._redis.delete(keys.stored_response(response_id)):
            raise ObjectNotFoundError(
                f"Response with id '{response_id}' not found.", param="response_id"
            )

    async def conversation(
        self, conversation_id: str, param: str = "conversation_id"
    ) -> StoredConversation:
        raw = await self._redis.get(keys.conversation(conversation_id))
        if raw is None:
            raise ObjectNotFoundError(
                f"Conversation with id '{conversation_id}' not found.", param=param
            )
        return StoredConversation.model_validate_json(raw)

    async def create_conversation(
        self, metadata: dict[str, str], items: list[Item]
    ) -> StoredConversation:
        self.check_size(items, "items")
        stored = StoredConversation(
            id=new_conversation_id(), created_at=int(time.time()), metadata=metadata, items=items
        )
        await self._redis.set(
            keys.conversation(stored.id), stored.model_dump_json(), ex=self._ttl_s
        )
        return stored

    async def change_conversation(
        self, conversation_id: str, change: Callable[[StoredConversation], None]
    ) -> StoredConversation:
        """Apply `change` to the stored conversation atomically (retried if another replica
        changed it meanwhile); `change` may raise to leave it as it was."""
        key = keys.conversation(conversation_id)
        async with self._redis.pipeline(transaction=True) as pipe:
            while True:
                try:
                    await pipe.watch(key)
                    raw = await pipe.get(key)
                    if raw is None:
                        raise ObjectNotFoundError(
                            f"Conversation with id '{conversation_id}' not found.",
                            param="conversation_id",
                        )
                    stored = StoredConversation.model_validate_json(raw)
                    change(stored)
                    pipe.multi()  # type: ignore[no-untyped-call]
                    pipe.set(key, stored.model_dump_json(), ex=self._ttl_s)
                    await pipe.execute()
                    return stored
                except WatchError:
                    continue

    async def add_items(
        self, conversation_id: str, items: list[Item], *, checked: bool = True
    ) -> StoredConversation:
        """Append items; with `checked`, 400 if the conversation would outgrow the limit."""

        def append(stored: StoredConversation) -> None:
            if checked:
                self.check_size([*stored.items, *items], "items")
            stored.items.extend(items)

        return await self.change_conversation(conversation_id, append)

    async def delete_conversation(self, conversation_id: str) -> None:
        if not await self._redis.delete(keys.conversation(conversation_id)):
            raise ObjectNotFoundError(
                f"Conversation with id '{conversation_id}' not found.", param="conversation_id"
            )
