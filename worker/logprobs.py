"""Log-probabilities of a sampled step, from the raw logits (before any sampler touched them).

Computed only for sequences that ask for them: a log-softmax over the vocabulary and a top-k
partition cost ~0.6 ms a token on 49k logits (DESIGN.md), nothing for the others.
"""

from collections.abc import Callable

import numpy as np
import numpy.typing as npt

from shared.events import TokenLogprob, TopLogprob

Logits = npt.NDArray[np.float32]


def log_softmax(logits: Logits) -> npt.NDArray[np.float64]:
    """Natural-log probabilities of every token (computed in float64: no overflow, sums to 1)."""
    shifted = logits.astype(np.float64) - float(np.max(logits))
    return shifted - float(np.log(np.exp(shifted).sum()))


def most_likely(logprobs: npt.NDArray[np.float64], k: int) -> list[int]:
    """The k most likely token ids, most likely first (ties: the lower id first)."""
    if k <= 0:
        return []
    k = min(k, len(logprobs))
    best = np.argpartition(-logprobs, k - 1)[:k]
    return [int(t) for t in best[np.lexsort((best, -logprobs[best]))]]


def entry(
    logprobs: npt.NDArray[np.float64],
    token: int,
    k: int,
    piece: Callable[[int], bytes],
) -> TokenLogprob:
    """The sampled token's entry with its k most likely alternatives (`piece`: a token's
    bytes)."""
    return TokenLogprob(
        **_top(piece(token), float(logprobs[token])).model_dump(),
        top=[_top(piece(t), float(logprobs[t])) for t in most_likely(logprobs, k)],
    )


def _top(piece: bytes, logprob: float) -> TopLogprob:
    return TopLogprob(
        token=piece.decode("utf-8", errors="replace"), bytes=list(piece), logprob=logprob
    )
