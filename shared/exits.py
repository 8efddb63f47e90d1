"""Exit statuses that mean something to whoever supervises a tokenq process."""

from enum import IntEnum


class ExitStatus(IntEnum):
    # The worker's engine failed its start-up check: the same build and file will fail again,
    # so a supervisor reports it instead of restarting the worker.
    ENGINE_CHECK_FAILED = 3
