"""Who a request comes from, for what is kept per tenant (Idempotency-Key).

One function, one place: until API keys identify tenants by name, the tenant is a digest of
the credential the request presented (OpenAI's and Ollama's `Authorization`, Anthropic's
`x-api-key`), or `anonymous` without one. The credential itself is never stored.
"""

import hashlib

from starlette.requests import Request

ANONYMOUS = "anonymous"


def tenant_of(request: Request) -> str:
    credential = request.headers.get("authorization") or request.headers.get("x-api-key")
    if not credential:
        return ANONYMOUS
    return "c-" + hashlib.sha256(credential.encode()).hexdigest()[:32]
