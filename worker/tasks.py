"""The function RQ runs for each generation job.

The API enqueues it by name (`shared.queues.GENERATE_TASK`). The worker that performs the job
provides its runner through `current_runner` for the job's duration.
"""

from contextvars import ContextVar
from typing import Any

from shared.job import GenerationJob
from worker.runner import JobRunner

current_runner: ContextVar[JobRunner] = ContextVar("current_runner")


def generate(payload: dict[str, Any]) -> dict[str, Any] | None:
    job = GenerationJob.model_validate(payload)
    terminal = current_runner.get().run(job)
    return None if terminal is None else terminal.model_dump(mode="json")
