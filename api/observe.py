"""What one request on a flavour's API did: its metrics and its closing log line.

A flavour's route class (`api.pipeline.flavour_route_class`) opens a `RequestObservation`
for every request and closes it exactly once, with the response's status; `submit` attaches
the job, and the job's stream reports its events. Per token this costs one clock read and one
histogram observation.
"""

import logging
import time
from collections.abc import Callable

from fastapi import Response
from prometheus_client import Histogram
from starlette.types import Receive, Scope, Send

from api.auth import Caller
from shared import logs
from shared.events import Event, TerminalEvent
from shared.job import Flavour, QueuedJob
from shared.metrics import CLIENT_CLOSED, ApiMetrics, RejectReason

log = logging.getLogger("tokenq.requests")


class RequestObservation:
    def __init__(self, metrics: ApiMetrics, flavour: Flavour, *, counted: bool) -> None:
        """Open one; `counted`: the route takes a request body (it generates, or tries to)."""
        self._metrics = metrics
        self.flavour = flavour
        self._counted = counted
        self._arrived = time.time()  # TTFT and end-to-end latency count from here
        self.job: QueuedJob | None = None
        self.terminal: TerminalEvent | None = None
        self._last_token: float | None = None
        self._first_token_s: float | None = None
        self._closed = False
        self._inter_token: Histogram | None = None  # the model's, from its first token on
        self.caller: Caller | None = None  # set once authenticated (api/auth.py)
        metrics.in_flight.labels(flavour).inc()

    def submitted(self, job: QueuedJob) -> None:
        self.job = job
        logs.bind(job_id=job.id, model=job.model)

    def event(self, event: Event) -> None:
        """One event of the job's stream (the hot path)."""
        if event.type == "token":
            now = time.perf_counter()
            if self._inter_token is None:  # the first token: the model is a real one
                self._first_token_s = time.time() - self._arrived
                self._metrics.time_to_first_token.labels(self._model).observe(self._first_token_s)
                self._inter_token = self._metrics.inter_token_latency.labels(self._model)
            elif self._last_token is not None:
                self._inter_token.observe(now - self._last_token)
            self._last_token = now
            return
        if event.type == "choice_end":  # one of n sequences; the job goes on
            return
        self.terminal = event
        if event.type in ("done", "embeddings"):
            model = self._model
            self._metrics.queue_time.labels(model).observe(event.timings.queued)
            self._metrics.prompt_tokens.labels(model).inc(event.usage.prompt_tokens)
            self._metrics.generation_tokens.labels(model).inc(event.usage.completion_tokens)
            if self._key is not None:
                tokens = self._metrics.key_tokens
                tokens.labels(self._key, "prompt").inc(event.usage.prompt_tokens)
                tokens.labels(self._key, "generation").inc(event.usage.completion_tokens)

    def close(
        self, status: int, rejection: RejectReason | None = None, *, model_known: bool = True
    ) -> None:
        """The request is over with `status`; the first call counts, later ones do nothing.

        `model_known` False keeps an unknown model's name out of the labels (their number
        would be whatever clients send).
        """
        if self._closed:
            return
        self._closed = True
        metrics, flavour = self._metrics, self.flavour
        model = self._model if model_known else ""
        metrics.in_flight.labels(flavour).dec()
        counted = self._counted or self.job is not None
        if counted:
            metrics.requests.labels(model, flavour, str(status)).inc()
        if self._key is not None:
            metrics.key_requests.labels(self._key, str(status)).inc()
        if rejection is not None:
            metrics.rejections.labels(model, rejection).inc()
        if status == CLIENT_CLOSED:
            metrics.cancellations.labels(model, flavour).inc()
        elapsed = time.time() - self._arrived
        if status == 200 and self.job is not None:
            metrics.e2e_latency.labels(model).observe(elapsed)
        if counted:
            self._log(status, rejection, elapsed)

    @property
    def _key(self) -> str | None:
        return self.caller.name if self.caller is not None else None

    @property
    def _model(self) -> str:
        return self.job.model if self.job is not None else ""

    def _log(self, status: int, rejection: RejectReason | None, elapsed: float) -> None:
        fields: dict[str, object] = {
            "flavour": str(self.flavour),
            "status": status,
            "duration_s": round(elapsed, 4),
        }
        if rejection is not None:
            fields["rejection"] = str(rejection)
        if self._key is not None:
            fields["key"] = self._key  # the key's name; its secret is never logged
        if self._first_token_s is not None:
            fields["ttft_s"] = round(self._first_token_s, 4)
        if self.terminal is not None and self.terminal.type == "done":
            fields["prompt_tokens"] = self.terminal.usage.prompt_tokens
            fields["completion_tokens"] = self.terminal.usage.completion_tokens
            fields["finish_reason"] = str(self.terminal.finish_reason)
        elif self.terminal is not None and self.terminal.type == "embeddings":
            fields["prompt_tokens"] = self.terminal.usage.prompt_tokens
            fields["inputs"] = len(self.terminal.vectors)
        log.info("request finished", extra=fields)


class UntilSent(Response):
    """A response that calls `on_end` once it has been sent, or has failed to be (the client
    went away), even if its body was never started."""

    def __init__(self, inner: Response, on_end: Callable[[], None]) -> None:
        # Only sent, never rendered: the inner response carries the status, headers and body.
        self.inner = inner
        self.status_code = inner.status_code
        self.raw_headers = inner.raw_headers
        self.background = None
        self._on_end = on_end

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await self.inner(scope, receive, send)
        finally:
            self._on_end()
