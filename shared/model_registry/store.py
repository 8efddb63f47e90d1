"""The registry's Redis side: entries by canonical name, and every name (aliases included)
resolved to its canonical one. Writes are transactions, so two operators adding the same name
at once cannot both win; reads resolve a name and fetch its entry in one round trip."""

from typing import cast

from redis import Redis
from redis.asyncio import Redis as AsyncRedis
from redis.client import Pipeline

from shared import keys
from shared.model_registry.entry import ModelEntry

# A name (canonical or alias) -> its entry, in one round trip.
_LOOKUP = """
local canonical = redis.call('HGET', KEYS[1], ARGV[1])
if not canonical then return false end
return redis.call('HGET', KEYS[2], canonical)
"""


class RegistryError(Exception):
    """A registry change that cannot be made (the message says why, for an operator)."""


class NameTakenError(RegistryError):
    pass


class ModelRegistry:
    """Reads and writes of the registry for synchronous callers (the CLI, the worker)."""

    def __init__(self, redis: Redis) -> None:
        self.redis = redis
        self._lookup = redis.register_script(_LOOKUP)

    def get(self, name: str) -> ModelEntry | None:
        """The entry `name` (canonical or an alias) stands for."""
        raw = self._lookup(keys=[keys.model_aliases(), keys.model_entries()], args=[name])
        return ModelEntry.model_validate_json(cast(bytes, raw)) if raw else None

    def entries(self) -> list[ModelEntry]:
        raw = cast(dict[bytes, bytes], self.redis.hgetall(keys.model_entries()))
        return sorted((ModelEntry.model_validate_json(v) for v in raw.values()), key=_by_name)

    def add(self, entry: ModelEntry, *, replace: bool = False) -> None:
        """Register `entry`; NameTakenError if one of its names is another model's, or its
        name is already registered (unless `replace`: then its entry and aliases change)."""

        def write(pipe: Pipeline) -> None:
            owners = cast(list[bytes | None], pipe.hmget(keys.model_aliases(), entry.names))
            for name, owner in zip(entry.names, owners, strict=True):
                if owner is None:
                    continue
                if owner.decode() != entry.name:
                    raise NameTakenError(f"'{name}' already names the model '{owner.decode()}'")
                if not replace:
                    raise NameTakenError(f"the model '{entry.name}' is already registered")
            old = pipe.hget(keys.model_entries(), entry.name)
            pipe.multi()
            if old is not None:
                _unname(pipe, ModelEntry.model_validate_json(cast(bytes, old)))
            pipe.hset(keys.model_entries(), entry.name, entry.model_dump_json())
            pipe.hset(keys.model_aliases(), mapping=dict.fromkeys(entry.names, entry.name))

        self.redis.transaction(write, keys.model_aliases(), keys.model_entries())

    def remove(self, name: str) -> ModelEntry:
        """Unregister the model `name` stands for, with all its names; its entry."""
        removed: list[ModelEntry] = []

        def write(pipe: Pipeline) -> None:
            removed.clear()
            canonical = pipe.hget(keys.model_aliases(), name)
            raw = pipe.hget(keys.model_entries(), canonical) if canonical else None
            if raw is None:
                raise RegistryError(f"the model '{name}' is not registered")
            entry = ModelEntry.model_validate_json(cast(bytes, raw))
            pipe.multi()
            pipe.hdel(keys.model_entries(), entry.name)
            _unname(pipe, entry)
            removed.append(entry)

        self.redis.transaction(write, keys.model_aliases(), keys.model_entries())
        return removed[0]


async def lookup(redis: AsyncRedis, name: str) -> ModelEntry | None:
    """The entry `name` (canonical or an alias) stands for, for the API."""
    raw = await redis.eval(_LOOKUP, 2, keys.model_aliases(), keys.model_entries(), name)
    return ModelEntry.model_validate_json(cast(bytes, raw)) if raw else None


async def all_entries(redis: AsyncRedis) -> list[ModelEntry]:
    raw = cast(dict[bytes, bytes], await redis.hgetall(keys.model_entries()))
    return sorted((ModelEntry.model_validate_json(v) for v in raw.values()), key=_by_name)


def _unname(pipe: Pipeline, entry: ModelEntry) -> None:
    pipe.hdel(keys.model_aliases(), *entry.names)


def _by_name(entry: ModelEntry) -> str:
    return entry.name
