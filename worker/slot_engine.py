"""The `Engine` protocol on a shared Scheduler, for one consumer thread at a time.

Each slot thread gets its own SlotEngine over the one Scheduler, so today's JobRunner runs
unchanged in it: `start` opens a sequence and waits until the engine has started it, `step`
returns that sequence's next token (one element; the runner picks it by slot), `release`
closes it (the slot is freed at the engine's next step).
"""

from typing import Protocol, runtime_checkable

from shared.job import GenerationJob, SamplingParams
from worker.engine import EngineBusyError, EngineInfo, Sampled
from worker.scheduler import Embedding, Scheduler, Sequence

DEFAULT_OPEN_TIMEOUT_S = 30.0


@runtime_checkable
class TextTokenizer(Protocol):
    def text_tokens(self, text: str) -> list[int]: ...


class SlotEngine:
    """One sequence at a time on `scheduler`; not to be shared between threads."""

    def __init__(
        self, scheduler: Scheduler, open_timeout_s: float | None = DEFAULT_OPEN_TIMEOUT_S
    ) -> None:
        self._scheduler = scheduler
        self._open_timeout_s = open_timeout_s
        self._sequence: Sequence | None = None

    @property
    def info(self) -> EngineInfo:
        return self._scheduler.info

    @property
    def sequence(self) -> Sequence | None:
        """The running sequence: another thread may `close()` it to cancel the job."""
        return self._sequence

    def prompt_tokens(self, job: GenerationJob) -> list[int]:
        return self._scheduler.prompt_tokens(job)

    def start(self, prompt: list[int], sampling: SamplingParams, seed: int) -> int:
        """Open a sequence and wait until it holds a slot (EngineBusyError when none frees
        up within the open timeout; the engine's start error if it refused the prompt)."""
        if self._sequence is not None:
            raise EngineBusyError("a slot engine runs one sequence at a time")
        sequence = self._scheduler.open(prompt, sampling, seed, timeout=self._open_timeout_s)
        try:
            slot = sequence.wait_started()
        except BaseException:
            sequence.close()
            raise
        self._sequence = sequence
        return slot

    def step(self) -> list[Sampled]:
        """The sequence's next token, waiting for the engine's step that samples it.

        Raises the sequence's error (a failed step, a full context), or SequenceEndedError if
        it was closed from another thread or has ended.
        """
        if self._sequence is None:
            return []
        sampled = self._sequence.get()
        assert sampled is not None  # get() without a timeout waits for a token or the end
        return [sampled]

    def release(self, slot: int) -> None:
        if self._sequence is not None:
            self._sequence.close()
            self._sequence = None

    def text_tokens(self, text: str) -> list[int]:
        """Text as an embedding input, tokenized on the caller's thread."""
        engine = self._scheduler.engine
        if not isinstance(engine, TextTokenizer):
            raise TypeError("this engine does not tokenize embedding inputs")
        return engine.text_tokens(text)

    def submit_embedding(self, inputs: list[list[int]]) -> Embedding:
        """Queue the inputs for the engine thread; wait on (or close) what comes back."""
        return self._scheduler.embed(inputs)

    def self_check(self) -> None:
        """The engine's own check; only before the scheduler starts."""
        self._scheduler.check_engine()
