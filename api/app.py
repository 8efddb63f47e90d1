"""The FastAPI app factory."""

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from api import control, health, metrics
from api.anthropic.router import router as anthropic_router
from api.ollama.router import router as ollama_router
from api.openai.router import router as openai_router
from api.request_id import RequestIdMiddleware
from api.state import AppState
from shared.settings import ApiSettings


def create_app(settings: ApiSettings | None = None, state: AppState | None = None) -> FastAPI:
    """The app; its state connects to Redis at startup unless `state` is given (tests)."""
    settings = settings or ApiSettings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        app.state.tokenq = state or AppState.connect(settings)
        try:
            yield
        finally:
            await app.state.tokenq.close()

    app = FastAPI(title="tokenq", version="0.1.0", lifespan=lifespan)
    app.add_middleware(RequestIdMiddleware)
    app.include_router(health.router)
    app.include_router(metrics.router)
    app.include_router(openai_router)
    app.include_router(anthropic_router)
    app.include_router(ollama_router)
    app.include_router(control.router)
    if state is not None:  # usable without running the lifespan too
        app.state.tokenq = state
    return app
