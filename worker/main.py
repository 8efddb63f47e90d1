"""The worker process: load the model once, register, and serve its RQ queue."""

import logging
import os
import socket
import time
import uuid
from concurrent.futures import ThreadPoolExecutor

from redis import Redis
from rq import Queue, SimpleWorker
from rq.job import Job

from shared.metrics import WorkerMetrics
from shared.model_facts import describe
from shared.queues import model_queue
from shared.registry import WorkerInfo
from shared.settings import WorkerSettings
from worker.heartbeat import Heartbeat
from worker.llama_engine import LlamaEngine
from worker.observe import WorkerObserver, serve
from worker.publisher import RedisPublisher
from worker.runner import JobRunner
from worker.tasks import current_runner

log = logging.getLogger(__name__)


class ModelWorker(SimpleWorker):
    """RQ's non-forking worker, handing its loaded model to each job it performs."""

    def __init__(self, runner: JobRunner, queue: Queue) -> None:
        super().__init__([queue], connection=queue.connection, serializer=queue.serializer)
        self.runner = runner

    def perform_job(self, job: Job, queue: Queue) -> bool:
        token = current_runner.set(self.runner)
        try:
            return super().perform_job(job, queue)
        finally:
            current_runner.reset(token)


def run_worker(settings: WorkerSettings) -> None:
    """Serve `settings.model` until SIGTERM/SIGINT (the running job is finished first)."""
    observer = WorkerObserver(WorkerMetrics(settings.model), settings.heartbeat_ttl_s)
    if settings.metrics_port is not None:  # up before the model loads: liveness during a load
        serve(observer, settings.metrics_host, settings.metrics_port)
    gguf = settings.gguf_path()
    log.info("loading %s for model %s", gguf, settings.model)
    redis = Redis.from_url(settings.redis_url, health_check_interval=10)
    # Describing the file (hash, metadata) overlaps with loading the weights.
    facts = ThreadPoolExecutor(max_workers=1).submit(describe, redis, gguf)
    engine = LlamaEngine(
        gguf,
        n_ctx=settings.n_ctx,
        threads=settings.threads,
        n_gpu_layers=settings.n_gpu_layers,
        flash_attn=settings.flash_attn,
    )
    log.info("loaded in %.2fs on %s", engine.info.load_seconds, engine.info.backend)
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
    runner = JobRunner(engine, RedisPublisher(redis), observer)
    queue = model_queue(redis, settings.model)
    with Heartbeat(
        Redis.from_url(settings.redis_url, socket_timeout=settings.redis_timeout_s),
        info,
        interval_s=settings.heartbeat_interval_s,
        ttl_s=settings.heartbeat_ttl_s,
        on_beat=observer.heartbeat,
    ):
        ModelWorker(runner, queue).work(with_scheduler=False, logging_level="WARNING")
