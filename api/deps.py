"""Typed dependencies: routes get the app's state, never globals."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request, WebSocket

from api.state import AppState


def _state(request: Request) -> AppState:
    return request.app.state.nodetap


def _ws_state(websocket: WebSocket) -> AppState:
    return websocket.app.state.nodetap


State = Annotated[AppState, Depends(_state)]
WsState = Annotated[AppState, Depends(_ws_state)]
