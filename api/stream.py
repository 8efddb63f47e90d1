"""A submitted job's events as the API reads them back, with a watchdog on every wait.

The events come through the process's event hub (api/hub.py), and readings of the job's
record from the process's watchdog (api/watchdog.py), both into the stream's inbox. The stream
acts on each reading: a job still queued at its deadline is expired, a job whose worker died
is requeued or failed (shared/lifecycle), and a stream that ends before its job did detaches
from it (client gone, server shutting down, error): with no other client listening, the job
is cancelled after the stream's grace, unless a client comes back for it meanwhile.

A stream may start after the job's first events (a resumed stream, a retried request): it
begins with what the job's log holds from its start position (shared/eventlog.py), then the
live events, of which those it already has are skipped (by their position). Live token events
that went missing (published while the hub reconnected) are read back from the log too.
"""

import contextlib
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from types import TracebackType
from typing import assert_never

import anyio
from redis.exceptions import RedisError

from api.inbox import Inbox, Reading
from api.observe import RequestObservation
from api.state import AppState
from shared.eventlog import read_log
from shared.events import (
    ChoiceEndEvent,
    DoneEvent,
    EmbeddingsEvent,
    ErrorCode,
    ErrorEvent,
    Event,
    TokenEvent,
    parse_event,
)
from shared.job import AnyJob
from shared.lifecycle import JobRecord, JobStatus
from shared.lifecycle.admission import Reclaimed, reclaim

log = logging.getLogger(__name__)

# A stream still queued sends a position notice at least this often.
_NOTICE_EVERY_S = 10.0


@dataclass(frozen=True)
class Queued:
    """Not an event of the job: a notice that it is still waiting in line.

    `position` is 1 for the next job to start (None: not known at this moment).
    """

    position: int | None


@dataclass(frozen=True)
class KeepAlive:
    """Not an event of the job: nothing happened for `keepalive_s` (a long prefill, a long
    queue); a stream sends a comment so proxies and clients see the connection is alive."""


Notice = Queued | KeepAlive


class JobStream:
    """The events of one submitted job, ending with exactly one terminal event.

    Every wait here has a deadline: a worker that falls silent, a job that outlives its queue
    deadline, a worker that dies and Redis going away all end the stream with an error event.
    Closing the stream before its terminal event cancels the job.
    """

    def __init__(
        self,
        state: AppState,
        inbox: Inbox,
        job: AnyJob,
        prompt_tokens: int,
        observation: RequestObservation | None = None,
        *,
        after: int | None = None,
        grace_s: float = 0.0,
    ) -> None:
        """`after`: the events the client already has (None: a new stream, from the start);
        `grace_s`: how long the job may run without a listener once this stream closed."""
        self.job = job
        self.after = after
        self._grace_s = grace_s
        self._state = state
        self._inbox = inbox  # subscribed and watched by `submit`; released by `aclose`
        self.prompt_tokens = prompt_tokens  # counted by the API, as the worker will count them
        self._observation = observation
        self._submitted_at = time.time()
        # The first event may wait for the whole queue deadline plus the prompt's evaluation.
        self._silent_until = max(job.deadline, time.time()) + state.settings.event_timeout_s
        self._seen_any = False
        self._next_index = after or 0  # the next event's position in the job's log
        self._ended = False
        self._closed = False
        self._notice: tuple[int | None, float] | None = None  # last position sent, when
        self._ended_readings = 0  # readings in a row that found the job ended
        self._quiet_since = time.time()  # when the stream last had something to send

    async def __aenter__(self) -> "JobStream":
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    @property
    def position(self) -> int:
        """The position in the job's log of the next event (tokens so far, with `after`)."""
        return self._next_index

    async def aclose(self) -> None:
        """Stop listening; detach from the job unless it has ended (api/stream.py's doc)."""
        if self._closed:
            return
        self._closed = True
        with anyio.CancelScope(shield=True):
            if not self._ended:
                try:
                    await self._state.jobs.detach(self.job.id, self._grace_s)
                    log.info(
                        "job %s: its request left; cancelled unless a client is back within %gs",
                        self.job.id,
                        self._grace_s,
                    )
                except RedisError as exc:
                    log.warning("could not detach from job %s: %s", self.job.id, exc)
            self._state.watchdog.unwatch(self.job.id)
            await self._state.hub.unsubscribe(self.job.id, self._inbox)

    async def events(self, streaming: bool = False) -> AsyncIterator[Event | Notice]:
        """The job's events; `streaming` adds `Queued` notices while it waits and a
        `KeepAlive` after every `sse_keepalive_s` without anything to send."""
        while not self._ended:
            try:
                item = await self._next(streaming)
            except RedisError as exc:
                log.warning("job %s: redis unavailable: %s", self.job.id, exc)
                item = ErrorEvent(
                    code=ErrorCode.BACKEND_UNAVAILABLE, message="the queue backend is unavailable"
                )
            if isinstance(item, DoneEvent | EmbeddingsEvent | ErrorEvent):
                self._ended = True
            if self._observation is not None and not isinstance(item, Queued | KeepAlive):
                self._observation.event(item)
            self._quiet_since = time.time()
            yield item

    async def _next(self, streaming: bool) -> Event | Notice:
        keepalive_s = self._state.settings.sse_keepalive_s
        while True:
            data = self._inbox.take_event()  # raises the hub's or the watchdog's RedisError
            if data is not None:
                self._seen_any = True
                self._silent_until = time.time() + self._state.settings.event_timeout_s
                event = await self._in_order(parse_event(data))
                if event is not None:
                    return event
                continue
            reading = self._inbox.take_reading()
            if reading is not None:
                item = await self._watch(reading, streaming)
                if item is not None:
                    return item
                continue
            now = time.time()
            if now >= self._silent_until:
                return self._silence_error()
            if streaming and now - self._quiet_since >= keepalive_s:
                return KeepAlive()
            wake = self._silent_until
            if streaming:
                wake = min(wake, self._quiet_since + keepalive_s)
            await self._inbox.wait(wake - now)

    async def _in_order(self, event: Event) -> Event | None:
        """The event; None for one the stream already has (read from the log, then live) or
        one before events that went missing (published while the hub was reconnecting to
        Redis), which are then read back from the log; an error when the log lacks them too,
        as the answer would silently lack them."""
        if not isinstance(event, TokenEvent | ChoiceEndEvent):
            return event
        if event.index < self._next_index:
            return None
        if event.index > self._next_index:
            missing = await read_log(self._state.redis, self.job.id, self._next_index)
            first = parse_event(missing[0]) if missing else None
            if isinstance(first, TokenEvent | ChoiceEndEvent) and first.index == self._next_index:
                self._inbox.put_replayed(missing)
                return None
            log.warning(
                "job %s: token %d arrived, %d expected; events were lost",
                self.job.id,
                event.index,
                self._next_index,
            )
            with contextlib.suppress(RedisError):
                await self._state.jobs.cancel(self.job.id)  # nobody will read the rest
            return ErrorEvent(
                code=ErrorCode.BACKEND_UNAVAILABLE, message="some of the job's output was lost"
            )
        self._next_index += 1
        return event

    async def _watch(self, reading: Reading, positions: bool) -> ErrorEvent | Queued | None:
        """Act on a reading of the job's record: expiry, a dead worker; report the position."""
        record, now = reading.record, time.time()
        if record is None:
            return ErrorEvent(
                code=ErrorCode.BACKEND_UNAVAILABLE, message="the queue backend lost the job"
            )
        if not record.status.terminal:
            self._ended_readings = 0
        notice_due = now - self._submitted_at >= self._state.settings.queue_notice_after_s
        if record.status is JobStatus.QUEUED:
            if now > record.deadline:
                if await self._state.jobs.expire(record) is JobStatus.EXPIRED:
                    return _deadline_error()
            elif positions and notice_due:
                return await self._position_notice(record, now)
        elif record.status is JobStatus.RUNNING:
            if record.worker and not reading.worker_alive:
                return await self._reclaim(record.worker)
        else:
            # Its terminal event should be on its way; one interval later, it is not coming.
            self._ended_readings += 1
            if self._ended_readings > 1:
                return _from_record(record)
        return None

    async def _position_notice(self, record: JobRecord, now: float) -> Queued | None:
        ahead = await self._state.jobs.position(record)
        position = None if ahead is None else ahead + 1
        if self._notice is not None:
            last, at = self._notice
            if last == position and now - at < _NOTICE_EVERY_S:
                return None
        self._notice = (position, now)
        return Queued(position)

    async def _reclaim(self, worker: str) -> ErrorEvent | None:
        outcome, self.job = await anyio.to_thread.run_sync(
            reclaim, self._state.sync_redis, self.job, worker, self._state.settings
        )
        log.warning("job %s: worker %s died; %s", self.job.id, worker, outcome)
        if outcome is Reclaimed.FAILED:  # it had streamed, or had no attempt left
            return ErrorEvent(code=ErrorCode.WORKER_LOST, message="the worker running the job died")
        if outcome is Reclaimed.REQUEUED:
            self._silent_until = self.job.deadline + self._state.settings.event_timeout_s
        return None

    def _silence_error(self) -> ErrorEvent:
        if self._seen_any:
            return ErrorEvent(code=ErrorCode.WORKER_LOST, message="the worker stopped responding")
        return _deadline_error()


def _deadline_error() -> ErrorEvent:
    return ErrorEvent(
        code=ErrorCode.DEADLINE_EXCEEDED, message="no worker started the job before its deadline"
    )


def _from_record(record: JobRecord) -> ErrorEvent:
    """The terminal event of a job that ended without its event reaching this stream."""
    lost = ErrorEvent(code=ErrorCode.INTERNAL, message="the job's output was lost")
    match record.status:
        case JobStatus.CANCELLED:
            return ErrorEvent(code=ErrorCode.CANCELLED, message="the job was cancelled")
        case JobStatus.EXPIRED:
            return _deadline_error()
        case JobStatus.FAILED if record.error == ErrorCode.WORKER_LOST:
            return ErrorEvent(code=ErrorCode.WORKER_LOST, message="the worker running the job died")
        case JobStatus.FAILED | JobStatus.DONE:
            return lost
        case JobStatus.QUEUED | JobStatus.RUNNING:  # not ended: never asked
            return lost
        case _:
            assert_never(record.status)
