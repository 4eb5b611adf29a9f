"""Live `candle` messages for the intervals the store does not compute (setting candle_intervals).

A subscription to any other interval is fed here by the rule candleSnapshot derives it with on
read (etl.history): rolled up from the coarsest stored interval that tiles it (`3m` from `1m`,
`1w` from `1d`), else computed from the trades. So its messages equal those a stored interval
would give: one per candle a committed batch changed, the candle whole.

Each feed (coin, interval) holds the source rows of its current and previous candle, each under
its key: a source candle under its open time (the one with more trades is the newer state), a
trade under its tid. A row met twice, in the store when the feed is seeded and again in a batch
committed meanwhile, so counts once. A feed pushes nothing until it is seeded. A correction to
a candle older than the previous one (a trade later than a whole candle) is not pushed;
candleSnapshot has it.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import duckdb
import polars as pl

from api.wire import CandleSub
from etl.candles import CANDLE_SCHEMA, candles, open_time_ms
from etl.history import ARRIVAL_ORDER, arrived, open_time_of, roll_up, source_interval
from etl.pipeline import Processed
from etl.schema import CANDLE_DB_NAMES_BACK
from etl.store import fetch_pl

TRADE_COLUMNS = ("time", "px", "sz", "tid")


@dataclass
class _Feed:
    coin: str
    interval: str
    source: str | None  # the stored interval rolled up; None: the trades
    refs: int = 0  # subscriptions (and subscriptions being opened) that read it
    ready: bool = False  # seeded from the store: its candles are whole
    floor: int = 0  # open time of the oldest candle whose source rows are all held
    rows: dict[int, tuple[int, dict[str, Any]]] = field(default_factory=dict)  # key -> (its candle's t, row)
    arrivals: int = 0  # arrival order of trades (breaks ties of equal times, as the store does)

    def _slots(self, frame: pl.DataFrame) -> pl.DataFrame:
        at = pl.from_epoch("t", time_unit="ms") if self.source is not None else pl.col("time")
        return frame.with_columns(open_time_ms(at, self.interval).alias("_slot"))

    def take(self, frame: pl.DataFrame) -> set[int]:
        """Source rows (candles of `source`, or trades) into the feed; the open times of the
        candles they changed."""
        touched: set[int] = set()
        for row in self._slots(frame).iter_rows(named=True):
            slot = row.pop("_slot")
            if self.ready and slot < self.floor:
                continue
            if self.source is not None:
                old = self.rows.get(row["t"])
                if old is not None and old[1]["n"] >= row["n"]:
                    continue
                self.rows[row["t"]] = (slot, row)
            else:
                if row["tid"] in self.rows:
                    continue
                self.arrivals += 1
                self.rows[row["tid"]] = (slot, {**row, "arrival": self.arrivals})
            touched.add(slot)
        return touched

    def prune(self, floor: int = 0) -> None:
        """Keep the rows of the latest candle and the one before it (and none before `floor`)."""
        if self.rows:
            latest = max(slot for slot, _ in self.rows.values())
            floor = max(floor, open_time_of(latest - 1, self.interval))
        if floor > self.floor:
            self.floor = floor
            self.rows = {k: v for k, v in self.rows.items() if v[0] >= floor}

    def candles(self, slots: set[int]) -> pl.DataFrame:
        """The whole candles opening at `slots` (CANDLE_SCHEMA)."""
        out = []
        for slot in sorted(s for s in slots if s >= self.floor):
            members = [row for s, row in self.rows.values() if s == slot]
            if self.source is not None:
                out.append(roll_up(pl.DataFrame(members, schema=CANDLE_SCHEMA), self.interval))
                continue
            trades = (pl.DataFrame(members, schema_overrides={"time": pl.Datetime("us")})
                      .sort("time", "arrival").with_columns(pl.lit(self.coin).alias("coin")))
            out.append(candles(trades, self.interval))
        return pl.concat(out) if out else pl.DataFrame(schema=CANDLE_SCHEMA)


def _naive(ms: int) -> datetime:
    return datetime.fromtimestamp(ms / 1000, UTC).replace(tzinfo=None)


def _stored_rows(con: duckdb.DuckDBPyConnection, feed: _Feed) -> tuple[pl.DataFrame, int]:
    """The source rows of the feed's latest candle and the one before it, from the store, and
    the open time of the first of them."""
    if feed.source is not None:
        real = "coin = $1 AND interval = $2 AND NOT coalesce(filled, false)"
        ((latest,),) = con.execute(f"SELECT max(t) FROM history.candles WHERE {real}",
                                   [feed.coin, feed.source]).fetchall()
        if latest is None:
            return pl.DataFrame(schema=CANDLE_SCHEMA), 0
        start = open_time_of(open_time_of(int(latest), feed.interval) - 1, feed.interval)
        rows = fetch_pl(con, f"SELECT * FROM history.candles WHERE {real} AND t >= $3 ORDER BY t",
                        [feed.coin, feed.source, start]).rename(CANDLE_DB_NAMES_BACK)
        return rows.select(list(CANDLE_SCHEMA)), start
    ((last_time,),) = con.execute("SELECT max(time) FROM history.trades WHERE coin = $1",
                                  [feed.coin]).fetchall()
    if last_time is None:
        return pl.DataFrame(schema={"time": pl.Datetime("us"), "px": pl.Float64, "sz": pl.Float64,
                                    "tid": pl.Int64}), 0
    last = int(last_time.replace(tzinfo=UTC).timestamp() * 1000)
    start = open_time_of(open_time_of(last, feed.interval) - 1, feed.interval)
    rows = fetch_pl(con, f"SELECT time, px, sz, tid FROM ({arrived(con)}) WHERE coin = $1 AND time >= $2 "
                         f"ORDER BY time, {ARRIVAL_ORDER}", [feed.coin, _naive(start)])
    return rows, start


class LiveCandles:
    """The feeds of the candle subscriptions to intervals that are not stored."""

    def __init__(self, stored: tuple[str, ...]) -> None:
        self.stored = stored
        self._feeds: dict[tuple[str, str], _Feed] = {}
        self._lock = threading.Lock()  # the pipeline's lanes and the seeding threads share the feeds

    def derived(self, sub: CandleSub) -> bool:
        return sub.interval not in self.stored

    def hold(self, sub: CandleSub) -> bool:
        """Count one more reader of `sub`'s feed (made on first use); False: `sub`'s interval is
        stored and needs no feed. Pair with `release`."""
        if not self.derived(sub):
            return False
        with self._lock:
            key = (sub.coin, sub.interval)
            feed = self._feeds.get(key)
            if feed is None:
                source = source_interval(sub.interval, self.stored)
                feed = self._feeds[key] = _Feed(sub.coin, sub.interval, source)
            feed.refs += 1
        return True

    def release(self, sub: CandleSub) -> None:
        """One reader fewer; the feed goes with its last reader."""
        if not self.derived(sub):
            return
        with self._lock:
            key = (sub.coin, sub.interval)
            feed = self._feeds.get(key)
            if feed is not None:
                feed.refs -= 1
                if feed.refs <= 0:
                    del self._feeds[key]

    def seed(self, con: duckdb.DuckDBPyConnection, sub: CandleSub) -> None:
        """Load a held feed's current candles from the store (once); from then on it pushes."""
        with self._lock:
            feed = self._feeds.get((sub.coin, sub.interval))
            if feed is None or feed.ready:
                return
        rows, start = _stored_rows(con, feed)  # batches committed meanwhile reach the feed too
        with self._lock:
            feed.take(rows)
            feed.prune(start)
            feed.ready = True

    def update(self, processed: Processed) -> pl.DataFrame | None:
        """Take a committed batch's rows; the derived candles it changed (CANDLE_SCHEMA) of the
        feeds that push, or None."""
        trades, stored = processed.frames.get("trades"), processed.candles
        with self._lock:
            if not self._feeds:
                return None
            out = []
            for feed in self._feeds.values():
                if feed.source is not None:
                    if stored is None or stored.is_empty():
                        continue
                    rows = stored.filter((pl.col("coin") == feed.coin) & (pl.col("interval") == feed.source)
                                         & ~pl.col("filled").fill_null(False))
                else:
                    if trades is None or trades.is_empty():
                        continue
                    rows = trades.filter(pl.col("coin") == feed.coin).select(TRADE_COLUMNS)
                if rows.is_empty():
                    continue
                touched = feed.take(rows)
                feed.prune()
                if feed.ready and touched:
                    out.append(feed.candles(touched))
        return pl.concat(out) if out else None
