"""The RQ side both ends agree on: one queue per model, JSON payloads, the task's name."""

from redis import Redis
from rq import Queue
from rq.serializers import JSONSerializer

from shared import keys
from shared.job import AnyJob, EmbeddingJob, Priority

# The API enqueues the task by name, so it never imports the worker (or llama.cpp).
GENERATE_TASK = "worker.tasks.generate"
EMBED_TASK = "worker.tasks.embed"


def task_of(job: AnyJob) -> str:
    """The worker function that runs this kind of job."""
    return EMBED_TASK if isinstance(job, EmbeddingJob) else GENERATE_TASK


def model_queue(redis: Redis, model: str, priority: Priority = Priority.INTERACTIVE) -> Queue:
    """The RQ queue of one model's jobs of one priority class."""
    batch = priority is Priority.BATCH
    return Queue(keys.queue_name(model, batch), connection=redis, serializer=JSONSerializer)


def model_queues(redis: Redis, model: str) -> list[Queue]:
    """A model's queues in the order workers take jobs: interactive, then batch."""
    return [model_queue(redis, model, priority) for priority in Priority]
