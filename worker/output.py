"""A job's output events: text deltas per sequence, honouring its stop strings, with their
log-probabilities, published in one order for the whole job."""

from collections.abc import Callable
from typing import Protocol

from shared.events import ChoiceEndEvent, Event, FinishReason, TokenEvent, TokenLogprob
from worker.stops import StopMatcher, Utf8Decoder


class Publisher(Protocol):
    def publish(self, job_id: str, event: Event) -> None: ...


class OutputStopped(Exception):
    """The job's output is no longer this run's to publish (claim refused)."""


class JobOutput:
    """The job's events in one numbered order (the API detects a lost one by a gap)."""

    def __init__(self, job_id: str, publisher: Publisher, claim: Callable[[], bool]) -> None:
        self._job_id = job_id
        self._publisher = publisher
        self._claim = claim
        self._index = 0

    def token(self, choice: int, text: str, logprobs: list[TokenLogprob] | None) -> None:
        if self._index == 0 and not self._claim():
            raise OutputStopped()
        self._publish(TokenEvent(index=self._index, text=text, choice=choice, logprobs=logprobs))

    def choice_end(
        self, choice: int, finish: FinishReason, stop_sequence: str | None, tokens: int
    ) -> None:
        self._publish(
            ChoiceEndEvent(
                index=self._index,
                choice=choice,
                finish_reason=finish,
                stop_sequence=stop_sequence,
                completion_tokens=tokens,
            )
        )

    def _publish(self, event: TokenEvent | ChoiceEndEvent) -> None:
        self._publisher.publish(self._job_id, event)
        self._index += 1


class ChoiceOutput:
    """Turns one sequence's sampled token bytes into text deltas, honouring the stop strings.

    With logprobs, each token's entry goes out with the first delta that carries any of its
    text (text held back for a possible stop string, or a character split over tokens, comes
    later); the entries of tokens whose text a stop string swallowed are dropped with it.
    """

    def __init__(self, choice: int, stops: list[str], out: JobOutput, logprobs: bool) -> None:
        self.choice = choice
        self._out = out
        self._decoder = Utf8Decoder()
        self._stops = StopMatcher(stops)
        self._logprobs: list[TokenLogprob] | None = [] if logprobs else None
        self.stop_sequence: str | None = None
        self.generated = 0
        self.finish: FinishReason | None = None

    def add(self, piece: bytes, logprob: TokenLogprob | None) -> bool:
        """Emit what is safe of this token; True when a stop string matched."""
        self.generated += 1
        if self._logprobs is not None and logprob is not None:
            self._logprobs.append(logprob)
        text, self.stop_sequence = self._stops.feed(self._decoder.feed(piece))
        self._emit(text)
        return self.stop_sequence is not None

    def end(self, finish: FinishReason) -> None:
        """The sequence ended (a stop string already matched: STOP_SEQUENCE): flush."""
        if finish is not FinishReason.STOP_SEQUENCE:
            text, self.stop_sequence = self._stops.feed(self._decoder.flush())
            self._emit(text if self.stop_sequence else text + self._stops.flush())
            if self.stop_sequence is not None:
                finish = FinishReason.STOP_SEQUENCE
        self.finish = finish

    def _emit(self, text: str) -> None:
        if text:
            entries = self._logprobs
            if entries is not None:
                self._logprobs = []
            self._out.token(self.choice, text, entries)
