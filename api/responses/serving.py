"""Neutral events to Responses API objects and stream events; keeping what a response stores.

A response's `output` is its message (left out when the model only called tools), then one
`function_call` item per call (api/tool_calls.py reads the output for them). A streamed
response sends `response.created`, `response.in_progress`, then for its message
`response.output_item.added`, `response.content_part.added`, `response.output_text.delta`...,
`response.output_text.done`, `response.content_part.done`, `response.output_item.done`; for
each call, once the output has ended, `response.output_item.added` (its arguments empty),
`response.function_call_arguments.delta`, `response.function_call_arguments.done` and
`response.output_item.done`; then `response.completed` (or `response.incomplete` when
`max_output_tokens` cut it). An error after the start is an `error` event followed by
`response.failed` (its response `failed`, or `cancelled` when its job was cancelled). The
response is stored (and, if answered, its turns added to its conversation) before its last
event is sent, so a follow-up sent as soon as the stream ends finds it; one that failed or
was cancelled is stored too, with what was sent of its message. A background response is
stored by api/responses/background.py instead.
"""

import logging
import time
from dataclasses import dataclass, field
from typing import Literal

from pydantic import BaseModel
from redis.exceptions import RedisError

from api.errors import (
    ApiError,
    BackendUnavailableError,
    ErrorKind,
    JobCancelledError,
    from_event,
)
from api.openai.serving import call_id
from api.relay import Collected, StreamEncoder
from api.responses.items import (
    FunctionCallItem,
    Item,
    MessageItem,
    OutputItem,
    OutputTextContent,
)
from api.responses.objects import (
    ANSWERED,
    ArgumentsDeltaEvent,
    ArgumentsDoneEvent,
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
from api.tool_calls import CallSplitter, Reply, arguments_json, read_reply
from api.wire import WireLogprob
from shared.events import DoneEvent, FinishReason, TerminalEvent, TokenEvent, TokenLogprob
from shared.job import GenerationJob, ToolCall

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
    history: list[Item]
    input_items: list[Item] = field(default_factory=list)
    created_at: int = field(default_factory=lambda: int(time.time()))

    def __post_init__(self) -> None:
        self.input_items = self.body.input_items()

    @property
    def id(self) -> str:
        return response_id(self.job)

    @property
    def message_id(self) -> str:
        return f"msg_{self.job.id}"

    def message(
        self, text: str, status: str = "completed", logprobs: list[TokenLogprob] | None = None
    ) -> MessageItem:
        return MessageItem.of_text(
            "assistant", text, WireLogprob.all_of(logprobs), id=self.message_id, status=status
        )

    def response(
        self,
        status: ResponseStatus,
        output: list[OutputItem],
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
            top_logprobs=body.top_logprobs or 0,
            truncation=body.truncation or "disabled",
            text=body.text.echoed() if body.text is not None else TextConfig(),
            metadata=body.metadata or {},
            previous_response_id=body.previous_response_id,
            conversation=None if conversation is None else ConversationRef(id=conversation),
            store=body.store,
            background=body.background is True,
            tools=[tool.echoed() for tool in body.tools or []],
            tool_choice=body.echoed_tool_choice(),
            parallel_tool_calls=body.parallel_tool_calls is not False,
            user=body.user,
            safety_identifier=body.safety_identifier,
            prompt_cache_key=body.prompt_cache_key,
        )

    def finished(
        self, reply: Reply, done: DoneEvent, logprobs: list[TokenLogprob] | None = None
    ) -> ResponseObject:
        """The whole response once its job is done: its message (unless the model only called
        tools) with its tokens' `logprobs` if asked for, then its calls."""
        cut = done.finish_reason is FinishReason.LENGTH
        status: ResponseStatus = "incomplete" if cut else "completed"
        output: list[OutputItem] = []
        if reply.text or not reply.calls:
            message_status = "incomplete" if cut else "completed"
            output.append(self.message(reply.text, message_status, logprobs))
        output.extend(function_call(call) for call in reply.calls)
        return self.response(status, output, done=done)

    def collected(self, out: Collected) -> ResponseObject:
        """The whole response of the job's whole output, read for calls."""
        return self.finished(read_reply(self.job, out.text), out.done, out.choices[0].logprobs)

    def ended(self, error: ApiError, output: list[OutputItem] | None = None) -> ResponseObject:
        """The response of a job that ended without an answer, `cancelled` or `failed`, with
        the `output` it had sent (a stream's partial message)."""
        if isinstance(error, JobCancelledError):
            return self.response("cancelled", output or [])
        return self.response("failed", output or [], error=error)

    def turns(self, response: ResponseObject) -> list[Item]:
        """What the response adds to its conversation: its input and output if it was
        answered, nothing if it failed or was cancelled."""
        return [*self.input_items, *response.output] if response.status in ANSWERED else []

    def stored(self, response: ResponseObject) -> StoredResponse:
        """What is kept of the response: its input, and the context a follow-up continues
        (none while it is unfinished, or if it failed or was cancelled: it cannot be
        continued)."""
        context: list[Item] = [*self.history, *self.input_items, *response.output]
        return StoredResponse(
            response=response,
            input_items=self.input_items,
            context=context if response.status in ANSWERED else [],
        )


class ResponsesFormat(BaseModel):
    """How a background response wants its answer, kept with its job (api/formats.py): what
    rebuilds its draft on any replica, to finish it or to stream it again."""

    kind: Literal["responses"] = "responses"
    request: CreateResponseRequest
    history: list[Item]
    created_at: int

    def draft(self, job: GenerationJob) -> ResponseDraft:
        return ResponseDraft(job, self.request, self.history, created_at=self.created_at)

    def encoder(self, job: GenerationJob, prompt_tokens: int) -> "ResponseStreamEncoder":
        return ResponseStreamEncoder(self.draft(job), None)

    def whole(self, job: GenerationJob, out: Collected) -> ResponseObject:
        return self.draft(job).collected(out)


def function_call(call: ToolCall) -> FunctionCallItem:
    return FunctionCallItem(
        id=f"fc_{call.id}", call_id=call_id(call), name=call.name, arguments=arguments_json(call)
    )


def usage(done: DoneEvent) -> ResponseUsage:
    return ResponseUsage(
        input_tokens=done.usage.prompt_tokens,
        output_tokens=done.usage.completion_tokens,
        total_tokens=done.usage.total_tokens,
    )


async def keep(store: ResponseStore, draft: ResponseDraft, response: ResponseObject) -> None:
    """Store the response (unless `store` is false) and, if it was answered, add its turns to
    its conversation (a failed or cancelled one is kept for `retrieve` alone)."""
    if draft.body.store:
        await store.save_response(draft.stored(response))
    conversation, turns = draft.body.conversation_id, draft.turns(response)
    if conversation is not None and turns:
        # Checked before the job ran; its answer is added whatever its size (see store.py).
        await store.add_items(conversation, turns, checked=False)


async def keep_ended(store: ResponseStore, draft: ResponseDraft, error: ApiError) -> None:
    """Store the response of a job that ended without an answer, if its store answers: the
    caller is answered with `error` either way."""
    try:
        await keep(store, draft, draft.ended(error))
    except (RedisError, ApiError) as exc:
        log.warning("response %s could not be stored: %s", draft.id, exc)


class ResponseStreamEncoder(StreamEncoder):
    """Text deltas as they come; when the job offers tools, the output is read for calls
    (api/tool_calls.py) and the message is opened only once there is text that is more than
    white space, so that an answer of calls alone has no message."""

    def __init__(self, draft: ResponseDraft, store: ResponseStore | None) -> None:
        """`store`: where the response is kept once done (None: it is kept by another, as a
        background response is)."""
        self.draft = draft
        self.store = store
        self.sequence = 0
        self.splitter = CallSplitter(draft.job)
        self.opened = False  # the message's item and part were added
        self.sent: list[str] = []  # the message's text sent so far
        self.held = ""  # white space before the message is opened
        self.logprobs: list[TokenLogprob] = []  # every token's, when asked for
        self.unsent_logprobs: list[TokenLogprob] = []  # of the tokens of `held`
        self.reply: Reply | None = None  # once the output has ended
        self.final: ResponseObject | None = None
        self.failure: ApiError | None = None  # storing the response failed

    def _frame(self, event: StreamEvent) -> bytes:
        return format_sse(event.model_dump_json(), event=event.type)

    def _next(self) -> int:
        """The next event's sequence number (events are built in the order they are sent)."""
        self.sequence += 1
        return self.sequence - 1

    def start(self) -> list[bytes]:
        started = self.draft.response("in_progress", [])
        # A background response is created `queued` (as OpenAI's are); its job then runs.
        created = self.draft.response("queued", []) if self.draft.body.background else started
        frames = [
            self._frame(
                ResponseEvent(
                    type="response.created", sequence_number=self._next(), response=created
                )
            ),
            self._frame(
                ResponseEvent(
                    type="response.in_progress", sequence_number=self._next(), response=started
                )
            ),
        ]
        if not self.draft.job.offers_tools:
            frames.extend(self._open())
        return frames

    def _open(self) -> list[bytes]:
        self.opened = True
        item = self.draft.message("", "in_progress").model_copy(update={"content": []})
        return [
            self._frame(
                OutputItemEvent(
                    type="response.output_item.added", sequence_number=self._next(), item=item
                )
            ),
            self._frame(
                ContentPartEvent(
                    type="response.content_part.added",
                    sequence_number=self._next(),
                    item_id=self.draft.message_id,
                    part=OutputTextContent(text=""),
                )
            ),
        ]

    def _text(self, text: str) -> list[bytes]:
        """Text of the message, opened first if need be; with the log-probabilities of the
        tokens it completes (those of text held back go with the text, when it is sent)."""
        frames: list[bytes] = []
        if not self.opened:
            self.held += text
            if not self.held.strip():
                return []
            text, self.held = self.held, ""
            frames.extend(self._open())
        if text:
            self.sent.append(text)
            logprobs, self.unsent_logprobs = WireLogprob.all_of(self.unsent_logprobs), []
            frames.append(
                self._frame(
                    TextDeltaEvent(
                        sequence_number=self._next(),
                        item_id=self.draft.message_id,
                        delta=text,
                        logprobs=logprobs,
                    )
                )
            )
        return frames

    def token(self, event: TokenEvent) -> list[bytes]:
        if event.logprobs is not None:
            self.logprobs.extend(event.logprobs)
            self.unsent_logprobs.extend(event.logprobs)
        return self._text(self.splitter.feed(event.text))

    def _reply(self) -> Reply:
        """The output read once it has ended: the message's whole text (that sent and that
        still to send) and the calls."""
        if self.reply is None:
            end = self.splitter.finish()
            text = "".join(self.sent) + self.held + end.text
            kept = self.opened or bool(text.strip()) or not end.calls
            self.held += end.text
            self.reply = Reply(text if kept else "", end.calls)
        return self.reply

    def _finished(self, done: DoneEvent) -> ResponseObject:
        asked = self.draft.job.sampling.logprobs is not None
        return self.draft.finished(self._reply(), done, self.logprobs if asked else None)

    async def settle(self, terminal: TerminalEvent) -> None:
        if terminal.type == "embeddings":
            return
        if terminal.type == "done":
            self.final = self._finished(terminal)
        else:
            self.final = self.draft.ended(from_event(terminal), self._partial())
        if self.store is None:
            return
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
        final = self.final or self._finished(event)
        frames: list[bytes] = []
        for index, item in enumerate(final.output):
            match item:
                case MessageItem():
                    frames.extend(self._message_done(item))
                case FunctionCallItem():
                    frames.extend(self._call(index, item))
        kind = "response.incomplete" if final.status == "incomplete" else "response.completed"
        frames.append(
            self._frame(ResponseEvent(type=kind, sequence_number=self._next(), response=final))
        )
        return frames

    def _message_done(self, message: MessageItem) -> list[bytes]:
        """The rest of the message's text, then its ends."""
        frames = [] if self.opened else self._open()
        if self.held:
            frames.extend(self._text(self.held))
            self.held = ""
        part = message.content[0]
        assert isinstance(part, OutputTextContent)
        item_id = self.draft.message_id
        return [
            *frames,
            self._frame(
                TextDoneEvent(
                    sequence_number=self._next(),
                    item_id=item_id,
                    text=part.text,
                    logprobs=part.logprobs,
                )
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

    def _call(self, index: int, call: FunctionCallItem) -> list[bytes]:
        """A call, whole: added with empty arguments, its arguments in one delta, done."""
        added = call.model_copy(update={"arguments": "", "status": "in_progress"})
        return [
            self._frame(
                OutputItemEvent(
                    type="response.output_item.added",
                    sequence_number=self._next(),
                    output_index=index,
                    item=added,
                )
            ),
            self._frame(
                ArgumentsDeltaEvent(
                    sequence_number=self._next(),
                    item_id=call.id,
                    output_index=index,
                    delta=call.arguments,
                )
            ),
            self._frame(
                ArgumentsDoneEvent(
                    sequence_number=self._next(),
                    item_id=call.id,
                    output_index=index,
                    name=call.name,
                    arguments=call.arguments,
                )
            ),
            self._frame(
                OutputItemEvent(
                    type="response.output_item.done",
                    sequence_number=self._next(),
                    output_index=index,
                    item=call,
                )
            ),
        ]

    def _partial(self) -> list[OutputItem]:
        """What was sent of the message before the job ended without an answer."""
        return [self.draft.message("".join(self.sent), "incomplete")] if self.opened else []

    def error(self, error: ApiError) -> list[bytes]:
        failed = self.draft.ended(error, self._partial())  # `cancelled` or `failed`
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


class ReplayEncoder(ResponseStreamEncoder):
    """A background response's stream sent again from its job's start (the job's log): the
    same events with the same sequence numbers, of which those up to `starting_after` are
    left out. It stores nothing."""

    def __init__(self, draft: ResponseDraft, starting_after: int) -> None:
        super().__init__(draft, None)
        self.starting_after = starting_after

    def _frame(self, event: StreamEvent) -> bytes:
        return b"" if event.sequence_number <= self.starting_after else super()._frame(event)

    def start(self) -> list[bytes]:
        return _sent(super().start())

    def token(self, event: TokenEvent) -> list[bytes]:
        return _sent(super().token(event))

    def done(self, event: DoneEvent) -> list[bytes]:
        return _sent(super().done(event))

    def error(self, error: ApiError) -> list[bytes]:
        return _sent(super().error(error))


def _sent(frames: list[bytes]) -> list[bytes]:
    return [frame for frame in frames if frame]
