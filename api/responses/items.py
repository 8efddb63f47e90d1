"""Conversation items as the Responses API returns and tokenq stores them: messages of text.

One type serves a response's `output`, its input items, and a conversation's items, as
OpenAI's do (`ResponseOutputMessage`, `ResponseInputMessageItem`, conversations' `Message`).
"""

import uuid
from typing import Annotated, Literal

from pydantic import BaseModel, Field

from api.errors import InvalidRequestError
from shared.job import ChatMessage

Role = Literal["user", "system", "developer", "assistant"]
ItemStatus = Literal["in_progress", "completed", "incomplete"]


class InputTextContent(BaseModel):
    type: Literal["input_text"] = "input_text"
    text: str


class OutputTextContent(BaseModel):
    type: Literal["output_text"] = "output_text"
    text: str
    annotations: list[object] = Field(default_factory=list)
    logprobs: list[object] = Field(default_factory=list)


ItemContent = Annotated[InputTextContent | OutputTextContent, Field(discriminator="type")]


def new_item_id() -> str:
    return f"msg_{uuid.uuid4().hex}"


class MessageItem(BaseModel):
    """A message: the model's (`output_text`) or anyone else's (`input_text`)."""

    id: str = Field(default_factory=new_item_id)
    type: Literal["message"] = "message"
    role: Role
    status: ItemStatus = "completed"
    content: list[ItemContent]

    @classmethod
    def of_text(cls, role: Role, text: str, **fields: object) -> "MessageItem":
        """A message of one text part, of the kind its role takes."""
        part: InputTextContent | OutputTextContent = (
            OutputTextContent(text=text) if role == "assistant" else InputTextContent(text=text)
        )
        return cls.model_validate({"role": role, "content": [part], **fields})

    @property
    def text(self) -> str:
        return "".join(part.text for part in self.content)

    def chat_message(self) -> ChatMessage:
        """The neutral job's turn (developer instructions are the template's system role)."""
        return ChatMessage(
            role="system" if self.role == "developer" else self.role, content=self.text
        )


class ItemList(BaseModel):
    """A page of items (`/v1/responses/{id}/input_items`, `/v1/conversations/{id}/items`)."""

    object: Literal["list"] = "list"
    data: list[MessageItem]
    first_id: str | None
    last_id: str | None
    has_more: bool


def items_size(items: list[MessageItem]) -> int:
    """Bytes the items take stored (their JSON)."""
    return sum(len(item.model_dump_json()) for item in items)


def page(
    items: list[MessageItem], limit: int, order: Literal["asc", "desc"], after: str | None
) -> ItemList:
    """One page of `items` (kept oldest first): `limit` of them in `order`, starting after the
    item whose id is `after`. An unknown `after` is a 400 (it names no item of the list)."""
    ordered = items if order == "asc" else items[::-1]
    if after is not None:
        ids = [item.id for item in ordered]
        if after not in ids:
            raise InvalidRequestError(f"no item '{after}' in this list", param="after")
        ordered = ordered[ids.index(after) + 1 :]
    data = ordered[:limit]
    return ItemList(
        data=data,
        first_id=data[0].id if data else None,
        last_id=data[-1].id if data else None,
        has_more=len(ordered) > limit,
    )
