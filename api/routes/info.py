"""`POST /info`: the public API's info endpoint (every type in api.infoapi, docs/api.md); `POST
/exchange` is refused: nodetap takes no actions."""

from __future__ import annotations

import orjson
from fastapi import APIRouter, Request, Response

from api.deps import State
from api.errors import NO_ACTIONS, BadRequest, ReadOnly
from api.infoapi import answer

router = APIRouter()


# the body is read as it comes (any info type); described here for /docs
INFO_BODY = {"required": True, "content": {"application/json": {
    "schema": {"type": "object", "required": ["type"], "additionalProperties": True,
               "properties": {"type": {"type": "string"}, "req": {"type": "object"},
                              "coin": {"type": "string"}, "user": {"type": "string"}}},
    "example": {"type": "candleSnapshot",
                "req": {"coin": "BTC", "interval": "1m", "startTime": 0, "endTime": 4102444800000}}}}}


@router.post("/info", openapi_extra={"requestBody": INFO_BODY})
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
