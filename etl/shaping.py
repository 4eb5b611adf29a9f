"""What happens to a unit's rows between parsing and the store, as functions over frames.

A lane (etl/lanes.py) calls `shape` once per unit. It keeps the orders the rules select,
derives trades from fills (both users, even when a trade's two fills land in different
batches), computes the unit's candles, and finds the silences in event time that must stop
candles from being forward-filled. The store then only writes what comes out of here.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta

import polars as pl

from etl.candles import candles_multi
from etl.filters import RulesFile, apply_rules
from etl.units import Unit, event_times

# a maker fill whose taker has not been seen is remembered this long (event time), at most
# this many: a trade's two fills are written together, so this only spans batch boundaries
MAKER_MEMORY = timedelta(minutes=10)
MAKER_MEMORY_ROWS = 100_000


@dataclass
class Shaped:
    """A unit, ready to store and to publish."""

    rows: dict[str, pl.DataFrame]  # table -> new rows: orders | fills + trades | trades
    trade_users: pl.DataFrame | None  # (tid, maker): users of trades stored without them
    candles: pl.DataFrame | None  # this unit's candles, not yet merged with stored ones
    live_trades: pl.DataFrame | None  # trades to publish now, both users known (or waited for)
    first_time: datetime | None
    last_time: datetime | None
    stalls: list[tuple[datetime, datetime]]  # silences longer than stall_after_s, event time
    watermark_before: datetime | None  # the stream's last event time before this unit


@dataclass
class TradeMatcher:
    """Pairs trades with their maker fill across batches, for the store and the live feed.

    Store: a trade whose maker fill comes in a later batch is stored at once without its
    maker; the later batch yields `(tid, maker)` to complete it. Live feed: that trade is
    held until its maker arrives, or `hold_s` has passed, so that `users` carries both."""

    hold_s: float = 0.5
    clock: Callable[[], float] = time.monotonic
    makers: pl.DataFrame = field(default_factory=lambda: pl.DataFrame(
        schema={"tid": pl.Int64, "maker": pl.String, "time": pl.Datetime("us")}))
    held: pl.DataFrame | None = None  # trades published later, with `_held_at`

    def seed(self, makers: pl.DataFrame) -> None:
        """Maker fills stored before a restart whose trade has no maker yet (tid, maker, time)."""
        self.makers = pl.concat([self.makers, makers.select(
            pl.col(name).cast(dtype) for name, dtype in self.makers.schema.items())])

    def match(self, fills: pl.DataFrame) -> tuple[pl.DataFrame, pl.DataFrame | None, pl.DataFrame]:
        """(trades to store, (tid, maker) completing stored trades, trades to publish now)."""
        trades = trades_from_fills(fills)
        fills = fills.filter(pl.col("tid") != 0)
        makers = fills.filter(~pl.col("crossed")).select("tid", pl.col("user").alias("maker"), "time")
        # makers of earlier batches complete this batch's trades
        if self.makers.height and trades.height:
            trades = _with_maker(trades, self.makers)
        # this batch's makers whose taker came earlier (or never came): complete stored trades
        orphans = makers.join(trades.select("tid"), on="tid", how="anti").unique("tid", keep="first")
        completes = orphans.select("tid", "maker") if orphans.height else None
        live = trades.filter(pl.col("buyer").is_not_null() & pl.col("seller").is_not_null())
        waiting = trades.filter(pl.col("buyer").is_null() | pl.col("seller").is_null())
        now = self.clock()
        if self.held is not None and self.held.height:
            done = _with_maker(self.held, orphans) if orphans.height else self.held
            ready = done.filter((pl.col("buyer").is_not_null() & pl.col("seller").is_not_null())
                                | (pl.col("_held_at") <= now - self.hold_s))
            self.held = done.join(ready.select("tid"), on="tid", how="anti")
            live = pl.concat([ready.drop("_held_at"), live])
        if waiting.height:
            waiting = waiting.with_columns(pl.lit(now).alias("_held_at"))
            self.held = waiting if self.held is None else pl.concat([self.held, waiting])
        # remember makers without a taker yet; forget the old ones
        keep = pl.concat([self.makers, orphans.select(self.makers.columns)])
        if keep.height:
            newest = keep["time"].max()
            keep = keep.filter(pl.col("time") >= newest - MAKER_MEMORY).tail(MAKER_MEMORY_ROWS)  # type: ignore[operator]
        self.makers = keep.join(trades.select("tid"), on="tid", how="anti")
        return trades, completes, live

    def release(self) -> pl.DataFrame | None:
        """Held trades that waited `hold_s` for their maker: publish them as they are."""
        if self.held is None or not self.held.height:
            return None
        ready = self.held.filter(pl.col("_held_at") <= self.clock() - self.hold_s)
        if not ready.height:
            return None
        self.held = self.held.filter(pl.col("_held_at") > self.clock() - self.hold_s)
        return ready.drop("_held_at")


def _with_maker(trades: pl.DataFrame, makers: pl.DataFrame) -> pl.DataFrame:
    """Trades with a missing buyer or seller filled in from `makers` (tid, maker)."""
    m = makers.select("tid", "maker").unique("tid", keep="first")
    t = trades.join(m, on="tid", how="left")
    return t.with_columns(
        pl.col("buyer").fill_null(pl.when(pl.col("side") == "A").then(pl.col("maker"))),
        pl.col("seller").fill_null(pl.when(pl.col("side") == "B").then(pl.col("maker"))),
    ).drop("maker")


def find_silences(times: pl.Series, stall_after_s: float) -> list[tuple[datetime, datetime]]:
    """(before, after) pairs of consecutive event times further apart than `stall_after_s`."""
    t = times.drop_nulls().sort()
    if t.len() < 2:
        return []
    frame = pl.DataFrame({"to": t}).with_columns(pl.col("to").shift(1).alias("from"))
    far = frame.filter((pl.col("to") - pl.col("from")) > timedelta(seconds=stall_after_s))
    return list(zip(far["from"].to_list(), far["to"].to_list(), strict=True))


def shape(
    unit: Unit,
    *,
    rules: RulesFile | None,
    intervals: tuple[str, ...],
    stall_after_s: float,
    watermark: datetime | None,
    matcher: TradeMatcher | None = None,
    dedup: Callable[[str, pl.DataFrame], pl.DataFrame] | None = None,
) -> Shaped:
    """Filter and derive a unit's rows; `watermark` is the stream's last event time so far.
    `dedup(table, rows)` drops rows stored before, for a file read again."""
    rows: dict[str, pl.DataFrame] = {}
    completes = live = candle_rows = None
    first: datetime | None = None
    last: datetime | None = None
    stalls: list[tuple[datetime, datetime]] = []
    times = event_times(unit)
    if times is not None and times.drop_nulls().len():
        # the watermark counts every event, kept by the rules or not
        first, last = times.min(), times.max()  # type: ignore[assignment]
        stalls = find_silences(times, stall_after_s)
        silent = timedelta(seconds=stall_after_s)
        if watermark is not None and first is not None and first - watermark > silent:
            stalls.append((watermark, first))
    if unit.frame is not None:
        frame = unit.frame.drop("_offset")
        kind = unit.stream.kind
        if dedup is not None:
            frame = dedup(kind, frame)
        if kind == "orders" and rules is not None:
            if unit.counts is None:  # not filtered while parsing
                frame, counts = apply_rules(frame, rules.rules)
                rules.record(counts, rules.rules)
            else:
                rules.record(unit.counts, unit.counted_with)
        rows[kind] = frame
        if kind == "fills":
            matcher = matcher or TradeMatcher()
            rows["trades"], completes, live = matcher.match(frame)
        elif kind == "trades":
            # older nodes write a trade once per side (same hash, same orders): keep one
            rows["trades"] = live = frame.unique("tid", keep="first", maintain_order=True)
        if dedup is not None and "trades" in rows:
            kept = dedup("trades", rows["trades"])
            if live is not None and kept.height < rows["trades"].height:  # not those stored before
                gone = rows["trades"].join(kept.select("tid"), on="tid", how="anti").select("tid")
                live = live.join(gone, on="tid", how="anti")
            rows["trades"] = kept
        if "trades" in rows and intervals:
            candle_rows = candles_multi(rows["trades"], intervals)
    return Shaped(rows, completes, candle_rows, live, first, last, stalls, watermark)


def trades_from_fills(fills: pl.DataFrame) -> pl.DataFrame:
    """One trade per `tid`: the taker's fill gives the side; both fills give the users.

    A maker fill whose taker is not in this frame yields nothing here: the store
    completes the trade's users when the other fill arrives (Store._complete_trades).
    Fills with `tid` 0 are not trades (e.g. "Spot Dust Conversion": one-sided, all
    sharing tid 0) and are left out."""
    fills = fills.filter(pl.col("tid") != 0)
    taker = fills.filter(pl.col("crossed"))
    maker = fills.filter(~pl.col("crossed")).select("tid", pl.col("user").alias("maker"))
    maker = maker.unique("tid", keep="first")
    t = taker.join(maker, on="tid", how="left")
    buyer_is_taker = pl.col("side") == "B"
    return t.select(
        "time",
        "coin",
        "side",
        "px",
        "sz",
        "hash",
        "tid",
        pl.when(buyer_is_taker).then(pl.col("user")).otherwise(pl.col("maker")).alias("buyer"),
        pl.when(buyer_is_taker).then(pl.col("maker")).otherwise(pl.col("user")).alias("seller"),
        "block_number",
    ).unique("tid", keep="first", maintain_order=True)
