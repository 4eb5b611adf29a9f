"""Typed dependencies: routes get the app's state and its database reader, never globals."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request, WebSocket

from api.reader import Reader
from api.state import AppState


def _state(request: Request) -> AppState:
    state: AppState = request.app.state.nodetap
    return state


def _ws_state(websocket: WebSocket) -> AppState:
    state: AppState = websocket.app.state.nodetap
    return state


def _reader(request: Request) -> Reader:
    return Reader(request.app.state.nodetap)


State = Annotated[AppState, Depends(_state)]
WsState = Annotated[AppState, Depends(_ws_state)]
# every route that reads DuckDB takes this: worker thread, read-only connection, time limit
Read = Annotated[Reader, Depends(_reader)]
