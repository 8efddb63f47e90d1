"""The API app over fakeredis, with jobs performed by the real RQ worker class on a fake engine."""

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass

import fakeredis
import httpx
from redis import Redis
from redis.asyncio import Redis as AsyncRedis

from api.app import create_app
from api.state import AppState
from api.tokenizers import Tokenizers
from shared import registry
from shared.job import GenerationJob
from shared.model_facts import ModelFacts
from shared.queues import model_queue
from shared.registry import WorkerInfo
from shared.settings import ApiSettings
from tests.fakes import EOS, FakeEngine
from worker.main import ModelWorker
from worker.publisher import RedisPublisher
from worker.runner import JobRunner

MODEL = "m"
N_CTX = 64

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


class EngineTokenizers(Tokenizers):
    """Counts prompts as the fake engine does, so the API's count equals the worker's usage."""

    def __init__(self, redis: AsyncRedis, engine: FakeEngine) -> None:
        super().__init__(redis)
        self._engine = engine

    async def count(self, job: GenerationJob) -> int:
        return len(self._engine.prompt_tokens(job))


@dataclass
class Harness:
    client: httpx.AsyncClient
    redis: Redis
    engine: FakeEngine

    async def call(
        self, path: str, body: dict[str, object], headers: dict[str, str] | None = None
    ) -> httpx.Response:
        """POST, and once the job is queued, let the real worker class perform it."""
        request = asyncio.create_task(self.client.post(path, json=body, headers=headers))
        queue = model_queue(self.redis, MODEL)
        while not request.done() and queue.count == 0:
            await asyncio.sleep(0.005)
        if queue.count:
            runner = JobRunner(self.engine, RedisPublisher(self.redis))
            ModelWorker(runner, queue).work(burst=True, with_scheduler=False)
        return await request

    @property
    def state(self) -> AppState:
        state: AppState = self.client._transport.app.state.tokenq  # type: ignore[attr-defined]
        return state


async def open_harness() -> AsyncIterator[Harness]:
    """An app whose one model has one registered worker; jobs run when `Harness.call` runs them."""
    server = fakeredis.FakeServer()
    sync = fakeredis.FakeRedis(server=server)
    settings = ApiSettings(models=[MODEL, "idle"], event_timeout_s=2)
    app = create_app(settings)
    engine = FakeEngine([b"Hello", b",", b" world", EOS], n_ctx=N_CTX)
    redis = fakeredis.FakeAsyncRedis(server=server)
    state = AppState.build(settings, redis, sync)
    state.tokenizers = EngineTokenizers(redis, engine)
    app.state.tokenq = state
    info = WorkerInfo(
        worker_id="w1",
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
    async with httpx.AsyncClient(transport=transport, base_url="http://tokenq") as client:
        yield Harness(client, sync, engine)
