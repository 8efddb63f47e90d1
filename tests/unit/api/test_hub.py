"""The event hub over fakeredis: few connections for many streams, confirmed subscriptions,
every event once and to its own stream, reconnection, and Redis staying away."""

import asyncio
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import fakeredis
import httpx
import pytest
from redis.asyncio import Redis as AsyncRedis
from redis.exceptions import RedisError

from api.hub import EventHub
from api.inbox import Inbox
from shared import keys
from shared.queues import model_queue
from tests.unit.api.harness import MODEL, Harness


@asynccontextmanager
async def open_hub(
    connections: int, timeout_s: float = 1.0
) -> AsyncIterator[tuple[fakeredis.FakeServer, fakeredis.FakeAsyncRedis, EventHub]]:
    server = fakeredis.FakeServer()
    redis = fakeredis.FakeAsyncRedis(server=server)
    hub = EventHub(redis, connections, timeout_s)
    hub.start()
    try:
        yield server, redis, hub
    finally:
        await hub.aclose()


async def hub_clients(redis: AsyncRedis) -> list[str]:
    """The ids of the hub's connections in CLIENT LIST."""
    listing = (await redis.execute_command("CLIENT", "LIST")).decode()
    fields = [dict(f.split("=", 1) for f in line.split()) for line in listing.splitlines()]
    return [f["id"] for f in fields if f.get("name") == keys.events_client_name()]


async def received(inbox: Inbox, count: int) -> list[bytes]:
    """The next `count` events of `inbox` (fails the test if they do not come)."""
    events: list[bytes] = []
    async with asyncio.timeout(5):
        while len(events) < count:
            event = inbox.take_event()
            if event is None:
                await inbox.wait(1)
            else:
                events.append(event)
    return events


async def test_an_event_published_as_soon_as_subscribe_returns_is_delivered() -> None:
    async with open_hub(connections=2) as (_, redis, hub):
        for n in range(20):
            inbox = Inbox()
            await hub.subscribe(f"job{n}", inbox)
            # No wait in between: the subscription was confirmed before subscribe returned.
            assert await redis.publish(keys.events_channel(f"job{n}"), b"first") == 1
            assert await received(inbox, 1) == [b"first"]


async def test_events_reach_their_own_stream_in_order_over_shared_connections() -> None:
    async with open_hub(connections=3) as (_, redis, hub):
        inboxes = {f"job{n}": Inbox() for n in range(30)}
        for job_id, inbox in inboxes.items():
            await hub.subscribe(job_id, inbox)
        assert hub.connected == 3 and hub.channels == 30
        assert len(await hub_clients(redis)) == 3
        for i in range(5):  # interleaved: every job's i-th event, then the next
            for job_id in inboxes:
                await redis.publish(keys.events_channel(job_id), f"{job_id}:{i}".encode())
        for job_id, inbox in inboxes.items():
            assert await received(inbox, 5) == [f"{job_id}:{i}".encode() for i in range(5)]
            assert inbox.take_event() is None  # nothing twice, nothing of another job


async def test_an_unsubscribed_channel_is_dropped_at_redis_and_in_the_hub() -> None:
    async with open_hub(connections=1) as (_, redis, hub):
        kept, dropped = Inbox(), Inbox()
        await hub.subscribe("kept", kept)
        await hub.subscribe("dropped", dropped)
        await hub.unsubscribe("dropped", dropped)
        await hub.unsubscribe("never-subscribed", Inbox())  # a no-op
        assert hub.channels == 1
        await redis.publish(keys.events_channel("kept"), b"sync")  # read after the reply
        assert await received(kept, 1) == [b"sync"]
        numsub = dict(await redis.pubsub_numsub(keys.events_channel("dropped")))
        assert numsub[keys.events_channel("dropped").encode()] == 0
        assert await redis.publish(keys.events_channel("dropped"), b"late") == 0
        assert dropped.take_event() is None


async def test_a_lost_connection_is_replaced_and_subscribed_to_every_channel() -> None:
    async with open_hub(connections=1, timeout_s=0.2) as (_, redis, hub):
        inboxes = {f"job{n}": Inbox() for n in range(3)}
        for job_id, inbox in inboxes.items():
            await hub.subscribe(job_id, inbox)
        [first] = await hub_clients(redis)
        await redis.execute_command("CLIENT", "KILL", "ID", first)
        async with asyncio.timeout(5):
            while (await hub_clients(redis)) in ([], [first]):
                await asyncio.sleep(0.01)
        # A new subscription is confirmed after the connection's own resubscription.
        await hub.subscribe("later", Inbox())
        for job_id in inboxes:
            assert await redis.publish(keys.events_channel(job_id), b"after") == 1
        for inbox in inboxes.values():
            assert await received(inbox, 1) == [b"after"]
            assert inbox.take_event() is None
        assert hub.connected == 1


async def test_streams_fail_instead_of_waiting_while_redis_stays_away() -> None:
    async with open_hub(connections=1, timeout_s=1.0) as (server, redis, hub):
        waiting = Inbox()
        await hub.subscribe("waiting", waiting)
        server.connected = False
        with pytest.raises(RedisError):  # nothing, until the failure comes
            async with asyncio.timeout(5):
                while True:
                    assert waiting.take_event() is None
                    await waiting.wait(1)
        assert hub.channels == 0
        with pytest.raises(RedisError):
            await hub.subscribe("meanwhile", Inbox())
        server.connected = True
        back = Inbox()
        await hub.subscribe("back", back)
        await redis.publish(keys.events_channel("back"), b"again")
        assert await received(back, 1) == [b"again"]


async def test_subscribing_needs_a_started_hub() -> None:
    hub = EventHub(fakeredis.FakeAsyncRedis(), 1, 1.0)
    with pytest.raises(RuntimeError):
        await hub.subscribe("job", Inbox())


CHAT = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}]}


@pytest.mark.settings(pubsub_connections=2)
async def test_concurrent_requests_share_the_configured_connections(
    harness: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_pubsub_per_request() -> None:
        raise AssertionError("a request opened a pub/sub connection of its own")

    monkeypatch.setattr(harness.state.redis, "pubsub", no_pubsub_per_request)
    queue = model_queue(harness.redis, MODEL)
    requests = [
        asyncio.create_task(
            harness.client.post("/v1/chat/completions", json={**CHAT, "stream": n % 2 == 0})
        )
        for n in range(20)
    ]
    async with asyncio.timeout(10):
        while queue.count < 20:
            await asyncio.sleep(0.01)
    # Twenty requests wait for their jobs' events, over two connections.
    redis = harness.state.redis
    channels = [keys.events_channel(rq_id.rsplit("-", 1)[0]) for rq_id in queue.job_ids]
    assert [n for _, n in await redis.pubsub_numsub(*channels)] == [1] * 20
    assert harness.state.hub.channels == 20
    assert harness.state.hub.connected == 2
    assert len(await hub_clients(redis)) == 2
    harness.work()
    for request in requests:
        response = await request
        assert response.status_code == 200
        assert _content(response) == "Hello, world"
    # Every closed stream's channel is gone, at Redis and in the process.
    assert harness.state.hub.channels == 0 and harness.state.watchdog.watched == 0
    assert [n for _, n in await redis.pubsub_numsub(*channels)] == [0] * 20


def _content(response: httpx.Response) -> str:
    if response.headers["content-type"].startswith("application/json"):
        return str(response.json()["choices"][0]["message"]["content"])
    chunks = [
        json.loads(line.removeprefix("data: "))
        for line in response.text.splitlines()
        if line.startswith("data: {")
    ]
    return "".join(c["choices"][0]["delta"].get("content", "") for c in chunks if c["choices"])
