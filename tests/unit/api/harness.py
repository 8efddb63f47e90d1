"""The API app over fakeredis, with jobs performed by the real RQ worker class on a fake engine."""

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass

import fakeredis
import httpx
from fastapi import FastAPI
from redis import Redis

from api.app import create_app
from api.state import AppState
from shared import registry
from shared.lifecycle.worker_side import RedisJobControl
from shared.model_facts import ModelFacts
from shared.queues import model_queue
from shared.registry import WorkerInfo
from shared.settings import ApiSettings, WorkerSettings
from tests.fakes import EOS, FakeEngine, FakeTokenizers
from worker.publisher import RedisPublisher
from worker.rq_worker import ModelWorker
from worker.runner import JobRunner

MODEL = "m"
N_CTX = 64
WORKER_ID = "w1"

# What a worker registers about its file (see shared/model_facts.py), as for SmolLM2.
FACTS = ModelFacts(
    size=98362432,
    digest="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
    modified_at=1700000000.0,
    architecture="llama",
    parameter_count=134515008,
    file_type="Q4_1",
    metadata={
        "general.architecture": "llama",
        "general.file_type": 3,
        "general.license": "apache-2.0",
        "general.parameter_count": 134515008,
        "llama.context_length": 8192,
        "llama.attention.layer_norm_rms_epsilon": 1e-05,
        "tokenizer.ggml.add_bos_token": False,
        "tokenizer.ggml.tokens": [],
        "tokenizer.chat_template": "{% for m in messages %}{{ m.content }}{% endfor %}",
    },
)


@dataclass
class Harness:
    app: FastAPI
    client: httpx.AsyncClient
    redis: Redis
    engine: FakeEngine
    settings: ApiSettings

    @property
    def state(self) -> AppState:
        state: AppState = self.app.state.tokenq
        return state

    async def call(
        self, path: str, body: dict[str, object], headers: dict[str, str] | None = None
    ) -> httpx.Response:
        """POST, and once the job is queued, let the real worker class perform it."""
        request = asyncio.create_task(self.client.post(path, json=body, headers=headers))
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


async def open_harness(**settings: object) -> AsyncIterator[Harness]:
    """An app whose one model has one registered worker; jobs run when the harness runs them.

    The API counts every prompt as the fake engine does (FakeTokenizers), so its count equals
    the worker's usage.
    """
    server = fakeredis.FakeServer()
    sync = fakeredis.FakeRedis(server=server)
    config = ApiSettings.model_validate(
        {"models": [MODEL, "idle"], "event_timeout_s": 2, "watch_interval_s": 0.05, **settings}
    )
    engine = FakeEngine([b"Hello", b",", b" world", EOS], n_ctx=N_CTX)
    state = AppState.build(
        config,
        fakeredis.FakeAsyncRedis(server=server),
        sync,
        FakeTokenizers(prompt_len=engine.prompt_len),
    )
    app = create_app(config, state)
    info = WorkerInfo(
        worker_id=WORKER_ID,
        model=MODEL,
        n_ctx=N_CTX,
        backend="cpu",
        gguf="/models/m.gguf",
        started_at=time.time(),
        pid=1,
        facts=FACTS,
    )
    registry.heartbeat(sync, info, ttl_s=60)
    transport = httpx.ASGITransport(app=app)
    state.start()  # what the lifespan does, which the ASGI transport does not run
    try:
        async with httpx.AsyncClient(transport=transport, base_url="http://tokenq") as client:
            yield Harness(app, client, sync, engine, config)
    finally:
        await state.stop()
