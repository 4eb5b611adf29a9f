"""`POST /info`: the public API's info endpoint (every type in api.infoapi, docs/api.md); `POST
/exchange` is refused: nodetap takes no actions."""

from __future__ import annotations

import orjson
from fastapi import APIRouter, Request, Response

from api.deps import State
from api.errors import NO_ACTIONS, BadRequest, ReadOnly
from api.infoapi import answer

router = APIRouter()


@router.post("/info")
async def info(request: Request, state: State) -> Response:
    try:
        body = orjson.loads(await request.body())
    except orjson.JSONDecodeError as err:
        raise BadRequest(f"the body must be a JSON object such as {{\"type\":\"meta\"}}: {err}") from err
    _, data = await answer(state, body)
    return Response(data, media_type="application/json")


@router.post("/exchange")
async def exchange() -> Response:
    """Refused (403, in the error shape the official SDKs read): nodetap is read-only."""
    raise ReadOnly(NO_ACTIONS)
