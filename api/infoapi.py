"""The public API's info requests, answered from the node's files or by the node's own info
server; shared by `POST /info` and the WebSocket's `post` method.

`answer(state, body)` returns the request's type and the JSON answer (bytes). A bad request is
a 4xx `ApiError` whose message says what was wrong; a type the node's files cannot answer, with
no node info server to ask, is a 4xx that says why. See docs/api.md for every type.
"""

from __future__ import annotations

import difflib
import re
import time
from collections.abc import Callable
from typing import Any

import duckdb
import orjson

from api import infodata, infometa
from api.errors import ApiError, BadRequest, NotFound
from api.nodeinfo import NodeInfo, NodeInfoUnavailable
from api.params import MAX_TIME_MS
from api.reader import read
from api.state import AppState
from api.userwire import in_dex, mids_json
from api.wire import candle_wire
from etl.candles import INTERVALS
from etl.filters import ADDRESS
from etl.history import HistoryError, open_time_of, read_candles
from etl.pipeline import Processed

_CLOID = re.compile(r"0x[0-9a-fA-F]{32}")
MAX_MS = 2**53  # epoch milliseconds beyond this are not times
MAX_COIN_CHARS = 64
UNKNOWN_FOR_S = 1.0  # a coin found unknown is not looked up again for this long (`known_coin`)
MAX_UNKNOWN_COINS = 10_000

FROM_FILES = ("candleSnapshot", "recentTrades", "userFills", "userFillsByTime", "userTwapSliceFills",
              "orderStatus", "historicalOrders", "allMids")
NODE_OR_DERIVED = ("meta", "spotMeta", "perpDexs")
# types of the public API that nodetap passes to the node's info server (docs/api.md); any other
# type is passed on too (the API has more), but is logged and hinted at as possibly mistyped
PASSED_ON = ("clearinghouseState", "spotClearinghouseState", "openOrders", "frontendOpenOrders", "userFees",
             "userRateLimit", "subAccounts", "referral", "userRole", "extraAgents", "userVaultEquities",
             "delegations", "delegatorSummary", "delegatorHistory", "delegatorRewards", "maxBuilderFee",
             "userToMultiSigSigners", "userDexAbstraction", "userAbstraction", "vaultDetails", "twapHistory",
             "l2Book", "metaAndAssetCtxs", "spotMetaAndAssetCtxs", "fundingHistory", "userFunding",
             "userNonFundingLedgerUpdates", "predictedFundings", "perpsAtOpenInterestCap",
             "perpDeployAuctionStatus", "spotDeployState", "tokenDetails", "portfolio", "activeAssetData")
KNOWN_TYPES = frozenset((*FROM_FILES, *NODE_OR_DERIVED, *PASSED_ON))
MAX_TYPE_CHARS = 64  # of a type echoed in a message or the log


class NodeAnswer(ApiError):
    """The node's info server answered the passed-on request with an error of its own."""

    status = 502


class Unavailable(ApiError):
    """The node's files cannot answer this type, and the node's info server did not."""

    status = 400


def node_info(state: AppState) -> NodeInfo:
    if state.node_info is None:
        state.node_info = NodeInfo(state.settings.node_info_url)
    return state.node_info


async def known_coin(state: AppState, coin: str, clock: Callable[[], float] = time.monotonic) -> bool:
    """Whether `coin` exists as far as this node has seen (trades, candles, kept orders).

    A coin is known from the first unit the pipeline commits with it (`coins_listener`), or once
    the store or the lake has it. A coin found unknown is not looked up again for
    `UNKNOWN_FOR_S`: a client asking again and again for a coin not seen yet (a bench waiting
    for its first trades, a typo in a loop) gets its error from memory instead of a query over
    the store and the lake each time (20 subscriptions a second took half a core of 2). Only a
    coin stored by another process (`nodetap backfill`) waits that long to be known."""
    if coin in state.coins_seen:
        return True
    asked = state.coins_unknown.get(coin)
    if asked is not None and clock() - asked < UNKNOWN_FOR_S:
        return False
    if await read(state, lambda con: infodata.coin_seen(con, coin)):
        state.coins_seen.add(coin)
        state.coins_unknown.pop(coin, None)
        return True
    if len(state.coins_unknown) >= MAX_UNKNOWN_COINS:  # bounded: names are the clients'
        state.coins_unknown.clear()
    state.coins_unknown[coin] = clock()
    return False


def coins_listener(state: AppState) -> Callable[[Processed], None]:
    """A pipeline listener: the coins of every unit committed (trades, fills, kept order
    statuses) are known from then on (`known_coin`)."""

    def note(processed: Processed) -> None:
        for frame in processed.frames.values():
            if frame.height and "coin" in frame.columns:
                new = set(frame.get_column("coin").unique().drop_nulls().to_list()) - state.coins_seen
                if new:
                    state.coins_seen.update(new)
                    for coin in new:
                        state.coins_unknown.pop(coin, None)

    return note


# ------------------------------------------------------------------ request fields
def _json(value: object) -> str:
    return orjson.dumps(value).decode()[:200]


def shown_type(kind: str) -> str:
    """`kind` quoted as JSON for a message or a log line, cut at MAX_TYPE_CHARS characters."""
    if len(kind) <= MAX_TYPE_CHARS:
        return orjson.dumps(kind).decode()
    return f"{orjson.dumps(kind[:MAX_TYPE_CHARS]).decode()}... ({len(kind)} characters)"


def did_you_mean(kind: str) -> str:
    """` (did you mean "recentTrades"?)` for a type nodetap does not know that is close to one it
    does; "" otherwise."""
    if kind in KNOWN_TYPES or len(kind) > MAX_TYPE_CHARS:
        return ""
    close = difflib.get_close_matches(kind, sorted(KNOWN_TYPES), n=1)
    return f" (did you mean {_json(close[0])}?)" if close else ""


def _user(body: dict[str, Any], kind: str) -> str:
    user = body.get("user")
    if not isinstance(user, str) or not ADDRESS.fullmatch(user):
        raise BadRequest(f'{kind}: "user" must be a 0x-prefixed 40-hex-digit address, got {_json(user)}')
    return user.lower()


def _ms(value: object, name: str, kind: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_MS:
        raise BadRequest(f'{kind}: "{name}" must be epoch milliseconds (an integer from 0 to 2^53), '
                         f"got {_json(value)}")
    return value


def _flag(body: dict[str, Any], name: str, kind: str) -> bool:
    value = body.get(name, False)
    if value is None:
        return False
    if not isinstance(value, bool):
        raise BadRequest(f'{kind}: "{name}" must be true or false, got {_json(value)}')
    return value


def _coin(value: object, name: str, kind: str) -> str:
    if not isinstance(value, str) or not value or len(value) > MAX_COIN_CHARS:
        raise BadRequest(f'{kind}: "{name}" must be a coin name such as "BTC", "PURR/USDC", "@107" or '
                         f'"km:USTECH" (at most {MAX_COIN_CHARS} characters), got {_json(value)}')
    return value


def _dex(body: dict[str, Any], kind: str) -> str:
    dex = body.get("dex") or ""
    if not isinstance(dex, str) or len(dex) > MAX_COIN_CHARS:
        raise BadRequest(f'{kind}: "dex" must be a perp dex name (a string), got {_json(dex)}')
    return dex


def _dumps(value: object) -> bytes:
    return orjson.dumps(value)


# ------------------------------------------------------------------ types
def candle_request(req: object) -> tuple[str, str, int, int]:
    """coin, interval, startTime, endTime of a candleSnapshot `req`; endTime null or absent: now."""
    kind = "candleSnapshot"
    example = '{"coin":"BTC","interval":"1m","startTime":1700000000000,"endTime":1700003600000}'
    if not isinstance(req, dict):
        raise BadRequest(f'{kind} needs "req": an object such as {example}')
    coin = _coin(req.get("coin"), "req.coin", kind)
    interval = req.get("interval")
    if interval not in INTERVALS:
        raise BadRequest(f"{kind}: interval {_json(interval)} is not one of {' '.join(INTERVALS)}")
    start = _ms(req.get("startTime"), "req.startTime", kind)
    end_raw = req.get("endTime")
    end = int(time.time() * 1000) if end_raw is None else _ms(end_raw, "req.endTime", kind)
    if end < start:
        raise BadRequest(f"{kind}: req.endTime ({end}) is before req.startTime ({start})")
    # times past the year 9999 hold no candle, and the calendar (1M, 1w) cannot place them
    return coin, interval, min(start, MAX_TIME_MS), min(end, MAX_TIME_MS)


async def candle_snapshot(state: AppState, body: dict[str, Any]) -> bytes:
    """Every candle overlapping [startTime, endTime], oldest first, empty intervals forward-filled
    (never across a gap); intervals not stored are derived on read."""
    coin, interval, start, end = candle_request(body.get("req"))
    stored = state.settings.candle_intervals

    def query(con: duckdb.DuckDBPyConnection) -> bytes:
        try:
            frame = read_candles(con, coin, interval, open_time_of(start, interval), end, stored=stored)
        except HistoryError as err:
            raise BadRequest(f"candleSnapshot: {err}") from None
        return candle_wire(frame).write_json().encode() if frame.height else b"[]"

    return await read(state, query)


async def order_status(state: AppState, body: dict[str, Any]) -> bytes:
    kind = "orderStatus"
    user = _user(body, kind)
    oid = body.get("oid")
    if isinstance(oid, bool) or not (isinstance(oid, int) and 0 <= oid <= 2**64
                                     or isinstance(oid, str) and _CLOID.fullmatch(oid)):
        raise BadRequest(f'{kind}: "oid" must be an order id (integer) or a cloid (0x and 32 hex digits), '
                         f"got {_json(oid)}")
    found = await read(state, lambda con: infodata.order_status(con, user, oid))
    if found is not None:
        return _dumps({"status": "order", "order": found})
    rules = state.rules.rules
    if rules.keep_all or user in {u.lower() for u in rules.watch_users}:
        return _dumps({"status": "unknownOid"})  # every status of this user is kept: never seen
    raise NotFound(f"{kind}: order {_json(oid)} of {user} is not among the stored order statuses. "
                      "The orders rules keep only part of the feed (setting rules_file, or keep_all), "
                      "so it may have been dropped by them; unknownOid is answered only where every "
                      "status of the user is kept (keep_all, or the user in watch_users).")


async def all_mids(state: AppState, body: dict[str, Any]) -> bytes:
    """`allMids`: the last trade price of each coin of the dex. Not the order book's mid: a
    node's files hold trades, not the book."""
    dex = _dex(body, "allMids")
    mids = await read(state, infodata.all_mids)
    return _dumps(mids_json({c: p for c, p in mids.items() if in_dex(c, dex)}, dex))


async def from_files(state: AppState, kind: str, body: dict[str, Any]) -> bytes:
    if kind == "candleSnapshot":
        return await candle_snapshot(state, body)
    if kind == "allMids":
        return await all_mids(state, body)
    if kind == "orderStatus":
        return await order_status(state, body)
    if kind == "recentTrades":
        coin = _coin(body.get("coin"), "coin", kind)
        return _dumps(await read(state, lambda con: infodata.recent_trades(con, coin)))
    user = _user(body, kind)
    if kind == "historicalOrders":
        return await read(state, lambda con: infodata.historical_orders(con, user))
    if kind == "userTwapSliceFills":
        return _dumps(await read(state, lambda con: infodata.twap_slice_fills(con, user)))
    aggregate = _flag(body, "aggregateByTime", kind)
    if kind == "userFills":
        return _dumps(await read(state, lambda con: infodata.user_fills(con, user, aggregate)))
    start = _ms(body.get("startTime"), "startTime", kind)
    end_raw = body.get("endTime")
    end = None if end_raw is None else _ms(end_raw, "endTime", kind)
    if end is not None and end < start:
        raise BadRequest(f"{kind}: endTime ({end}) is before startTime ({start})")
    newest_first = _flag(body, "reversed", kind)
    return _dumps(await read(state, lambda con: infodata.user_fills(
        con, user, aggregate, start, end, newest_first=newest_first)))


async def from_node(state: AppState, kind: str, body: dict[str, Any]) -> bytes:
    """The node's own answer; NodeInfoUnavailable when it cannot be had."""
    try:
        return await node_info(state).ask(body)
    except NodeInfoUnavailable as err:
        if err.status is not None and 400 <= err.status < 500:
            name = kind if kind in KNOWN_TYPES else shown_type(kind)
            raise NodeAnswer(f"{name}: the node's info server answered {err.status}: "
                             f"{err.body.decode('utf-8', 'replace')[:500]}{did_you_mean(kind)}") from None
        raise


async def answer(state: AppState, body: object) -> tuple[str, bytes]:
    """The info request `body`'s type and its JSON answer."""
    if not isinstance(body, dict):
        raise BadRequest('the body must be a JSON object such as {"type":"meta"}')
    kind = body.get("type")
    if not isinstance(kind, str) or not kind:
        raise BadRequest(f'an info request needs "type", a string such as "meta", got {_json(kind)}')
    if kind in FROM_FILES:
        return kind, await from_files(state, kind, body)
    spelled = next((k for k in (*FROM_FILES, *NODE_OR_DERIVED) if k.lower() == kind.lower()), None)
    if spelled is not None and spelled != kind:  # types are case-sensitive, as in the public API
        raise BadRequest(f"unknown info type {shown_type(kind)}: did you mean {_json(spelled)}?")
    if kind in NODE_OR_DERIVED:
        dex = _dex(body, kind)
        try:
            return kind, await from_node(state, kind, body)
        except NodeInfoUnavailable as err:
            node_info(state).log_unavailable(kind, str(err), "derived from the files (docs/api.md)")
        derived = await read(state, lambda con: infometa.derive(con, kind, dex))
        return kind, _dumps(derived)
    # every other type is the node's to answer: the public API has types nodetap does not list
    try:
        return kind, await from_node(state, kind, body)
    except NodeInfoUnavailable as err:
        known = kind in KNOWN_TYPES
        node_info(state).log_unavailable(kind, str(err), "refused", known=known)
        served = (f"Answered from the files: {', '.join(FROM_FILES)}; from the node, else derived: "
                  f"{', '.join(NODE_OR_DERIVED)}")
        if not known:
            raise Unavailable(
                f"info type {shown_type(kind)} is not one nodetap knows{did_you_mean(kind)}, and the "
                f"node's info server could not answer it ({err}). {served}; every other type is passed "
                "to the node's info server (setting node_info_url; docs/api.md).") from None
        raise Unavailable(
            f"info type {_json(kind)} is not answered here: a node's files hold fills, trades and order "
            f"statuses, not {kind}, and the node's info server could not answer it ({err}). Run the node "
            f"with --serve-info and set node_info_url. {served}.") from None
