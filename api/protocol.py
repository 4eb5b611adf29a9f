"""The WebSocket requests of the public Hyperliquid protocol: parsing and validating
subscriptions, with the real server's error texts, which clients match to pending requests:

- `Error parsing JSON into valid websocket request: {raw}`: not JSON, not a request, a
  subscription of the wrong shape (missing or mistyped field, unknown key, a field over its
  length cap);
- `Invalid subscription {json}`: a well-formed subscription this server cannot serve (an
  unknown coin, a channel the node's files cannot feed, such as `l2Book`);
- `Already subscribed: {json}` and `Already unsubscribed: {json}`.

(Texts as recorded in @nktkas/hyperliquid tests/transport/websocket/_dispatcher.test.ts and
its WebSocketDispatcher, which parses the `{...}` they carry as JSON.)
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import orjson

from api.wire import (
    AllMidsSub,
    CandleSub,
    OrdersSub,
    OrderUpdatesSub,
    Sub,
    TradesSub,
    UserEventsSub,
    UserFillsSub,
)
from etl.candles import INTERVALS
from etl.filters import ADDRESS

PARSE_ERROR = "Error parsing JSON into valid websocket request: "
MAX_REQUEST_CHARS = 64 << 10  # a request frame; subscriptions are small, `users` lists the largest
MAX_COIN_CHARS = 64  # longer than any coin name ("km:USTECH", "PURR/USDC", "@107")
MAX_LIST_ITEMS = 1000  # `users` and `statuses` of an orders subscription
MAX_STATUS_CHARS = 64

# the public API's subscription types; those not in KEYS are refused as `Invalid subscription`
PUBLIC_TYPES = ("allMids", "notification", "webData2", "webData3", "candle", "l2Book", "trades",
                "orderUpdates", "userEvents", "userFills", "userFundings", "userNonFundingLedgerUpdates",
                "activeAssetCtx", "activeAssetData", "userTwapSliceFills", "userTwapHistory", "bbo",
                "userHistoricalOrders", "twapStates", "clearinghouseState", "openOrders", "assetCtxs",
                "spotState", "allDexsClearinghouseState", "allDexsAssetCtxs")
KEYS: dict[str, tuple[str, ...]] = {
    "trades": ("type", "coin"),
    "candle": ("type", "coin", "interval"),
    "allMids": ("type", "dex"),
    "userFills": ("type", "user", "aggregateByTime"),
    "orderUpdates": ("type", "user"),
    "userEvents": ("type", "user"),
    "orders": ("type", "coin", "minNotional", "statuses", "users"),  # nodetap's own
}


class Malformed(ValueError):
    """Not a valid request: answered `Error parsing JSON into valid websocket request: {raw}`.
    The message says what was wrong (logged; the wire text is the real server's)."""


class Unservable(ValueError):
    """A well-formed subscription this server cannot serve: answered `Invalid subscription {json}`."""


@dataclass(frozen=True)
class Request:
    method: str  # subscribe | unsubscribe | ping | post
    raw: dict[str, Any]


def dumps(value: object) -> str:
    return orjson.dumps(value).decode()


def parse_error(raw: str) -> str:
    """The real server's text for a request it could not parse, echoing the request; a request
    over the size cap is not echoed (it would cost as much again to send back)."""
    if len(raw) > MAX_REQUEST_CHARS:
        return f"{PARSE_ERROR}request of {len(raw)} characters is over the limit of {MAX_REQUEST_CHARS}"
    return PARSE_ERROR + raw


def parse_request(text: str) -> Request:
    if len(text) > MAX_REQUEST_CHARS:
        raise Malformed(f"request of {len(text)} characters is over the limit of {MAX_REQUEST_CHARS}")
    try:
        request = orjson.loads(text)
    except orjson.JSONDecodeError as err:
        raise Malformed(f"invalid JSON: {err}") from None
    if not isinstance(request, dict):
        raise Malformed("a request must be a JSON object")
    method = request.get("method")
    if method not in ("subscribe", "unsubscribe", "ping", "post"):
        raise Malformed(f"unknown method {dumps(method)}; methods: subscribe, unsubscribe, ping, post")
    return Request(method, request)


def _str(sub: dict[str, Any], key: str, kind: str, cap: int) -> str:
    value = sub.get(key)
    if not isinstance(value, str) or not value:
        raise Malformed(f'{kind} subscription needs "{key}", a non-empty string')
    if len(value) > cap:
        raise Malformed(f'{kind} subscription: "{key}" has {len(value)} characters, over the limit of {cap}')
    return value


def _user(sub: dict[str, Any], kind: str) -> str:
    user = _str(sub, "user", kind, 42)
    if not ADDRESS.fullmatch(user):
        raise Malformed(f'{kind} subscription: "user" must be a 0x-prefixed 40-hex-digit address')
    return user.lower()


def _strings(sub: dict[str, Any], key: str, cap: int) -> tuple[str, ...]:
    value = sub.get(key, [])
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise Malformed(f'orders subscription: "{key}" must be a list of non-empty strings')
    if len(value) > MAX_LIST_ITEMS:
        raise Malformed(f'orders subscription: "{key}" has {len(value)} items, over the limit of '
                        f"{MAX_LIST_ITEMS}")
    if any(len(v) > cap for v in value):
        raise Malformed(f'orders subscription: an item of "{key}" is over {cap} characters')
    return tuple(sorted(set(value)))


def parse_subscription(sub: object) -> Sub:
    """The subscription object of a request, validated for shape (not yet for coins)."""
    if not isinstance(sub, dict):
        raise Malformed('"subscription" must be an object such as {"type":"trades","coin":"BTC"}')
    kind = sub.get("type")
    if not isinstance(kind, str):
        raise Malformed('a subscription needs "type", a string')
    if kind not in KEYS:
        if kind in PUBLIC_TYPES:
            raise Unservable(f"{kind} needs data a node's files do not have (order book, account state, "
                             f"funding); nodetap serves: {', '.join(KEYS)}")
        raise Malformed(f"unknown subscription type {dumps(kind)[:80]}")
    unknown = sorted(set(sub) - set(KEYS[kind]))
    if unknown:
        raise Malformed(f"unknown key(s) {', '.join(dumps(k)[:80] for k in unknown)} in a {kind} "
                        f"subscription; keys: {', '.join(KEYS[kind])}")
    if kind == "trades":
        return TradesSub(_str(sub, "coin", kind, MAX_COIN_CHARS))
    if kind == "candle":
        coin = _str(sub, "coin", kind, MAX_COIN_CHARS)
        interval = sub.get("interval")
        if not isinstance(interval, str):
            raise Malformed('candle subscription needs "interval", a string such as "1m"')
        if interval not in INTERVALS:
            raise Unservable(f"interval {dumps(interval)[:80]} is not one of {' '.join(INTERVALS)}")
        return CandleSub(coin, interval)
    if kind == "allMids":
        dex = sub.get("dex", "")
        if dex is None:
            dex = ""
        if not isinstance(dex, str) or len(dex) > MAX_COIN_CHARS:
            raise Malformed(f'allMids subscription: "dex" must be a string of at most {MAX_COIN_CHARS} '
                            "characters")
        return AllMidsSub(dex)
    if kind == "userFills":
        aggregate = sub.get("aggregateByTime", False)
        if not isinstance(aggregate, bool):
            raise Malformed('userFills subscription: "aggregateByTime" must be true or false')
        return UserFillsSub(_user(sub, kind), aggregate)
    if kind == "orderUpdates":
        return OrderUpdatesSub(_user(sub, kind))
    if kind == "userEvents":
        return UserEventsSub(_user(sub, kind))
    coin = _str(sub, "coin", kind, MAX_COIN_CHARS)
    notional = sub.get("minNotional", 0)
    if isinstance(notional, bool) or not isinstance(notional, int | float) or not math.isfinite(notional) \
            or notional < 0:
        raise Malformed('orders subscription: "minNotional" must be a number >= 0 (USD of limitPx * origSz)')
    users = _strings(sub, "users", 42)
    if any(not ADDRESS.fullmatch(u) for u in users):
        raise Malformed('orders subscription: "users" must be 0x-prefixed 40-hex-digit addresses')
    statuses = _strings(sub, "statuses", MAX_STATUS_CHARS)
    return OrdersSub(coin, float(notional), statuses, tuple(sorted({u.lower() for u in users})))


def coin_of(sub: Sub) -> str | None:
    """The coin a subscription names, when it must be a known one."""
    if isinstance(sub, TradesSub | CandleSub):
        return sub.coin
    if isinstance(sub, OrdersSub) and sub.coin != "*":
        return sub.coin
    return None
