"""A job's record: its states, the moves between them, and the typed view of its Redis hash.

    queued -> running -> done | failed          (a worker ran it)
    queued -> expired | cancelled               (it never started)
    running -> cancelled                        (the worker notices between tokens)
    running -> queued                           (its worker died before the first token)
    running -> failed                           (its worker died after it, or no attempt left)

A new state is added here (JobStatus, TRANSITIONS), and the type checker then points at every
`match` on a status that does not handle it (`assert_never`).
"""

from collections.abc import Mapping
from enum import StrEnum
from typing import assert_never

from pydantic import BaseModel
from redis.typing import EncodableT, FieldT

from shared.job import QueuedJob


class JobStatus(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"
    CANCELLED = "cancelled"
    EXPIRED = "expired"

    @property
    def terminal(self) -> bool:
        match self:
            case JobStatus.QUEUED | JobStatus.RUNNING:
                return False
            case JobStatus.DONE | JobStatus.FAILED | JobStatus.CANCELLED | JobStatus.EXPIRED:
                return True
            case _:
                assert_never(self)


# Every move a record may make; the scripts and transactions of this package make only these.
TRANSITIONS: Mapping[JobStatus, frozenset[JobStatus]] = {
    JobStatus.QUEUED: frozenset({JobStatus.RUNNING, JobStatus.EXPIRED, JobStatus.CANCELLED}),
    JobStatus.RUNNING: frozenset(
        {JobStatus.DONE, JobStatus.FAILED, JobStatus.CANCELLED, JobStatus.QUEUED}
    ),
    JobStatus.DONE: frozenset(),
    JobStatus.FAILED: frozenset(),
    JobStatus.CANCELLED: frozenset(),
    JobStatus.EXPIRED: frozenset(),
}


class JobRecord(BaseModel):
    """What Redis holds about one job (its record hash, `keys.job_record`), typed."""

    id: str
    model: str
    status: JobStatus
    rq_id: str
    attempt: int
    created_at: float
    deadline: float
    worker: str | None = None
    streamed: bool = False
    started_at: float | None = None
    ended_at: float | None = None
    cancel_requested_at: float | None = None
    error: str | None = None

    @classmethod
    def from_hash(cls, job_id: str, raw: Mapping[bytes | str, bytes | str]) -> "JobRecord | None":
        """From the record hash as HGETALL returns it (None: no such record)."""
        if not raw:
            return None
        fields = {as_text(k): as_text(v) for k, v in raw.items()}
        fields = {k: v for k, v in fields.items() if v != ""}
        fields["streamed"] = str(fields.get("streamed") == "1")
        return cls.model_validate({**fields, "id": job_id})


def queued_fields(job: QueuedJob) -> dict[FieldT, EncodableT]:
    """The record of an attempt that has just been queued (admitted, or rerun)."""
    return {
        "model": job.model,
        "status": JobStatus.QUEUED,
        "rq_id": rq_job_id(job.id, job.attempt),
        "attempt": job.attempt,
        "created_at": job.created_at,
        "deadline": job.deadline,
        "worker": "",
    }


def rq_job_id(job_id: str, attempt: int) -> str:
    """The RQ job id of one attempt at a job; each attempt is a fresh RQ job."""
    return f"{job_id}-{attempt}"


def as_text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
