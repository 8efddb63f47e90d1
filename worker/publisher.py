"""Publishes a job's events on its Redis pub/sub channel."""

from redis import Redis

from shared import keys
from shared.events import DoneEvent, ErrorEvent, TokenEvent


class RedisPublisher:
    def __init__(self, redis: Redis) -> None:
        self._redis = redis

    def publish(self, job_id: str, event: TokenEvent | DoneEvent | ErrorEvent) -> None:
        self._redis.publish(keys.events_channel(job_id), event.model_dump_json())
