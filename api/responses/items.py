"""Conversation items as the Responses API returns and tokenq stores them: messages of text,
function calls the model made, and the outputs of those calls.

One type of each serves a response's `output`, its input items, and a conversation's items,
as OpenAI's do (`ResponseOutputMessage`, `ResponseFunctionToolCall`,
`ResponseFunctionToolCallOutputItem`, conversations' `Message`).
"""

import json
import uuid
from collections.abc import Callable, Sequence
from typing import Annotated, Literal

from pydantic import BaseModel, Field

from api.errors import InvalidRequestError
from api.wire import WireLogprob
from shared.job import ChatMessage, ToolCall

Role = Literal["user", "system", "developer", "assistant"]
ItemStatus = Literal["in_progress", "completed", "incomplete"]


class InputTextContent(BaseModel):
    type: Literal["input_text"] = "input_text"
    text: str


class OutputTextContent(BaseModel):
    type: Literal["output_text"] = "output_text"
    text: str
    annotations: list[object] = Field(default_factory=list)
    logprobs: list[WireLogprob] = Field(
        default_factory=list,
        description="One per token, when `include` asks for message.output_text.logprobs.",
    )


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
    def of_text(
        cls, role: Role, text: str, logprobs: list[WireLogprob] | None = None, **fields: object
    ) -> "MessageItem":
        """A message of one text part, of the kind its role takes (the model's with its
        tokens' `logprobs`, if asked for)."""
        part: InputTextContent | OutputTextContent = (
            OutputTextContent(text=text, logprobs=logprobs or [])
            if role == "assistant"
            else InputTextContent(text=text)
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


class FunctionCallItem(BaseModel):
    """A call of one of the request's function tools: made by the model, or given back."""

    id: str = Field(default_factory=lambda: f"fc_{uuid.uuid4().hex}")
    type: Literal["function_call"] = "function_call"
    call_id: str
    name: str
    arguments: str = Field(description="JSON text of the arguments object.")
    status: ItemStatus = "completed"

    def tool_call(self) -> ToolCall:
        """The neutral call (its arguments were checked to be an object when it came in)."""
        return ToolCall(id=self.call_id, name=self.name, arguments=json.loads(self.arguments))


class FunctionCallOutputItem(BaseModel):
    """What the caller's code returned for a call, given back as input."""

    id: str = Field(default_factory=lambda: f"fco_{uuid.uuid4().hex}")
    type: Literal["function_call_output"] = "function_call_output"
    call_id: str
    output: str
    status: ItemStatus = "completed"


Item = Annotated[
    MessageItem | FunctionCallItem | FunctionCallOutputItem, Field(discriminator="type")
]
"""Any item of a conversation or of a response's input."""

OutputItem = Annotated[MessageItem | FunctionCallItem, Field(discriminator="type")]
"""An item a response's `output` holds."""


def chat_turns(
    items: Sequence[Item], param_of: Callable[[int], str]
) -> list[tuple[int, ChatMessage]]:
    """The neutral job's turns of `items`, each with the index of the item it starts at.

    Function calls are the calls of the assistant turn they follow (one made of them alone if
    no assistant message comes right before); a call's output is a tool turn naming the tool
    its `call_id` called. An output whose call is not among the items before it is a 400, as
    OpenAI's is, naming `param_of(index)` of the item.
    """
    names: dict[str, str] = {}
    turns: list[tuple[int, ChatMessage]] = []
    for index, item in enumerate(items):
        match item:
            case MessageItem():
                turns.append((index, item.chat_message()))
            case FunctionCallItem():
                call = item.tool_call()
                names[call.id] = call.name
                last = turns[-1][1] if turns else None
                if last is not None and last.role == "assistant":
                    last.tool_calls.append(call)
                else:
                    turns.append(
                        (index, ChatMessage(role="assistant", content="", tool_calls=[call]))
                    )
            case FunctionCallOutputItem():
                if item.call_id not in names:
                    raise InvalidRequestError(
                        f"No tool call found for function call output with call_id {item.call_id}.",
                        param=param_of(index),
                    )
                message = ChatMessage(
                    role="tool",
                    content=item.output,
                    tool_call_id=item.call_id,
                    name=names[item.call_id],
                )
                turns.append((index, message))
    return turns


class ItemList(BaseModel):
    """A page of items (`/v1/responses/{id}/input_items`, `/v1/conversations/{id}/items`)."""

    object: Literal["list"] = "list"
    data: list[Item]
    first_id: str | None
    last_id: str | None
    has_more: bool


def items_size(items: Sequence[Item]) -> int:
    """Bytes the items take stored (their JSON)."""
    return sum(len(item.model_dump_json()) for item in items)


def page(
    items: list[Item], limit: int, order: Literal["asc", "desc"], after: str | None
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
