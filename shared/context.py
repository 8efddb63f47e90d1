"""The context-length rule, in one place for the API's early check and the worker's own.

A job fits when its prompt leaves room for at least one token. Its `max_tokens` must fit the
room left too where the flavour's own servers refuse more (OpenAI: 400); where they answer
instead (Anthropic, whose mandatory `max_tokens` clients fill with large defaults; Ollama,
which caps silently), it is capped to the room left and the job ends with `length` there.
Without `max_tokens` a job may generate until the context is full.
"""

from shared.job import Flavour

# The flavours whose servers answer a max_tokens beyond the room left, up to that room.
_CAPPING = frozenset({Flavour.ANTHROPIC, Flavour.OLLAMA})


def caps_max_tokens(flavour: Flavour) -> bool:
    """Whether a max_tokens beyond the room left is capped to it (else refused)."""
    return flavour in _CAPPING


class ContextOverflowError(ValueError):
    """The prompt plus the tokens asked for do not fit the context."""

    def __init__(self, n_ctx: int, prompt_tokens: int, max_tokens: int | None) -> None:
        self.n_ctx = n_ctx
        self.prompt_tokens = prompt_tokens
        self.max_tokens = max_tokens
        super().__init__(
            f"the context is {n_ctx} tokens; the prompt has {prompt_tokens} and "
            f"{max_tokens or 1} more were asked for"
        )

    @property
    def prompt_too_long(self) -> bool:
        """The prompt alone leaves no room (rather than max_tokens asking too much)."""
        return self.prompt_tokens >= self.n_ctx


def effective_context(worker_n_ctx: int, job_n_ctx: int | None) -> int:
    """The context a job runs in: its worker's, or the smaller one the job asked for."""
    return min(worker_n_ctx, job_n_ctx) if job_n_ctx is not None else worker_n_ctx


def output_room(
    n_ctx: int, prompt_tokens: int, max_tokens: int | None, *, cap: bool = False
) -> int:
    """How many tokens the job may generate; ContextOverflowError when it cannot fit. With
    `cap`, a max_tokens beyond the room left is the room left."""
    room = n_ctx - prompt_tokens
    if room < 1 or (max_tokens is not None and max_tokens > room and not cap):
        raise ContextOverflowError(n_ctx, prompt_tokens, max_tokens)
    return min(max_tokens, room) if max_tokens is not None else room
