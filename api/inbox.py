"""What one open stream waits on: its job's events and the latest reading of its record.

The process's event hub (api/hub.py) puts the job's events here as they arrive, and its
watchdog (api/watchdog.py) the record it read in its last round; either can put a Redis
failure instead. The stream waits on one wake-up for all of them.
"""

import asyncio
from collections import deque
from dataclasses import dataclass

import anyio
from redis.exceptions import RedisError

from shared.lifecycle import JobRecord


@dataclass(frozen=True)
class Reading:
    """A job's record as the watchdog read it (None: there is none) and, for a running job,
    whether its worker's heartbeat was alive at that moment."""

    record: JobRecord | None
    worker_alive: bool = True


class Inbox:
    """One stream's events in the order they were published, its record's latest reading
    (an older unread one is replaced: only the newest matters) and the first failure."""

    def __init__(self) -> None:
        self._events: deque[bytes] = deque()
        self._reading: Reading | None = None
        self._failure: RedisError | None = None
        self._wake = asyncio.Event()

    def put_event(self, data: bytes) -> None:
        self._events.append(data)
        self._wake.set()

    def put_replayed(self, events: list[bytes]) -> None:
        """Events read back from the job's log: they come before any still unread."""
        self._events.extendleft(reversed(events))
        self._wake.set()

    def put_reading(self, reading: Reading) -> None:
        self._reading = reading
        self._wake.set()

    def fail(self, exc: RedisError) -> None:
        """Redis went away: the stream gets the events it already has, then `exc`."""
        if self._failure is None:
            self._failure = exc
        self._wake.set()

    def take_event(self) -> bytes | None:
        """The next event, None when there is none yet; raises the failure once every
        event that came before it has been taken."""
        if self._events:
            return self._events.popleft()
        if self._failure is not None:
            raise self._failure
        return None

    def take_reading(self) -> Reading | None:
        reading, self._reading = self._reading, None
        return reading

    async def wait(self, timeout_s: float) -> None:
        """Return once something was put here, or after `timeout_s`."""
        if self._events or self._reading is not None or self._failure is not None:
            return
        self._wake.clear()
        with anyio.move_on_after(timeout_s):
            await self._wake.wait()
