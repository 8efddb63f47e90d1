"""Who is calling: the API key a request presents, checked before its body is read.

With `TOKENQ_AUTH=required`, every flavour route (and `/v1/jobs`) takes a key where its
clients send it: `Authorization: Bearer <key>` (OpenAI, Ollama, and accepted from Anthropic
clients too) or `x-api-key: <key>` (Anthropic). The probes (`/healthz`, `/readyz`),
`/metrics` and Ollama's `GET /` never do (`@public`). The key is read from Redis on every
request (one GET, api/README figures), so a key created, rotated or revoked anywhere holds on
every replica at once. Nothing here logs or repeats the key's text.
"""

from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated, Any, TypeVar

from fastapi import Depends, Request

from api.errors import AuthenticationError, InvalidRequestError
from shared.job import Priority
from shared.tenancy.apikeys import ApiKey, lookup
from shared.tenancy.quota import RateState

PRIORITY_HEADER = "x-tokenq-priority"
_PUBLIC = "__tokenq_public__"

Endpoint = TypeVar("Endpoint", bound=Callable[..., Any])


def public(endpoint: Endpoint) -> Endpoint:
    """Mark a flavour route as open without an API key."""
    setattr(endpoint, _PUBLIC, True)
    return endpoint


def is_public(endpoint: Callable[..., Any]) -> bool:
    return bool(getattr(endpoint, _PUBLIC, False))


@dataclass
class Caller:
    """The authenticated caller of one request: its key (None with authentication off), the
    priority its jobs get, and its quotas as the request's admission left them."""

    key: ApiKey | None
    priority: Priority
    rate: RateState | None = None

    @property
    def name(self) -> str | None:
        return self.key.name if self.key is not None else None


def presented_secret(request: Request) -> str | None:
    """The key from `Authorization: Bearer` or `x-api-key`, whichever the client sent."""
    authorization = request.headers.get("authorization", "")
    scheme, _, credentials = authorization.partition(" ")
    if scheme.lower() == "bearer" and credentials.strip():
        return credentials.strip()
    return request.headers.get("x-api-key") or None


async def authenticate(request: Request) -> Caller:
    """The request's caller; 401 (AuthenticationError) when a key is required and the request
    has none that Redis knows. Reads no body."""
    state = request.app.state.tokenq
    key: ApiKey | None = None
    if state.settings.auth == "required":
        secret = presented_secret(request)
        if secret is None:
            raise AuthenticationError(
                "no API key: send it as 'Authorization: Bearer <key>' or 'x-api-key: <key>'"
            )
        key = await lookup(state.redis, secret)
        if key is None:
            raise AuthenticationError("the API key is not valid (unknown, rotated or revoked)")
    caller = Caller(key, _priority(request, key))
    request.state.caller = caller
    return caller


def _priority(request: Request, key: ApiKey | None) -> Priority:
    """The key's class, or batch when the request lowers itself with `x-tokenq-priority`
    (a request never raises itself above its key's class)."""
    default = key.priority if key is not None else Priority.INTERACTIVE
    asked = request.headers.get(PRIORITY_HEADER)
    if asked is None:
        return default
    try:
        wanted = Priority(asked.strip().lower())
    except ValueError:
        raise InvalidRequestError(
            f"{PRIORITY_HEADER} must be 'interactive' or 'batch'", param=PRIORITY_HEADER
        ) from None
    return Priority.BATCH if Priority.BATCH in (wanted, default) else Priority.INTERACTIVE


def tenant_name(request: Request) -> str | None:
    """The name of the API key that authenticated this request; None with authentication off
    (or on a public route). The tenant identity other features key on (e.g. idempotency)."""
    caller: Caller | None = getattr(request.state, "caller", None)
    return caller.name if caller is not None else None


# The request's tenant (API key name, or None), for route signatures.
TenantDep = Annotated[str | None, Depends(tenant_name)]
