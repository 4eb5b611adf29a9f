"""`POST /info`: the public API's `candleSnapshot`, plus the `meta`/`spotMeta` the SDK's Info() reads.

Candles come from `history.candles` (DuckDB and the lake), with the empty intervals
forward-filled up to
the trades' watermark and never across a recorded gap or stall (etl.candles.fill_forward).
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Callable
from typing import Any, TypeVar

import duckdb
import orjson
from fastapi import APIRouter, Request, Response

from api.deps import State
from api.errors import BadRequest
from api.state import AppState
from api.wire import candle_wire
from etl.history import read_candles

router = APIRouter()
T = TypeVar("T")

TYPES = ("candleSnapshot", "meta", "spotMeta")
_SPOT_INDEX = re.compile(r"@(\d+)")
USDC = "USDC"


def _json(value: object) -> Response:
    return Response(orjson.dumps(value), media_type="application/json")


@router.post("/info")
async def info(request: Request, state: State) -> Response:
    try:
        body = orjson.loads(await request.body())
    except orjson.JSONDecodeError as err:
        raise BadRequest(f"the body must be a JSON object such as {{\"type\":\"meta\"}}: {err}") from err
    kind = body.get("type") if isinstance(body, dict) else None
    if kind == "candleSnapshot":
        coin, interval, start, end = _candle_request(body.get("req"), state.settings.candle_intervals)
        return _json(await _read(state, lambda con: candle_snapshot(con, coin, interval, start, end)))
    if kind == "meta":
        dex = body.get("dex") or ""
        if not isinstance(dex, str):
            raise BadRequest(f'"dex" must be a string, got {orjson.dumps(dex).decode()}')
        return _json(await _read(state, lambda con: perp_meta(con, dex)))
    if kind == "spotMeta":
        return _json(await _read(state, spot_meta))
    raise BadRequest(f"unknown info type {orjson.dumps(kind).decode()}; supported types: {', '.join(TYPES)}")


async def _read(state: AppState, query: Callable[[duckdb.DuckDBPyConnection], T]) -> T:
    """`query(con)` in a worker thread, on a connection of its own: never on the event loop."""

    def run() -> T:
        con = state.reader()
        try:
            return query(con)
        finally:
            con.close()

    return await asyncio.to_thread(run)


def _candle_request(req: object, intervals: tuple[str, ...]) -> tuple[str, str, int, int]:
    example = '{"coin":"BTC","interval":"1m","startTime":1700000000000,"endTime":1700003600000}'
    if not isinstance(req, dict):
        raise BadRequest(f'candleSnapshot needs "req": an object such as {example}')
    coin = req.get("coin")
    if not isinstance(coin, str) or not coin:
        raise BadRequest(f'candleSnapshot: "req.coin" must be a non-empty string such as "BTC"; {example}')
    interval = req.get("interval")
    if interval not in intervals:
        raise BadRequest(f"candleSnapshot: interval {orjson.dumps(interval).decode()} is not served; "
                         f"intervals: {' '.join(intervals)} (setting candle_intervals)")
    start = req.get("startTime")
    end = req.get("endTime", int(time.time() * 1000))
    for name, value in (("startTime", start), ("endTime", end)):
        if isinstance(value, bool) or not isinstance(value, int):
            raise BadRequest(f'candleSnapshot: "req.{name}" must be an integer of epoch milliseconds, '
                             f"got {orjson.dumps(value).decode()}")
    return coin, interval, start, end  # type: ignore[return-value]


def candle_snapshot(con: duckdb.DuckDBPyConnection, coin: str, interval: str, start: int, end: int
                    ) -> list[dict[str, Any]]:
    """The public API's candleSnapshot answer: candles with `start <= t <= end`, sorted by `t`,
    empty intervals forward-filled (the same candles as `/v1/candles`: DuckDB and the lake)."""
    return candle_wire(read_candles(con, coin, interval, start, end)).to_dicts()


# ------------------------------------------------------------------ meta
def _coins(con: duckdb.DuckDBPyConnection) -> list[str]:
    rows = con.execute("SELECT DISTINCT coin FROM candles UNION SELECT DISTINCT coin FROM trades").fetchall()
    return sorted(r[0] for r in rows if r[0])


def _sz_decimals(con: duckdb.DuckDBPyConnection) -> dict[str, int]:
    """Size decimals per coin, as seen in a sample of recent trades (the node files do not say)."""
    rows = con.execute("SELECT coin, sz FROM trades USING SAMPLE 20000 ROWS").fetchall()
    out: dict[str, int] = {}
    for coin, sz in rows:
        if sz is None:
            continue
        text = repr(float(sz))
        places = 0 if "e" in text or text.endswith(".0") else len(text.split(".")[1])
        out[coin] = min(8, max(out.get(coin, 0), places))
    return out


def _is_spot(coin: str) -> bool:
    return "/" in coin or coin.startswith("@")


def perp_meta(con: duckdb.DuckDBPyConnection, dex: str = "") -> dict[str, Any]:
    """`meta`: the perps seen, those of a builder-deployed dex (`dex:NAME`) when `dex` is set.
    maxLeverage is not in the node's files and is reported as 1."""
    decimals = _sz_decimals(con)
    names = [c for c in _coins(con) if not _is_spot(c)]
    names = [c for c in names if c.startswith(f"{dex}:")] if dex else [c for c in names if ":" not in c]
    return {"universe": [{"name": c, "szDecimals": decimals.get(c, 0), "maxLeverage": 1} for c in names]}


def spot_meta(con: duckdb.DuckDBPyConnection) -> dict[str, Any]:
    """`spotMeta`: one pair per spot coin seen. `X/Y` names give tokens X and Y; `@k` pairs
    (index k) get a base token named `@k`, quoted in USDC, as the node's files name no tokens."""
    decimals = _sz_decimals(con)
    pairs = [c for c in _coins(con) if _is_spot(c)]
    tokens: dict[str, int] = {USDC: 0}
    token_decimals: dict[str, int] = {USDC: 8}

    def token(name: str, sz_decimals: int) -> int:
        if name not in tokens:
            tokens[name] = len(tokens)
            token_decimals[name] = sz_decimals
        return tokens[name]

    taken = {int(m.group(1)) for c in pairs if (m := _SPOT_INDEX.fullmatch(c))}
    free = (i for i in range(10**9) if i not in taken)
    universe: list[dict[str, Any]] = []
    for coin in pairs:
        m = _SPOT_INDEX.fullmatch(coin)
        if m:
            index, base, quote, canonical = int(m.group(1)), coin, USDC, False
        else:
            base, _, quote = coin.partition("/")
            index, canonical = next(free), True
        pair = [token(base, decimals.get(coin, 0)), token(quote or USDC, 8)]
        universe.append({"name": coin, "tokens": pair, "index": index, "isCanonical": canonical})
    universe.sort(key=lambda u: u["index"])
    return {
        "universe": universe,
        "tokens": [
            {"name": name, "szDecimals": token_decimals[name], "weiDecimals": max(8, token_decimals[name]),
             "index": i, "tokenId": f"0x{i:032x}", "isCanonical": True}
            for name, i in tokens.items()
        ],
    }
