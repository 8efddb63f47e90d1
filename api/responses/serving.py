"""Neutral events to Responses API objects and stream events; keeping what a response stores.

A streamed response sends `response.created`, `response.in_progress`,
`response.output_item.added`, `response.content_part.added`, `response.output_text.delta`...,
`response.output_text.done`, `response.content_part.done`, `response.output_item.done`, then
`response.completed` (or `response.incomplete` when `max_output_tokens` cut it); an error
after the start is an `error` event followed by `response.failed`. The response is stored
(and its turns added to its conversation) before its last event is sent, so a follow-up sent
as soon as the stream ends finds it.
"""

import logging
import time
from dataclasses import dataclass, field

from redis.exceptions import RedisError

from api.errors import ApiError, BackendUnavailableError, ErrorKind
from api.relay import StreamEncoder
from api.responses.items import MessageItem, OutputTextContent
from api.responses.objects import (
    ContentPartEvent,
    ConversationRef,
    ErrorEvent,
    IncompleteDetails,
    OutputItemEvent,
    ResponseError,
    ResponseEvent,
    ResponseObject,
    ResponseStatus,
    ResponseUsage,
    StreamEvent,
    TextConfig,
    TextDeltaEvent,
    TextDoneEvent,
)
from api.responses.protocol import CreateResponseRequest
from api.responses.store import ResponseStore, StoredResponse
from api.sse import format_sse
from shared.events import DoneEvent, FinishReason, TerminalEvent, TokenEvent
from shared.job import GenerationJob

log = logging.getLogger(__name__)

# The codes the SDK's `ResponseError` knows, for a response that failed.
_FAILURE_CODES = {
    ErrorKind.RATE_LIMITED: "rate_limit_exceeded",
    ErrorKind.INVALID_REQUEST: "invalid_prompt",
}


def response_id(job: GenerationJob) -> str:
    """`resp_<job id>`: `/v1/jobs/{id}` takes it as it is (state, cancel)."""
    return f"resp_{job.id}"


@dataclass
class ResponseDraft:
    """A response being made: its request, its job, the stored turns it continues."""

    job: GenerationJob
    body: CreateResponseRequest
    history: list[MessageItem]
    input_items: list[MessageItem] = field(default_factory=list)
    created_at: int = field(default_factory=lambda: int(time.time()))

    def __post_init__(self) -> None:
        self.input_items = self.body.input_items()

    @property
    def id(self) -> str:
        return response_id(self.job)

    @property
    def message_id(self) -> str:
        return f"msg_{self.job.id}"

    def message(self, text: str, status: str = "completed") -> MessageItem:
        return MessageItem.of_text("assistant", text, id=self.message_id, status=status)

    def response(
        self,
        status: ResponseStatus,
        output: list[MessageItem],
        *,
        done: DoneEvent | None = None,
        error: ApiError | None = None,
    ) -> ResponseObject:
        body = self.body
        conversation = body.conversation_id
        return ResponseObject(
            id=self.id,
            created_at=self.created_at,
            status=status,
            completed_at=int(time.time()) if status == "completed" else None,
            error=None
            if error is None
            else ResponseError(
                code=_FAILURE_CODES.get(error.kind, "server_error"), message=error.message
            ),
            incomplete_details=IncompleteDetails(reason="max_output_tokens")
            if status == "incomplete"
            else None,
            model=self.job.model,
            output=output,
            usage=None if done is None else usage(done),
            instructions=body.instructions,
            max_output_tokens=body.max_output_tokens,
            temperature=self.job.sampling.temperature,
            top_p=self.job.sampling.top_p,
            text=body.text.echoed() if body.text is not None else TextConfig(),
            metadata=body.metadata or {},
            previous_response_id=body.previous_response_id,
            conversation=None if conversation is None else ConversationRef(id=conversation),
            store=body.store,
            tool_choice=body.tool_choice or "auto",
            parallel_tool_calls=body.parallel_tool_calls is not False,
            user=body.user,
            safety_identifier=body.safety_identifier,
            prompt_cache_key=body.prompt_cache_key,
        )

    def finished(self, text: str, done: DoneEvent) -> ResponseObject:
        """The whole response once its job is done."""
        cut = done.finish_reason is FinishReason.LENGTH
        status: ResponseStatus = "incomplete" if cut else "completed"
        return self.response(
            status, [self.message(text, "incomplete" if cut else "completed")], done=done
        )


def usage(done: DoneEvent) -> ResponseUsage:
    return ResponseUsage(
        input_tokens=done.usage.prompt_tokens,
        output_tokens=done.usage.completion_tokens,
        total_tokens=done.usage.total_tokens,
    )


async def keep(store: ResponseStore, draft: ResponseDraft, response: ResponseObject) -> None:
    """Store the response (unless `store` is false) and add its turns to its conversation."""
    if draft.body.store:
        await store.save_response(
            StoredResponse(
                response=response,
                input_items=draft.input_items,
                context=[*draft.history, *draft.input_items, *response.output],
            )
        )
    conversation = draft.body.conversation_id
    if conversation is not None:
        # Checked before the job ran; its answer is added whatever its size (see store.py).
        await store.add_items(conversation, [*draft.input_items, *response.output], checked=False)


class ResponseStreamEncoder(StreamEncoder):
    def __init__(self, draft: ResponseDraft, store: ResponseStore) -> None:
        self.draft = draft
        self.store = store
        self.sequence = 0
        self.parts: list[str] = []
        self.final: ResponseObject | None = None
        self.failure: ApiError | None = None  # storing the response failed

    def _frame(self, event: StreamEvent) -> bytes:
        return format_sse(event.model_dump_json(), event=event.type)

    def _next(self) -> int:
        """The next event's sequence number (events are built in the order they are sent)."""
        self.sequence += 1
        return self.sequence - 1

    def start(self) -> list[bytes]:
        draft = self.draft
        started = draft.response("in_progress", [])
        item = draft.message("", "in_progress").model_copy(update={"content": []})
        return [
            self._frame(
                ResponseEvent(
                    type="response.created", sequence_number=self._next(), response=started
                )
            ),
            self._frame(
                ResponseEvent(
                    type="response.in_progress", sequence_number=self._next(), response=started
                )
            ),
            self._frame(
                OutputItemEvent(
                    type="response.output_item.added", sequence_number=self._next(), item=item
                )
            ),
            self._frame(
                ContentPartEvent(
                    type="response.content_part.added",
                    sequence_number=self._next(),
                    item_id=draft.message_id,
                    part=OutputTextContent(text=""),
                )
            ),
        ]

    def token(self, event: TokenEvent) -> list[bytes]:
        self.parts.append(event.text)
        return [
            self._frame(
                TextDeltaEvent(
                    sequence_number=self._next(), item_id=self.draft.message_id, delta=event.text
                )
            )
        ]

    async def settle(self, terminal: TerminalEvent) -> None:
        if terminal.type != "done":
            return
        self.final = self.draft.finished("".join(self.parts), terminal)
        try:
            await keep(self.store, self.draft, self.final)
        except (RedisError, ApiError) as exc:  # e.g. the conversation was deleted meanwhile
            log.warning("response %s could not be stored: %s", self.draft.id, exc)
            self.failure = (
                exc
                if isinstance(exc, ApiError)
                else BackendUnavailableError(
                    "the response could not be stored: the queue backend is unavailable"
                )
            )

    def done(self, event: DoneEvent) -> list[bytes]:
        if self.failure is not None:
            return self.error(self.failure)
        final = self.final or self.draft.finished("".join(self.parts), event)
        message = final.output[0]
        part = message.content[0]
        assert isinstance(part, OutputTextContent)
        item_id = self.draft.message_id
        frames = [
            self._frame(
                TextDoneEvent(sequence_number=self._next(), item_id=item_id, text=part.text)
            ),
            self._frame(
                ContentPartEvent(
                    type="response.content_part.done",
                    sequence_number=self._next(),
                    item_id=item_id,
                    part=part,
                )
            ),
            self._frame(
                OutputItemEvent(
                    type="response.output_item.done", sequence_number=self._next(), item=message
                )
            ),
        ]
        kind = "response.incomplete" if final.status == "incomplete" else "response.completed"
        frames.append(
            self._frame(ResponseEvent(type=kind, sequence_number=self._next(), response=final))
        )
        return frames

    def error(self, error: ApiError) -> list[bytes]:
        failed = self.draft.response(
            "failed", [self.draft.message("".join(self.parts), "incomplete")], error=error
        )
        return [
            self._frame(
                ErrorEvent(
                    sequence_number=self._next(),
                    code=error.code,
                    message=error.message,
                    param=error.param,
                )
            ),
            self._frame(
                ResponseEvent(type="response.failed", sequence_number=self._next(), response=failed)
            ),
        ]
