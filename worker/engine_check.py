"""The start-up check every llama.cpp backend runs before its worker takes a job."""

from collections.abc import Callable

import numpy as np
import numpy.typing as npt

from shared.job import ChatMessage, SamplingParams
from worker.engine import Engine, EngineCheckError, Sampled

# The check's conversation: a few dozen tokens through the chat template, so the multi-token
# (batched matrix) kernels run as they do for a real prompt.
CHECK_MESSAGES = [
    ChatMessage(role="system", content="You are a helpful assistant. Answer in one short line."),
    ChatMessage(
        role="user",
        content="Name three colours of the rainbow and one animal that lives in the sea, "
        "then say which of them you like best and why.",
    ),
]
_CHECK_MIN_PROMPT = 32
_CHECK_DECODE = 4

Logits = Callable[[Sampled], npt.NDArray[np.float32]]


def check_decoding(engine: Engine, prompt: list[int], n_vocab: int, logits: Logits) -> None:
    """Evaluate `prompt` and decode a few tokens greedily; EngineCheckError if unusable.

    `logits(sampled)` gives the logits the sampled token was drawn from.
    """
    if len(prompt) < _CHECK_MIN_PROMPT:  # a tokenizer that lost the text; never a real check
        raise EngineCheckError(f"the check prompt has only {len(prompt)} tokens")
    slot = engine.start(prompt, SamplingParams(temperature=0.0), seed=0)
    try:
        n, steps = 0, 0
        while n < _CHECK_DECODE:
            # A batched engine may take several steps over the prompt before the first token;
            # one step per prompt token is more than any engine needs.
            if steps == len(prompt) + _CHECK_DECODE:
                raise EngineCheckError(f"{n} tokens after {steps} steps")
            steps += 1
            for sampled in (s for s in engine.step() if s.slot == slot):
                if not np.isfinite(logits(sampled)).all():
                    where = "the prompt" if n == 0 else f"decode step {n}"
                    raise EngineCheckError(
                        f"non-finite logits (NaN or inf) after {where}: the model file is "
                        "damaged or this llama.cpp build computes wrongly on this machine"
                    )
                if not 0 <= sampled.token < n_vocab:
                    raise EngineCheckError(f"token {sampled.token} is not in the vocabulary")
                if sampled.end_of_generation:
                    return
                n += 1
    finally:
        engine.release(slot)
