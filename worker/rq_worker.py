"""RQ's side of a worker process: one RQ worker per slot, each in its own thread, all sharing
the loaded model.

Each slot thread runs an RQ `SimpleWorker` (`SlotWorker`) through RQ's own work loop and
`perform_job`, so every job in a slot is a started RQ job (registries, status, `rq info`)
and shows under its own worker name. What RQ does with signals and alarms only works on the
main thread, so here:
- the main thread owns SIGTERM/SIGINT and sets one `stopping` event that every slot sees;
- a slot waits for jobs in short slices (`POLL_S`), so it notices `stopping` while idle;
- a job's time limit is enforced by the job runner between tokens, not by SIGALRM.
A slot busy with a job finishes it before it stops (warm shutdown, as before).

Priority: a worker listens to its model's interactive queue before its batch queue (RQ's
BLPOP takes the first non-empty list in order), except that when the batch job at the head of
its queue has waited longer than `batch_max_wait_s`, the next dequeue tries the batch queue
first: batch work waits at most that long plus one job's run for a free slot.
"""

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from types import FrameType
from typing import Any

from redis import Redis
from redis.exceptions import RedisError
from rq import Queue, SimpleWorker
from rq.exceptions import StopRequested
from rq.job import Job
from rq.timeouts import BaseDeathPenalty

from shared.lifecycle.scripts import WorkerScripts
from shared.lifecycle.worker_side import RunGate
from worker.runner import JobRunner
from worker.tasks import current_runner

log = logging.getLogger(__name__)

POLL_S = 1  # how long one wait for a job lasts before `stopping` is looked at again
ROOM_POLL_S = 0.05  # how often a slot with no free engine slot looks again


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
        queues: Queue | list[Queue],
        *,
        gate: RunGate | None = None,
        lease_ttl_s: float = 5.0,
        stopping: threading.Event | None = None,
        aging: "BatchAging | None" = None,
    ) -> None:
        """`queues`: the model's queues, interactive first (shared.queues.model_queues)."""
        queues = queues if isinstance(queues, list) else [queues]
        first = queues[0]
        super().__init__(queues, connection=first.connection, serializer=first.serializer)
        self.runner = runner
        self.gate = gate
        self.lease_ttl_s = lease_ttl_s
        self.stopping = stopping or threading.Event()
        self.aging = aging
        self._by_priority = list(queues)

    def _order_queues(self) -> None:
        """Interactive first, unless the oldest batch job has waited past the bound."""
        self._ordered_queues = list(self._by_priority)
        aging = self.aging
        if aging and len(self._by_priority) == 2 and aging.batch_overdue(self.connection):
            self._ordered_queues.reverse()

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
        self._order_queues()
        return super().dequeue_job_and_maintain_ttl(timeout, max_idle_time)

    def reorder_queues(self, reference_queue: Queue) -> None:
        pass  # the order is chosen before each dequeue (`_order_queues`)

    def perform_job(self, job: Job, queue: Queue) -> bool:
        token = current_runner.set(self.runner)
        try:
            return super().perform_job(job, queue)
        finally:
            current_runner.reset(token)
            if self.gate is not None:
                self.gate.release()

    def subscribe(self) -> None:
        """RQ's subscription to the worker's command channel, with a pub/sub thread that
        wakes every second instead of every minute: from redis-py 8.2 on, stopping that
        thread waits for it, so RQ's 60 s poll kept a stopping worker alive up to a minute
        per slot after its last job."""
        self.pubsub = self.connection.pubsub()
        self.pubsub.subscribe(**{self.pubsub_channel_name: self.handle_payload})
        self.pubsub_thread = self.pubsub.run_in_thread(  # type: ignore[assignment]
            sleep_time=1, daemon=True, exception_handler=self._pubsub_exception_handler
        )

    def teardown(self) -> None:
        try:
            super().teardown()  # type: ignore[no-untyped-call]
        except RedisError as exc:  # Redis is gone; nothing to unregister from
            log.warning("worker teardown without redis: %s", exc)
            if self.pubsub_thread is not None:
                self.pubsub_thread.stop()


@dataclass(frozen=True)
class BatchAging:
    """When a model's oldest queued batch job has waited too long to stay behind interactive
    ones. Its wait is read from its queue deadline (enqueue time + `queue_deadline_s`)."""

    model: str
    queue_deadline_s: float
    max_wait_s: float

    def batch_overdue(self, redis: Redis) -> bool:
        deadline = WorkerScripts(redis).oldest_batch_deadline(self.model)
        if deadline is None:
            return False
        return overdue(deadline, time.time(), self.queue_deadline_s, self.max_wait_s)


def overdue(deadline: float, now: float, queue_deadline_s: float, max_wait_s: float) -> bool:
    """Whether a job with this queue deadline has waited longer than `max_wait_s`."""
    return now - (deadline - queue_deadline_s) > max_wait_s


class NoDeathPenalty(BaseDeathPenalty):
    """RQ's job timeout without SIGALRM (main thread only): the runner enforces it."""

    def setup_death_penalty(self) -> None:
        pass

    def cancel_death_penalty(self) -> None:
        pass


class SlotWorker(ModelWorker):
    """A `ModelWorker` that runs in a slot thread of a multi-slot process."""

    death_penalty_class = NoDeathPenalty

    def _install_signal_handlers(self) -> None:
        pass  # the main thread owns the signals and sets `stopping`

    def request_stop(self, signum: int, frame: FrameType | None) -> None:
        self.stopping.set()

    room: Callable[[], bool] | None = None  # whether the engine has a free slot now

    def dequeue_job_and_maintain_ttl(
        self, timeout: int | None, max_idle_time: int | None = None
    ) -> tuple[Job, Queue] | None:
        while not self.stopping.is_set():
            if self.room is not None and not self.room():
                # Another job's n > 1 sequences hold the engine's slots this thread would
                # use: a job taken now would only wait for one.
                self.stopping.wait(ROOM_POLL_S)
                continue
            found = super().dequeue_job_and_maintain_ttl(POLL_S, max_idle_time=POLL_S)
            if found is not None:
                if self.stopping.is_set():  # taken while the stop came: not this worker's
                    self._give_back(*found)
                    break
                return found
        raise StopRequested()

    def _give_back(self, job: Job, queue: Queue) -> None:
        """Put a dequeued job back at the front of its queue, as if never taken."""
        with self.connection.pipeline() as pipe:
            pipe.lrem(queue.intermediate_queue_key, 1, job.id)
            queue.push_job_id(job.id, pipeline=pipe, at_front=True)
            pipe.execute()
        if self.gate is not None:
            self.gate.release()


@dataclass
class Slot:
    """What one slot thread needs: its runner (own job control) and its run gate, if any."""

    index: int
    runner: JobRunner
    gate: RunGate | None
    room: Callable[[], bool] = lambda: True  # whether the engine has a free slot now


def serve_slots(
    slots: list[Slot],
    queue_for: Callable[[], list[Queue]],
    lease_ttl_s: float,
    stopping: threading.Event,
    aging: BatchAging | None = None,
) -> None:
    """Run every slot's RQ loop in its own thread until `stopping` is set and all are done."""
    threads = [
        threading.Thread(
            target=_serve,
            args=(slot, queue_for(), lease_ttl_s, stopping, aging),
            name=f"slot-{slot.index}",
            daemon=True,  # a second SIGTERM/SIGINT exits without waiting for them
        )
        for slot in slots
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        while thread.is_alive():
            thread.join(timeout=0.5)  # short joins: the main thread keeps handling signals


def _serve(
    slot: Slot,
    queues: list[Queue],
    lease_ttl_s: float,
    stopping: threading.Event,
    aging: BatchAging | None,
) -> None:
    """One slot's RQ loop, started again whenever it ended because Redis went away.

    RQ's loop survives Redis going away while it waits for a job, but not everywhere (a
    failure while it books a job's end makes it quit): a fresh worker object takes over.
    """
    while not stopping.is_set():
        try:
            worker = SlotWorker(
                slot.runner,
                queues,
                gate=slot.gate,
                lease_ttl_s=lease_ttl_s,
                stopping=stopping,
                aging=aging,
            )
            worker.room = slot.room
            worker.work(with_scheduler=False, logging_level="WARNING")
        except RedisError as exc:
            log.warning("slot %d: redis unavailable: %s", slot.index, exc)
        except Exception:
            log.exception("slot %d: the worker loop failed", slot.index)
        if stopping.is_set():
            return
        log.warning("slot %d: the worker loop ended without a stop request; again", slot.index)
        stopping.wait(1.0)


def stop_on_signals(stopping: threading.Event) -> Callable[[int, Any], None]:
    """The main thread's SIGTERM/SIGINT handler: the first asks every slot to finish its job
    and stop; the second exits at once."""

    def handle(signum: int, frame: Any) -> None:
        if stopping.is_set():
            log.warning("second stop signal: exiting without waiting for running jobs")
            raise SystemExit(1)
        log.info("stop signal: finishing running jobs, taking no new ones")
        stopping.set()

    return handle
