"""REST snapshots: candles, recent trades and orders, coins, pipeline status, the orders rules.

Coins travel as query parameters (`?coin=PURR/USDC`, `?coin=@107`). Times in responses are
epoch milliseconds, as in the public Hyperliquid API; times in requests are epoch ms or ISO.
"""

from __future__ import annotations

import asyncio
import difflib
import json
import logging
import time
from typing import Any

import orjson
from fastapi import APIRouter, Depends, Request, Response

from api.deps import Read, State
from api.encoding import json_response
from api.errors import BadRequest, NotFound
from api.infoapi import known_coin
from api.origin import SameOrigin
from api.params import (
    check_interval,
    known_query_params,
    parse_bool,
    parse_limit,
    parse_range,
    require_coin,
)
from api.reader import Con, read
from api.state import AppState
from etl.candles import round_volume, shift_open_ms
from etl.config import Settings
from etl.filters import ADDRESS, Rules, RulesError, rules_to_dict
from etl.history import (
    ARRIVAL_DESC,
    ARRIVAL_ORDER,
    HistoryError,
    arrived,
    check_coin,
    open_time_of,
    read_candles,
    watermark_and_holes,
)
from etl.status import status_rows

log = logging.getLogger("nodetap.api")
router = APIRouter(dependencies=[Depends(known_query_params)])

CANDLE_FIELDS = ("t", "T", "o", "h", "l", "c", "v", "vq", "n", "vwap", "filled")
DEFAULT_CANDLES = 500  # without `start`, the candle holding `end` and the 499 before it


# ------------------------------------------------------------------ candles
@router.get("/v1/candles")
async def candles(state: State, read: Read, coin: str | None = None, interval: str | None = None,
                  start: str | None = None, end: str | None = None, fill: str | None = None) -> Response:
    """Candles of one coin and interval with `start <= t <= end`, oldest first. Without `end`:
    up to the trades' watermark; without `start`: the 500 intervals up to `end`. With `fill`
    (default true) empty intervals are forward-filled up to the watermark, never across a gap.
    Volumes are rounded as the live feed rounds them (8 decimals)."""
    coin = require_coin(coin)
    # every interval: those not stored are derived on read (etl.history.read_candles)
    interval = check_interval(interval or next(iter(state.settings.candle_intervals), "1m"), state.settings,
                              stored_only=False)
    start_ms, end_ms = parse_range(start, end)
    do_fill = parse_bool(fill, "fill", True)
    settings = state.settings
    return json_response(await read(lambda con: _candles(con, settings, coin, interval, start_ms, end_ms,
                                                         do_fill)))


def _candles(con: Con, settings: Settings, coin: str, interval: str, start_ms: int | None,
             end_ms: int | None, fill: bool) -> list[dict[str, Any]]:
    try:
        if end_ms is None:
            wm, _ = watermark_and_holes(con)
            end_ms = wm if wm is not None else int(time.time() * 1000)
        if start_ms is None:
            start_ms = shift_open_ms(open_time_of(end_ms, interval), interval, 1 - DEFAULT_CANDLES)
        frame = read_candles(con, coin, interval, start_ms, end_ms, fill, stored=settings.candle_intervals)
    except HistoryError as err:
        raise BadRequest(str(err)) from None
    if frame.is_empty():  # none in the range, or none of the coin at all (a typo: say so)
        try:
            check_coin(con, coin)
        except HistoryError as err:
            raise NotFound(str(err)) from None
    frame = frame.with_columns(round_volume(frame["v"]), round_volume(frame["vq"]))
    return frame.select(CANDLE_FIELDS).to_dicts()


# ------------------------------------------------------------------ trades, orders
@router.get("/v1/trades")
async def trades(read: Read, coin: str | None = None, limit: str | None = None) -> Response:
    """The most recent trades (of `coin`, or of every coin), newest first: by time, and trades of
    the same millisecond in reverse file order (the order the node wrote them, newest first);
    `time` in epoch ms. A coin with no trade at all is a 404 naming the coins there are."""
    n = parse_limit(limit)
    return json_response(await read(lambda con: _trades(con, coin, n)))


def _trades(con: Con, coin: str | None, n: int) -> list[dict[str, Any]]:
    params: list[object] = [coin] if coin else []
    where = "WHERE coin = $1" if coin else ""
    # DuckDB's, then the lake's (trades pruned from DuckDB after retain_hours), in the order
    # they arrived (etl.history.arrived), the last first
    rows = []
    for main in (True, False):
        rows = rows_of(con, f"SELECT * EXCLUDE ({ARRIVAL_ORDER}) REPLACE (epoch_ms(time) AS time) "
                            f"FROM ({arrived(con, main=main)}) {where} ORDER BY time DESC, {ARRIVAL_DESC} "
                            f"LIMIT {n}", params)
        if rows:
            break
    if not rows and coin:  # no trade of it at all: a typo (`btc`) says so, as /v1/candles does
        try:
            check_coin(con, coin, table="trades")
        except HistoryError as err:
            raise NotFound(str(err)) from None
    return rows


@router.get("/v1/orders")
async def orders(read: Read, coin: str | None = None, status: str | None = None,
                 user: str | None = None, limit: str | None = None) -> Response:
    """The most recent order statuses the rules kept, newest first, filtered by `coin`,
    `status` and `user`; times in epoch ms. A malformed `user` is a 400; a coin or a status no
    stored order has is a 404 naming the ones there are (a typo, `btc` or `Filled`)."""
    n = parse_limit(limit)
    if user and not ADDRESS.fullmatch(user):
        raise BadRequest(f"user must be a 0x-prefixed 40-hex-digit address, got {user!r}")
    where: list[str] = []
    params: list[object] = []
    for column, value in (("coin", coin), ("status", status), ("user", user.lower() if user else None)):
        if value:
            params.append(value)
            where.append(f'"{column}" = ${len(params)}')
    clause = "WHERE " + " AND ".join(where) if where else ""
    select = ("SELECT * REPLACE (epoch_ms(time) AS time, epoch_ms(block_time) AS block_time, "
              "epoch_ms(order_time) AS order_time) FROM {} " + clause)
    sql = select.format("main.orders") + f" ORDER BY orders.time DESC, rowid DESC LIMIT {n}"
    lake = select.format("history.orders") + f" ORDER BY time DESC LIMIT {n}"  # pruned from DuckDB

    def query(con: Con) -> list[dict[str, Any]]:
        rows = rows_of(con, sql, params) or rows_of(con, lake, params)
        if not rows:  # none at all of that coin or status: a typo says so
            try:
                if coin:
                    check_coin(con, coin, table="orders")
                if status:
                    _check_status(con, status)
            except HistoryError as err:
                raise NotFound(str(err)) from None
        return rows

    return json_response(await read(query))


def _check_status(con: Con, status: str) -> None:
    """Refuse a status no stored order has, naming those there are (most frequent first)."""
    if con.execute("SELECT 1 FROM history.orders WHERE status = $1 LIMIT 1", [status]).fetchall():
        return
    known = [s for (s,) in con.execute(
        "SELECT status FROM history.orders GROUP BY status ORDER BY count(*) DESC, status").fetchall()]
    if not known:
        raise HistoryError(f"unknown status {status!r}: no orders are stored in this database yet")
    close = difflib.get_close_matches(status, known, n=1, cutoff=0.6)
    same = [k for k in known if k.lower() == status.lower()] or close
    hint = f" Did you mean {same[0]}?" if same else ""
    raise HistoryError(f"unknown status {status!r}: no stored order has it (only the orders the "
                       f"rules keep are stored: GET /v1/rules).{hint} Statuses stored ({len(known)}): "
                       + ", ".join(known))


def rows_of(con: Con, sql: str, params: list[object]) -> list[dict[str, Any]]:
    cur = con.execute(sql, params)
    names = [d[0] for d in cur.description or []]
    return [dict(zip(names, row, strict=True)) for row in cur.fetchall()]


# DuckDB and the lake, as candleSnapshot reads them: a coin stays listed after retention
# removes its rows from DuckDB (setting retain_hours)
def coins_sql(con: Con) -> str:
    return f"""
    WITH t AS (
        SELECT coin, first(px ORDER BY time DESC, {ARRIVAL_DESC}) AS last_px,
               epoch_ms(max(time)) AS last_time, count(*) AS trades
        FROM ({arrived(con)}) GROUP BY coin)
    SELECT coin, t.last_px, t.last_time, coalesce(t.trades, 0) AS trades
    FROM (SELECT coin FROM t UNION SELECT DISTINCT coin FROM history.orders WHERE coin IS NOT NULL) c
    LEFT JOIN t USING (coin) ORDER BY coin"""


@router.get("/v1/coins")
async def coins(read: Read) -> Response:
    """Every coin seen in trades or kept orders (DuckDB and the lake), with its last trade
    (px, time in ms) and trade count."""
    return json_response(await read(lambda con: rows_of(con, coins_sql(con), [])))


# ------------------------------------------------------------------ status
@router.get("/v1/status")
async def status(state: State) -> Response:
    """Per stream (etl/status.py): file, offset, mode, lag (bytes, seconds), arrival and capacity
    lines/s, rows, rejects, gaps, skipped bytes, last event and commit; the sealer; the orders
    rules' counts and error; the live hub's counters."""
    return json_response(await asyncio.to_thread(_status, state))


def _status(state: AppState) -> dict[str, Any]:
    pipeline = state.pipeline
    return {
        "uptime_s": round(time.time() - state.started_at, 3) if state.started_at else None,
        "pipeline_alive": pipeline.alive,
        "sealer": pipeline.sealer_health().as_dict(),
        "streams": status_rows(pipeline.snapshot()),
        "rules": {"file": str(state.rules.path) if state.rules.path else None,
                  "error": state.rules.error, "stats": state.rules.stats()},
        "hub": state.hub.stats(),
    }


# ------------------------------------------------------------------ rules
@router.get("/v1/rules")
async def get_rules(state: State) -> Response:
    """The orders filter rules in effect (`{"orders": {...}}`, the shape PUT takes)."""
    return json_response(rules_to_dict(state.rules.rules))


# described here for /docs: every key of docs/rules.md, each optional (a key left out takes its default)
RULES_BODY = {"required": True, "content": {"application/json": {
    "schema": {"type": "object", "properties": {"orders": {"type": "object"}}},
    "example": {"orders": {"statuses": ["open", "filled", "canceled", "triggered"], "min_notional": 10000.0,
                           "min_notional_by_coin": {"BTC": 50000.0}, "watch_users": []}}}}}


@router.put("/v1/rules", openapi_extra={"requestBody": RULES_BODY})
async def put_rules(state: State, request: Request, _: SameOrigin) -> Response:
    """Replace the orders filter rules; the next batch uses them. They are written to the rules
    file (created where the default one is missing); with no rules file (setting rules_file
    empty) they last until nodetap stops: the header `x-nodetap-rules-saved` says which. Invalid
    rules change nothing and answer 400 with what is wrong; a request from a web page on another
    origin answers 403 and changes nothing."""
    try:
        body = orjson.loads(await request.body())
    except orjson.JSONDecodeError as err:
        raise BadRequest(f"the body must be a JSON rules document ({{\"orders\": {{...}}}}): {err}") from None
    try:
        rules = await asyncio.to_thread(state.rules.replace, body)
    except RulesError as err:
        raise BadRequest(str(err)) from None
    response = json_response(rules_to_dict(rules))
    response.headers["x-nodetap-rules-saved"] = "true" if state.rules.saved else "false"
    try:
        unseen = await _unseen_coins(state, rules)
    except Exception as err:  # noqa: BLE001 - the rules are applied: the answer says so all the same
        log.warning("event=rules_unseen_coins_unchecked error=%r (the rules apply)", str(err)[:200])
    else:
        if unseen:  # applied all the same: a coin may be listed before its first trade
            response.headers["x-nodetap-unseen-coins"] = json.dumps(unseen)
    return response


async def _unseen_coins(state: AppState, rules: Rules) -> list[str]:
    """The coins the rules name that this node has not seen (no trade, candle or kept order
    status), logged with the seen coin each is closest to: a typo keeps nothing, silently."""
    named = dict.fromkeys([*rules.coins, *rules.exclude_coins, *rules.min_notional_by_coin])
    unseen = [c for c in named if not await known_coin(state, c)]
    if unseen:
        seen = await read(state, lambda con: [c for (c,) in con.execute(
            "SELECT coin FROM history.candles UNION SELECT coin FROM history.orders").fetchall() if c])
        hints = []
        for coin in unseen:
            near = ([c for c in seen if c.lower() == coin.lower()]
                    or difflib.get_close_matches(coin, seen, n=1, cutoff=0.6))
            hints.append(f"{coin!r}" + (f" (did you mean {near[0]!r}?)" if near else ""))
        log.warning("event=rules_unseen_coins coins=%s (no trade, candle or order status of these coins "
                    "was seen; the rules apply all the same)", ", ".join(hints))
    return unseen
