"""Dependency aliases for route signatures."""

from typing import Annotated

from fastapi import Depends, Request

from api.state import AppState


def _state(request: Request) -> AppState:
    state: AppState = request.app.state.tokenq
    return state


StateDep = Annotated[AppState, Depends(_state)]
