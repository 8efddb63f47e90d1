"""Every Redis key and channel name tokenq uses, built in one place.

No other module spells a key literal: call these functions instead. RQ's own keys are built
from RQ's own templates, so they follow RQ.
"""

from rq import Queue

PREFIX = "tokenq"


def queue_name(model: str, batch: bool = False) -> str:
    """The RQ queue holding one model's interactive (or, with `batch`, batch) generation jobs
    (RQ adds its own `rq:queue:`). Workers take interactive jobs first (worker/rq_worker.py)."""
    return f"{PREFIX}:{model}@batch" if batch else f"{PREFIX}:{model}"


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


def model_entries() -> str:
    """Hash of the model registry (shared/model_registry/): canonical name -> entry JSON."""
    return f"{PREFIX}:registry:models"


def model_aliases() -> str:
    """Hash of every name the registry resolves (canonical names and aliases) -> canonical
    name."""
    return f"{PREFIX}:registry:names"


def model_facts(digest: str) -> str:
    """A model file's facts (shared/model_facts.py) by its content's sha256; never expires."""
    return f"{PREFIX}:facts:{digest}"


def model_vocab(digest: str) -> str:
    """A model file's tokenizer as a vocab-only GGUF (shared/vocab.py), by the file's sha256;
    never expires."""
    return f"{PREFIX}:vocab:{digest}"


def rq_queue_key(model: str, batch: bool = False) -> str:
    """The Redis list RQ keeps a model's waiting interactive (or batch) jobs in (KEDA scales
    workers on their lengths)."""
    return Queue.redis_queue_namespace_prefix + queue_name(model, batch)


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


def stored_response(response_id: str) -> str:
    """A stored Responses API response (`resp_...`): the object, its input items and the
    conversation it continues (api/responses/store.py); expires after `responses_ttl_s`."""
    return f"{PREFIX}:response:{response_id}"


def conversation(conversation_id: str) -> str:
    """A Responses API conversation (`conv_...`): its metadata and items, one JSON value
    (api/responses/store.py); expires `responses_ttl_s` after its last change."""
    return f"{PREFIX}:conversation:{conversation_id}"


def api_key(name: str) -> str:
    """An API key's record (JSON: limits, models, its secret's sha256; never the secret)."""
    return f"{PREFIX}:apikey:{name}"


def api_key_by_digest(digest: str) -> str:
    """The same record under its secret's sha256: what a request's key is looked up by."""
    return f"{PREFIX}:apikey-digest:{digest}"


def api_key_names() -> str:
    """Set of every API key's name."""
    return f"{PREFIX}:apikeys"


def quota_requests(name: str) -> str:
    """Sorted set of an API key's requests in its rate window (job ids scored by time)."""
    return f"{PREFIX}:quota:{name}:requests"


def quota_tokens(name: str) -> str:
    """Sorted set of an API key's token charges in its rate window (`<job>:<p|g>:<n>`, scored
    by time)."""
    return f"{PREFIX}:quota:{name}:tokens"


def tenant_waiting(name: str, model: str) -> str:
    """Sorted set of an API key's jobs admitted to a model's queue (RQ ids scored by deadline);
    those no longer in `waiting_jobs(model)` have started or left and no longer count."""
    return f"{PREFIX}:tenant-waiting:{name}:{model}"


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
