"""Exit statuses that mean something to whoever supervises a tokenq process."""

from enum import IntEnum


class ExitStatus(IntEnum):
    # The worker's engine failed its start-up check: the same build and file will fail again,
    # so a supervisor reports it instead of restarting the worker.
    ENGINE_CHECK_FAILED = 3
    # The worker's model cannot be served from this host as registered: not registered, its
    # file missing from the model directory, or the file's digest not the registered one.
    # Restarting finds the same file: an operator must act (`tokenq model verify NAME`).
    MODEL_FILE_INVALID = 4
