"""The Parquet lake: sealed hours of each table, and `history.*` views over lake + DuckDB.

Layout: `<lake>/<table>/date=YYYY-MM-DD/hour=HH/part-N.parquet` (zstd). Rows belong to
the hour of their `time`; candles to the hour of their close time (`t_close`, the
protocol's `T`), so an hour's candles are final when the hour is (etl/schema.py). An hour is sealed
once every stream feeding the table has passed its end by `seal_grace_s`. The
`lake_hours` table records, per table and hour, whether it is sealed, whether rows
arrived for it after sealing (`dirty`: it is sealed again) and whether its rows were
pruned from DuckDB (`retain_hours`) and which parts it has (files `part-<first_part>` ..
`part-<parts-1>` are recorded). The `history.<table>` views read each row
from exactly one side and read only recorded parts, so there is no seam and no duplicate
at any moment: a part is written under its final name first, and the transaction that
records it (and deletes the pruned rows) makes it visible. A crash in between leaves an
unrecorded part that the views ignore and the next seal overwrites. The views read whatever
parts exist when queried: a lake with none (new, or emptied by hand) adds no rows.

Late rows for a pruned hour become a new part; late trades for a pruned hour's candles merge
with the lake's candle (etl/store.py `stored_candles`), and its parts are merged into one new
part (`first_part` moves to it): a candle is one row. An hour is sealed in one transaction
that reads its rows and counts one more in `marks` of its `lake_hours` row; a unit committing
rows for it meanwhile counts its mark there too, so one of the two conflicts and is tried again
(etl/writers.py says how a first seal is kept safe the same way).
"""

from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

import duckdb
import polars as pl

from etl.candles import KEY, collapse
from etl.faults import fault_point
from etl.schema import CANDLE_DB_NAMES, CANDLE_DB_NAMES_BACK, CANDLE_DB_SCHEMA, SOURCES, TABLES, hour_sql
from etl.store import fetch_pl, rollback, watermark
from etl.writers import Writers

log = logging.getLogger("nodetap.lake")

CLAIM_WAIT_S = 30.0  # for the write transactions open when hours are recorded for sealing
SWEEP_AFTER = timedelta(minutes=10)  # merged candle parts are deleted this long after


def partition_dir(root: Path, table: str, hour: datetime) -> Path:
    return root / table / f"date={hour:%Y-%m-%d}" / f"hour={hour:%H}"


def create_views(con: duckdb.DuckDBPyConnection, root: Path) -> None:
    """The `history.*` views over DuckDB and the lake at `root` (made again on every start)."""
    con.execute("CREATE SCHEMA IF NOT EXISTS history")
    for table in TABLES:
        _create_view(con, root, table)


def ensure_views(con: duckdb.DuckDBPyConnection, root: Path) -> None:
    """The `history.*` views, where nothing made them yet (a database only `backfill` wrote):
    over the lake the database recorded (etl/identity.py), else `root`. Claims no lake."""
    (have,), = con.execute("SELECT count(*) FROM duckdb_views() WHERE schema_name = 'history'").fetchall()
    if have < len(TABLES):
        recorded = con.execute("SELECT value FROM meta WHERE key = 'lake_dir'").fetchall()
        create_views(con, Path(recorded[0][0]) if recorded else root.resolve())


def views_root(con: duckdb.DuckDBPyConnection) -> Path | None:
    """The lake the `history.*` views read (None: no views). A view holds the lake's path as it
    was when the views were made: a database moved or copied since reads the old one until the
    next `ingest`/`serve` makes them again."""
    rows = con.execute("SELECT sql FROM duckdb_views() WHERE schema_name = 'history' "
                       "AND view_name = 'trades'").fetchall()
    found = re.search(r"read_parquet\('((?:[^']|'')*)/trades/date=", rows[0][0]) if rows else None
    return Path(found.group(1).replace("''", "'")) if found else None


def _create_view(con: duckdb.DuckDBPyConnection, root: Path, table: str) -> None:
    con.execute(f"CREATE OR REPLACE VIEW history.{table} AS {history_sql(con, root, table)}")


# the arrival order of `history_sql(..., arrival=True)`'s rows: the lake's (earlier) before
# DuckDB's, parts in the order sealed, rows in the order stored (DuckDB's rowid; the sealer
# copies an hour's rows in that order)
ARRIVAL = ("_src", "_part", "_row")


def history_sql(con: duckdb.DuckDBPyConnection, root: Path, table: str, arrival: bool = False) -> str:
    """What `history.<table>` reads: DuckDB's rows of hours the lake does not hold, and the
    lake's recorded parts of the others. The lake side reads whatever parts exist when queried:
    none at all (a new lake, or every partition deleted by hand) is no rows, not an error.
    `arrival`: with the columns `ARRIVAL`, which sort rows of one time in the order they arrived
    (as the stored candles take them: `candles`' open and close of one millisecond)."""
    seq = ", 1 AS _src, 0 AS _part, rowid AS _row" if arrival else ""
    duck = (
        f"SELECT *{seq} FROM main.{table} d WHERE NOT EXISTS (SELECT 1 FROM main.lake_hours h "
        f"WHERE h.tbl = '{table}' AND h.hour = {hour_sql(table, 'd')} AND NOT h.dirty)"
    )
    glob = str(root / table / "date=*" / "hour=*" / "part-*.parquet").replace("'", "''")
    # a late trade's candle in DuckDB (a pruned, dirty hour) holds the lake's one merged
    # in: it stands for it. An anti join with those few (a scan of every candle: 1.1x the time)
    merged = ("" if table != "candles" else
              " ANTI JOIN (SELECT d.coin, d.interval, d.t FROM main.candles d SEMI JOIN "
              "main.lake_hours h ON h.tbl = 'candles' AND h.pruned AND h.dirty AND h.hour = "
              f"{hour_sql(table, 'd')}) late ON l.coin = late.coin AND l.interval = late.interval "
              "AND l.t = late.t")
    # read_parquet without a file has one column, `empty`: the table's own columns, typed,
    # come from an empty select of DuckDB's table, and only those are kept
    columns = ", ".join(f'"{c}"' for (c,) in con.execute(
        "SELECT column_name FROM duckdb_columns() WHERE schema_name = 'main' AND table_name = ? "
        "ORDER BY column_index", [table]).fetchall())
    row = ", NULL::BIGINT AS file_row_number" if arrival else ""
    files = (f"(SELECT *, NULL::VARCHAR AS filename{row} FROM main.{table} LIMIT 0) UNION ALL BY NAME "
             f"SELECT * FROM read_parquet('{glob}', hive_partitioning = false, filename = true, "
             f"allow_empty = true{', file_row_number = true' if arrival else ''})")
    # only recorded parts (first_part <= number < parts) of hours whose rows DuckDB
    # does not show
    lake = (
        f"SELECT {columns}{', 0 AS _src, part AS _part, file_row_number AS _row' if arrival else ''} "
        f"FROM (SELECT *, CAST(regexp_extract(filename, "
        f"'part-([0-9]+)[.]parquet$', 1) AS INTEGER) AS part FROM ({files})) l{merged} WHERE EXISTS "
        f"(SELECT 1 FROM main.lake_hours h WHERE h.tbl = '{table}' AND h.hour = {hour_sql(table, 'l')} "
        f"AND (NOT h.dirty OR h.pruned) AND l.part >= h.first_part AND l.part < h.parts)"
    )
    return f"{lake} UNION ALL BY NAME {duck}"


@dataclass
class SealReport:
    sealed: int = 0
    resealed: int = 0
    pruned_hours: int = 0
    rows_written: int = 0


class Lake:
    """Seals complete hours into Parquet and keeps the history views in step.

    Works on its own DuckDB cursor, so it can run beside the ingest thread; `writers` are the
    store's write transactions (None: nothing writes beside it)."""

    def __init__(self, con: duckdb.DuckDBPyConnection, root: Path, *, grace_s: float = 120.0,
                 retain_hours: float | None = None, writers: Writers | None = None) -> None:
        self.con = con
        self.root = root.resolve()
        self.grace = timedelta(seconds=grace_s)
        self.retain = timedelta(hours=retain_hours) if retain_hours else None
        self.writers = writers
        self.root.mkdir(parents=True, exist_ok=True)
        self.refresh_views()

    # ---------------------------------------------------------------- views
    def refresh_views(self) -> None:
        create_views(self.con, self.root)

    # -------------------------------------------------------------- sealing
    def watermark(self, table: str) -> datetime | None:
        """The last event time of the streams feeding `table` (None: no data yet)."""
        return watermark(self.con, SOURCES[table])

    def seal(self, now_watermark: dict[str, datetime | None] | None = None,
             grace_s: float | None = None) -> SealReport:
        """Seal every complete hour not sealed yet, re-seal dirty ones, merge the candle parts
        of pruned hours, prune past retention. An hour whose seal conflicts with a unit
        committing rows for it stays dirty, for the next round. `grace_s` overrides the
        lake's grace (`ingest --once` seals with none: nothing more arrives in that run)."""
        report = SealReport()
        grace = self.grace if grace_s is None else timedelta(seconds=grace_s)
        todo: list[tuple[str, datetime, bool, int, int, bool]] = []
        marks: dict[str, datetime] = {}
        for table in TABLES:
            wm = (now_watermark or {}).get(table) if now_watermark else self.watermark(table)
            if wm is None:
                continue
            marks[table] = wm
            todo += [(table, *row) for row in self.con.execute(
                f"""SELECT h, coalesce(l.pruned, false), coalesce(l.parts, 0), coalesce(l.first_part, 0),
                       l.sealed_at IS NOT NULL
                FROM (SELECT DISTINCT {hour_sql(table)} AS h FROM main.{table}) d
                LEFT JOIN lake_hours l ON l.tbl = ? AND l.hour = d.h
                WHERE d.h + INTERVAL 1 HOUR <= ? AND (l.hour IS NULL OR l.dirty)
                ORDER BY h""",
                [table, wm - grace],
            ).fetchall()]
        if "candles" in marks:  # candle parts left apart by versions before they were merged
            todo += [("candles", *row) for row in self.con.execute(
                """SELECT hour, true, parts, first_part, true FROM lake_hours
                WHERE tbl = 'candles' AND pruned AND NOT dirty AND parts - first_part > 1""").fetchall()]
        if not self._claim([(name, hour) for name, hour, *_, sealed in todo if not sealed]):
            todo = [job for job in todo if job[-1]]
        for name, hour, pruned, parts, first, sealed in todo:
            try:
                report.rows_written += self._seal_hour(name, hour, bool(pruned), int(parts), int(first))
            except duckdb.TransactionException as err:  # a unit wrote rows for it meanwhile
                log.info("event=lake_seal_conflict table=%s hour=%s error=%r", name, hour, str(err))
                continue
            if sealed:
                report.resealed += 1
            else:
                report.sealed += 1
        for name, wm in marks.items():
            if self.retain is not None:
                report.pruned_hours += self._prune(name, wm - self.retain)
        self._sweep()
        if report.sealed or report.resealed:
            log.info("event=lake_seal sealed=%d resealed=%d rows=%d pruned_hours=%d",
                     report.sealed, report.resealed, report.rows_written, report.pruned_hours)
        return report

    def _claim(self, hours: list[tuple[str, datetime]]) -> bool:
        """Record hours about to be sealed for the first time (dirty, no parts, not sealed),
        then wait for the write transactions begun before the record: every unit after it
        marks them (etl/writers.py). False when that took longer than CLAIM_WAIT_S."""
        if not hours:
            return True
        self.con.execute("BEGIN TRANSACTION")
        try:
            self.con.executemany(
                "INSERT INTO lake_hours (tbl, hour, rows, parts, first_part, dirty, pruned, sealed_at) "
                "VALUES (?, ?, 0, 0, 0, true, false, NULL) ON CONFLICT (tbl, hour) DO NOTHING", hours)
            self.con.execute("COMMIT")
        except BaseException:
            rollback(self.con)
            raise
        if self.writers is not None and not self.writers.wait_older(CLAIM_WAIT_S):
            log.warning("event=lake_seal_wait_timeout hours=%d seconds=%s (a write transaction stayed "
                        "open; they are sealed next round)", len(hours), CLAIM_WAIT_S)
            return False
        return True

    def _seal_hour(self, table: str, hour: datetime, pruned: bool, parts: int, first: int) -> int:
        in_hour = f"{hour_sql(table)} = $1"
        out = partition_dir(self.root, table, hour)
        out.mkdir(parents=True, exist_ok=True)
        # unpruned: DuckDB holds every row of the hour, so part-0 is rewritten whole
        # (idempotent); pruned: DuckDB holds only the late rows, written as a new part, or for
        # candles merged with the recorded parts into a new one
        n = parts if pruned else 0
        merging = pruned and table == "candles"
        final = out / f"part-{n}.parquet"
        tmp = out / f".part-{n}.parquet.tmp"
        sql_path = str(tmp).replace("'", "''")
        self.con.execute("BEGIN TRANSACTION")  # the rows read and the record written at once
        try:
            if merging:
                self.con.register("_merged", self._merged_candles(out, hour, first, parts).to_arrow())
                source, params = "SELECT * FROM _merged", []
            else:
                # insertion order is arrival order, close to time order; sorting costs 5x
                source, params = f"SELECT * FROM main.{table} WHERE {in_hour}", [hour]
            ((count,),) = self.con.execute(f"SELECT count(*) FROM ({source})", params).fetchall()
            self.con.execute(f"COPY ({source}) TO '{sql_path}' (FORMAT parquet, COMPRESSION zstd)", params)
            # unrecorded until this transaction commits: the views do not read it yet (an
            # unpruned hour being re-sealed is dirty, and the views read it from DuckDB meanwhile)
            os.replace(tmp, final)
            _fsync(final)  # on disk before the transaction that may delete its rows from DuckDB
            fault_point("seal_after_rename")
            if pruned:
                self.con.execute(f"DELETE FROM main.{table} WHERE {in_hour}", [hour])
            # last: counting `marks` conflicts with a unit that marked the hour since this began
            # rows in the parts read: a pruned hour's new part adds to those before it
            self.con.execute(
                f"UPDATE lake_hours SET rows = {'rows + ' if pruned and not merging else ''}?, parts = ?, "
                "first_part = ?, dirty = false, marks = marks + 1, sealed_at = now()::TIMESTAMP "
                "WHERE tbl = ? AND hour = ?",
                [count, n + 1, n if merging else first, table, hour])
            fault_point("seal_before_commit")
            self.con.execute("COMMIT")
        except BaseException:
            rollback(self.con)
            tmp.unlink(missing_ok=True)
            raise
        finally:
            if merging:
                self.con.unregister("_merged")
        fault_point("seal_after_commit")
        if not pruned:  # parts of earlier, crashed attempts
            for stale in out.glob("part-*.parquet"):
                if stale != final:
                    stale.unlink(missing_ok=True)
        return int(count)

    def _merged_candles(self, out: Path, hour: datetime, first: int, parts: int) -> pl.DataFrame:
        """A pruned hour's candles as one part: the recorded parts' (a candle in two merged),
        each replaced by DuckDB's one of the same key (a late trade's, merged with it)."""
        names = list(CANDLE_DB_SCHEMA)
        files = [out / f"part-{i}.parquet" for i in range(first, parts)]
        lake = pl.concat([pl.read_parquet(f).select(names) for f in files]) if files else None
        duck = fetch_pl(self.con, f"SELECT * FROM main.candles WHERE {hour_sql('candles')} = $1", [hour])
        if lake is None or lake.is_empty():
            return duck
        lake = collapse(lake.rename(CANDLE_DB_NAMES_BACK)).rename(CANDLE_DB_NAMES).select(names)
        return pl.concat([lake.join(duck, on=KEY, how="anti"), duck.select(names)])

    def _prune(self, table: str, before: datetime) -> int:
        """Delete from DuckDB the rows of clean sealed hours older than `before`."""
        self.con.execute("BEGIN TRANSACTION")
        try:
            hours = [h for (h,) in self.con.execute(
                "SELECT hour FROM lake_hours WHERE tbl = ? AND NOT dirty AND NOT pruned "
                "AND hour + INTERVAL 1 HOUR <= ?", [table, before]).fetchall()]
            for h in hours:
                self.con.execute(f"DELETE FROM main.{table} WHERE {hour_sql(table)} = $1", [h])
            if hours:  # `marks` counted: a unit marking one of them meanwhile conflicts with this;
                # last, so that a unit marking one after it waits out only the COMMIT
                self.con.execute("UPDATE lake_hours SET pruned = true, marks = marks + 1 "
                                 "WHERE tbl = ? AND list_contains(?, hour)", [table, hours])
            fault_point("prune_before_commit")
            self.con.execute("COMMIT")
        except duckdb.TransactionException as err:
            rollback(self.con)
            log.info("event=lake_prune_conflict table=%s error=%r", table, str(err))
            return 0
        except BaseException:
            rollback(self.con)
            raise
        return len(hours)

    def _sweep(self) -> None:
        """Delete candle parts merged into a later one SWEEP_AFTER ago (a read planned before
        the merge may still open them). An hour's merged-away parts are the ones numbered
        below `first_part`, the last of them `first_part - 1`: one look per merged hour."""
        for hour, first in self.con.execute(
                "SELECT hour, first_part FROM lake_hours WHERE tbl = 'candles' AND first_part > 0 "
                "AND sealed_at < now()::TIMESTAMP - ?", [SWEEP_AFTER]).fetchall():
            out = partition_dir(self.root, "candles", hour)
            if (out / f"part-{first - 1}.parquet").exists():
                # in ascending order, part first-1 last: a crash midway leaves it for the next round
                numbers = sorted(int(p.stem.removeprefix("part-")) for p in out.glob("part-*.parquet"))
                for n in (n for n in numbers if n < first):
                    (out / f"part-{n}.parquet").unlink(missing_ok=True)


def _fsync(path: Path) -> None:
    """The file's bytes and its name in the directory, on disk."""
    for target, flags in ((path, os.O_RDONLY), (path.parent, os.O_RDONLY | os.O_DIRECTORY)):
        fd = os.open(target, flags)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
