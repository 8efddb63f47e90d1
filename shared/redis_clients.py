"""The one place Redis clients are built, sync and async: from `redis_url`, or through Redis
Sentinel when `redis_sentinels` is set.

Through Sentinel a client asks the Sentinels for the current primary whenever it opens a
connection, so after a failover (the primary died, a replica was promoted) the next connection
goes to the new primary without a restart; a connection still open to a primary that came back
as a replica is dropped at its first refused write (redis-py's `SentinelManagedConnection`).
While no primary answers, commands fail with a `ConnectionError` (the API answers 503).
"""

from typing import Any

from redis import Redis
from redis.asyncio import Redis as AsyncRedis
from redis.asyncio.sentinel import Sentinel as AsyncSentinel
from redis.connection import parse_url
from redis.sentinel import Sentinel

from shared.settings import Settings

# How long one Sentinel may take to answer "who is the primary" before the next is asked.
_SENTINEL_TIMEOUT_S = 0.5


def sync_redis(settings: Settings, **options: Any) -> Redis:
    """A client of the primary; `options` are redis-py's (timeouts, retry, ...)."""
    if not settings.redis_sentinels:
        return Redis.from_url(settings.redis_url, **options)
    sentinel = Sentinel(
        settings.redis_sentinels, sentinel_kwargs=_sentinel_kwargs(settings), **_db(settings)
    )
    client: Redis = sentinel.master_for(settings.redis_master_name, redis_class=Redis, **options)
    return client


def async_redis(settings: Settings, **options: Any) -> AsyncRedis:
    """An asyncio client of the primary; `options` are redis-py's."""
    if not settings.redis_sentinels:
        return AsyncRedis.from_url(settings.redis_url, **options)
    sentinel = AsyncSentinel(
        settings.redis_sentinels, sentinel_kwargs=_sentinel_kwargs(settings), **_db(settings)
    )
    client: AsyncRedis = sentinel.master_for(
        settings.redis_master_name, redis_class=AsyncRedis, **options
    )
    return client


def _db(settings: Settings) -> dict[str, Any]:
    """What of `redis_url` applies to the primary the Sentinels name: database, credentials."""
    parsed = parse_url(settings.redis_url)  # type: ignore[no-untyped-call]
    return {k: v for k, v in parsed.items() if k in ("db", "username", "password")}


def _sentinel_kwargs(settings: Settings) -> dict[str, Any]:
    timeout = min(settings.redis_timeout_s, _SENTINEL_TIMEOUT_S)
    return {"socket_timeout": timeout, "socket_connect_timeout": timeout}
