"""Every open stream's events over a few subscriber connections per API process.

A Redis connection subscribed to one job's channel per stream would make an API process hold
as many connections as it has open streams (10,000 streams: Redis's default `maxclients`).
The hub holds `pubsub_connections` of them instead: a job's channel goes to one by a hash of
its name, and one reader task per connection hands every message to the inbox (api/inbox.py)
of the stream waiting for that channel.

A subscription counts only once Redis has confirmed it: `subscribe` returns after the
connection's reader saw the `subscribe` reply for that channel, so a job admitted afterwards
cannot publish an event nobody listens to. A connection opens with its first subscription and
stays open; one silent for the Redis timeout gets a PING. When a connection is lost (or its
PING or a subscription goes unanswered) the reader opens a new one and subscribes it to every
live channel; if Redis stays away (`_GIVE_UP_AFTER` failed attempts in a row, about a second)
the streams of that connection are failed instead of left waiting. Each connection is read by
its reader alone, and a new one only after the old one was closed, so no event reaches a
stream twice; events published while a connection was down are lost, which the stream notices
by the token indices (api/stream.py).
"""

import asyncio
import contextlib
import logging
import zlib
from collections.abc import Callable

from redis.asyncio import Redis as AsyncRedis
from redis.asyncio.connection import AbstractConnection
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialWithJitterBackoff, NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

from api.inbox import Inbox
from shared import keys

log = logging.getLogger(__name__)

# Failed connection attempts in a row after which a subscriber fails its streams, like the
# command client's retries (api/state.py); later subscriptions try again.
_GIVE_UP_AFTER = 4
_BACKOFF = ExponentialWithJitterBackoff(base=0.05, cap=0.5)

Connect = Callable[[], AbstractConnection]


class EventHub:
    """The process's subscriber connections; `start` it before the first `subscribe`."""

    def __init__(self, redis: AsyncRedis, connections: int, timeout_s: float) -> None:
        connect = _connection_factory(redis)
        self._subscribers = [_Subscriber(i, connect, timeout_s) for i in range(connections)]

    def start(self) -> None:
        for subscriber in self._subscribers:
            subscriber.start()

    async def aclose(self) -> None:
        """Stop reading; streams still listening get a failure."""
        for subscriber in self._subscribers:
            await subscriber.aclose()

    async def subscribe(self, job_id: str, inbox: Inbox) -> None:
        """Deliver the job's events to `inbox` from now on (several streams of one job share
        one subscription); returns once Redis confirmed the subscription, raises a RedisError
        when it did not within the Redis timeout."""
        channel = keys.events_channel(job_id).encode()
        await self._subscriber(channel).subscribe(channel, inbox)

    async def unsubscribe(self, job_id: str, inbox: Inbox) -> None:
        """Stop delivering the job's events to `inbox` (a no-op if it gets none); the channel
        is unsubscribed with its last inbox."""
        channel = keys.events_channel(job_id).encode()
        await self._subscriber(channel).unsubscribe(channel, inbox)

    @property
    def connected(self) -> int:
        """Subscriber connections open now."""
        return sum(s.connected for s in self._subscribers)

    @property
    def channels(self) -> int:
        """Channels with a listening stream now."""
        return sum(s.channels for s in self._subscribers)

    def _subscriber(self, channel: bytes) -> "_Subscriber":
        return self._subscribers[zlib.crc32(channel) % len(self._subscribers)]


class _Subscriber:
    """One subscriber connection, the channels hashed to it, and the task that reads it.

    Only the reader opens and reads the connection; `subscribe` and `unsubscribe` send on it
    too, but never reopen it (a closed one is the reader's to replace).
    """

    def __init__(self, index: int, connect: Connect, timeout_s: float) -> None:
        self._index = index
        self._connect = connect
        self._timeout_s = timeout_s
        self._inboxes: dict[bytes, list[Inbox]] = {}  # the streams listening, per channel
        self._unconfirmed: dict[bytes, asyncio.Future[None]] = {}
        # The connection being read; every channel in `_inboxes` is subscribed on it, or
        # about to be. None while there is none: the reader subscribes them all on the next.
        self._conn: AbstractConnection | None = None
        self._wanted = asyncio.Event()  # a channel waits for a connection
        self._failures = 0  # connections in a row that failed before Redis answered on them
        self._task: asyncio.Task[None] | None = None

    @property
    def connected(self) -> bool:
        return self._conn is not None

    @property
    def channels(self) -> int:
        return len(self._inboxes)

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name=f"events-subscriber-{self._index}")

    async def aclose(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        self._fail_all(RedisConnectionError("the API is shutting down"))

    async def subscribe(self, channel: bytes, inbox: Inbox) -> None:
        if self._task is None:
            raise RuntimeError("the event hub was not started")
        listening = self._inboxes.get(channel)
        if listening is not None:  # another stream of the same job: share its subscription
            listening.append(inbox)
            pending = self._unconfirmed.get(channel)
            try:
                if pending is not None:
                    await asyncio.wait_for(asyncio.shield(pending), self._timeout_s)
            except TimeoutError:
                self._forget(channel, inbox)
                raise RedisTimeoutError("Redis did not confirm the subscription") from None
            except BaseException:
                self._forget(channel, inbox)
                raise
            return
        confirmed = asyncio.get_running_loop().create_future()
        self._inboxes[channel] = [inbox]
        self._unconfirmed[channel] = confirmed
        self._wanted.set()
        conn = self._conn
        try:
            if conn is not None:  # else the reader subscribes it on the next connection
                # A failed send closes `conn`; the reader then subscribes it on the next one.
                with contextlib.suppress(RedisError, OSError):
                    await _send(conn, "SUBSCRIBE", channel)
            await asyncio.wait_for(asyncio.shield(confirmed), self._timeout_s)
        except TimeoutError:
            self._forget(channel, inbox)
            if self._conn is not None:  # it does not answer: the reader opens another
                await self._conn.disconnect(nowait=True)
            raise RedisTimeoutError("Redis did not confirm the subscription") from None
        except BaseException:
            self._forget(channel, inbox)
            raise

    async def unsubscribe(self, channel: bytes, inbox: Inbox) -> None:
        if inbox not in self._inboxes.get(channel, ()):
            return
        self._forget(channel, inbox)
        conn = self._conn
        if channel not in self._inboxes and conn is not None:  # else not subscribed again
            with contextlib.suppress(RedisError, OSError):
                await _send(conn, "UNSUBSCRIBE", channel)

    def _forget(self, channel: bytes, inbox: Inbox) -> None:
        listening = self._inboxes.get(channel)
        if listening is not None and inbox in listening:
            listening.remove(inbox)
            if not listening:
                del self._inboxes[channel]
                pending = self._unconfirmed.pop(channel, None)
                if pending is not None and not pending.done():
                    pending.cancel()

    async def _run(self) -> None:
        while True:
            if not self._inboxes:  # connect only for a listener (Redis may be away a while)
                self._wanted.clear()
                await self._wanted.wait()
            if self._failures:
                await asyncio.sleep(_BACKOFF.compute(self._failures))
            conn: AbstractConnection | None = None
            try:
                conn = self._connect()
                await conn.connect()  # type: ignore[no-untyped-call]
                await self._serve(conn)
            except Exception as exc:
                if not isinstance(exc, RedisError | OSError):
                    log.exception("events subscriber %d failed; reconnecting", self._index)
                elif not self._failures:  # the first of a series: the rest would only repeat it
                    log.warning("events subscriber %d: redis unavailable: %s", self._index, exc)
                self._failures += 1
                if self._failures >= _GIVE_UP_AFTER:
                    self._failures = 0
                    log.warning(
                        "events subscriber %d: redis still unavailable; %d streams end",
                        self._index,
                        len(self._inboxes),
                    )
                    lost = exc if isinstance(exc, RedisError) else RedisConnectionError(str(exc))
                    self._fail_all(lost)
            finally:
                self._conn = None
                if conn is not None:
                    with contextlib.suppress(Exception):
                        await conn.disconnect(nowait=True)

    async def _serve(self, conn: AbstractConnection) -> None:
        """Subscribe `conn` to every live channel, then hand out what it reads until it fails.

        A connection silent for the Redis timeout gets a PING; silent for another, it is
        taken for dead (a half-open TCP connection reads nothing, forever).
        """
        # No await between these two lines: a `subscribe` from now on sends on `conn` itself,
        # one from before is in `channels`.
        self._conn = conn
        channels = list(self._inboxes)
        if channels:
            await _send(conn, "SUBSCRIBE", *channels)
        pinged = False
        while True:
            if not conn.is_connected:  # closed by a failed send or an unconfirmed subscribe
                raise RedisConnectionError("the subscriber connection was closed")
            # `push_request`: under RESP3 pub/sub replies are pushes, returned like RESP2's.
            reply = await conn.read_response(
                timeout=self._timeout_s, disconnect_on_error=False, push_request=True
            )
            if reply is None:
                if pinged:
                    raise RedisTimeoutError("Redis did not answer a PING")
                await _send(conn, "PING")
                pinged = True
                continue
            pinged = False
            self._failures = 0  # Redis answers on this connection
            await self._dispatch(conn, reply)

    async def _dispatch(self, conn: AbstractConnection, reply: object) -> None:
        if not isinstance(reply, list) or len(reply) < 2:
            return  # a PING's answer
        kind, channel = reply[0], reply[1]
        if kind == b"message":
            listening = self._inboxes.get(channel)
            if listening is not None:
                for inbox in listening:
                    inbox.put_event(reply[2])
            else:  # its stream closed while the connection subscribed it again
                await _send(conn, "UNSUBSCRIBE", channel)
        elif kind == b"subscribe":
            confirmed = self._unconfirmed.pop(channel, None)
            if confirmed is not None and not confirmed.done():
                confirmed.set_result(None)
            if channel not in self._inboxes:
                await _send(conn, "UNSUBSCRIBE", channel)

    def _fail_all(self, exc: RedisError) -> None:
        """Redis is away: every stream of this connection ends instead of waiting."""
        for confirmed in self._unconfirmed.values():
            if not confirmed.done():
                confirmed.set_exception(exc)
        for listening in self._inboxes.values():
            for inbox in listening:
                inbox.fail(exc)
        self._unconfirmed.clear()
        self._inboxes.clear()


async def _send(conn: AbstractConnection, *args: bytes | str) -> None:
    """Send a command on `conn` if it is still open: redis-py would silently open a closed
    one again, subscribed to nothing."""
    if conn.is_connected:
        await conn.send_command(*args, check_health=False)


def _connection_factory(redis: AsyncRedis) -> Connect:
    """New connections to `redis`'s server, named for CLIENT LIST, that never retry on their
    own (the reader decides) and never run redis-py's health check, whose PING would read a
    reply from under the reader (the reader sends its own)."""
    pool = redis.connection_pool
    kwargs = {
        **pool.connection_kwargs,
        "retry": Retry(NoBackoff(), 0),
        "health_check_interval": 0,
        "client_name": keys.events_client_name(),
        "decode_responses": False,
    }
    return lambda: pool.connection_class(**kwargs)
