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


def stored_response(response_id: str) -> str:
    """A stored Responses API response (`resp_...`): the object, its input items and the
    conversation it continues (api/responses/store.py); expires after `responses_ttl_s`."""
    return f"{PREFIX}:response:{response_id}"


def conversation(conversation_id: str) -> str:
    """A Responses API conversation (`conv_...`): its metadata and items, one JSON value
    (api/responses/store.py); expires `responses_ttl_s` after its last change."""
    return f"{PREFIX}:conversation:{conversation_id}"
