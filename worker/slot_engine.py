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
    """One job's sequences at a time on `scheduler` (n > 1 of one prompt: several); not to be
    shared between threads."""

    def __init__(
        self, scheduler: Scheduler, open_timeout_s: float | None = DEFAULT_OPEN_TIMEOUT_S
    ) -> None:
        self._scheduler = scheduler
        self._open_timeout_s = open_timeout_s
        self._sequences: dict[int, Sequence] = {}  # slot -> its running sequence

    @property
    def info(self) -> EngineInfo:
        return self._scheduler.info

    @property
    def sequences(self) -> list[Sequence]:
        """The running sequences: another thread may `close()` them to cancel the job."""
        return list(self._sequences.values())

    def prompt_tokens(self, job: GenerationJob) -> list[int]:
        return self._scheduler.prompt_tokens(job)

    def start(self, prompt: list[int], sampling: SamplingParams, seed: int) -> int:
        """Open a sequence and wait until it holds a slot (EngineBusyError when none frees
        up within the open timeout; the engine's start error if it refused the prompt)."""
        return self.start_group(prompt, sampling, [seed])[0]

    def start_group(
        self, prompt: list[int], sampling: SamplingParams, seeds: list[int]
    ) -> list[int]:
        """`start` for len(seeds) sequences of one prompt, evaluated once."""
        if self._sequences:
            raise EngineBusyError("a slot engine runs one job at a time")
        group = self._scheduler.open_group(prompt, sampling, seeds, timeout=self._open_timeout_s)
        try:
            slots = [sequence.wait_started() for sequence in group]
        except BaseException:
            for sequence in group:
                sequence.close()
            raise
        self._sequences = dict(zip(slots, group, strict=True))
        return slots

    def step(self) -> list[Sampled]:
        """Each running sequence's next token, waiting for the engine's step that samples it.

        Raises a sequence's error (a failed step, a full context), or SequenceEndedError if
        one was closed from another thread or has ended.
        """
        out = []
        for sequence in list(self._sequences.values()):
            sampled = sequence.get()
            assert sampled is not None  # get() without a timeout waits for a token or the end
            out.append(sampled)
        return out

    def release(self, slot: int) -> None:
        sequence = self._sequences.pop(slot, None)
        if sequence is not None:
            sequence.close()

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
