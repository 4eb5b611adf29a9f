"""Identity keys: a row read again (a replaced or rewritten file, two modes or two variants
over the same hour) is dropped when the same event is stored already.

Only rows of files being read again are checked (`file_cursors.recheck`), so the hot path
never pays for it. The check looks at `history.<table>` (DuckDB and the lake), limited to
the batch's time range, so pruned hours count too.
"""

from __future__ import annotations

import logging
from datetime import datetime

import duckdb
import polars as pl

log = logging.getLogger("nodetap.dedup")

# table -> the columns that identify one event
KEYS: dict[str, tuple[str, ...]] = {
    "orders": ("user", "oid", "status", "time"),  # one status of one order at one time
    "fills": ("tid", "user", "_hash", "_oid"),  # (tid, user); (hash, oid, user) when tid is 0
    "trades": ("tid",),
}


def _keyed(table: str, frame: pl.DataFrame) -> pl.DataFrame:
    if table != "fills":
        return frame
    zero = pl.col("tid") == 0
    return frame.with_columns(pl.when(zero).then(pl.col("hash")).alias("_hash"),
                              pl.when(zero).then(pl.col("oid")).alias("_oid"))


def _source(con: duckdb.DuckDBPyConnection, table: str) -> str:
    views = con.execute("SELECT count(*) FROM duckdb_views() WHERE schema_name = 'history' "
                        "AND view_name = ?", [table]).fetchall()
    return f"history.{table}" if views[0][0] else f"main.{table}"


def drop_stored(con: duckdb.DuckDBPyConnection, table: str, frame: pl.DataFrame) -> pl.DataFrame:
    """`frame` without the rows whose identity key is stored already, in its order."""
    if not frame.height or frame["time"].null_count() == frame.height:
        return frame
    keys = KEYS[table]
    lo, hi = frame["time"].min(), frame["time"].max()
    cols = ", ".join(
        {"_hash": "CASE WHEN tid = 0 THEN hash END AS _hash",
         "_oid": "CASE WHEN tid = 0 THEN oid END AS _oid"}.get(k, f'"{k}"') for k in keys)
    stored = pl.from_arrow(con.sql(
        f"SELECT DISTINCT {cols} FROM {_source(con, table)} WHERE time BETWEEN $1 AND $2",
        params=[lo, hi]).to_arrow_table())
    assert isinstance(stored, pl.DataFrame)
    if not stored.height:
        return frame
    keyed = _keyed(table, frame)
    stored = stored.cast({k: keyed.schema[k] for k in keys})
    kept = keyed.join(stored, on=list(keys), how="anti", nulls_equal=True, maintain_order="left")
    dropped = frame.height - kept.height
    if dropped:
        log.info("event=dedup table=%s dropped=%d kept=%d", table, dropped, kept.height)
    return kept.select(frame.columns)


class Rewinds:
    """Events a node writes again, dropped. A node restarted from its last state checkpoint
    (one every 10,000 blocks) writes the blocks after it again, into the hour file open at the
    time (hyperliquid-dex/node#136): lines past a file's cursor can hold events stored already.

    Such lines go back in time, which finds them with no lookup on the hot path. A stream's
    events come in time order, so a unit's rows later than the lane's watermark (its latest
    event time) are new. Rows at the watermark continue its block, or repeat it: they are checked
    against the keys of the rows stored at that time, which this keeps (one block's; for the
    first units after a start, until the watermark moves, the store is asked instead). Rows
    earlier than the watermark are checked against the store (`drop_stored`, over their own time
    range), and logged as a rewind."""

    def __init__(self, stream: str, kind: str, watermark: datetime | None, log_rewinds: bool = True) -> None:
        self.stream = stream
        self.log_rewinds = log_rewinds
        self.kind = kind
        self.keys = list(KEYS[kind])
        self.at = watermark  # the stream's watermark, whose stored rows `edge` holds
        self.known = False  # whether `edge` holds all of them
        self.edge: pl.DataFrame | None = None  # their keys (None: no row stored at `at`)

    def drop(self, con: duckdb.DuckDBPyConnection, table: str, frame: pl.DataFrame,
             watermark: datetime | None) -> pl.DataFrame:
        """`frame` (rows of `table`, in file order) without the rows `con`'s store holds already."""
        time = pl.col("time")
        if (table != self.kind or watermark is None or not frame.height
                or frame.select((time <= watermark).any()).item() is not True):
            return frame  # the common case: every row later than the watermark
        rows = frame.with_row_index("_i")
        older = rows.filter(time < watermark)
        kept: list[pl.DataFrame] = []
        if older.height:
            kept.append(drop_stored(con, table, older))
            if self.log_rewinds:
                log.warning("event=rewind stream=%s rows=%d stored_already=%d from=%s watermark=%s "
                            "(events written again, as a node restarted from its last checkpoint "
                            "writes them; those stored already are dropped)", self.stream, older.height,
                            older.height - kept[0].height, older["time"].min(), watermark)
        at = rows.filter(time == watermark)
        if at.height:
            if not (self.known and self.at == watermark):
                kept.append(drop_stored(con, table, at))
            elif self.edge is None:
                kept.append(at)
            else:
                kept.append(_keyed(table, at).join(self.edge, on=self.keys, how="anti", nulls_equal=True))
        if sum(k.height for k in kept) == older.height + at.height:
            return frame
        known = pl.concat([k.select("_i") for k in kept])["_i"].implode()
        return rows.filter((time > watermark) | time.is_null() | pl.col("_i").is_in(known)).drop("_i")

    def remember(self, stored: pl.DataFrame | None, watermark: datetime | None) -> None:
        """After a unit: its rows of the stream's table as stored, and the lane's watermark after
        it. Keeps the keys of the rows stored at the watermark."""
        if watermark is None:
            return
        new = None
        if stored is not None and stored.height:
            new = _keyed(self.kind, stored.filter(pl.col("time") == watermark)).select(self.keys)
            new = new if new.height else None
        if watermark != self.at:  # no row stored before is that late: these are all of them
            self.at, self.known, self.edge = watermark, True, new
        elif self.known and new is not None:
            self.edge = new if self.edge is None else pl.concat([self.edge, new])
