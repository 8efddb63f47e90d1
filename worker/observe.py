"""The worker's metrics, its job log lines, and the small HTTP server that exposes them.

The server answers `/metrics`, `/healthz` (the process is up) and `/readyz` (the model is
loaded and the last heartbeat reached Redis within the heartbeat TTL).
"""

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from socketserver import ThreadingMixIn
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import make_wsgi_app

from shared.events import TerminalEvent
from shared.job import QueuedJob
from shared.metrics import WorkerMetrics
from shared.registry import WorkerInfo
from worker.engine import EngineInfo, StepStats

log = logging.getLogger(__name__)
jobs_log = logging.getLogger("tokenq.jobs")

WsgiApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]


class WorkerObserver:
    """Counts what the runner does (`started`/`finished`) and logs a line per job end."""

    def __init__(self, metrics: WorkerMetrics, heartbeat_ttl_s: float) -> None:
        self.metrics = metrics
        self._heartbeat_ttl_s = heartbeat_ttl_s
        self._last_heartbeat: float | None = None
        self._loaded = False
        self._window = _StepWindow()

    def loaded(self, info: WorkerInfo, engine: EngineInfo) -> None:
        self.metrics.info.info(
            {
                "model": info.model,
                "worker_id": info.worker_id,
                "backend": engine.backend,
                "n_ctx": str(engine.n_ctx),
                "quantization": engine.quantization,
                "slots": str(engine.slots),
                "gguf": info.gguf,
            }
        )
        self.metrics.slots.set(engine.slots)
        self.metrics.model_load.set(engine.load_seconds)
        self._loaded = True

    def heartbeat(self) -> None:
        """A heartbeat was written to Redis."""
        self._last_heartbeat = time.time()
        self.metrics.heartbeat.set(self._last_heartbeat)

    def ready(self) -> bool:
        beat = self._last_heartbeat
        return self._loaded and beat is not None and time.time() - beat < self._heartbeat_ttl_s

    def step(self, stats: StepStats) -> None:
        """One decode step of the batched engine (called from its thread)."""
        metrics = self.metrics
        metrics.batch_size.observe(stats.sequences)
        metrics.step_prompt_tokens.inc(stats.prompt_tokens)
        metrics.step_decode_tokens.inc(stats.decoded_tokens)
        metrics.kv_cells_used.set(stats.kv_cells_used)
        if stats.reused_tokens:
            metrics.prefix_reused_tokens.inc(stats.reused_tokens)
        decode_rate, prefill_rate = self._window.add(stats)
        metrics.aggregate_decode_rate.set(decode_rate)
        metrics.prefill_rate.set(prefill_rate)

    def started(self, job: QueuedJob) -> None:
        self.metrics.busy.start(job.id)
        jobs_log.info("job started", extra={"flavour": str(job.flavour)})

    def finished(self, job: QueuedJob, terminal: TerminalEvent | None) -> None:
        """The job is over; `terminal` is None when it was interrupted before it had one."""
        metrics = self.metrics
        metrics.busy.stop(job.id)
        fields: dict[str, object] = {"queued_s": round(time.time() - job.created_at, 4)}
        if terminal is None:
            outcome = "interrupted"
        elif terminal.type == "error":
            outcome = str(terminal.code)
            fields["error"] = terminal.message
        elif terminal.type == "embeddings":
            outcome = "embedded"
            metrics.prompt_tokens.inc(terminal.usage.prompt_tokens)
            fields.update(
                inputs=len(terminal.vectors),
                prompt_tokens=terminal.usage.prompt_tokens,
                queued_s=round(terminal.timings.queued, 4),
                prompt_eval_s=round(terminal.timings.prompt_eval, 4),
            )
        else:
            outcome = str(terminal.finish_reason)
            usage, timings = terminal.usage, terminal.timings
            metrics.prompt_tokens.inc(usage.prompt_tokens)
            metrics.generation_tokens.inc(usage.completion_tokens)
            # The first token's time belongs to the prompt; the rest is decoding.
            if usage.completion_tokens >= 2 and timings.decode > 0:
                metrics.decode_rate.set((usage.completion_tokens - 1) / timings.decode)
            fields.update(
                prompt_tokens=usage.prompt_tokens,
                completion_tokens=usage.completion_tokens,
                queued_s=round(timings.queued, 4),
                prompt_eval_s=round(timings.prompt_eval, 4),
                decode_s=round(timings.decode, 4),
            )
        metrics.jobs.labels(metrics.model, outcome).inc()
        jobs_log.info("job finished", extra={"outcome": outcome, **fields})


class _StepWindow:
    """Token rates over the steps of the last `span_s` seconds (running sums: O(1) a step, on
    the engine's thread)."""

    def __init__(self, span_s: float = 10.0) -> None:
        self._span_s = span_s
        self._steps: deque[tuple[float, StepStats]] = deque()
        self._decoded = 0
        self._prompt = 0
        self._prefill_s = 0.0

    def add(self, stats: StepStats) -> tuple[float, float]:
        """Decode tokens per wall second, prompt tokens per second of prefill step time."""
        now = time.monotonic()
        self._steps.append((now, stats))
        self._count(stats, 1)
        while now - self._steps[0][0] > self._span_s:
            self._count(self._steps.popleft()[1], -1)
        first = self._steps[0][0] - self._steps[0][1].seconds
        wall = max(now - first, 1e-9)
        prefill = self._prompt / self._prefill_s if self._prefill_s > 1e-9 else 0.0
        return self._decoded / wall, prefill

    def _count(self, stats: StepStats, sign: int) -> None:
        self._decoded += sign * stats.decoded_tokens
        if stats.prompt_tokens:
            self._prompt += sign * stats.prompt_tokens
            self._prefill_s += sign * stats.seconds


class _Server(ThreadingMixIn, WSGIServer):
    daemon_threads = True


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        """Scrapes and probes are not worth a log line each."""


def health_app(metrics: WsgiApp, ready: Callable[[], bool]) -> WsgiApp:
    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "")
        if path not in ("/healthz", "/readyz"):
            return metrics(environ, start_response)
        ok = path == "/healthz" or ready()
        status = "200 OK" if ok else "503 Service Unavailable"
        start_response(status, [("Content-Type", "text/plain")])
        return [b"ok\n" if ok else b"not ready\n"]

    return app


def serve(observer: WorkerObserver, host: str, port: int) -> WSGIServer:
    """Serve the worker's metrics and probes from a daemon thread; `shutdown()` stops it."""
    app = health_app(make_wsgi_app(observer.metrics.registry), observer.ready)
    server = make_server(host, port, app, server_class=_Server, handler_class=_QuietHandler)
    threading.Thread(target=server.serve_forever, name="metrics", daemon=True).start()
    log.info("metrics on http://%s:%d/metrics", host, server.server_port)
    return server
