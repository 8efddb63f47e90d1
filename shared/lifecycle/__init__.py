"""A job's life in Redis, next to RQ's own bookkeeping: one record, one atomic step per change.

Everything about it lives in this package: the states and allowed moves (`record`), the Lua
scripts with their typed calls (`scripts`), the queue's depth (`queue`), and each side's
client: the API's transactions (`admission`) and reads (`api_side`), the worker's
(`worker_side`). The state diagram is in `record`.
"""

from shared.lifecycle.record import TRANSITIONS, JobRecord, JobStatus, rq_job_id

__all__ = ["TRANSITIONS", "JobRecord", "JobStatus", "rq_job_id"]
