"""API keys: a name, limits, and a secret of which Redis keeps only the sha256.

The secret is 256 random bits (`tq-` + url-safe base64), so an unsalted sha256 is as good as
a slow password hash and costs a request nothing. A request's key is looked up by its hash in
one GET, then the stored hash is compared again in constant time. Every read goes to Redis:
a key created, rotated or revoked on one host holds on every API replica at the next request.
"""

import hashlib
import hmac
import re
import secrets
import time
from typing import Annotated, cast

from pydantic import BaseModel, Field
from redis import Redis
from redis.asyncio import Redis as AsyncRedis

from shared import keys
from shared.job import Priority

SECRET_PREFIX = "tq-"
NAME_PATTERN = r"[A-Za-z0-9_.-]{1,64}"  # also a metrics label value: nothing else allowed
_NAME = re.compile(NAME_PATTERN)


class ApiKey(BaseModel):
    """What Redis keeps of an API key (never its secret)."""

    name: Annotated[str, Field(pattern=f"^{NAME_PATTERN}$")]
    digest: str = Field(description="sha256 of the secret, hex.")
    rpm: int | None = Field(default=None, ge=1, description="Requests per minute; None: any.")
    tpm: int | None = Field(
        default=None, ge=1, description="Tokens (prompt and generated) per minute; None: any."
    )
    max_queued: int | None = Field(
        default=None, ge=1, description="Jobs waiting per model at once; None: its fair share."
    )
    priority: Priority = Priority.INTERACTIVE
    models: list[str] = Field(default_factory=list, description="Models allowed; empty: all.")
    created_at: float = Field(default_factory=time.time)

    def allows(self, model: str) -> bool:
        return not self.models or model in self.models


class KeyExistsError(Exception):
    pass


class NoSuchKeyError(Exception):
    pass


def digest(secret: str) -> str:
    return hashlib.sha256(secret.encode("utf-8", "surrogateescape")).hexdigest()


def new_secret() -> str:
    return SECRET_PREFIX + secrets.token_urlsafe(32)


def valid_name(name: str) -> bool:
    return _NAME.fullmatch(name) is not None


class KeyStore:
    """Create, list, rotate and revoke keys (the `tokenq keys` command), on a sync client."""

    def __init__(self, redis: Redis) -> None:
        self._redis = redis

    def create(self, key: ApiKey) -> str:
        """Store a new key under a fresh secret; the secret, which nothing keeps."""
        secret = new_secret()
        stored = key.model_copy(update={"digest": digest(secret)})
        with self._redis.pipeline() as pipe:
            pipe.watch(keys.api_key(key.name))  # type: ignore[no-untyped-call]
            if pipe.exists(keys.api_key(key.name)):
                raise KeyExistsError(key.name)
            pipe.multi()
            self._write(pipe, stored)
            pipe.execute()
        return secret

    def get(self, name: str) -> ApiKey | None:
        raw = self._redis.get(keys.api_key(name))
        return None if raw is None else ApiKey.model_validate_json(raw)

    def all(self) -> list[ApiKey]:
        members = cast(set[bytes], self._redis.smembers(keys.api_key_names()))
        names = sorted(n.decode() for n in members)
        found = [self.get(name) for name in names]
        return [key for key in found if key is not None]

    def rotate(self, name: str) -> str:
        """A new secret for the key (the old one stops working at once); the new secret."""
        secret = new_secret()
        with self._redis.pipeline() as pipe:
            pipe.watch(keys.api_key(name))  # type: ignore[no-untyped-call]
            old = self._get_watched(pipe, name)
            pipe.multi()
            pipe.delete(keys.api_key_by_digest(old.digest))
            self._write(pipe, old.model_copy(update={"digest": digest(secret)}))
            pipe.execute()
        return secret

    def revoke(self, name: str) -> None:
        with self._redis.pipeline() as pipe:
            pipe.watch(keys.api_key(name))  # type: ignore[no-untyped-call]
            old = self._get_watched(pipe, name)
            pipe.multi()
            pipe.delete(keys.api_key_by_digest(old.digest), keys.api_key(name))
            pipe.srem(keys.api_key_names(), name)
            pipe.execute()

    @staticmethod
    def _get_watched(pipe: "Redis", name: str) -> ApiKey:
        raw = pipe.get(keys.api_key(name))
        if raw is None:
            raise NoSuchKeyError(name)
        return ApiKey.model_validate_json(raw)

    @staticmethod
    def _write(pipe: "Redis", key: ApiKey) -> None:
        record = key.model_dump_json()
        pipe.set(keys.api_key(key.name), record)
        pipe.set(keys.api_key_by_digest(key.digest), record)
        pipe.sadd(keys.api_key_names(), key.name)


async def lookup(redis: AsyncRedis, secret: str) -> ApiKey | None:
    """The key whose secret this is, read from Redis now (one GET); None if there is none."""
    presented = digest(secret)
    raw = await redis.get(keys.api_key_by_digest(presented))
    if raw is None:
        return None
    key = ApiKey.model_validate_json(raw)
    # The GET found it by its hash already; compared again without a timing side channel.
    return key if hmac.compare_digest(key.digest, presented) else None
