"""The small interface between the job runner and a model.

The shape is slot-based, as llama.cpp's server is: sequences are started in slots, `step()`
advances every active slot by one token, and a slot is released when its sequence ends. A
backend that decodes several slots in one batch fits behind the same calls; the llama.cpp
backend today holds one slot.
"""

from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import numpy as np
import numpy.typing as npt

from shared.events import TokenLogprob
from shared.job import GenerationJob, SamplingParams


@dataclass(frozen=True)
class EngineInfo:
    n_ctx: int
    backend: str  # "cpu" or "cuda"
    slots: int
    load_seconds: float
    quantization: str = "unknown"  # e.g. "Q4_1", from the GGUF's file type
    n_vocab: int = 0  # token ids are below this (0: not known)
    embedding_dims: int | None = None  # the length of its embedding vectors; None: no embed()


@dataclass(frozen=True)
class Sampled:
    """One token sampled for one slot."""

    slot: int
    token: int
    piece: bytes  # the token's bytes; may be part of a multi-byte character
    end_of_generation: bool
    logprob: TokenLogprob | None = None  # when the sequence asked for logprobs


@dataclass(frozen=True)
class StepStats:
    """What one decode step of a batched engine did (for metrics)."""

    sequences: int  # sequences in the batch (prefilling or decoding)
    prompt_tokens: int  # prompt tokens evaluated (prefill chunks)
    decoded_tokens: int  # tokens sampled
    seconds: float  # the step's duration
    kv_cells_used: int  # KV cache cells holding tokens after the step
    reused_tokens: int = 0  # prompt tokens taken from cached prefixes by sequences started


class EngineBusyError(RuntimeError):
    """No free slot."""


class KVCacheFullError(RuntimeError):
    """The sequences in `slots` cannot go on: the context shared by every slot is full.

    Raised by `step()` before it computes anything, so no other slot loses a token: release
    the slots named and step again.
    """

    def __init__(self, slots: tuple[int, ...], message: str) -> None:
        super().__init__(message)
        self.slots = slots


class InvalidSamplingError(ValueError):
    """A job's sampling that the engine cannot honour (a grammar llama.cpp cannot parse, a
    token id outside the vocabulary): the job ends with an invalid-request error, the worker
    goes on."""


class EngineCheckError(RuntimeError):
    """The engine cannot compute on this machine: its start-up check failed."""


class Engine(Protocol):
    @property
    def info(self) -> EngineInfo: ...

    def prompt_tokens(self, job: GenerationJob) -> list[int]:
        """The job's prompt as the model sees it: chat template applied, tokenized."""
        ...

    def start(self, prompt: list[int], sampling: SamplingParams, seed: int) -> int:
        """Begin a sequence in a free slot and return the slot."""
        ...

    def start_group(
        self, prompt: list[int], sampling: SamplingParams, seeds: list[int]
    ) -> list[int]:
        """Begin len(seeds) sequences of one prompt, evaluated once (n > 1); their slots."""
        ...

    def step(self) -> list[Sampled]:
        """Decode one token for every active slot."""
        ...

    def release(self, slot: int) -> None:
        """End the slot's sequence and free it."""
        ...

    def self_check(self) -> None:
        """Evaluate a prompt of a few dozen tokens and decode a few, as a real job would.

        Raises EngineCheckError if the result is unusable. Run before the worker registers,
        so a build that cannot run here (it may also kill the process) never takes a job.
        """
        ...


@runtime_checkable
class CanEmbed(Protocol):
    def embed(self, inputs: list[list[int]]) -> list[npt.NDArray[np.float32]]:
        """Embed the first of `inputs` (at least one, as many as fit one round) between
        generation steps; their unit vectors, in order. Each input fits the context."""
        ...
