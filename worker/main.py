"""The worker process: load the model once, register, and serve its RQ queue."""

import contextlib
import faulthandler
import logging
import os
import socket
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from types import FrameType

from redis import Redis
from redis.exceptions import RedisError
from rq import Queue, SimpleWorker
from rq.exceptions import StopRequested
from rq.job import Job

from shared.exits import ExitStatus
from shared.lifecycle.worker_side import RedisJobControl, RunGate
from shared.metrics import WorkerMetrics
from shared.model_facts import describe
from shared.queues import model_queue
from shared.registry import WorkerInfo
from shared.settings import WorkerSettings
from worker.engine import Engine, EngineCheckError
from worker.heartbeat import Heartbeat
from worker.llama_engine import LlamaEngine
from worker.observe import WorkerObserver, serve
from worker.publisher import RedisPublisher
from worker.runner import JobRunner
from worker.tasks import current_runner

log = logging.getLogger(__name__)


class ModelWorker(SimpleWorker):
    """RQ's non-forking worker, handing its loaded model to each job it performs.

    SIGTERM/SIGINT: RQ's warm shutdown (finish the running job, take no new one, exit).
    With a `gate`, the worker takes jobs only while it holds one of the model's run slots.
    """

    # With Redis away, RQ retries its connection with a backoff that grows to 60 s by
    # default; capped low, a worker is back within seconds of Redis.
    max_connection_wait_time = 2.0

    def __init__(
        self,
        runner: JobRunner,
        queue: Queue,
        *,
        gate: RunGate | None = None,
        lease_ttl_s: float = 5.0,
        stopping: threading.Event | None = None,
    ) -> None:
        super().__init__([queue], connection=queue.connection, serializer=queue.serializer)
        self.runner = runner
        self.gate = gate
        self.lease_ttl_s = lease_ttl_s
        self.stopping = stopping or threading.Event()

    def request_stop(self, signum: int, frame: FrameType | None) -> None:
        self.stopping.set()
        super().request_stop(signum, frame)  # type: ignore[no-untyped-call]

    def dequeue_job_and_maintain_ttl(
        self, timeout: int | None, max_idle_time: int | None = None
    ) -> tuple[Job, Queue] | None:
        beat_at = time.monotonic()
        while self.gate is not None and not self.gate.acquire(self.lease_ttl_s):
            time.sleep(0.1)  # the model's max_running workers are all busy
            if time.monotonic() - beat_at > 10:  # keep RQ's view of this worker alive
                beat_at = time.monotonic()
                self.heartbeat()
        return super().dequeue_job_and_maintain_ttl(timeout, max_idle_time)

    def perform_job(self, job: Job, queue: Queue) -> bool:
        token = current_runner.set(self.runner)
        try:
            return super().perform_job(job, queue)
        finally:
            current_runner.reset(token)
            if self.gate is not None:
                self.gate.release()

    def teardown(self) -> None:
        try:
            super().teardown()  # type: ignore[no-untyped-call]
        except RedisError as exc:  # Redis is gone; nothing to unregister from
            log.warning("worker teardown without redis: %s", exc)
            if self.pubsub_thread is not None:
                self.pubsub_thread.stop()


def run_worker(settings: WorkerSettings) -> None:
    """Serve `settings.model` until SIGTERM/SIGINT (the running job is finished first)."""
    # A crash inside llama.cpp (SIGSEGV, SIGILL, SIGBUS) prints the Python stack it hit.
    faulthandler.enable()
    observer = WorkerObserver(WorkerMetrics(settings.model), settings.heartbeat_ttl_s)
    if settings.metrics_port is not None:  # up before the model loads: liveness during a load
        serve(observer, settings.metrics_host, settings.metrics_port)
    gguf = settings.gguf_path()
    log.info("loading %s for model %s", gguf, settings.model)
    timeout = settings.redis_timeout_s
    control_redis = Redis.from_url(
        settings.redis_url, socket_timeout=timeout, socket_connect_timeout=timeout
    )
    # Describing the file (hash, metadata) overlaps with loading the weights.
    facts = ThreadPoolExecutor(max_workers=1).submit(describe, control_redis, gguf)
    engine = LlamaEngine(
        gguf,
        n_ctx=settings.n_ctx,
        threads=settings.threads,
        n_gpu_layers=settings.n_gpu_layers,
        flash_attn=settings.flash_attn,
    )
    log.info("loaded in %.2fs on %s", engine.info.load_seconds, engine.info.backend)
    _check_engine(engine)
    info = WorkerInfo(
        worker_id=f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}",
        model=settings.model,
        n_ctx=engine.info.n_ctx,
        backend=engine.info.backend,
        gguf=str(gguf),
        started_at=time.time(),
        pid=os.getpid(),
        facts=facts.result(),
    )
    observer.loaded(info, engine.info)
    control = RedisJobControl(control_redis, info.worker_id, settings)
    max_running = settings.limits(settings.model).max_running
    gate = (
        RunGate(control_redis, settings.model, info.worker_id, max_running) if max_running else None
    )
    runner = JobRunner(engine, RedisPublisher(control_redis), control, observer)
    rq_redis = Redis.from_url(settings.redis_url, health_check_interval=10)
    queue = model_queue(rq_redis, settings.model)
    with Heartbeat(
        Redis.from_url(settings.redis_url, socket_timeout=timeout),
        info,
        interval_s=settings.heartbeat_interval_s,
        ttl_s=settings.heartbeat_ttl_s,
        leases=[control] if gate is None else [control, gate],
        on_beat=observer.heartbeat,
    ):
        _serve(runner, queue, gate, settings.heartbeat_ttl_s)


def _check_engine(engine: Engine) -> None:
    """Prove the engine computes before registering; exit with a plain cause if it cannot."""
    log.info(
        "engine self-check: evaluating a short prompt and decoding a few tokens (if the process "
        "dies here, this llama.cpp build does not run on this CPU: see the README, 'llama.cpp "
        "build')"
    )
    started = time.perf_counter()
    try:
        engine.self_check()
    except EngineCheckError as exc:
        log.error("engine self-check failed, not registering: %s", exc)
        raise SystemExit(ExitStatus.ENGINE_CHECK_FAILED) from exc
    log.info("engine self-check passed in %.2fs", time.perf_counter() - started)


def _serve(runner: JobRunner, queue: Queue, gate: RunGate | None, lease_ttl_s: float) -> None:
    """RQ's work loop, started again whenever it ended because Redis went away.

    RQ's loop survives Redis going away while it waits for a job, but not everywhere (a
    failure while it books a job's end makes it quit): a fresh worker object takes over.
    """
    stopping = threading.Event()
    while not stopping.is_set():
        try:
            worker = ModelWorker(
                runner, queue, gate=gate, lease_ttl_s=lease_ttl_s, stopping=stopping
            )
            worker.work(with_scheduler=False, logging_level="WARNING")
        except RedisError as exc:
            log.warning("redis unavailable: %s", exc)
        if stopping.is_set():
            return
        log.warning("the worker loop ended without a stop request; starting it again")
        # A SIGTERM now reaches RQ's handler of the last worker object, which may raise.
        with contextlib.suppress(StopRequested, RedisError):
            time.sleep(1.0)
