"""REST snapshots: candles, recent trades and orders, coins, pipeline status, the orders rules.

Coins travel as query parameters (`?coin=PURR/USDC`, `?coin=@107`). Times in responses are
epoch milliseconds, as in the public Hyperliquid API; times in requests are epoch ms or ISO.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import orjson
from fastapi import APIRouter, Request, Response

from api.deps import State
from api.errors import BadRequest
from api.state import AppState
from etl.candles import INTERVALS
from etl.config import Settings
from etl.filters import RulesError, rules_to_dict
from etl.history import HistoryError, parse_time_ms, read_candles, watermark_and_holes
from etl.status import status_rows

router = APIRouter()

MAX_LIMIT = 5000
CANDLE_FIELDS = ("t", "T", "o", "h", "l", "c", "v", "vq", "n", "vwap", "filled")
DEFAULT_CANDLES = 500  # without `start`, this many intervals before `end`
_WIDTH_MS = {"s": 1000, "m": 60_000, "h": 3_600_000, "d": 86_400_000, "w": 7 * 86_400_000,
             "M": 31 * 86_400_000}


def json_response(content: Any, status_code: int = 200) -> Response:
    return Response(orjson.dumps(content, default=str), status_code=status_code,
                    media_type="application/json")


# ------------------------------------------------------------------ params
# the times Python's datetime can hold (years 1 to 9999), in epoch ms: anything beyond is a typo
MIN_TIME_MS = -62_135_596_800_000
MAX_TIME_MS = 253_402_300_799_999


def parse_time(raw: str | None, name: str) -> int | None:
    """Epoch milliseconds from `raw` (epoch ms or ISO 8601, UTC without a zone); None if absent."""
    example = f"e.g. {name}=1767610680000 or {name}=2026-01-05T10:58:00Z"
    try:
        value = parse_time_ms(raw, name)
    except HistoryError as err:
        raise BadRequest(f"{err} ({example})") from None
    except (OverflowError, ValueError):
        raise BadRequest(f"{name}: {raw!r} is not a time between the years 1 and 9999 ({example})") from None
    if value is not None and not MIN_TIME_MS <= value <= MAX_TIME_MS:
        raise BadRequest(f"{name}: {raw} is out of range: epoch milliseconds from {MIN_TIME_MS} to "
                         f"{MAX_TIME_MS} (years 1 to 9999; {example})")
    return value


def parse_limit(raw: str | None, default: int = 100, most: int = MAX_LIMIT) -> int:
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise BadRequest(f"limit must be an integer from 1 to {most}, not {raw!r}") from None
    if not 1 <= value <= most:
        raise BadRequest(f"limit must be from 1 to {most}, not {value}")
    return value


def parse_bool(raw: str | None, name: str, default: bool) -> bool:
    if raw is None or raw == "":
        return default
    if raw.lower() in ("1", "true", "yes", "on"):
        return True
    if raw.lower() in ("0", "false", "no", "off"):
        return False
    raise BadRequest(f"{name} must be true or false, not {raw!r}")


def check_interval(interval: str, settings: Settings, stored_only: bool = True) -> str:
    """A valid interval; with `stored_only`, one the store computes (exports of the table)."""
    if interval not in INTERVALS:
        raise BadRequest(f"unknown interval {interval!r}; valid intervals: {' '.join(INTERVALS)}")
    if stored_only and interval not in settings.candle_intervals:
        raise BadRequest(f"interval {interval!r} is not computed here (setting candle_intervals: "
                         f"{' '.join(settings.candle_intervals)})")
    return interval


def require_coin(coin: str | None) -> str:
    if not coin:
        raise BadRequest("coin is required, as a query parameter (e.g. ?coin=BTC, ?coin=PURR%2FUSDC)")
    return coin


# ------------------------------------------------------------------ candles
@router.get("/v1/candles")
async def candles(state: State, coin: str | None = None, interval: str | None = None,
                  start: str | None = None, end: str | None = None, fill: str | None = None) -> Response:
    """Candles of one coin and interval with `start <= t <= end`, oldest first. Without `end`:
    up to the trades' watermark; without `start`: the 500 intervals before `end`. With `fill`
    (default true) empty intervals are forward-filled up to the watermark, never across a gap."""
    coin = require_coin(coin)
    # every interval: those not stored are derived on read (etl.history.read_candles)
    interval = check_interval(interval or next(iter(state.settings.candle_intervals), "1m"), state.settings,
                              stored_only=False)
    start_ms, end_ms = parse_time(start, "start"), parse_time(end, "end")
    do_fill = parse_bool(fill, "fill", True)
    if start_ms is not None and end_ms is not None and end_ms < start_ms:
        raise BadRequest(f"end ({end}) is before start ({start})")
    rows = await asyncio.to_thread(_candles, state, coin, interval, start_ms, end_ms, do_fill)
    return json_response(rows)


def _candles(state: AppState, coin: str, interval: str, start_ms: int | None, end_ms: int | None,
             fill: bool) -> list[dict[str, Any]]:
    con = state.reader()
    try:
        if end_ms is None:
            wm, _ = watermark_and_holes(con)
            end_ms = wm if wm is not None else int(time.time() * 1000)
        if start_ms is None:
            start_ms = end_ms - DEFAULT_CANDLES * int(interval[:-1]) * _WIDTH_MS[interval[-1]]
        frame = read_candles(con, coin, interval, start_ms, end_ms, fill,
                             stored=state.settings.candle_intervals)
    except HistoryError as err:
        raise BadRequest(str(err)) from None
    finally:
        con.close()
    return frame.select(CANDLE_FIELDS).to_dicts()


# ------------------------------------------------------------------ trades, orders
@router.get("/v1/trades")
async def trades(state: State, coin: str | None = None, limit: str | None = None) -> Response:
    """The most recent trades (of `coin`, or of every coin), newest first; `time` in epoch ms."""
    n = parse_limit(limit)
    params: list[object] = [coin] if coin else []
    where = "WHERE coin = $1" if coin else ""
    sql = (f"SELECT * REPLACE (epoch_ms(time) AS time) FROM main.trades {where} "
           f"ORDER BY time DESC, tid DESC LIMIT {n}")
    return json_response(await asyncio.to_thread(_rows, state, sql, params))


@router.get("/v1/orders")
async def orders(state: State, coin: str | None = None, status: str | None = None,
                 user: str | None = None, limit: str | None = None) -> Response:
    """The most recent order statuses the rules kept, newest first, filtered by `coin`,
    `status` and `user`; times in epoch ms."""
    n = parse_limit(limit)
    where: list[str] = []
    params: list[object] = []
    for column, value in (("coin", coin), ("status", status), ("user", user.lower() if user else None)):
        if value:
            params.append(value)
            where.append(f'"{column}" = ${len(params)}')
    clause = "WHERE " + " AND ".join(where) if where else ""
    sql = ("SELECT * REPLACE (epoch_ms(time) AS time, epoch_ms(block_time) AS block_time, "
           f"epoch_ms(order_time) AS order_time) FROM main.orders {clause} "
           f"ORDER BY orders.time DESC, rowid DESC LIMIT {n}")
    return json_response(await asyncio.to_thread(_rows, state, sql, params))


def _rows(state: AppState, sql: str, params: list[object]) -> list[dict[str, Any]]:
    con = state.reader()
    try:
        cur = con.execute(sql, params)
        names = [d[0] for d in cur.description or []]
        return [dict(zip(names, row, strict=True)) for row in cur.fetchall()]
    finally:
        con.close()


@router.get("/v1/coins")
async def coins(state: State) -> Response:
    """Every coin seen in trades or kept orders, with its last trade (px, time in ms) and trade count."""
    sql = """
        WITH t AS (
            SELECT coin, first(px ORDER BY time DESC, tid DESC) AS last_px,
                   epoch_ms(max(time)) AS last_time, count(*) AS trades
            FROM main.trades GROUP BY coin)
        SELECT coin, t.last_px, t.last_time, coalesce(t.trades, 0) AS trades
        FROM (SELECT coin FROM t UNION SELECT DISTINCT coin FROM main.orders WHERE coin IS NOT NULL) c
        LEFT JOIN t USING (coin) ORDER BY coin"""
    return json_response(await asyncio.to_thread(_rows, state, sql, []))


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


@router.put("/v1/rules")
async def put_rules(state: State, request: Request) -> Response:
    """Replace the orders filter rules (written to the rules file if there is one); the next
    batch uses them. Invalid rules change nothing and answer 400 with what is wrong."""
    try:
        body = orjson.loads(await request.body())
    except orjson.JSONDecodeError as err:
        raise BadRequest(f"the body must be a JSON rules document ({{\"orders\": {{...}}}}): {err}") from None
    try:
        rules = await asyncio.to_thread(state.rules.replace, body)
    except RulesError as err:
        raise BadRequest(str(err)) from None
    return json_response(rules_to_dict(rules))
