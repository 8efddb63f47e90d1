"""Who a request comes from, for what is kept per tenant (Idempotency-Key).

One function, one place: with authentication on, the tenant is the API key that
authenticated the request (its name, api/auth.py); with it off, a digest of whatever
credential the request presented (OpenAI's and Ollama's `Authorization`, Anthropic's
`x-api-key`), or `anonymous` without one. The credential itself is never stored.
"""

import hashlib

from starlette.requests import Request

from api.auth import tenant_name

ANONYMOUS = "anonymous"


def tenant_of(request: Request) -> str:
    name = tenant_name(request)
    if name is not None:
        return "k-" + name
    credential = request.headers.get("authorization") or request.headers.get("x-api-key")
    if not credential:
        return ANONYMOUS
    return "c-" + hashlib.sha256(credential.encode()).hexdigest()[:32]
