"""The `x-ratelimit-*` headers, as OpenAI sends them, from a key's quotas after admission.

`x-ratelimit-limit-requests`, `-remaining-requests`, `-reset-requests` and the same for
`-tokens`; a reset is a duration (`250ms`, `12s`, `1m0s`): the time until the oldest request
(or token charge) counted in the 60 s window leaves it, i.e. when `remaining` next grows.
Sent on every response to a request that was charged, and with 429s, plus `Retry-After`.
"""

import math

from shared.tenancy.quota import RateState


def duration(seconds: float) -> str:
    """OpenAI's format for reset times: `17ms`, `1.5s`, `6m0s`."""
    if seconds < 1:
        return f"{max(0, math.ceil(seconds * 1000))}ms"
    minutes, rest = divmod(seconds, 60)
    text = f"{rest:.3f}".rstrip("0").rstrip(".")
    return f"{int(minutes)}m{text}s" if minutes else f"{text}s"


def rate_limit_headers(rate: RateState) -> dict[str, str]:
    headers: dict[str, str] = {}
    if rate.rpm is not None:
        headers["x-ratelimit-limit-requests"] = str(rate.rpm)
        headers["x-ratelimit-remaining-requests"] = str(rate.remaining_requests)
        headers["x-ratelimit-reset-requests"] = duration(rate.reset_requests_s)
    if rate.tpm is not None:
        headers["x-ratelimit-limit-tokens"] = str(rate.tpm)
        headers["x-ratelimit-remaining-tokens"] = str(rate.remaining_tokens)
        headers["x-ratelimit-reset-tokens"] = duration(rate.reset_tokens_s)
    if rate.exceeded is not None:
        headers["Retry-After"] = str(rate.retry_after_header())
    return headers
