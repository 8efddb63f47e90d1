"""The API app over fakeredis, with jobs performed by the real RQ worker class on a fake engine.

Two ways to run the jobs: `call`/`work` perform them synchronously once queued (the API sees
a job's events only after its run), and `start_worker` runs the worker class in a thread while
the request is in flight, so the API watches a running job: with the engine paused mid-job
(FakeEngine.pause_at) a test can cancel it, or drop the worker's heartbeat as if it died.
"""

import asyncio
import json
import threading
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar, cast

import fakeredis
import httpx
from fastapi import FastAPI
from redis import Redis
from rq import Queue
from rq.job import Job
from rq.timeouts import TimerDeathPenalty
from starlette.types import Message, Send

from api.app import create_app
from api.state import AppState
from shared import keys, registry
from shared.lifecycle.worker_side import RedisJobControl
from shared.model_facts import ModelFacts
from shared.queues import model_queue, model_queues
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


T = TypeVar("T")


async def until(check: Callable[[], T | None], what: str, timeout_s: float = 10.0) -> T:
    """Poll `check()` (letting the app run meanwhile) until it is truthy; that value. The
    timeout is a liveness bound only, far above what any wait here takes."""
    deadline = time.monotonic() + timeout_s
    while not (value := check()):
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout_s}s waiting for {what}")
        await asyncio.sleep(0.005)
    return value


class _ThreadedWorker(ModelWorker):
    """The worker class off the main thread: only the main thread may install signal handlers,
    and the job timeout uses a timer instead of SIGALRM."""

    death_penalty_class = TimerDeathPenalty

    def __init__(self, runner: JobRunner, queue: Queue) -> None:
        super().__init__(runner, queue)
        self.dead = threading.Event()

    def _install_signal_handlers(self) -> None:
        pass

    def dequeue_job_and_maintain_ttl(
        self, timeout: int | None, max_idle_time: int | None = None
    ) -> tuple[Job, Queue] | None:
        if self.dead.is_set():  # a dead worker takes no more jobs (None: its burst ends)
            return None
        return super().dequeue_job_and_maintain_ttl(timeout, max_idle_time)


@dataclass
class BackgroundWorker:
    """A registered worker performing queued jobs in a thread until its queue is empty."""

    info: WorkerInfo
    engine: FakeEngine
    thread: threading.Thread
    redis: Redis
    worker: _ThreadedWorker

    def die(self) -> None:
        """Drop its heartbeat, as when its process is killed, and take no more jobs. The
        running job goes on once its engine resumes, as on a worker cut off from Redis: what
        it may still do (record, publish) is up to the job's record."""
        self.worker.dead.set()
        registry.deregister(self.redis, self.info)

    async def finished(self) -> None:
        """Wait (the app running meanwhile) until its thread has returned."""
        await until(lambda: not self.thread.is_alive(), f"worker {self.info.worker_id} to end")


@dataclass
class Harness:
    app: FastAPI
    client: httpx.AsyncClient
    redis: Redis
    engine: FakeEngine
    settings: ApiSettings
    workers: list[BackgroundWorker] = field(default_factory=list)

    @property
    def state(self) -> AppState:
        state: AppState = self.app.state.tokenq
        return state

    async def call(
        self, path: str, body: dict[str, object] | bytes, headers: dict[str, str] | None = None
    ) -> httpx.Response:
        """POST (a dict as JSON, bytes as they are), and once the job is queued, let the real
        worker class perform it."""
        if isinstance(body, bytes):
            post = self.client.post(
                path, content=body, headers={"Content-Type": "application/json", **(headers or {})}
            )
        else:
            post = self.client.post(path, json=body, headers=headers)
        request = asyncio.create_task(post)
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
        ModelWorker(runner, model_queues(self.redis, MODEL)).work(burst=True, with_scheduler=False)

    async def submit(
        self, path: str, body: dict[str, object], headers: dict[str, str] | None = None
    ) -> "asyncio.Task[httpx.Response]":
        """POST, and return once its job is queued, the request still waiting for it."""
        before = len(self.recorded_jobs())  # admitting records and enqueues in one step
        request = asyncio.create_task(self.client.post(path, json=body, headers=headers))
        await until(
            lambda: request.done() or len(self.recorded_jobs()) > before, "the job to be queued"
        )
        return request

    def start_worker(
        self, worker_id: str = WORKER_ID, engine: FakeEngine | None = None
    ) -> BackgroundWorker:
        """Register `worker_id` (w1 is already) and start the real worker class in a thread on
        `engine` (the harness's by default): it performs the queued jobs, then returns."""
        engine = engine or self.engine
        info = _worker_info(worker_id)
        registry.heartbeat(self.redis, info, ttl_s=60)
        settings = WorkerSettings(model=MODEL, cancel_check_s=0.001)
        runner = JobRunner(
            engine, RedisPublisher(self.redis), RedisJobControl(self.redis, worker_id, settings)
        )
        worker = _ThreadedWorker(runner, model_queue(self.redis, MODEL))
        thread = threading.Thread(
            target=worker.work,
            kwargs={"burst": True, "with_scheduler": False, "logging_level": "WARNING"},
            name=f"worker-{worker_id}",
            daemon=True,
        )
        background = BackgroundWorker(info, engine, thread, self.redis, worker)
        self.workers.append(background)
        thread.start()
        return background

    def recorded_jobs(self) -> list[str]:
        """The ids of every job the API admitted (each has a record from then on)."""
        prefix = keys.job_record("")
        found = cast(list[bytes], self.redis.keys(keys.job_record("*")))
        return [k.decode().removeprefix(prefix) for k in found]

    async def asgi(
        self,
        path: str,
        body: dict[str, object],
        *,
        send: Send | None = None,
        gone: asyncio.Event | None = None,
    ) -> list[Message]:
        """POST by driving the ASGI app by hand, as a server would: the client disconnects
        when `gone` is set; `send` (to fail a send, as a server does for a client gone
        mid-response) gets what the app sends. What was sent is returned."""
        payload = json.dumps(body).encode()
        sent: list[Message] = []
        delivered = False

        async def receive() -> Message:
            nonlocal delivered
            if not delivered:
                delivered = True
                return {"type": "http.request", "body": payload, "more_body": False}
            await (gone or asyncio.Event()).wait()
            return {"type": "http.disconnect"}

        async def record(message: Message) -> None:
            if send is not None:
                await send(message)
            sent.append(message)

        scope: dict[str, Any] = {
            "type": "http",
            "asgi": {"version": "3.0", "spec_version": "2.4"},
            "http_version": "1.1",
            "method": "POST",
            "scheme": "http",
            "path": path,
            "raw_path": path.encode(),
            "query_string": b"",
            "root_path": "",
            "headers": [(b"content-type", b"application/json"), (b"host", b"tokenq")],
            "client": ("127.0.0.1", 1),
            "server": ("tokenq", 80),
            "state": {},
        }
        await self.app(scope, receive, record)
        return sent

    def stop_workers(self) -> None:
        """Resume every paused engine and wait for the worker threads (teardown)."""
        for worker in self.workers:
            worker.engine.resume.set()
        for worker in self.workers:
            worker.thread.join(timeout=10)


def _worker_info(worker_id: str) -> WorkerInfo:
    return WorkerInfo(
        worker_id=worker_id,
        model=MODEL,
        n_ctx=N_CTX,
        backend="cpu",
        gguf="/models/m.gguf",
        started_at=time.time(),
        pid=1,
        facts=FACTS,
    )


async def open_harness(**settings: object) -> AsyncIterator[Harness]:
    """An app whose one model has one registered worker; jobs run when the harness runs them.

    The API counts every prompt as the fake engine does (FakeTokenizers), so its count equals
    the worker's usage.
    """
    server = fakeredis.FakeServer()
    sync = fakeredis.FakeRedis(server=server)
    config = ApiSettings.model_validate(
        {
            "models": [MODEL, "idle"],
            "event_timeout_s": 2,
            "watch_interval_s": 0.05,
            "disconnect_grace_s": 0,  # a client gone cancels at once (tests of the grace set it)
            **settings,
        }
    )
    engine = FakeEngine([b"Hello", b",", b" world", EOS], n_ctx=N_CTX)
    state = AppState.build(
        config,
        fakeredis.FakeAsyncRedis(server=server),
        sync,
        FakeTokenizers(prompt_len=engine.prompt_len),
    )
    app = create_app(config, state)
    registry.heartbeat(sync, _worker_info(WORKER_ID), ttl_s=60)
    transport = httpx.ASGITransport(app=app)
    state.start()  # what the lifespan does, which the ASGI transport does not run
    try:
        async with httpx.AsyncClient(transport=transport, base_url="http://tokenq") as client:
            harness = Harness(app, client, sync, engine, config)
            try:
                yield harness
            finally:
                harness.stop_workers()
    finally:
        await state.stop()
