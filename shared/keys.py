"""Every Redis key and channel name tokenq uses, built in one place.

No other module spells a key literal: call these functions instead. RQ's own keys are built
from RQ's own templates, so they follow RQ.
"""

from rq import Queue

PREFIX = "tokenq"


def queue_name(model: str) -> str:
    """The RQ queue holding the generation jobs of one model (RQ adds its own `rq:queue:`)."""
    return f"{PREFIX}:{model}"


def events_channel(job_id: str) -> str:
    """The pub/sub channel on which a worker publishes one job's events."""
    return f"{PREFIX}:events:{job_id}"


def workers_index(model: str) -> str:
    """Sorted set of a model's worker ids, scored by the time their heartbeat lapses."""
    return f"{PREFIX}:workers:{model}"


def worker_info(worker_id: str) -> str:
    """A worker's registration record; it expires unless the heartbeat renews it."""
    return f"{PREFIX}:worker:{worker_id}"


def known_models() -> str:
    """Set of every model name a worker has ever registered."""
    return f"{PREFIX}:models"


def model_facts(digest: str) -> str:
    """A model file's facts (shared/model_facts.py) by its content's sha256; never expires."""
    return f"{PREFIX}:facts:{digest}"


def model_vocab(digest: str) -> str:
    """A model file's tokenizer as a vocab-only GGUF (shared/vocab.py), by the file's sha256;
    never expires."""
    return f"{PREFIX}:vocab:{digest}"


def rq_queue_key(model: str) -> str:
    """The Redis list RQ keeps a model's waiting jobs in (KEDA scales workers on its length)."""
    return Queue.redis_queue_namespace_prefix + queue_name(model)


def job_record(job_id: str) -> str:
    """Hash with one job's lifecycle: status, attempt, worker, timestamps (shared/lifecycle.py)."""
    return f"{PREFIX}:job:{job_id}"


def waiting_jobs(model: str) -> str:
    """Sorted set of a model's waiting RQ job ids, scored by their queue deadline."""
    return f"{PREFIX}:waiting:{model}"


def running_jobs(model: str) -> str:
    """Sorted set of a model's running job ids, scored by when their worker's lease lapses."""
    return f"{PREFIX}:running:{model}"


def finished_jobs(model: str) -> str:
    """Sorted set of a model's recently finished job attempts, scored by finish time."""
    return f"{PREFIX}:finished:{model}"


def run_slots(model: str) -> str:
    """Sorted set of the workers allowed to take a model's jobs (`max_running`), by lease."""
    return f"{PREFIX}:slots:{model}"


def events_client_name() -> str:
    """The name (CLIENT SETNAME) of an API process's subscriber connections, as CLIENT LIST
    shows them."""
    return f"{PREFIX}-api-events"


def events_log(job_id: str) -> str:
    """List of one job's events in the order they were published, kept a while after the
    last (`events_retention_s`) for streams that resume and requests retried."""
    return f"{PREFIX}:log:{job_id}"


def job_spec(job_id: str) -> str:
    """A job and how its request wanted the answer (api/formats.py), for a stream resumed
    on any replica (`GET /v1/jobs/{id}/events`)."""
    return f"{PREFIX}:spec:{job_id}"


def idempotency_key(tenant: str, key_digest: str) -> str:
    """Hash: the job a tenant's Idempotency-Key admitted, and its request's fingerprint."""
    return f"{PREFIX}:idem:{tenant}:{key_digest}"


def job_listeners(job_id: str) -> str:
    """Counter of the client connections streaming or awaiting one job, on all replicas."""
    return f"{PREFIX}:listeners:{job_id}"


def detached_jobs() -> str:
    """Sorted set of jobs nobody listens to any more, scored by when they are cancelled
    unless a client comes back (the disconnect grace)."""
    return f"{PREFIX}:detached"
