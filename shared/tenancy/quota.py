"""Per-key rate quotas: requests and tokens in a sliding 60-second window, across replicas.

Each key has two sorted sets scored by time: its requests (job ids) and its token charges
(`<job id>:p:<n>` for a prompt of n tokens, charged at admission; `<job id>:g:<n>` for n
generated tokens, charged by the worker when the job ends). The API's check and charge is
one Lua script, so replicas together admit exactly `rpm` requests in any 60 s, and a request
only while the tokens of the last 60 s plus its prompt stay within `tpm`. Generated tokens
are charged after the fact: a request that generates many uses up later requests' room.
"""

import math
import time
from dataclasses import dataclass
from enum import StrEnum
from typing import cast

from redis import Redis
from redis.asyncio import Redis as AsyncRedis

from shared import keys

WINDOW_S = 60.0

# Check and charge one request. KEYS: requests, tokens. ARGV: now, window, rpm (0: no limit),
# tpm (0: no limit), job id, prompt tokens.
# Returns {admitted 1|0, limit hit ('requests'|'tokens'|''), retry after ms (-1: never),
#          requests in window, tokens in window, ms until the requests' and the tokens' oldest
#          entry leaves the window (0: none)}. A prompt of more than tpm tokens can never pass.
CHARGE = """
local now, window = tonumber(ARGV[1]), tonumber(ARGV[2])
local rpm, tpm, prompt = tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[6])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - window)
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now - window)
local requests = redis.call('ZRANGE', KEYS[1], 0, -1, 'WITHSCORES')
local charges = redis.call('ZRANGE', KEYS[2], 0, -1, 'WITHSCORES')
local count = #requests / 2
local used = 0
for i = 1, #charges, 2 do used = used + tonumber(string.match(charges[i], ':(%d+)$')) end
local function ms_until_gone(score) return math.ceil((tonumber(score) + window - now) * 1000) end
local function reset(entries)
  if #entries == 0 then return 0 end
  return ms_until_gone(entries[2])
end
if rpm > 0 and count >= rpm then
  local retry = ms_until_gone(requests[2 * (count - rpm) + 2])
  return {0, 'requests', retry, count, used, reset(requests), reset(charges)}
end
if tpm > 0 and used + prompt > tpm then
  local retry = -1
  if prompt <= tpm then
    local left = used
    for i = 1, #charges, 2 do
      left = left - tonumber(string.match(charges[i], ':(%d+)$'))
      if left + prompt <= tpm then
        retry = ms_until_gone(charges[i + 1])
        break
      end
    end
  end
  return {0, 'tokens', retry, count, used, reset(requests), reset(charges)}
end
redis.call('ZADD', KEYS[1], now, ARGV[5])
redis.call('ZADD', KEYS[2], now, ARGV[5] .. ':p:' .. prompt)
redis.call('EXPIRE', KEYS[1], math.ceil(window) + 60)
redis.call('EXPIRE', KEYS[2], math.ceil(window) + 60)
requests = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
charges = redis.call('ZRANGE', KEYS[2], 0, 0, 'WITHSCORES')
return {1, '', 0, count + 1, used + prompt, reset(requests), reset(charges)}
"""


class Limit(StrEnum):
    REQUESTS = "requests"
    TOKENS = "tokens"


@dataclass(frozen=True)
class RateState:
    """A key's quotas after a charge (or a refusal): what the `x-ratelimit-*` headers say."""

    rpm: int | None
    tpm: int | None
    requests: int  # in the window, this request included if admitted
    tokens: int
    reset_requests_s: float  # until the oldest counted request leaves the window
    reset_tokens_s: float
    exceeded: Limit | None = None
    retry_after_s: float | None = None  # None with `exceeded`: never (a prompt over tpm)

    @property
    def remaining_requests(self) -> int | None:
        return None if self.rpm is None else max(0, self.rpm - self.requests)

    @property
    def remaining_tokens(self) -> int | None:
        return None if self.tpm is None else max(0, self.tpm - self.tokens)

    def retry_after_header(self) -> int:
        """Whole seconds for `Retry-After` (the window's length when waiting cannot help)."""
        if self.retry_after_s is None:
            return math.ceil(WINDOW_S)
        return max(1, math.ceil(self.retry_after_s))


class Quotas:
    """The API's charges, on its asynchronous client."""

    def __init__(self, redis: AsyncRedis) -> None:
        self._redis = redis
        self._charge = redis.register_script(CHARGE)

    async def charge(
        self, name: str, job_id: str, prompt_tokens: int, rpm: int | None, tpm: int | None
    ) -> RateState:
        """Count one request and its prompt against the key's quotas, unless either is used up
        (then nothing is counted and `exceeded` says which)."""
        raw = await self._charge(
            keys=[keys.quota_requests(name), keys.quota_tokens(name)],
            args=[time.time(), WINDOW_S, rpm or 0, tpm or 0, job_id, prompt_tokens],
        )
        admitted, limit, retry_ms, requests, tokens, reset_req_ms, reset_tok_ms = cast(
            list[int | bytes], raw
        )
        exceeded = None if admitted else Limit(_text(limit))
        return RateState(
            rpm=rpm,
            tpm=tpm,
            requests=int(requests),
            tokens=int(tokens),
            reset_requests_s=int(reset_req_ms) / 1000,
            reset_tokens_s=int(reset_tok_ms) / 1000,
            exceeded=exceeded,
            retry_after_s=None if int(retry_ms) < 0 else int(retry_ms) / 1000,
        )

    async def refund(self, name: str, job_id: str, prompt_tokens: int) -> None:
        """Take back a charge whose job was not admitted after all (its queue was full)."""
        pipe = self._redis.pipeline(transaction=True)
        pipe.zrem(keys.quota_requests(name), job_id)
        pipe.zrem(keys.quota_tokens(name), f"{job_id}:p:{prompt_tokens}")
        await pipe.execute()


def charge_generated(redis: Redis, name: str, job_id: str, tokens: int) -> None:
    """The worker: charge the tokens a job generated to its key, when the job ends."""
    if tokens <= 0:
        return
    pipe = redis.pipeline(transaction=True)
    pipe.zadd(keys.quota_tokens(name), {f"{job_id}:g:{tokens}": time.time()})
    pipe.expire(keys.quota_tokens(name), math.ceil(WINDOW_S) + 60)
    pipe.execute()


def _text(raw: int | bytes) -> str:
    return raw.decode() if isinstance(raw, bytes) else str(raw)
