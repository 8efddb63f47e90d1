"""The functions RQ runs for each generation and embedding job.

The API enqueues them by name (`shared.queues.GENERATE_TASK`, `EMBED_TASK`). The worker that
performs the job provides its runner through `current_runner` for the job's duration.
"""

from contextvars import ContextVar
from typing import Any

from shared.job import EmbeddingJob, GenerationJob
from worker.runner import JobRunner

current_runner: ContextVar[JobRunner] = ContextVar("current_runner")


def generate(payload: dict[str, Any]) -> dict[str, Any] | None:
    job = GenerationJob.model_validate(payload)
    terminal = current_runner.get().run(job)
    return None if terminal is None else terminal.model_dump(mode="json")


def embed(payload: dict[str, Any]) -> dict[str, Any] | None:
    job = EmbeddingJob.model_validate(payload)
    terminal = current_runner.get().run(job)
    # The vectors went to the client; RQ's stored result keeps only how the job ended.
    return None if terminal is None else terminal.model_dump(mode="json", exclude={"vectors"})
