"""The API app over fakeredis; jobs are performed by the real RQ worker class on a fake engine."""

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import fakeredis
import httpx
import pytest
from fastapi import FastAPI
from redis import Redis

from api.app import create_app
from api.state import AppState
from shared import registry
from shared.queues import model_queue
from shared.registry import WorkerInfo
from shared.settings import ApiSettings, WorkerSettings
from tests.fakes import EOS, FakeEngine, FakeTokenizers
from worker.control import RedisJobControl
from worker.main import ModelWorker
from worker.publisher import RedisPublisher
from worker.runner import JobRunner

MODEL = "m"
WORKER_ID = "w1"


@dataclass
class Harness:
    app: FastAPI
    client: httpx.AsyncClient
    redis: Redis
    engine: FakeEngine
    settings: ApiSettings = field(default_factory=ApiSettings)

    @property
    def state(self) -> AppState:
        state: AppState = self.app.state.tokenq
        return state

    async def call(self, path: str, body: dict[str, object]) -> httpx.Response:
        """POST, and once the job is queued, let the real worker class perform it."""
        request = asyncio.create_task(self.client.post(path, json=body))
        queue = model_queue(self.redis, MODEL)
        while not request.done() and queue.count == 0:
            await asyncio.sleep(0.005)
        if queue.count:
            self.work()
        return await request

    def work(self) -> None:
        """Perform every queued job with the real worker class, then return."""
        control = RedisJobControl(self.redis, WORKER_ID, WorkerSettings(model=MODEL))
        runner = JobRunner(self.engine, RedisPublisher(self.redis), control)
        ModelWorker(runner, model_queue(self.redis, MODEL)).work(burst=True, with_scheduler=False)


def make_harness(**settings: object) -> tuple[ApiSettings, FastAPI, fakeredis.FakeRedis]:
    server = fakeredis.FakeServer()
    sync = fakeredis.FakeRedis(server=server)
    config = ApiSettings.model_validate(
        {"models": [MODEL, "idle"], "event_timeout_s": 2, "watch_interval_s": 0.05, **settings}
    )
    app = create_app(config)
    app.state.tokenq = AppState.build(
        config, fakeredis.FakeAsyncRedis(server=server), sync, FakeTokenizers(prompt_len=4)
    )
    info = WorkerInfo(
        worker_id=WORKER_ID,
        model=MODEL,
        n_ctx=64,
        backend="cpu",
        gguf="x",
        started_at=time.time(),
        pid=1,
    )
    registry.heartbeat(sync, info, ttl_s=60)
    return config, app, sync


@pytest.fixture
async def harness(request: pytest.FixtureRequest) -> AsyncIterator[Harness]:
    """Settings overrides come from `@pytest.mark.settings(...)` on the test."""
    marker = request.node.get_closest_marker("settings")
    config, app, sync = make_harness(**(marker.kwargs if marker else {}))
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://tokenq") as client:
        yield Harness(app, client, sync, FakeEngine([b"Hello", b",", b" world", EOS]), config)
