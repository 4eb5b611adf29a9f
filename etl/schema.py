"""The store's schema, in one place: its tables, their DDL, and the hour each row belongs to.

- `TABLES`: the data tables, each with a `history.<table>` view and lake partitions
  (`orders`, `fills`, `trades` hold rows, `candles` the candles).
- `ROW_TABLES` and `CANDLE_DB_SCHEMA`: their columns; `SOURCES`: the stream kinds feeding each;
  `META_DDL`: the bookkeeping tables (`cursors`, `gaps`, `rejects`, `file_cursors`, `meta`,
  `lake_hours`).
- The hour rule (`HOUR_COLUMN`): a row belongs to the UTC hour of its event `time`; a candle
  to the hour of its close time `t_close` (so an hour's candles are final when the hour is).
  `hour_sql` (the lake's sealing and views) and `hour_expr` (the store marking sealed hours
  dirty) are both read off `HOUR_COLUMN`; tests/test_schema.py checks that they agree.

Interval widths and alignment live with the candles (etl/candles.py: `INTERVALS`,
`fixed_width_ms`, `open_time_ms`, `close_time_ms`, `shift_open_ms`).
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Literal, cast

import polars as pl

from etl.candles import CANDLE_SCHEMA
from etl.columns import FILLS_SCHEMA, ORDERS_SCHEMA, TRADES_SCHEMA

Table = Literal["orders", "fills", "trades", "candles"]
TABLES: tuple[Table, ...] = ("orders", "fills", "trades", "candles")

ROW_TABLES: dict[str, dict[str, pl.DataType]] = {
    "orders": ORDERS_SCHEMA,
    "fills": FILLS_SCHEMA,
    "trades": TRADES_SCHEMA,
}

# DuckDB names are case-insensitive: the protocol's close time `T` is `t_close` in SQL
CANDLE_DB_NAMES = {"T": "t_close"}
CANDLE_DB_NAMES_BACK = {v: k for k, v in CANDLE_DB_NAMES.items()}
CANDLE_DB_SCHEMA: dict[str, pl.DataType] = {
    CANDLE_DB_NAMES.get(k, k): v for k, v in CANDLE_SCHEMA.items()}

# table -> the stream kinds that feed it: their watermark says when its hours are complete
# (the lake), and bounds the candles' forward fill with their gaps (etl/history.py)
SOURCES: dict[str, tuple[str, ...]] = {
    "orders": ("orders",), "fills": ("fills",), "trades": ("fills", "trades"), "candles": ("fills", "trades")}

# the column each table's rows are placed in an hour by, and its type: a timestamp, or epoch ms
HOUR_MS = 3_600_000
EPOCH = datetime(1970, 1, 1)
HOUR_COLUMN: dict[str, tuple[str, Literal["timestamp", "ms"]]] = {
    "orders": ("time", "timestamp"),
    "fills": ("time", "timestamp"),
    "trades": ("time", "timestamp"),
    "candles": ("t_close", "ms"),
}


def hour_sql(table: str, alias: str = "") -> str:
    """SQL for the hour (a TIMESTAMP) a row of `table` belongs to."""
    column, unit = HOUR_COLUMN[table]
    ref = f"{alias}.{column}" if alias else column
    if unit == "ms":
        return f"date_trunc('hour', make_timestamp({ref} * 1000))"
    return f"date_trunc('hour', {ref})"


def hour_expr(table: str) -> pl.Expr:
    """The same hour as `hour_sql`, as a Polars expression over a frame in the store's names."""
    column, unit = HOUR_COLUMN[table]
    at = pl.from_epoch(pl.col(column), time_unit="ms") if unit == "ms" else pl.col(column)
    return at.dt.truncate("1h").alias("hour")


def hours_of(table: str, rows: pl.DataFrame) -> list[datetime]:
    """The distinct hours (`hour_expr`) the rows of `table` fall in, nulls aside. A unit's rows
    are most often of one hour: that is told from their earliest and latest time alone (a few
    µs, against ~0.2 ms for the expression over every row, on every unit of every lane)."""
    column, unit = HOUR_COLUMN[table]
    times = rows.get_column(column)
    lo, hi = times.min(), times.max()
    if lo is None:
        return []
    if unit == "ms":
        first, last = (EPOCH + timedelta(hours=cast(int, t) // HOUR_MS) for t in (lo, hi))
    else:
        first, last = (cast(datetime, t).replace(minute=0, second=0, microsecond=0) for t in (lo, hi))
    if first == last:
        return [first]
    return rows.select(hour_expr(table).unique(maintain_order=True)).get_column("hour").drop_nulls().to_list()


_DUCK = {
    pl.Datetime: "TIMESTAMP",
    pl.Int64: "BIGINT",
    pl.Float64: "DOUBLE",
    pl.String: "VARCHAR",
    pl.Boolean: "BOOLEAN",
}


def table_ddl(table: str, schema: dict[str, pl.DataType], extra: str = "") -> str:
    cols = ", ".join(f'"{name}" {_DUCK[type(dt)]}' for name, dt in schema.items())
    return f"CREATE TABLE IF NOT EXISTS {table} ({cols}{', ' + extra if extra else ''})"


DATA_DDL = [
    *(table_ddl(table, schema) for table, schema in ROW_TABLES.items()),
    table_ddl("candles", CANDLE_DB_SCHEMA, "PRIMARY KEY (coin, interval, t)"),
]
META_DDL = [
    """CREATE TABLE IF NOT EXISTS cursors (
        stream VARCHAR PRIMARY KEY, kind VARCHAR, file VARCHAR, inode UBIGINT, "offset" BIGINT,
        lines BIGINT, bytes BIGINT, rows BIGINT, rejects BIGINT, gaps BIGINT,
        skipped_bytes BIGINT, last_time TIMESTAMP, updated_at TIMESTAMP)""",
    """CREATE TABLE IF NOT EXISTS gaps (
        stream VARCHAR, file VARCHAR, from_offset BIGINT, to_offset BIGINT, bytes BIGINT,
        est_lines BIGINT, reason VARCHAR, time_from TIMESTAMP, time_to TIMESTAMP,
        detected_at TIMESTAMP)""",
    """CREATE TABLE IF NOT EXISTS rejects (
        stream VARCHAR, file VARCHAR, "offset" BIGINT, reason VARCHAR, line VARCHAR,
        detected_at TIMESTAMP)""",
    # one cursor per hour file, whichever mode read it (see etl/nodefiles.py); `recheck`:
    # the file is being read again, its rows are checked against the stored ones
    """CREATE TABLE IF NOT EXISTS file_cursors (
        stream VARCHAR, file VARCHAR, inode UBIGINT, "offset" BIGINT, fp BIGINT,
        recheck BOOLEAN, complete BOOLEAN, updated_at TIMESTAMP, PRIMARY KEY (stream, file))""",
    # a unit's cursor, written instead of `cursors` and `file_cursors` by a unit committed
    # side by side with the one before it (etl/lanes.py), folded into them once it committed
    # and on every start (`Store.fold`); `files` is the unit's file cursors, as JSON
    """CREATE TABLE IF NOT EXISTS cursor_log (
        stream VARCHAR, seq BIGINT, kind VARCHAR, file VARCHAR, inode UBIGINT, "offset" BIGINT,
        lines BIGINT, bytes BIGINT, rows BIGINT, rejects BIGINT, gaps BIGINT,
        skipped_bytes BIGINT, last_time TIMESTAMP, updated_at TIMESTAMP, files VARCHAR)""",
    # what this database is: its node dir, its id, per-stream floors (etl/identity.py)
    "CREATE TABLE IF NOT EXISTS meta (key VARCHAR PRIMARY KEY, value VARCHAR)",
    # the Parquet lake's sealed hours (see etl/lake.py)
    """CREATE TABLE IF NOT EXISTS lake_hours (
        tbl VARCHAR, hour TIMESTAMP, rows BIGINT, parts INTEGER, dirty BOOLEAN, pruned BOOLEAN,
        sealed_at TIMESTAMP, first_part INTEGER DEFAULT 0, marks BIGINT DEFAULT 0,
        PRIMARY KEY (tbl, hour))""",
    # databases made before the lake merged candle parts and counted marks (etl/writers.py)
    "ALTER TABLE lake_hours ADD COLUMN IF NOT EXISTS first_part INTEGER DEFAULT 0",
    "ALTER TABLE lake_hours ADD COLUMN IF NOT EXISTS marks BIGINT DEFAULT 0",
]
