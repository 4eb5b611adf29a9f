"""WebSocket `/ws`: the public Hyperliquid protocol, so the official SDKs work unchanged.

Requests: `{"method":"subscribe"|"unsubscribe","subscription":{...}}` and `{"method":"ping"}`.
Channels: `trades` {coin}, `candle` {coin, interval}, and nodetap's own `orders`
{coin or "*", minNotional?, statuses?, users?}, which narrows the global orders rules.
"""

from __future__ import annotations

import math
import re
from typing import Any

import orjson
from fastapi import APIRouter, WebSocket

from api.deps import WsState
from api.hub import Client, Hub
from api.wire import CandleSub, OrdersSub, Sub, TradesSub

router = APIRouter()

METHODS = ("subscribe", "unsubscribe", "ping")
KEYS: dict[str, tuple[str, ...]] = {
    "trades": ("type", "coin"),
    "candle": ("type", "coin", "interval"),
    "orders": ("type", "coin", "minNotional", "statuses", "users"),
}
_ADDRESS = re.compile(r"0x[0-9a-fA-F]{40}")
PONG = '{"channel":"pong"}'


class SubscriptionError(ValueError):
    """A request the server cannot serve; the message goes back on the `error` channel."""


def _json(value: object) -> str:
    return orjson.dumps(value).decode()


def _coin(sub: dict[str, Any], kind: str, example: str) -> str:
    coin = sub.get("coin")
    if not isinstance(coin, str) or not coin:
        got = "it is missing" if coin is None else f"got {_json(coin)}"
        raise SubscriptionError(f'{kind} subscription needs "coin", a non-empty string such as {example}; '
                                f"{got}")
    return coin


def _strings(sub: dict[str, Any], key: str) -> tuple[str, ...]:
    value = sub.get(key, [])
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise SubscriptionError(f'orders subscription: "{key}" must be a list of non-empty strings, '
                                f"got {_json(value)}")
    return tuple(sorted(set(value)))


def parse_subscription(sub: object, intervals: tuple[str, ...]) -> Sub:
    """The subscription object of a request, validated; `intervals` are the candle intervals served."""
    if not isinstance(sub, dict):
        raise SubscriptionError('"subscription" must be an object such as {"type":"trades","coin":"BTC"}, '
                                f"got {_json(sub)}")
    kind = sub.get("type")
    if kind not in KEYS:
        raise SubscriptionError(f"unknown subscription type {_json(kind)}; this server serves: "
                                f"{', '.join(KEYS)}")
    unknown = sorted(set(sub) - set(KEYS[kind]))
    if unknown:
        raise SubscriptionError(f"unknown key(s) {', '.join(map(_json, unknown))} in a {kind} subscription; "
                                f"keys: {', '.join(KEYS[kind])}")
    if kind == "trades":
        return TradesSub(_coin(sub, kind, '"BTC"'))
    if kind == "candle":
        coin = _coin(sub, kind, '"BTC"')
        interval = sub.get("interval")
        if interval not in intervals:
            raise SubscriptionError(f"candle subscription: interval {_json(interval)} is not served; "
                                    f"intervals: {' '.join(intervals)} (setting candle_intervals)")
        return CandleSub(coin, interval)
    coin = _coin(sub, kind, '"BTC" or "*" (every coin)')
    notional = sub.get("minNotional", 0)
    if isinstance(notional, bool) or not isinstance(notional, int | float) or not math.isfinite(notional) \
            or notional < 0:
        raise SubscriptionError(f'orders subscription: "minNotional" must be a number >= 0 (USD of '
                                f"limitPx * origSz), got {_json(notional)}")
    users = _strings(sub, "users")
    bad = [u for u in users if not _ADDRESS.fullmatch(u)]
    if bad:
        raise SubscriptionError(f'orders subscription: "users" must be 0x-prefixed 40-hex-digit addresses, '
                                f"got {_json(bad[0])}")
    return OrdersSub(coin, float(notional), _strings(sub, "statuses"), tuple(u.lower() for u in users))


async def handle(hub: Hub, client: Client, text: str, intervals: tuple[str, ...]) -> None:
    """Answer one request from a client."""
    try:
        request = orjson.loads(text)
    except orjson.JSONDecodeError as err:
        await hub.reply(client, {"channel": "error", "data": f"invalid JSON: {err}"})
        return
    method = request.get("method") if isinstance(request, dict) else None
    if method == "ping":
        await hub.reply(client, PONG)
        return
    if method not in METHODS:
        what = "a request must be an object" if not isinstance(request, dict) else \
            f"unknown method {_json(method)}"
        await hub.reply(client, {"channel": "error", "data": f'{what}; send {{"method": one of '
                                 f"{', '.join(map(_json, METHODS))}, ...}}"})
        return
    raw = request.get("subscription")
    try:
        sub = parse_subscription(raw, intervals)
    except SubscriptionError as err:
        await hub.reply(client, {"channel": "error", "data": str(err)})
        return
    ack = {"channel": "subscriptionResponse", "data": {"method": method, "subscription": raw}}
    if method == "subscribe":
        if sub in client.subs:
            await hub.reply(client, {"channel": "error", "data": f"Already subscribed: {_json(raw)}"})
            return
        await hub.reply(client, ack)  # replies go out before data: the ack precedes the first message
        hub.subscribe(client, sub)
    else:
        if not hub.unsubscribe(client, sub):
            await hub.reply(client, {"channel": "error", "data": f"Already unsubscribed: {_json(raw)}"})
            return
        await hub.reply(client, ack)


@router.websocket("/ws")
async def ws(websocket: WebSocket, state: WsState) -> None:
    await websocket.accept()
    hub = state.hub
    intervals = state.settings.candle_intervals
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
            await handle(hub, client, text, intervals)
    finally:
        await hub.disconnect(client)
