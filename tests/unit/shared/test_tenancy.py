"""API keys and quotas over fakeredis: the store keeps no secret, the quota script counts
exactly, and the `x-ratelimit-*` headers say what it counted."""

import time

import fakeredis
import pytest

from api.ratelimit import duration, rate_limit_headers
from shared import keys
from shared.job import Priority
from shared.tenancy.apikeys import ApiKey, KeyExistsError, KeyStore, NoSuchKeyError, lookup
from shared.tenancy.quota import Limit, Quotas, charge_generated
from worker.rq_worker import overdue


@pytest.fixture
def server() -> fakeredis.FakeServer:
    return fakeredis.FakeServer()


def store(server: fakeredis.FakeServer) -> KeyStore:
    return KeyStore(fakeredis.FakeRedis(server=server))


def every_value(server: fakeredis.FakeServer) -> bytes:
    redis = fakeredis.FakeRedis(server=server)
    return b" ".join(
        (redis.get(k) or b"") if redis.type(k) == b"string" else b" ".join(redis.smembers(k))
        for k in redis.keys("*")
    )


async def test_a_key_is_found_by_its_secret_and_redis_keeps_only_its_hash(
    server: fakeredis.FakeServer,
) -> None:
    secret = store(server).create(ApiKey(name="web", digest="", rpm=5, models=["smollm2"]))
    assert secret.startswith("tq-") and len(secret) > 40
    assert secret.encode() not in every_value(server)
    found = await lookup(fakeredis.FakeAsyncRedis(server=server), secret)
    assert found is not None and found.name == "web" and found.rpm == 5
    assert found.allows("smollm2") and not found.allows("other")
    assert await lookup(fakeredis.FakeAsyncRedis(server=server), secret + "x") is None
    with pytest.raises(KeyExistsError):
        store(server).create(ApiKey(name="web", digest=""))
    assert [k.name for k in store(server).all()] == ["web"]


async def test_rotate_and_revoke_hold_at_the_next_lookup(server: fakeredis.FakeServer) -> None:
    keys_ = store(server)
    old = keys_.create(ApiKey(name="svc", digest="", priority=Priority.BATCH))
    new = keys_.rotate("svc")
    redis = fakeredis.FakeAsyncRedis(server=server)
    assert await lookup(redis, old) is None
    rotated = await lookup(redis, new)
    assert rotated is not None and rotated.priority is Priority.BATCH  # limits kept
    keys_.revoke("svc")
    assert await lookup(redis, new) is None
    assert keys_.all() == []
    with pytest.raises(NoSuchKeyError):
        keys_.revoke("svc")
    with pytest.raises(NoSuchKeyError):
        keys_.rotate("svc")


async def test_requests_per_minute_are_exact_and_retry_after_comes_from_the_window(
    server: fakeredis.FakeServer,
) -> None:
    quotas = Quotas(fakeredis.FakeAsyncRedis(server=server))
    states = [await quotas.charge("k", f"job{i}", 10, rpm=3, tpm=None) for i in range(4)]
    assert [s.exceeded for s in states] == [None, None, None, Limit.REQUESTS]
    assert [s.remaining_requests for s in states[:3]] == [2, 1, 0]
    refused = states[3]
    assert refused.retry_after_s is not None and 59 < refused.retry_after_s <= 60
    assert refused.retry_after_header() == 60
    headers = rate_limit_headers(refused)
    assert headers["x-ratelimit-limit-requests"] == "3"
    assert headers["x-ratelimit-remaining-requests"] == "0"
    assert headers["Retry-After"] == "60" and "x-ratelimit-limit-tokens" not in headers
    # A refund (the queue was full after all) gives the place back.
    await quotas.refund("k", "job2", 10)
    assert (await quotas.charge("k", "job5", 10, rpm=3, tpm=None)).exceeded is None


async def test_tokens_per_minute_count_prompts_then_generated_tokens(
    server: fakeredis.FakeServer,
) -> None:
    redis = fakeredis.FakeRedis(server=server)
    quotas = Quotas(fakeredis.FakeAsyncRedis(server=server))
    first = await quotas.charge("k", "a", 40, rpm=None, tpm=100)
    assert first.exceeded is None and first.remaining_tokens == 60
    charge_generated(redis, "k", "a", 30)  # the worker, when job a ends
    assert (await quotas.charge("k", "b", 31, rpm=None, tpm=100)).exceeded is Limit.TOKENS
    second = await quotas.charge("k", "b", 30, rpm=None, tpm=100)  # exactly fits
    assert second.exceeded is None and second.remaining_tokens == 0
    headers = rate_limit_headers(second)
    assert headers["x-ratelimit-limit-tokens"] == "100"
    assert headers["x-ratelimit-remaining-tokens"] == "0"
    never = await quotas.charge("k", "c", 101, rpm=None, tpm=100)
    assert never.exceeded is Limit.TOKENS and never.retry_after_s is None


async def test_charges_leave_the_window_after_a_minute(server: fakeredis.FakeServer) -> None:
    redis = fakeredis.FakeRedis(server=server)
    quotas = Quotas(fakeredis.FakeAsyncRedis(server=server))
    assert (await quotas.charge("k", "a", 5, rpm=1, tpm=None)).exceeded is None
    # Age the entry by hand: 61 s ago it leaves the window.
    redis.zadd(keys.quota_requests("k"), {"a": time.time() - 61})
    assert (await quotas.charge("k", "b", 5, rpm=1, tpm=None)).exceeded is None


def test_reset_durations_read_like_openais() -> None:
    assert duration(0.0171) == "18ms"
    assert duration(1.5) == "1.5s"
    assert duration(12) == "12s"
    assert duration(360) == "6m0s"


def test_a_batch_job_is_overdue_after_the_bound() -> None:
    now = 1000.0
    # Enqueued at 990 with a 60 s queue deadline: its deadline is 1050.
    assert not overdue(1050, now, queue_deadline_s=60, max_wait_s=10.5)
    assert overdue(1050, now, queue_deadline_s=60, max_wait_s=9.5)
