"""What the node's files answer, read from the store (DuckDB and the lake): recent trades,
a user's fills and order statuses, last trade prices, the coins seen. Plain functions of a
DuckDB connection; the info routes run them in worker threads."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import duckdb
import orjson
import polars as pl

from api.userwire import aggregate_by_time, fill_rows, frontend_orders_json, last_prices
from api.wire import trade_wire
from etl.history import ARRIVAL_DESC, ARRIVAL_ORDER, arrived
from etl.store import fetch_pl

RECENT_TRADES = 100  # trades a `recentTrades` answer holds at most, newest last
USER_FILLS = 2000  # fills of one `userFills`/`userFillsByTime` answer (the public API's cap)
USER_FILLS_WINDOW = 10000  # only a user's latest fills are reachable by time (the public API's cap)
HISTORICAL_ORDERS = 2000  # orders of one `historicalOrders` answer (the public API's cap)


def _naive(ms: int) -> datetime:
    return datetime.fromtimestamp(ms / 1000, UTC).replace(tzinfo=None)


def recent_trades(con: duckdb.DuckDBPyConnection, coin: str) -> list[dict[str, Any]]:
    """The coin's latest trades in the `trades` channel's shape, oldest first."""
    for main in (True, False):  # DuckDB, then the lake: a coin whose hours were pruned
        sel = fetch_pl(con, f"""SELECT * EXCLUDE ({ARRIVAL_ORDER}) FROM (
                                    SELECT * FROM ({arrived(con, main=main)}) WHERE coin = $1
                                    ORDER BY time DESC, {ARRIVAL_DESC} LIMIT {RECENT_TRADES})
                                ORDER BY time, {ARRIVAL_ORDER}""", [coin])
        if not sel.is_empty():
            break
    if sel.is_empty():
        return []
    return trade_wire(sel).to_dicts()


def user_fills(con: duckdb.DuckDBPyConnection, user: str, aggregate: bool = False,
               start_ms: int | None = None, end_ms: int | None = None, newest_first: bool = True,
               ) -> list[dict[str, Any]]:
    """A user's fills as the public API answers `userFills` (no times: the latest 2000, newest
    first) and `userFillsByTime` (fills in [start, end] among the user's latest 10000, at most
    2000, oldest first unless `newest_first`)."""
    window = USER_FILLS if start_ms is None else USER_FILLS_WINDOW
    rows = fetch_pl(con, f"""SELECT * FROM history.fills WHERE lower("user") = $1
                             ORDER BY time DESC, tid DESC LIMIT {window}""", [user.lower()])
    if start_ms is not None:
        rows = rows.filter(pl.col("time").dt.epoch("ms").is_between(start_ms, end_ms if end_ms is not None
                                                                    else 2**63 - 1))
    rows = rows.sort("time", "tid")  # oldest first, as the node wrote them
    if aggregate:
        rows = aggregate_by_time(rows)
    rows = rows.reverse() if newest_first else rows
    return fill_rows(rows.head(USER_FILLS))


def twap_slice_fills(con: duckdb.DuckDBPyConnection, user: str) -> list[dict[str, Any]]:
    """`userTwapSliceFills`: the user's latest 2000 fills of TWAP slices, `[{fill, twapId}]`."""
    rows = fetch_pl(con, f"""SELECT * FROM history.fills WHERE lower("user") = $1 AND twap_id IS NOT NULL
                             ORDER BY time DESC, tid DESC LIMIT {USER_FILLS}""", [user.lower()])
    return [{"fill": fill, "twapId": fill["twapId"]} for fill in fill_rows(rows)]


def _order_history(con: duckdb.DuckDBPyConnection, where: str, params: list[object], limit: int
                   ) -> pl.DataFrame:
    """The latest status of each order matching `where`, newest first."""
    return fetch_pl(con, f"""
        SELECT * EXCLUDE (_rn) FROM (
            SELECT *, row_number() OVER (PARTITION BY oid
                                         ORDER BY time DESC, block_number DESC NULLS LAST) AS _rn
            FROM history.orders WHERE {where}) WHERE _rn = 1
        ORDER BY time DESC, oid DESC LIMIT {limit}""", params)


def historical_orders(con: duckdb.DuckDBPyConnection, user: str) -> bytes:
    """`historicalOrders`: the user's latest 2000 orders with their latest status (JSON)."""
    rows = _order_history(con, 'lower("user") = $1', [user.lower()], HISTORICAL_ORDERS)
    return frontend_orders_json(rows).encode() if rows.height else b"[]"


def order_status(con: duckdb.DuckDBPyConnection, user: str, oid: int | str) -> Any | None:
    """`orderStatus`'s `order` object for an oid (int) or cloid (0x hex), or None if unseen."""
    column = "oid" if isinstance(oid, int) else "lower(cloid)"
    value = oid if isinstance(oid, int) else oid.lower()
    rows = _order_history(con, f'lower("user") = $1 AND {column} = $2', [user.lower(), value], 1)
    if rows.is_empty():
        return None
    return orjson.loads(frontend_orders_json(rows))[0]


def all_mids(con: duckdb.DuckDBPyConnection) -> dict[str, float]:
    """Every coin's last trade price: from the trades in DuckDB (the retained hours), and for a
    coin whose trades were all pruned into the lake, the close of its latest stored candle (the
    same price, read from a table far smaller than the trades)."""
    rows = fetch_pl(con, """SELECT coin, px, time FROM main.trades QUALIFY row_number()
                            OVER (PARTITION BY coin ORDER BY time DESC, rowid DESC) = 1""")
    mids = last_prices(rows) if rows.height else {}
    older = con.execute("""SELECT coin, arg_max(c, t_last) FROM history.candles
                           WHERE NOT filled AND coin NOT IN (SELECT DISTINCT coin FROM main.trades)
                           GROUP BY coin""").fetchall()
    return {**{str(c): float(px) for c, px in older if px is not None}, **mids}


def coin_seen(con: duckdb.DuckDBPyConnection, coin: str) -> bool:
    """Whether `coin` has a trade, candle or kept order status in the store (DuckDB or the lake)."""
    ((seen,),) = con.execute("""SELECT EXISTS (SELECT 1 FROM history.trades WHERE coin = $1)
                                OR EXISTS (SELECT 1 FROM history.orders WHERE coin = $1)
                                OR EXISTS (SELECT 1 FROM history.candles WHERE coin = $1)""",
                             [coin]).fetchall()
    return bool(seen)
