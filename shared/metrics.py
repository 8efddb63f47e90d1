"""Every Prometheus metric tokenq exports, defined in one place.

Names carry the `tokenq_` prefix and their unit, and mirror vLLM's semantics
(`num_requests_waiting`, `time_to_first_token_seconds`, `e2e_request_latency_seconds`,
`request_queue_time_seconds`, `prompt_tokens_total`, ...) so existing dashboards translate.

- `ApiMetrics`: what one API process observed. Under `uvicorn --workers N` prometheus-client's
  multiprocess mode (`PROMETHEUS_MULTIPROC_DIR`) sums every process's values at scrape time.
- `QueueCollector`: read from Redis at scrape time, so every API replica reports the same value;
  dashboards aggregate it with `max by (model)`.
- `WorkerMetrics`: one worker process, on its own metrics port.
"""

import os
import threading
import time
from collections.abc import Iterable, Iterator
from enum import StrEnum

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    Info,
    disable_created_metrics,
)
from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.multiprocess import MultiProcessCollector, mark_process_dead
from prometheus_client.registry import Collector
from pydantic import BaseModel

MULTIPROC_DIR_ENV = "PROMETHEUS_MULTIPROC_DIR"

# The `*_created` series of the text format only double the series count in Prometheus.
disable_created_metrics()  # type: ignore[no-untyped-call]

# Latency buckets wide enough for a 135M model on two CPU cores (~10 ms a token, a prompt in
# tens to hundreds of ms), a GPU (a few ms a token), and a queue under load (tens of seconds).
LATENCY_BUCKETS = (
    0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75,
    1.0, 1.5, 2.0, 3.0, 5.0, 7.5, 10.0, 15.0, 20.0, 30.0, 60.0, 120.0,
)  # fmt: skip
INTER_TOKEN_BUCKETS = (
    0.001, 0.0025, 0.005, 0.0075, 0.01, 0.0125, 0.015, 0.02, 0.025, 0.03, 0.04,
    0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.5, 1.0, 2.5,
)  # fmt: skip
E2E_BUCKETS = (
    0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 3.0, 5.0, 7.5, 10.0, 15.0, 20.0, 30.0,
    45.0, 60.0, 90.0, 120.0, 180.0, 300.0, 600.0,
)  # fmt: skip

# The `status` of a request whose client went away before it ended (nginx's convention).
CLIENT_CLOSED = 499


class RejectReason(StrEnum):
    """Why a request was turned away (`tokenq_request_rejections_total{reason}`)."""

    QUEUE_FULL = "queue_full"
    DEADLINE = "deadline"
    NO_WORKER = "no_worker"
    BAD_REQUEST = "bad_request"
    MODEL_NOT_FOUND = "model_not_found"
    UNAUTHENTICATED = "unauthenticated"
    FORBIDDEN = "forbidden"
    RATE_LIMITED = "rate_limited"
    KEY_QUEUE_FULL = "key_queue_full"


class ApiMetrics:
    """What one API process counts; `exposition()` is what its `/metrics` serves."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r, model = self.registry, ["model"]
        self.requests = Counter(
            "tokenq_requests",
            "Requests to a flavour's API by HTTP status (499: the client went away first).",
            ["model", "flavour", "status"],
            registry=r,
        )
        self.rejections = Counter(
            "tokenq_request_rejections",
            "Requests turned away, by reason.",
            ["model", "reason"],
            registry=r,
        )
        self.cancellations = Counter(
            "tokenq_request_cancellations",
            "Requests whose client went away before the job ended.",
            ["model", "flavour"],
            registry=r,
        )
        self.in_flight = Gauge(
            "tokenq_requests_in_flight",
            "Requests being served right now.",
            ["flavour"],
            registry=r,
            multiprocess_mode="livesum",
        )
        self.queue_time = Histogram(
            "tokenq_request_queue_time_seconds",
            "Time a job waited in the queue before a worker started it.",
            model,
            registry=r,
            buckets=LATENCY_BUCKETS,
        )
        self.time_to_first_token = Histogram(
            "tokenq_time_to_first_token_seconds",
            "Time from the request's arrival to its first output token.",
            model,
            registry=r,
            buckets=LATENCY_BUCKETS,
        )
        self.inter_token_latency = Histogram(
            "tokenq_inter_token_latency_seconds",
            "Time between two consecutive output deltas of one request, as the API saw them.",
            model,
            registry=r,
            buckets=INTER_TOKEN_BUCKETS,
        )
        self.e2e_latency = Histogram(
            "tokenq_e2e_request_latency_seconds",
            "Time from the request's arrival to the end of its response, for completed requests.",
            model,
            registry=r,
            buckets=E2E_BUCKETS,
        )
        self.prompt_tokens = Counter(
            "tokenq_prompt_tokens", "Prompt tokens of completed requests.", model, registry=r
        )
        self.generation_tokens = Counter(
            "tokenq_generation_tokens", "Tokens generated for completed requests.", model,
            registry=r,
        )  # fmt: skip

        # Per API key (its name, never its secret): a label per key, as many as keys exist.
        self.key_requests = Counter(
            "tokenq_key_requests",
            "Requests authenticated with an API key, by the key's name and HTTP status.",
            ["key", "status"],
            registry=r,
        )
        self.key_tokens = Counter(
            "tokenq_key_tokens",
            "Tokens of completed requests by API key name; kind: prompt or generation.",
            ["key", "kind"],
            registry=r,
        )

    def process_exited(self) -> None:
        """Drop this process's live gauges (requests in flight) from the multiprocess sum."""
        if os.environ.get(MULTIPROC_DIR_ENV):
            mark_process_dead(os.getpid())  # type: ignore[no-untyped-call]

    def exposition(self) -> Collector:
        """This process's metrics, or, in multiprocess mode, the sum over all processes."""
        path = os.environ.get(MULTIPROC_DIR_ENV)
        if not path:
            return self.registry
        merged = CollectorRegistry()
        MultiProcessCollector(merged, path=path)  # type: ignore[no-untyped-call]
        return merged


class ModelQueueSample(BaseModel):
    """One model's queue as Redis has it now."""

    model: str
    waiting: int
    running: int
    live_workers: int


class QueueCollector:
    """The queue-state gauges for one scrape, built from what Redis said."""

    def __init__(self, models: list[ModelQueueSample] | None) -> None:
        self._models = models  # None: Redis did not answer

    def collect(self) -> Iterator[Metric]:
        up = GaugeMetricFamily("tokenq_redis_up", "Whether Redis answered this scrape.")
        up.add_metric([], 0 if self._models is None else 1)
        yield up
        if self._models is None:
            return
        gauges = [
            ("tokenq_num_requests_waiting", "Jobs queued for the model (Redis).", "waiting"),
            ("tokenq_num_requests_running", "Jobs running on the model's workers.", "running"),
            ("tokenq_workers_live", "Workers with a live heartbeat for the model.", "live_workers"),
        ]
        for name, help_text, field in gauges:
            family = GaugeMetricFamily(name, help_text, labels=["model"])
            for queue in self._models:
                family.add_metric([queue.model], getattr(queue, field))
            yield family


class Exposition:
    """Several collectors served as one page."""

    def __init__(self, collectors: Iterable[Collector]) -> None:
        self._collectors = list(collectors)

    def collect(self) -> Iterator[Metric]:
        for collector in self._collectors:
            yield from collector.collect()


class BusyClock:
    """Jobs running on a worker now, and the job-seconds spent running them.

    The counter includes the running jobs' time so far, so a long job shows as busy while it
    runs rather than only once it ends.
    """

    def __init__(self, model: str) -> None:
        self._model = model
        self._lock = threading.Lock()
        self._done_s = 0.0
        self._running: dict[str, float] = {}

    def start(self, job_id: str) -> None:
        with self._lock:
            self._running[job_id] = time.monotonic()

    def stop(self, job_id: str) -> None:
        with self._lock:
            started = self._running.pop(job_id, None)
            if started is not None:
                self._done_s += time.monotonic() - started

    def collect(self) -> Iterator[Metric]:
        with self._lock:
            now = time.monotonic()
            busy_s = self._done_s + sum(now - s for s in self._running.values())
            running = len(self._running)
        busy = GaugeMetricFamily(
            "tokenq_worker_busy", "Jobs running on this worker now (0: idle).", labels=["model"]
        )
        busy.add_metric([self._model], running)
        seconds = CounterMetricFamily(
            "tokenq_worker_busy_seconds",
            "Job-seconds this worker spent running jobs; its rate over slots is the busy ratio.",
            labels=["model"],
        )
        seconds.add_metric([self._model], busy_s)
        return iter([busy, seconds])


class WorkerMetrics:
    """What one worker process exports on its metrics port."""

    def __init__(self, model: str) -> None:
        self.registry = CollectorRegistry()
        r, label = self.registry, ["model"]
        self.model = model
        self.info = Info("tokenq_worker", "The worker's model and how it runs it.", registry=r)
        self.busy = BusyClock(model)
        r.register(self.busy)
        self.slots = Gauge(
            "tokenq_worker_slots", "Jobs this worker can run at once.", label, registry=r
        ).labels(model)
        self.jobs = Counter(
            "tokenq_worker_jobs",
            "Jobs ended, by outcome (a finish reason, or an error code).",
            ["model", "outcome"],
            registry=r,
        )
        self.prompt_tokens = Counter(
            "tokenq_worker_prompt_tokens", "Prompt tokens evaluated.", label, registry=r
        ).labels(model)
        self.generation_tokens = Counter(
            "tokenq_worker_generation_tokens", "Tokens generated.", label, registry=r
        ).labels(model)
        self.model_load = Gauge(
            "tokenq_worker_model_load_seconds", "Time it took to load the model.", label, registry=r
        ).labels(model)
        self.decode_rate = Gauge(
            "tokenq_worker_decode_tokens_per_second",
            "Decode speed of the last job that generated at least two tokens.",
            label,
            registry=r,
        ).labels(model)
        # The batched engine, per decode step (one llama_decode for every running sequence).
        self.batch_size = Histogram(
            "tokenq_worker_batch_size",
            "Sequences decoded together in one step.",
            label,
            buckets=(1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64),
            registry=r,
        ).labels(model)
        self.step_prompt_tokens = Counter(
            "tokenq_worker_step_prompt_tokens",
            "Prompt tokens evaluated by decode steps (prefill chunks; reused prefixes excluded).",
            label,
            registry=r,
        ).labels(model)
        self.step_decode_tokens = Counter(
            "tokenq_worker_step_decode_tokens",
            "Tokens sampled by decode steps, all sequences together.",
            label,
            registry=r,
        ).labels(model)
        self.aggregate_decode_rate = Gauge(
            "tokenq_worker_aggregate_decode_tokens_per_second",
            "Tokens sampled per second over the last steps, all sequences together.",
            label,
            registry=r,
        ).labels(model)
        self.prefill_rate = Gauge(
            "tokenq_worker_prefill_tokens_per_second",
            "Prompt tokens evaluated per second of step time, over the last steps.",
            label,
            registry=r,
        ).labels(model)
        self.kv_cells_used = Gauge(
            "tokenq_worker_kv_cells_used",
            "KV cache cells holding tokens (running sequences and cached prefixes).",
            label,
            registry=r,
        ).labels(model)
        self.prefix_reused_tokens = Counter(
            "tokenq_worker_prefix_reused_tokens",
            "Prompt tokens found in the KV cache and not evaluated again.",
            label,
            registry=r,
        ).labels(model)
        self.heartbeat = Gauge(
            "tokenq_worker_heartbeat_timestamp_seconds",
            "Unix time of the worker's last heartbeat written to Redis.",
            label,
            registry=r,
        ).labels(model)
