"""The FastAPI app factory."""

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from starlette.exceptions import HTTPException

from api import health, job_routes, metrics, playground
from api.anthropic import serving as anthropic_serving
from api.anthropic.router import router as anthropic_router
from api.cors import add_cors
from api.ollama import serving as ollama_serving
from api.ollama.router import router as ollama_router
from api.openai import serving as openai_serving
from api.openai.router import router as openai_router
from api.openai.router import tokenizer_router
from api.pipeline import unrouted_error_handler
from api.request_id import RequestIdMiddleware
from api.responses.router import router as responses_router
from api.state import AppState
from shared.job import Flavour
from shared.settings import ApiSettings


def create_app(settings: ApiSettings | None = None, state: AppState | None = None) -> FastAPI:
    """The app; its state connects to Redis at startup unless `state` is given (tests)."""
    settings = settings or ApiSettings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        app.state.tokenq = state or AppState.connect(settings)
        app.state.tokenq.start()
        try:
            yield
        finally:
            await app.state.tokenq.close()

    app = FastAPI(title="tokenq", version="0.1.0", lifespan=lifespan)
    app.add_middleware(RequestIdMiddleware)
    app.include_router(health.router)
    app.include_router(metrics.router)
    app.include_router(openai_router)
    app.include_router(tokenizer_router)
    app.include_router(anthropic_router)
    app.include_router(ollama_router)
    app.include_router(responses_router)
    app.include_router(job_routes.router)
    app.include_router(playground.router)
    # Unknown paths and methods under a flavour's prefix answer in that flavour's shape.
    unrouted = unrouted_error_handler(
        [
            ("/v1/messages", Flavour.ANTHROPIC, anthropic_serving.render_error),
            ("/v1/responses", Flavour.RESPONSES, openai_serving.render_error),
            ("/v1/conversations", Flavour.RESPONSES, openai_serving.render_error),
            ("/v1/", Flavour.OPENAI, openai_serving.render_error),
            ("/api/", Flavour.OLLAMA, ollama_serving.render_error),
        ]
    )
    app.add_exception_handler(HTTPException, unrouted)
    add_cors(app, settings.cors_origins)  # outermost: 401s and 429s carry CORS headers too
    if state is not None:  # usable without running the lifespan too
        app.state.tokenq = state
    return app
