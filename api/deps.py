"""Dependency aliases for route signatures."""

from typing import Annotated

from fastapi import Depends, Header, Request

from api.state import AppState


def _state(request: Request) -> AppState:
    state: AppState = request.app.state.tokenq
    return state


StateDep = Annotated[AppState, Depends(_state)]

# The client's X-Request-ID, or the one api/request_id.py made up for the request.
RequestIdDep = Annotated[str | None, Header(alias="X-Request-ID")]
