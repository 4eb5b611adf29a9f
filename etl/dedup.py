"""Identity keys: a row read again (a replaced or rewritten file, two modes or two variants
over the same hour) is dropped when the same event is stored already.

Only rows of files being read again are checked (`file_cursors.recheck`), so the hot path
never pays for it. The check looks at `history.<table>` (DuckDB and the lake), limited to
the batch's time range, so pruned hours count too.
"""

from __future__ import annotations

import logging

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
