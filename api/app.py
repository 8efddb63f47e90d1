"""The FastAPI app factory."""

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from api import control, health
from api.openai.router import router as openai_router
from api.state import AppState
from shared.settings import ApiSettings


def create_app(settings: ApiSettings | None = None) -> FastAPI:
    settings = settings or ApiSettings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        state = AppState.connect(settings)
        app.state.tokenq = state
        try:
            yield
        finally:
            await state.close()

    app = FastAPI(
        title="tokenq",
        version="0.1.0",
        lifespan=lifespan,
        max_body_size=settings.max_body_bytes,  # larger bodies: 413 in the flavour's shape
    )
    app.include_router(health.router)
    app.include_router(openai_router)
    app.include_router(control.router)
    return app
