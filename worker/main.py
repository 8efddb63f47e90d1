"""The worker process: load the model once, prove it computes, register, and serve its RQ
queue from one slot thread per sequence the engine holds."""

import faulthandler
import logging
import os
import signal
import socket
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor

from redis import Redis

from shared.exits import ExitStatus
from shared.lifecycle.worker_side import RedisJobControl, RunGate, RunningJobs
from shared.metrics import WorkerMetrics
from shared.model_facts import describe
from shared.model_registry.files import ModelFileError
from shared.model_registry.ops import ServedFile, worker_file
from shared.model_registry.store import ModelRegistry
from shared.queues import model_queues
from shared.redis_clients import sync_redis
from shared.registry import WorkerInfo
from shared.settings import WorkerSettings
from worker.batch_engine import BatchEngine
from worker.engine import Engine, EngineCheckError
from worker.heartbeat import Heartbeat, Lease
from worker.observe import WorkerObserver, serve
from worker.publisher import BatchingPublisher
from worker.rq_worker import BatchAging, Slot, serve_slots, stop_on_signals
from worker.runner import JobRunner
from worker.scheduler import Scheduler
from worker.slot_engine import SlotEngine

log = logging.getLogger(__name__)


def run_worker(settings: WorkerSettings) -> None:
    """Serve `settings.model` until SIGTERM/SIGINT (the running job is finished first)."""
    # A crash inside llama.cpp (SIGSEGV, SIGILL, SIGBUS) prints the Python stack it hit.
    faulthandler.enable()
    timeout = settings.redis_timeout_s
    control_redis = sync_redis(settings, socket_timeout=timeout, socket_connect_timeout=timeout)
    served = _served_file(control_redis, settings)
    settings = settings.model_copy(update={"model": served.model})  # an alias: its model
    observer = WorkerObserver(WorkerMetrics(settings.model), settings.heartbeat_ttl_s)
    if settings.metrics_port is not None:  # up before the model loads: liveness during a load
        serve(observer, settings.metrics_host, settings.metrics_port)
    gguf = served.path
    log.info("loading %s for model %s", gguf, settings.model)
    # Describing the file (metadata) overlaps with loading the weights.
    facts = ThreadPoolExecutor(max_workers=1).submit(describe, control_redis, gguf, served.digest)
    engine = BatchEngine(
        gguf,
        slots=settings.slots,
        n_ctx=settings.kv_size,
        seq_ctx=settings.n_ctx,
        threads=settings.threads,
        n_gpu_layers=settings.n_gpu_layers,
        flash_attn=settings.flash_attn,
        prefill_chunk=settings.prefill_chunk,
        unified_kv=settings.kv_unified,
        embeddings=settings.embeddings,
    )
    log.info(
        "loaded in %.2fs on %s: %d slots, %d KV cells",
        engine.info.load_seconds,
        engine.info.backend,
        settings.slots,
        settings.kv_size,
    )
    _check_engine(engine)

    def report_step() -> None:
        if engine.last_step is not None:
            observer.step(engine.last_step)

    scheduler = Scheduler(engine, on_step=report_step)
    info = WorkerInfo(
        worker_id=f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}",
        model=settings.model,
        n_ctx=engine.info.n_ctx,
        backend=engine.info.backend,
        gguf=str(gguf),
        started_at=time.time(),
        pid=os.getpid(),
        slots=engine.info.slots,
        facts=facts.result(),
        embedding_dims=engine.info.embedding_dims,
    )
    observer.loaded(info, engine.info)
    max_running = settings.limits(settings.model).max_running
    publisher = BatchingPublisher(control_redis, settings.events_retention_s)
    running = RunningJobs(control_redis, info.worker_id, settings.cancel_check_s)
    slots = []
    leases: list[Lease] = [running]
    for index in range(engine.info.slots):
        control = RedisJobControl(control_redis, info.worker_id, settings, running)
        # TOKENQ_MAX_RUNNING counts running jobs: one gate member per slot.
        gate = (
            RunGate(control_redis, settings.model, f"{info.worker_id}/{index}", max_running)
            if max_running
            else None
        )
        slot_engine = SlotEngine(scheduler)
        runner = JobRunner(
            slot_engine,
            publisher,
            control,
            observer,
            settings.job_timeout_s,
            embedder=slot_engine,
        )
        slots.append(Slot(index, runner, gate, room=lambda: scheduler.free_slots > 0))
        if gate is not None:
            leases.append(gate)
    stopping = threading.Event()
    scheduler.start()
    handler = stop_on_signals(stopping)
    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)
    with Heartbeat(
        sync_redis(settings, socket_timeout=timeout, socket_connect_timeout=timeout),
        info,
        interval_s=settings.heartbeat_interval_s,
        ttl_s=settings.heartbeat_ttl_s,
        leases=leases,
        on_beat=observer.heartbeat,
    ):
        serve_slots(
            slots,
            lambda: model_queues(sync_redis(settings, health_check_interval=10), settings.model),
            settings.heartbeat_ttl_s,
            stopping,
            BatchAging(settings.model, settings.queue_deadline_s, settings.batch_max_wait_s),
        )
    scheduler.stop()
    publisher.close()  # what the last jobs published is sent before the process exits


def _served_file(redis: Redis, settings: WorkerSettings) -> ServedFile:
    """The file to serve, through the registry unless given by path; exit with a plain cause
    (a status `tokenq up` does not restart) if it is not registered, missing or changed."""
    try:
        served = worker_file(
            ModelRegistry(redis), settings.models_dir, settings.model, settings.gguf
        )
    except ModelFileError as exc:
        log.error("not starting: %s", exc)
        raise SystemExit(ExitStatus.MODEL_FILE_INVALID) from exc
    if served.digest is not None:
        log.info(
            "model %s: %s has its registered sha256 %s", served.model, served.path, served.digest
        )
    return served


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
