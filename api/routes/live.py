"""WebSocket `/ws`: the public Hyperliquid protocol, so the official SDKs work unchanged.

Requests: `{"method":"subscribe"|"unsubscribe","subscription":{...}}`, `{"method":"ping"}`
and `{"method":"post","id":N,"request":{"type":"info","payload":{...}}}` (any info request
`POST /info` answers). Channels: `trades`, `candle` (every interval: those not stored are
derived live, api.livecandles), `allMids` (last trade prices),
`userFills` (opening with an `isSnapshot` message), `orderUpdates`, `userEvents` (channel
`user`), and nodetap's own `orders` {coin or "*", minNotional?, statuses?, users?}, which
narrows the global orders rules. Error texts are the real server's (api.protocol).
"""

from __future__ import annotations

import logging
from typing import Any

import orjson
from fastapi import APIRouter, WebSocket

from api import infodata
from api.deps import WsState
from api.errors import NO_ACTIONS, ApiError
from api.hub import Client, Hub
from api.infoapi import answer, known_coin
from api.protocol import (
    Malformed,
    Request,
    Unservable,
    coin_of,
    dumps,
    parse_error,
    parse_request,
    parse_subscription,
)
from api.reader import read
from api.state import AppState
from api.userwire import all_mids_message
from api.wire import AllMidsSub, CandleSub, Sub, UserFillsSub

router = APIRouter()
log = logging.getLogger("nodetap.live")
PONG = '{"channel":"pong"}'


def _error(text: str) -> dict[str, str]:
    return {"channel": "error", "data": text}


async def _post(state: AppState, hub: Hub, client: Client, request: Request, text: str) -> None:
    """A `post` request: an info request answered on the `post` channel with its id."""
    req_id, inner = request.raw.get("id"), request.raw.get("request")
    if isinstance(req_id, bool) or not isinstance(req_id, int) or not isinstance(inner, dict):
        log.debug("event=ws_refused reason=%s", "post needs an integer id and a request object")
        await hub.reply(client, _error(parse_error(text)))
        return
    if inner.get("type") == "info":
        try:
            kind, data = await answer(state, inner.get("payload"))
        except ApiError as err:
            response: dict[str, Any] = {"type": "error", "payload": err.message}
        else:
            response = {"type": "info", "payload": {"type": kind, "data": orjson.Fragment(data)}}
    elif inner.get("type") == "action":
        response = {"type": "error", "payload": NO_ACTIONS}
    else:
        response = {"type": "error", "payload": 'a post request is {"type":"info","payload":{...}}'}
    await hub.reply(client, orjson.dumps({"channel": "post", "data": {"id": req_id, "response": response}})
                    .decode())


async def _snapshot(state: AppState, sub: Sub) -> str | None:
    """The message a subscription opens with, read from the store: userFills' `isSnapshot`
    message, allMids' every last price (which also seeds the subscription's later messages)."""
    if isinstance(sub, UserFillsSub):
        fills = await read(state, lambda con: infodata.user_fills(con, sub.user, sub.aggregate))
        data = {"isSnapshot": True, "user": sub.user, "fills": fills}
        return orjson.dumps({"channel": "userFills", "data": data}).decode()
    if isinstance(sub, AllMidsSub):
        sub.mids.update(await read(state, infodata.all_mids))
        return all_mids_message(sub)
    return None


async def _seed(state: AppState, sub: CandleSub) -> None:
    await read(state, lambda con: state.hub.candles.seed(con, sub))


async def _check(state: AppState, sub: Sub) -> None:
    coin = coin_of(sub)
    if coin is not None and not await known_coin(state, coin):
        raise Unservable(f"unknown coin {coin!r}: no trade, candle or order status of it was seen")


async def handle(state: AppState, client: Client, text: str) -> None:
    """Answer one request from a client."""
    hub = state.hub
    try:
        request = parse_request(text)
    except Malformed as err:
        log.debug("event=ws_refused reason=%s", err)
        await hub.reply(client, _error(parse_error(text)))
        return
    if request.method == "ping":
        await hub.reply(client, PONG)
        return
    if request.method == "post":
        await _post(state, hub, client, request, text)
        return
    raw = request.raw.get("subscription")
    try:
        sub = parse_subscription(raw)
        if request.method == "subscribe":
            await _check(state, sub)
    except Malformed as err:
        log.debug("event=ws_refused reason=%s", err)
        await hub.reply(client, _error(parse_error(text)))
        return
    except Unservable as err:
        log.debug("event=ws_refused reason=%s", err)
        await hub.reply(client, _error(f"Invalid subscription {dumps(raw)}"))
        return
    except ApiError as err:  # the store could not be read (e.g. past sql_timeout_s)
        await hub.reply(client, _error(err.message))
        return
    ack = {"channel": "subscriptionResponse", "data": {"method": request.method, "subscription": raw}}
    if request.method == "unsubscribe":
        if not hub.unsubscribe(client, sub):
            await hub.reply(client, _error(f"Already unsubscribed: {dumps(raw)}"))
            return
        await hub.reply(client, ack)
        return
    if sub in client.subs:
        await hub.reply(client, _error(f"Already subscribed: {dumps(raw)}"))
        return
    refused = hub.refusal(client, sub)  # ws_max_subscriptions
    if refused is not None:
        hub.subscribe(client, sub)  # refused again there, and counted
        await hub.reply(client, _error(refused))
        return
    # a candle interval that is not stored: its feed is held (it takes every batch from now)
    # and seeded from the store before the subscription pushes (api.livecandles)
    feed = sub if isinstance(sub, CandleSub) and hub.candles.hold(sub) else None
    subscribed = False
    try:
        # the opening message is read before subscribing, and replies go out before data: the
        # client gets the ack, then the snapshot, then live messages
        try:
            if feed is not None:
                await _seed(state, feed)
            first = await _snapshot(state, sub)
        except ApiError as err:  # a store read failed (e.g. timed out): the client is told
            await hub.reply(client, _error(err.message))
            return
        await hub.reply(client, ack)
        if first is not None:
            await hub.reply(client, first)
        subscribed = hub.subscribe(client, sub)
    finally:
        if feed is not None and not subscribed:
            hub.candles.release(feed)


@router.websocket("/ws")
async def ws(websocket: WebSocket, state: WsState) -> None:
    await websocket.accept()
    hub = state.hub
    client = hub.connect(websocket)
    try:
        while True:
            message = await websocket.receive()
            if message["type"] == "websocket.disconnect":
                break
            text = message.get("text")
            if text is None:
                data = message.get("bytes") or b""
                text = data.decode("utf-8", "replace")
            await handle(state, client, text)
    finally:
        await hub.disconnect(client)
