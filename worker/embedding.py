"""Embeddings in the generation context, between its steps.

An embedding decode is a batch of input tokens decoded with llama.cpp's embeddings output on
(`llama_set_embeddings`), never mixed with generation in one decode, as llama-server does.
Each input is a sequence of its own, under the id of a slot that holds no running sequence;
its cells are dropped right after, so no running sequence's cells or logits are touched
(checked: generation logits after an interleaved embedding decode are bit-identical).

Pooling: the mean of the input's last hidden states (after the output norm) over all its
tokens, then L2-normalised, so a vector has length 1 and a dot product is a cosine, as
Ollama's and OpenAI's vectors are. The mean is taken here, not by llama.cpp's MEAN pooling:
that one averages only the tokens of one ubatch, and a per-slot KV cache splits a batch of
inputs of different lengths into several ubatches (measured: an input batched with others
came out at cosine 0.997 of itself alone; pooled here, identical). Pooling here also lets an
input longer than one batch be evaluated over several decodes.
"""

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

Vector = npt.NDArray[np.float32]


def pack(inputs: list[list[int]], sequences: int, capacity: int) -> int:
    """How many of the first inputs go in one embedding round: at least one, at most
    `sequences` (free sequence ids), and several only while their tokens fit one batch of
    `capacity` (a longer first input goes alone, over several decodes)."""
    count, tokens = 0, 0
    for tokens_of in inputs:
        if count == sequences or (count and tokens + len(tokens_of) > capacity):
            break
        count += 1
        tokens += len(tokens_of)
    return max(count, 1)


@dataclass
class MeanPool:
    """The running sum of one input's hidden states, over however many decodes it takes."""

    total: npt.NDArray[np.float64]
    count: int = 0

    @classmethod
    def empty(cls, n_embd: int) -> "MeanPool":
        return cls(np.zeros(n_embd, dtype=np.float64))

    def add(self, rows: npt.NDArray[np.float32]) -> None:
        self.total += rows.sum(axis=0, dtype=np.float64)
        self.count += len(rows)

    def vector(self) -> Vector:
        """The mean, L2-normalised (a zero mean stays zero)."""
        mean = self.total / max(self.count, 1)
        norm = float(np.linalg.norm(mean))
        return (mean / norm if norm > 0 else mean).astype(np.float32)


@dataclass(frozen=True)
class Chunk:
    """Part of one input in one decode: input `index`, tokens [start, end) at batch rows
    [row, row + end - start)."""

    index: int
    start: int
    end: int
    row: int


def chunks(lengths: list[int], capacity: int) -> list[list[Chunk]]:
    """The decodes that evaluate inputs of these lengths, in order, at most `capacity` tokens
    each; an input runs on in the next decode where one ends."""
    decodes: list[list[Chunk]] = []
    current: list[Chunk] = []
    room = capacity
    for index, length in enumerate(lengths):
        start = 0
        while start < length:
            if room == 0:
                decodes.append(current)
                current, room = [], capacity
            end = min(length, start + room)
            current.append(Chunk(index, start, end, capacity - room))
            room -= end - start
            start = end
    if current:
        decodes.append(current)
    return decodes
