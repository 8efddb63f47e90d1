"""The RQ side both ends agree on: one queue per model, JSON payloads, the task's name."""

from redis import Redis
from rq import Queue
from rq.serializers import JSONSerializer

from shared import keys

# The API enqueues the task by name, so it never imports the worker (or llama.cpp).
GENERATE_TASK = "worker.tasks.generate"


def model_queue(redis: Redis, model: str) -> Queue:
    return Queue(keys.queue_name(model), connection=redis, serializer=JSONSerializer)


def rq_queue_key(model: str) -> str:
    """The Redis list RQ keeps a model's waiting job ids in (RQ's own naming)."""
    return Queue.redis_queue_namespace_prefix + keys.queue_name(model)
