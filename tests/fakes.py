"""Test doubles shared by the unit tests: a scripted engine and a recording publisher."""

import threading
from dataclasses import dataclass, field

from api.tokenizers import Tokenizers
from shared.events import DoneEvent, ErrorEvent, TokenEvent
from shared.job import GenerationJob, SamplingParams
from worker.engine import EngineBusyError, EngineInfo, Sampled

EOS = -1


# How long a paused FakeEngine waits to be resumed before it fails its job.
PAUSE_LIMIT_S = 30.0


@dataclass
class FakeEngine:
    """Plays back `pieces` (bytes per token; EOS ends the sequence; an exception is raised).

    With `pause_at` set, the step that would produce piece number `pause_at` (0: the first)
    waits until `resume` is set, with `paused` set meanwhile: a job caught mid-run, for a
    test to act on (cancel it, drop its worker) while its worker thread is blocked.
    """

    pieces: list[bytes | int | Exception]
    prompt_len: int = 4
    n_ctx: int = 64
    started_with: list[tuple[SamplingParams, int]] = field(default_factory=list)
    pause_at: int | None = None
    paused: threading.Event = field(default_factory=threading.Event)
    resume: threading.Event = field(default_factory=threading.Event)
    steps: int = 0  # calls of step(), over all jobs
    _position: int | None = None

    @property
    def info(self) -> EngineInfo:
        return EngineInfo(n_ctx=self.n_ctx, backend="cpu", slots=1, load_seconds=0.0)

    def prompt_tokens(self, job: GenerationJob) -> list[int]:
        if job.prompt == "":  # raw text with nothing in it: no tokens, as llama.cpp
            return []
        return list(range(self.prompt_len))

    def start(self, prompt: list[int], sampling: SamplingParams, seed: int) -> int:
        assert prompt, "llama.cpp cannot evaluate an empty prompt"
        if self._position is not None:
            raise EngineBusyError("busy")
        self.started_with.append((sampling, seed))
        self._position = 0
        return 0

    def step(self) -> list[Sampled]:
        assert self._position is not None
        self.steps += 1
        if self._position == self.pause_at and not self.resume.is_set():
            self.paused.set()
            if not self.resume.wait(PAUSE_LIMIT_S):
                raise TimeoutError(f"paused at piece {self.pause_at}; never resumed")
        piece = self.pieces[self._position] if self._position < len(self.pieces) else EOS
        self._position += 1
        if isinstance(piece, Exception):
            raise piece
        if piece == EOS:
            return [Sampled(slot=0, token=0, piece=b"", end_of_generation=True)]
        assert isinstance(piece, bytes)
        return [Sampled(slot=0, token=self._position, piece=piece, end_of_generation=False)]

    def release(self, slot: int) -> None:
        self._position = None

    def self_check(self) -> None:
        pass


@dataclass
class RecordingPublisher:
    events: list[tuple[str, TokenEvent | DoneEvent | ErrorEvent]] = field(default_factory=list)

    def publish(self, job_id: str, event: TokenEvent | DoneEvent | ErrorEvent) -> None:
        self.events.append((job_id, event))


class FakeTokenizers(Tokenizers):
    """Counts every prompt as `prompt_len` tokens, as FakeEngine does.

    Its text is encoded as UTF-8 first, as the real tokenizer does: text it cannot encode
    fails here as it would there.
    """

    def __init__(self, prompt_len: int) -> None:
        self.prompt_len = prompt_len

    async def count(self, job: GenerationJob, n_ctx: int | None = None) -> int:
        for text in [job.prompt or "", *(m.content for m in job.messages or [])]:
            text.encode("utf-8")
        return self.prompt_len
