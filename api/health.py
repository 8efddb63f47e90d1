"""Liveness and readiness probes."""

from fastapi import APIRouter
from fastapi.responses import JSONResponse
from redis.exceptions import RedisError

from api.deps import StateDep
from api.models import live_models

router = APIRouter()


@router.get("/healthz")
async def healthz() -> dict[str, str]:
    """The process is up and serving HTTP."""
    return {"status": "ok"}


@router.get("/readyz")
@router.get("/health")  # llama.cpp's and vLLM's probe path
async def readyz(state: StateDep) -> JSONResponse:
    """Redis answers and at least one model has a live worker."""
    try:
        await state.redis.ping()
        models = await live_models(state)
    except RedisError as exc:
        return JSONResponse({"status": "unavailable", "reason": f"redis: {exc}"}, status_code=503)
    if not models:
        return JSONResponse({"status": "unavailable", "reason": "no live worker"}, status_code=503)
    return JSONResponse({"status": "ready", "models": {m: len(w) for m, w in models.items()}})
