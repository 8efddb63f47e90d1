"""What the app holds for its lifetime, built in the lifespan and reached through deps."""

import time
from dataclasses import dataclass, field

from redis import Redis
from redis.asyncio import Redis as AsyncRedis
from redis.asyncio.retry import Retry as AsyncRetry
from redis.backoff import ExponentialWithJitterBackoff
from redis.retry import Retry

from api.background import BackgroundTasks
from api.hub import EventHub
from api.tokenizers import Tokenizers
from api.watchdog import Watchdog
from shared.lifecycle.api_side import ApiJobs
from shared.metrics import ApiMetrics
from shared.redis_clients import async_redis, sync_redis
from shared.settings import ApiSettings
from shared.tenancy.quota import Quotas


@dataclass
class AppState:
    settings: ApiSettings
    redis: AsyncRedis  # events, registry reads
    sync_redis: Redis  # RQ enqueue, which is synchronous; used from a thread
    tokenizers: Tokenizers
    metrics: ApiMetrics
    jobs: ApiJobs  # job records: read, expire, cancel, position
    hub: EventHub  # every open stream's events, over a few subscriber connections
    watchdog: Watchdog  # reads the records of the jobs open streams wait for
    quotas: Quotas  # API keys' requests and tokens per minute
    background: BackgroundTasks = field(default_factory=BackgroundTasks)  # detached work

    @classmethod
    def connect(cls, settings: ApiSettings) -> "AppState":
        timeout = settings.redis_timeout_s
        # Connections made before a Redis restart are dead; a command (or a subscription)
        # that meets one reconnects and tries again instead of failing its request.
        backoff = ExponentialWithJitterBackoff(base=0.05, cap=0.5)
        return cls.build(
            settings,
            async_redis(
                settings,
                socket_timeout=timeout,
                socket_connect_timeout=timeout,
                retry=AsyncRetry(backoff, 3),
            ),
            sync_redis(
                settings,
                socket_timeout=timeout,
                socket_connect_timeout=timeout,
                retry=Retry(backoff, 3),
            ),
        )

    @classmethod
    def build(
        cls,
        settings: ApiSettings,
        redis: AsyncRedis,
        sync_redis: Redis,
        tokenizers: Tokenizers | None = None,
    ) -> "AppState":
        jobs = ApiJobs(redis, settings.record_ttl_s, settings.events_retention_s)
        return cls(
            settings,
            redis,
            sync_redis,
            tokenizers or Tokenizers(redis, settings.tokenizer_cache_dir),
            ApiMetrics(),
            jobs,
            EventHub(redis, settings.pubsub_connections, settings.redis_timeout_s),
            Watchdog(redis, jobs, settings.watch_interval_s),
            Quotas(redis),
        )

    def job_deadline(self) -> float:
        """When a job submitted now must have started by."""
        return time.time() + self.settings.queue_deadline_s

    def start(self) -> None:
        """Start the background tasks (in the running event loop): the hub's readers and the
        watchdog."""
        self.hub.start()
        self.watchdog.start()

    async def stop(self) -> None:
        """Stop the background tasks; streams still open get a failure."""
        await self.background.aclose()
        await self.watchdog.aclose()
        await self.hub.aclose()

    async def close(self) -> None:
        await self.stop()
        await self.redis.aclose()
        self.sync_redis.close()
        self.metrics.process_exited()
