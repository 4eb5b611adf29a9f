"""etl/schema.py: the hour rule in SQL (the lake) and in Polars (the store) gives the same hour
for every row, and the interval arithmetic the routes use comes from etl/candles.py."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import duckdb
import polars as pl
import pytest

from etl.candles import fixed_width_ms, shift_open_ms
from etl.schema import CANDLE_DB_SCHEMA, HOUR_COLUMN, ROW_TABLES, TABLES, hour_expr, hour_sql, hours_of

H = 3_600_000
T10 = 1767607200000  # 2026-01-05T10:00:00Z
# around an hour's edges: the last microsecond of 09:59, the hour itself, just after it
TIMES = [datetime(2026, 1, 5, 9, 59, 59, 999999), datetime(2026, 1, 5, 10), datetime(2026, 1, 5, 10, 0, 0, 1),
         datetime(2026, 1, 5, 10, 59, 59, 999000), datetime(1970, 1, 1), datetime(2026, 12, 31, 23, 30)]
# candle close times: the last millisecond of an hour belongs to it, the next one to the next hour
CLOSES = [T10 - 1, T10, T10 + H - 1, T10 + H, T10 + 59_999, 0, 86_400_000 - 1]


def test_every_table_has_an_hour_rule() -> None:
    assert set(HOUR_COLUMN) == set(TABLES) == {*ROW_TABLES, "candles"}
    assert all(column in (CANDLE_DB_SCHEMA if t == "candles" else ROW_TABLES[t])
               for t, (column, _) in HOUR_COLUMN.items())


@pytest.mark.parametrize("table", TABLES)
def test_sql_and_polars_put_each_row_in_the_same_hour(table: str) -> None:
    column, unit = HOUR_COLUMN[table]
    frame = pl.DataFrame({column: CLOSES if unit == "ms" else TIMES})
    polars_hours = frame.select(hour_expr(table))["hour"].to_list()
    con = duckdb.connect()
    con.execute("SET TimeZone = 'UTC'")
    con.register("rows", frame)
    sql_hours = [h for (h,) in con.execute(f"SELECT {hour_sql(table, 'r')} FROM rows r").fetchall()]
    con.close()
    assert sql_hours == polars_hours
    if unit == "ms":
        assert polars_hours == [datetime(2026, 1, 5, 9), datetime(2026, 1, 5, 10), datetime(2026, 1, 5, 10),
                                datetime(2026, 1, 5, 11), datetime(2026, 1, 5, 10), datetime(1970, 1, 1),
                                datetime(1970, 1, 1, 23)]
    else:
        assert polars_hours == [datetime(2026, 1, 5, 9), datetime(2026, 1, 5, 10), datetime(2026, 1, 5, 10),
                                datetime(2026, 1, 5, 10), datetime(1970, 1, 1), datetime(2026, 12, 31, 23)]


@pytest.mark.parametrize("table", TABLES)
def test_the_hours_of_a_unit_are_those_of_its_rows(table: str) -> None:
    column, unit = HOUR_COLUMN[table]
    values: list[Any] = CLOSES if unit == "ms" else TIMES
    dtype = pl.Int64 if unit == "ms" else pl.Datetime("us")
    for rows in ([values[1], values[2]], [values[2], None, values[1]], values, [values[0], values[3]],
                 [None], []):
        frame = pl.DataFrame({column: rows}, schema={column: dtype})
        want = set(frame.select(hour_expr(table))["hour"].drop_nulls().to_list())
        got = hours_of(table, frame)
        assert len(got) == len(set(got)) and set(got) == want, rows


def test_interval_widths_and_shifts() -> None:
    assert (fixed_width_ms("1s"), fixed_width_ms("3m"), fixed_width_ms("1w"), fixed_width_ms("1M")) == (
        1000, 180_000, 604_800_000, None)
    assert shift_open_ms(T10, "1h", -499) == T10 - 499 * H
    # months by the calendar, across a year: 2026-01-01 back 2 months is 2025-11-01
    jan = 1767225600000  # 2026-01-01T00:00:00Z
    assert shift_open_ms(jan, "1M", -2) == 1761955200000
    assert shift_open_ms(jan, "1M", 13) == 1801440000000  # 2027-02-01
    with pytest.raises(ValueError, match="unknown candle interval '7m'"):
        fixed_width_ms("7m")
