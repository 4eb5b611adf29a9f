"""Candles: exact rows from hand-written trades at fixed UTC times, merge = one pass, forward fill
rules, an independent DuckDB computation, and real node fills."""

from __future__ import annotations

from datetime import datetime, timedelta
from functools import reduce
from pathlib import Path
from typing import Any

import duckdb
import orjson
import polars as pl
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from polars.testing import assert_frame_equal

from etl.candles import (
    CANDLE_SCHEMA,
    DEFAULT_INTERVALS,
    INTERVALS,
    candles,
    candles_multi,
    close_time_ms,
    empty_candles,
    fill_forward,
    merge,
    open_time_ms,
    validate_intervals,
)
from etl.parse import parse
from etl.shaping import trades_from_fills

SAMPLES = Path(__file__).resolve().parent.parent.parent / "shared" / "samples"


# ------------------------------------------------------------------ helpers
def at(iso: str) -> datetime:
    """A naive UTC datetime from an ISO string (no zone)."""
    return datetime.fromisoformat(iso)


def us(iso: str) -> int:
    """Microseconds since the epoch, in integers (a float timestamp can be off by one)."""
    d = at(iso) - datetime(1970, 1, 1)
    return (d.days * 86_400 + d.seconds) * 1_000_000 + d.microseconds


def ms(iso: str) -> int:
    return us(iso) // 1000


def make_trades(*rows: tuple[str, str, float, float]) -> pl.DataFrame:
    """Trades in arrival order from (iso time, coin, px, sz)."""
    return pl.DataFrame(
        [(at(t), coin, px, sz) for t, coin, px, sz in rows],
        schema={"time": pl.Datetime("us"), "coin": pl.String, "px": pl.Float64, "sz": pl.Float64},
        orient="row",
    )


def candle(coin: str, interval: str, t: str, T: str, o: float, h: float, l: float, c: float,  # noqa: E741
           v: float, vq: float, n: int, first: str, last: str) -> dict[str, Any]:
    """A whole expected real-candle row."""
    return {"coin": coin, "interval": interval, "t": ms(t), "T": ms(T), "o": o, "h": h, "l": l, "c": c,
            "v": v, "vq": vq, "n": n, "vwap": vq / v, "t_first": us(first), "t_last": us(last),
            "filled": False}


def flat(coin: str, interval: str, t: str, T: str, close: float) -> dict[str, Any]:
    """A whole expected forward-filled row."""
    return {"coin": coin, "interval": interval, "t": ms(t), "T": ms(T), "o": close, "h": close, "l": close,
            "c": close, "v": 0.0, "vq": 0.0, "n": 0, "vwap": None, "t_first": None, "t_last": None,
            "filled": True}


def frame(*rows: dict[str, Any]) -> pl.DataFrame:
    return pl.DataFrame(list(rows), schema=CANDLE_SCHEMA)


# ------------------------------------------------------------ intervals
def test_interval_labels() -> None:
    assert INTERVALS == ("1s", "5s", "10s", "1m", "3m", "5m", "15m", "30m", "1h", "2h", "4h", "8h", "12h",
                         "1d", "3d", "1w", "1M")
    assert validate_intervals(DEFAULT_INTERVALS) == ("1m", "5m", "15m", "1h", "4h", "1d")
    assert validate_intervals(["1M", "1m"]) == ("1M", "1m")


def test_unknown_interval_is_named_with_the_valid_ones() -> None:
    with pytest.raises(ValueError, match=r"'2m'.*1s 5s 10s 1m 3m .* 1w 1M"):
        validate_intervals(["1m", "2m"])
    with pytest.raises(ValueError, match="'1mo'"):
        candles(make_trades(), "1mo")


# ------------------------------------------------------------- exact rows
def test_single_trade() -> None:
    trades = make_trades(("2026-02-15T10:20:30.123456", "BTC", 50000.5, 0.25))
    assert candles(trades, "1m").to_dicts() == [
        candle("BTC", "1m", "2026-02-15T10:20:00", "2026-02-15T10:20:59.999", 50000.5, 50000.5, 50000.5,
               50000.5, 0.25, 12500.125, 1, "2026-02-15T10:20:30.123456", "2026-02-15T10:20:30.123456")
    ]


def test_several_trades_in_one_interval() -> None:
    trades = make_trades(
        ("2026-02-15T10:05:00", "ETH", 100.0, 1.0),  # opens the 5m candle on its first microsecond
        ("2026-02-15T10:06:10", "ETH", 104.0, 1.0),
        ("2026-02-15T10:07:20", "ETH", 98.0, 2.0),
        ("2026-02-15T10:09:59.999999", "ETH", 101.0, 0.5),  # last microsecond, still inside
    )
    # v = 4.5, vq = 100 + 104 + 196 + 50.5 = 450.5
    assert candles(trades, "5m").to_dicts() == [
        candle("ETH", "5m", "2026-02-15T10:05:00", "2026-02-15T10:09:59.999", 100.0, 104.0, 98.0, 101.0,
               4.5, 450.5, 4, "2026-02-15T10:05:00", "2026-02-15T10:09:59.999999")
    ]
    assert candles(trades, "5m")["vwap"].to_list() == [450.5 / 4.5]


def test_ties_at_equal_time_follow_row_order() -> None:
    trades = make_trades(
        ("2026-02-15T10:00:30", "BTC", 7.0, 1.0),  # arrives first, but is not the earliest
        ("2026-02-15T10:00:10", "BTC", 5.0, 1.0),  # earliest time, first row of the tie: open
        ("2026-02-15T10:00:10", "BTC", 6.0, 1.0),
        ("2026-02-15T10:00:50", "BTC", 9.0, 1.0),
        ("2026-02-15T10:00:50", "BTC", 8.0, 1.0),  # latest time, last row of the tie: close
    )
    assert candles(trades, "1m").to_dicts() == [
        candle("BTC", "1m", "2026-02-15T10:00:00", "2026-02-15T10:00:59.999", 5.0, 9.0, 5.0, 8.0,
               5.0, 35.0, 5, "2026-02-15T10:00:10", "2026-02-15T10:00:50")
    ]


def test_two_coins_and_two_intervals() -> None:
    trades = make_trades(
        ("2026-02-15T10:00:01", "km:USTECH", 589.25, 2.0),
        ("2026-02-15T10:00:02", "@107", 35.5, 4.0),
        ("2026-02-15T10:01:03", "km:USTECH", 589.75, 1.0),
        ("2026-02-15T10:00:04", "@107", 35.0, 2.0),
    )
    got = candles(trades, "1m")
    assert got.to_dicts() == [  # sorted by coin, then t
        candle("@107", "1m", "2026-02-15T10:00:00", "2026-02-15T10:00:59.999", 35.5, 35.5, 35.0, 35.0,
               6.0, 212.0, 2, "2026-02-15T10:00:02", "2026-02-15T10:00:04"),
        candle("km:USTECH", "1m", "2026-02-15T10:00:00", "2026-02-15T10:00:59.999", 589.25, 589.25, 589.25,
               589.25, 2.0, 1178.5, 1, "2026-02-15T10:00:01", "2026-02-15T10:00:01"),
        candle("km:USTECH", "1m", "2026-02-15T10:01:00", "2026-02-15T10:01:59.999", 589.75, 589.75, 589.75,
               589.75, 1.0, 589.75, 1, "2026-02-15T10:01:03", "2026-02-15T10:01:03"),
    ]
    both = candles_multi(trades, ["1m", "1h"])
    assert both.schema == pl.Schema(CANDLE_SCHEMA)
    assert both.filter(pl.col("interval") == "1h").to_dicts() == [
        candle("@107", "1h", "2026-02-15T10:00:00", "2026-02-15T10:59:59.999", 35.5, 35.5, 35.0, 35.0,
               6.0, 212.0, 2, "2026-02-15T10:00:02", "2026-02-15T10:00:04"),
        candle("km:USTECH", "1h", "2026-02-15T10:00:00", "2026-02-15T10:59:59.999", 589.25, 589.75, 589.25,
               589.75, 3.0, 1768.25, 2, "2026-02-15T10:00:01", "2026-02-15T10:01:03"),
    ]


def test_empty_input_gives_the_schema() -> None:
    empty = make_trades()
    assert candles(empty, "1m").schema == pl.Schema(CANDLE_SCHEMA)
    assert candles(empty, "1m").is_empty()
    assert candles_multi(empty, DEFAULT_INTERVALS).is_empty()
    assert candles_multi(empty, DEFAULT_INTERVALS).schema == pl.Schema(CANDLE_SCHEMA)
    assert merge(empty_candles(), empty_candles()).schema == pl.Schema(CANDLE_SCHEMA)


@pytest.mark.parametrize(
    ("trade", "label", "t", "T"),
    [
        # 2026-02-15 is a Sunday; epoch-aligned weeks open on Thursday 2026-02-12
        ("2026-02-15T13:00:00", "1w", "2026-02-12T00:00:00", "2026-02-18T23:59:59.999"),
        ("2026-02-18T23:59:59.999999", "1w", "2026-02-12T00:00:00", "2026-02-18T23:59:59.999"),
        ("2026-02-19T00:00:00", "1w", "2026-02-19T00:00:00", "2026-02-25T23:59:59.999"),
        # the weekly candle the Hyperliquid API served for the week of 2025-10-30 (a Thursday)
        ("2025-11-02T08:00:00", "1w", "2025-10-30T00:00:00", "2025-11-05T23:59:59.999"),
        # day 20498 since the epoch is 2 mod 3, so its 3d candle opened two days earlier
        ("2026-02-14T12:00:00", "3d", "2026-02-12T00:00:00", "2026-02-14T23:59:59.999"),
        ("2026-02-15T00:00:00", "3d", "2026-02-15T00:00:00", "2026-02-17T23:59:59.999"),
        ("2026-02-15T12:00:00", "1M", "2026-02-01T00:00:00", "2026-02-28T23:59:59.999"),
        ("2024-02-29T23:59:59.999999", "1M", "2024-02-01T00:00:00", "2024-02-29T23:59:59.999"),
        ("2025-12-31T23:59:59.999999", "1M", "2025-12-01T00:00:00", "2025-12-31T23:59:59.999"),
        ("2026-01-01T00:00:00", "1M", "2026-01-01T00:00:00", "2026-01-31T23:59:59.999"),
        ("2026-02-15T23:59:59.999999", "1d", "2026-02-15T00:00:00", "2026-02-15T23:59:59.999"),
        ("2026-02-15T13:07:59", "4h", "2026-02-15T12:00:00", "2026-02-15T15:59:59.999"),
        ("2026-02-15T13:07:59", "10s", "2026-02-15T13:07:50", "2026-02-15T13:07:59.999"),
    ],
)
def test_alignment(trade: str, label: str, t: str, T: str) -> None:  # noqa: N803
    got = candles(make_trades((trade, "BTC", 10.0, 1.0)), label)
    assert got.to_dicts() == [candle("BTC", label, t, T, 10.0, 10.0, 10.0, 10.0, 1.0, 10.0, 1, trade, trade)]
    # the expressions on their own agree
    times = pl.DataFrame({"time": [at(trade)]}, schema={"time": pl.Datetime("us")})
    opened = times.select(open_time_ms(pl.col("time"), label).alias("t"))
    assert opened.select("t", close_time_ms(pl.col("t"), label).alias("T")).row(0) == (ms(t), ms(T))


def test_late_trade_corrects_a_closed_candle() -> None:
    early = make_trades(
        ("2026-02-15T10:00:10", "BTC", 100.0, 1.0),
        ("2026-02-15T10:00:50", "BTC", 101.0, 1.0),
    )
    # the 10:00 candle has closed (10:01 trades arrived) when three 10:00 trades turn up late
    late = make_trades(
        ("2026-02-15T10:01:05", "BTC", 102.0, 1.0),
        ("2026-02-15T10:00:05", "BTC", 90.0, 2.0),  # before the old first: new open and low
        ("2026-02-15T10:00:10", "BTC", 95.0, 1.0),  # ties the old first, arrived later: not the open
        ("2026-02-15T10:00:55", "BTC", 120.0, 0.5),  # after the old last: new close and high
    )
    merged = merge(candles(early, "1m"), candles(late, "1m"))
    one_pass = candles(pl.concat([early, late]), "1m")
    expected = [
        candle("BTC", "1m", "2026-02-15T10:00:00", "2026-02-15T10:00:59.999", 90.0, 120.0, 90.0, 120.0,
               5.5, 536.0, 5, "2026-02-15T10:00:05", "2026-02-15T10:00:55"),
        candle("BTC", "1m", "2026-02-15T10:01:00", "2026-02-15T10:01:59.999", 102.0, 102.0, 102.0, 102.0,
               1.0, 102.0, 1, "2026-02-15T10:01:05", "2026-02-15T10:01:05"),
    ]
    assert one_pass.to_dicts() == expected
    assert merged.to_dicts() == expected


def test_merge_ties_between_batches_follow_arrival() -> None:
    old = make_trades(("2026-02-15T10:00:10", "BTC", 1.0, 1.0), ("2026-02-15T10:00:20", "BTC", 2.0, 1.0))
    new = make_trades(("2026-02-15T10:00:10", "BTC", 3.0, 1.0), ("2026-02-15T10:00:20", "BTC", 4.0, 1.0))
    # equal first times: the old batch arrived first and opens; equal last times: the new one closes
    assert merge(candles(old, "1m"), candles(new, "1m")).select("o", "c").row(0) == (1.0, 4.0)


def test_merge_passes_one_sided_keys_and_prefers_real_to_filled() -> None:
    real = candles(make_trades(("2026-02-15T10:00:10", "BTC", 5.0, 1.0)), "1m")
    other = candles(make_trades(("2026-02-15T10:00:10", "ETH", 7.0, 1.0)), "1m")
    assert merge(real, other).to_dicts() == [*real.to_dicts(), *other.to_dicts()]
    filled = frame(flat("BTC", "1m", "2026-02-15T10:00:00", "2026-02-15T10:00:59.999", 4.0))
    assert merge(filled, real).to_dicts() == real.to_dicts()
    assert merge(real, filled).to_dicts() == real.to_dicts()


# ------------------------------------------------------------ forward fill
M = "2026-02-15T10:0{}:00"


def real_minutes(*rows: tuple[int, float]) -> pl.DataFrame:
    """Real 1m BTC candles at 10:0<m> closing at `c` (one trade each)."""
    return candles(make_trades(*((f"2026-02-15T10:0{m}:30", "BTC", c, 1.0) for m, c in rows)), "1m")


def minute(m: int) -> tuple[str, str]:
    return f"2026-02-15T10:0{m}:00", f"2026-02-15T10:0{m}:59.999"


def test_fill_gaps_with_previous_close_up_to_the_watermark() -> None:
    real = real_minutes((0, 10.0), (3, 13.0))
    got = fill_forward(real.reverse(), "1m", ms(M.format(0)), ms(M.format(8)), ms("2026-02-15T10:06:20"), [])
    r0, r3 = real.to_dicts()
    assert got.to_dicts() == [
        r0,
        flat("BTC", "1m", *minute(1), 10.0),
        flat("BTC", "1m", *minute(2), 10.0),
        r3,
        flat("BTC", "1m", *minute(4), 13.0),
        flat("BTC", "1m", *minute(5), 13.0),
        flat("BTC", "1m", *minute(6), 13.0),  # opened at or before the watermark; 10:07 did not
    ]


def test_no_watermark_means_no_fill() -> None:
    real = real_minutes((0, 10.0), (3, 13.0))
    assert fill_forward(real, "1m", ms(M.format(0)), ms(M.format(8)), None, []).to_dicts() == real.to_dicts()


def test_no_fill_before_the_first_real_candle() -> None:
    real = real_minutes((3, 13.0))
    got = fill_forward(real, "1m", ms(M.format(0)), ms(M.format(4)), ms(M.format(9)), [])
    assert got.to_dicts() == [*real.to_dicts(), flat("BTC", "1m", *minute(4), 13.0)]
    assert fill_forward(empty_candles(), "1m", 0, ms(M.format(4)), ms(M.format(9)), []).is_empty()


def test_a_hole_stops_filling_until_the_next_real_candle() -> None:
    real = real_minutes((0, 10.0), (4, 14.0), (8, 18.0))
    holes = [
        (ms("2026-02-15T10:02:10"), ms("2026-02-15T10:02:20")),  # a recorded gap inside 10:02
        (ms("2026-02-15T10:06:00"), ms("2026-02-15T10:06:00")),  # a stall at the start of 10:06
    ]
    got = fill_forward(real, "1m", ms(M.format(0)), ms(M.format(9)), ms(M.format(9)), holes)
    r0, r4, r8 = real.to_dicts()
    assert got.to_dicts() == [
        r0,
        flat("BTC", "1m", *minute(1), 10.0),  # before the hole: still filled
        r4,  # 10:02 (hole) and 10:03 (after it) stay absent
        flat("BTC", "1m", *minute(5), 14.0),
        r8,  # 10:06 (hole) and 10:07 stay absent
        flat("BTC", "1m", *minute(9), 18.0),
    ]


def test_a_hole_touching_the_previous_close_blocks_and_one_before_it_does_not() -> None:
    real = real_minutes((0, 10.0))
    end = ms(M.format(3))
    touching = [(ms("2026-02-15T10:00:59.999"), ms("2026-02-15T10:00:59.999"))]
    assert fill_forward(real, "1m", 0, end, end, touching).to_dicts() == real.to_dicts()
    inside = [(ms("2026-02-15T10:00:40"), ms("2026-02-15T10:00:59.998"))]  # within the real candle
    assert len(fill_forward(real, "1m", 0, end, end, inside)) == 4


def test_start_inside_a_run_of_filled_candles_takes_the_close_from_before_start() -> None:
    real = real_minutes((0, 10.0), (5, 15.0))
    got = fill_forward(real, "1m", ms("2026-02-15T10:02:30"), ms(M.format(6)), ms(M.format(6)), [])
    r5 = real.to_dicts()[1]
    assert got.to_dicts() == [
        flat("BTC", "1m", *minute(3), 10.0),  # first open at or after start_ms
        flat("BTC", "1m", *minute(4), 10.0),
        r5,
        flat("BTC", "1m", *minute(6), 15.0),
    ]
    # ...unless a hole lies between that earlier real candle and start_ms
    hole = [(ms("2026-02-15T10:01:30"), ms("2026-02-15T10:01:40"))]
    got = fill_forward(real, "1m", ms("2026-02-15T10:02:30"), ms(M.format(6)), ms(M.format(6)), hole)
    assert got.to_dicts() == [r5, flat("BTC", "1m", *minute(6), 15.0)]


def test_fill_calendar_months() -> None:
    real = candles(make_trades(("2025-12-15T00:00:00", "ETH", 3000.0, 1.0)), "1M")
    got = fill_forward(real, "1M", ms("2025-12-01T00:00:00"), ms("2026-06-01T00:00:00"),
                       ms("2026-03-01T00:00:00"), [])
    assert got.to_dicts() == [
        *real.to_dicts(),
        flat("ETH", "1M", "2026-01-01T00:00:00", "2026-01-31T23:59:59.999", 3000.0),
        flat("ETH", "1M", "2026-02-01T00:00:00", "2026-02-28T23:59:59.999", 3000.0),
        flat("ETH", "1M", "2026-03-01T00:00:00", "2026-03-31T23:59:59.999", 3000.0),
    ]


def test_fill_forward_takes_one_coin() -> None:
    two = candles(make_trades(("2026-02-15T10:00:00", "A", 1.0, 1.0), ("2026-02-15T10:00:00", "B", 1.0, 1.0)),
                  "1m")
    with pytest.raises(ValueError, match="one coin"):
        fill_forward(two, "1m", 0, 1, 1, [])


# ------------------------------------------- property: batches, merge, DuckDB
PROPERTY_INTERVALS = ("1m", "5m", "1h", "1d", "1w", "1M")
# DuckDB bucket width; origin 1970-01-01 keeps weeks on Thursday (time_bucket's default is a Monday)
SQL_WIDTH = {"1m": "INTERVAL 1 MINUTE", "5m": "INTERVAL 5 MINUTE", "1h": "INTERVAL 1 HOUR",
             "1d": "INTERVAL 1 DAY", "1w": "INTERVAL 7 DAY", "1M": "INTERVAL 1 MONTH"}
# bases near a month end and a Wednesday -> Thursday week boundary, so buckets split
BASES = [datetime(2026, 2, 28, 22, 30), datetime(2026, 2, 18, 22, 0), datetime(2025, 12, 31, 23, 0)]


def duckdb_candles(con: duckdb.DuckDBPyConnection, every: str) -> pl.DataFrame:
    """Candles of the registered `trades` (with arrival row number `rn`), computed in SQL."""
    width = SQL_WIDTH[every]
    epoch = "TIMESTAMP '1970-01-01'"
    bucket = "date_trunc('month', time)" if every == "1M" else f"time_bucket({width}, time, {epoch})"
    out = con.sql(f"""
        SELECT coin, '{every}' AS interval, epoch_ms(b) AS t, epoch_ms(b + {width}) - 1 AS close_t,
               arg_min(px, (time, rn)) AS o, max(px) AS h, min(px) AS l, arg_max(px, (time, rn)) AS c,
               sum(sz) AS v, sum(px * sz) AS vq, count(*) AS n, sum(px * sz) / sum(sz) AS vwap,
               epoch_us(min(time)) AS t_first, epoch_us(max(time)) AS t_last, false AS filled
        FROM (SELECT *, {bucket} AS b FROM trades)
        GROUP BY coin, b ORDER BY coin, t
    """).pl()
    return out.rename({"close_t": "T"}).select(pl.col(k).cast(v) for k, v in CANDLE_SCHEMA.items())


def assert_same(left: pl.DataFrame, right: pl.DataFrame) -> None:
    assert_frame_equal(left, right, rel_tol=1e-9, abs_tol=1e-12)


trade_rows = st.lists(
    st.tuples(
        st.sampled_from(["BTC", "@107"]),
        # seconds from the base: mostly a few values, so equal times often straddle batches
        st.sampled_from([0, 1, 59, 60, 1799, 1800, 3600, 5400]) | st.integers(0, 4 * 3600),
        st.sampled_from([0, 0, 1, 999_999]),  # microseconds: equal times are common
        st.sampled_from([0.5, 1.0, 1.25, 2.0, 99.5, 100.0]),  # px
        st.sampled_from([0.25, 0.5, 1.0, 3.0]),  # sz
        st.sampled_from([0, 0, 0, 5, 120, 7200]),  # arrival delay, s: a late trade when large
    ),
    max_size=40,
)


@settings(max_examples=100, deadline=None)
@given(rows=trade_rows, base=st.sampled_from(BASES), cuts=st.lists(st.integers(0, 40), max_size=6))
def test_merged_batches_equal_one_pass_and_duckdb(
    rows: list[tuple[str, int, int, float, float, int]], base: datetime, cuts: list[int]
) -> None:
    # arrival order: by time plus delay, so delayed trades arrive after later ones
    arrived = sorted(enumerate(rows), key=lambda r: (r[1][1] + r[1][5], r[0]))
    trades = pl.DataFrame(
        [(base + timedelta(seconds=r[1], microseconds=r[2]), r[0], r[3], r[4]) for _, r in arrived],
        schema={"time": pl.Datetime("us"), "coin": pl.String, "px": pl.Float64, "sz": pl.Float64},
        orient="row",
    )
    bounds = [0, *sorted(min(c, len(trades)) for c in cuts), len(trades)]  # repeats give empty batches
    batches = [trades[a:b] for a, b in zip(bounds, bounds[1:], strict=False)]
    con = duckdb.connect()
    try:
        con.register("trades", trades.with_row_index("rn"))
        for every in PROPERTY_INTERVALS:
            one_pass = candles(trades, every)
            merged = reduce(merge, (candles(b, every) for b in batches), empty_candles())
            assert_same(merged, one_pass)
            assert_same(one_pass, duckdb_candles(con, every))
        # every interval in one pass (the lanes' call), in the order asked
        backwards = PROPERTY_INTERVALS[::-1]
        assert_same(candles_multi(trades, backwards), pl.concat([duckdb_candles(con, e) for e in backwards]))
    finally:
        con.close()


# ------------------------------------------------------------ real node fills
def test_real_fills_sample() -> None:
    path = SAMPLES / "node_fills_by_block.jsonl"
    if not path.is_file():
        pytest.skip("../shared/samples is not present")
    data = path.read_bytes()
    got = candles(trades_from_fills(parse("fills", "by_block", data).frame), "1m")

    # cash:NVDA, block 923950857 (line 1), events 6-13: four trades at 1773532799991 ms
    # (2026-03-14T23:59:59.991), taker fills (crossed) in this order:
    #   179.59 x 0.278, 179.59 x 0.278, 179.58 x 0.278, 179.58 x 0.23
    # all at the same time, so row order picks o = 179.59 and c = 179.58;
    # v = 1.064, vq = 2 * 49.92602 + 49.92324 + 41.3034 = 191.07868
    nvda = got.filter(pl.col("coin") == "cash:NVDA")
    assert nvda.select("coin", "interval", "t", "T", "o", "h", "l", "c", "n", "t_first", "t_last",
                       "filled").rows() == [
        ("cash:NVDA", "1m", 1773532740000, 1773532799999, 179.59, 179.59, 179.58, 179.58, 4,
         1773532799991000, 1773532799991000, False)
    ]
    assert nvda.select("v", "vq", "vwap").row(0) == pytest.approx((1.064, 191.07868, 191.07868 / 1.064))

    # AAVE, block 923950863 (line 7) events 0-1: 111.09 x 0.58 at 1773532801071 ms, and
    # block 923950865 (line 9) events 6-7: 111.1 x 6.02 at 1773532801283 ms (2026-03-15T00:00:01)
    # v = 6.6, vq = 64.4322 + 668.822 = 733.2542
    aave = got.filter(pl.col("coin") == "AAVE")
    assert aave.select("t", "T", "o", "h", "l", "c", "n", "t_first", "t_last").rows() == [
        (1773532800000, 1773532859999, 111.09, 111.1, 111.09, 111.1, 2, 1773532801071000, 1773532801283000)
    ]
    assert aave.select("v", "vq", "vwap").row(0) == pytest.approx((6.6, 733.2542, 733.2542 / 6.6))

    # the raw lines agree: every taker fill of these coins, read with orjson
    taker = [f for line in data.splitlines() for _, f in orjson.loads(line)["events"]
             if f["coin"] in ("cash:NVDA", "AAVE") and f["crossed"]]
    assert [(f["coin"], f["px"], f["sz"], f["time"]) for f in taker] == [
        ("cash:NVDA", "179.59", "0.278", 1773532799991),
        ("cash:NVDA", "179.59", "0.278", 1773532799991),
        ("cash:NVDA", "179.58", "0.278", 1773532799991),
        ("cash:NVDA", "179.58", "0.23", 1773532799991),
        ("AAVE", "111.09", "0.58", 1773532801071),
        ("AAVE", "111.1", "6.02", 1773532801283),
    ]
