"""Publishes jobs' events on their Redis pub/sub channels and appends them to their logs
(shared/eventlog.py), a batch per round trip.

Every slot of a worker publishes its job's tokens; one thread sends whatever has gathered in
one pipeline. A decode step hands all its slots their tokens at once, so waiting
`coalesce_s` after the first event of a batch lets one round trip carry the whole step. Events
keep their order (one queue), so a job's terminal event always follows its tokens.
"""

import logging
import threading
import time
from collections import deque

from redis import Redis
from redis.exceptions import RedisError

from shared.eventlog import append_and_publish
from shared.events import Event

log = logging.getLogger(__name__)


# How long a job's events are kept after its last one unless told (Settings.events_retention_s).
DEFAULT_RETENTION_S = 600


class RedisPublisher:
    """Publishes each event at once (one round trip each): tests and single-job tools."""

    def __init__(self, redis: Redis, retention_s: int = DEFAULT_RETENTION_S) -> None:
        self._redis = redis
        self._retention_s = retention_s

    def publish(self, job_id: str, event: Event) -> None:
        pipe = self._redis.pipeline(transaction=False)
        append_and_publish(pipe, [(job_id, event.model_dump_json())], self._retention_s)
        pipe.execute()


class BatchingPublisher:
    """Queues events and publishes them from one thread, one pipeline per batch."""

    def __init__(
        self, redis: Redis, retention_s: int = DEFAULT_RETENTION_S, coalesce_s: float = 0.002
    ) -> None:
        self._redis = redis
        self._retention_s = retention_s
        self._coalesce_s = coalesce_s
        self._pending: deque[tuple[str, str]] = deque()
        self._ready = threading.Condition()
        self._closed = False
        self.batches = 0  # round trips made
        self.published = 0  # events sent
        self._thread = threading.Thread(target=self._run, name="publisher", daemon=True)
        self._thread.start()

    def publish(self, job_id: str, event: Event) -> None:
        with self._ready:
            self._pending.append((job_id, event.model_dump_json()))
            if len(self._pending) == 1:
                self._ready.notify()

    def close(self) -> None:
        """Send what is queued, then stop."""
        with self._ready:
            self._closed = True
            self._ready.notify()
        self._thread.join(timeout=10)

    def _run(self) -> None:
        while True:
            with self._ready:
                while not self._pending and not self._closed:
                    self._ready.wait()
                if not self._pending and self._closed:
                    return
            time.sleep(self._coalesce_s)  # let the rest of this step's tokens arrive
            with self._ready:
                batch = list(self._pending)
                self._pending.clear()
            self._send(batch)

    def _send(self, batch: list[tuple[str, str]]) -> None:
        pipe = self._redis.pipeline(transaction=False)
        append_and_publish(pipe, batch, self._retention_s)
        try:
            pipe.execute()
        except RedisError as exc:  # the listeners' streams end with their own Redis error
            log.warning("could not publish %d events: %s", len(batch), exc)
            return
        self.batches += 1
        self.published += len(batch)
