"""The Parquet lake: sealed hours of each table, and `history.*` views over lake + DuckDB.

Layout: `<lake>/<table>/date=YYYY-MM-DD/hour=HH/part-N.parquet` (zstd). Rows belong to
the hour of their `time`; candles to the hour of their close time (`t_close`, the
protocol's `T`), so an hour's candles are final when the hour is (etl/schema.py). An hour is sealed
once every stream feeding the table has passed its end by `seal_grace_s`. The
`lake_hours` table records, per table and hour, whether it is sealed, whether rows
arrived for it after sealing (`dirty`: it is sealed again) and whether its rows were
pruned from DuckDB (`retain_hours`) and how many parts it has (`parts`: files
`part-0` .. `part-<parts-1>` are recorded). The `history.<table>` views read each row
from exactly one side and read only recorded parts, so there is no seam and no duplicate
at any moment: a part is written under its final name first, and the transaction that
records it (and deletes the pruned rows, and adds the lake side to the view) makes it
visible. A crash in between leaves an unrecorded part that the views ignore and the next
seal overwrites.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

import duckdb

from etl.faults import fault_point
from etl.schema import SOURCES, TABLES, hour_sql
from etl.store import rollback, watermark

log = logging.getLogger("nodetap.lake")


def partition_dir(root: Path, table: str, hour: datetime) -> Path:
    return root / table / f"date={hour:%Y-%m-%d}" / f"hour={hour:%H}"


@dataclass
class SealReport:
    sealed: int = 0
    resealed: int = 0
    pruned_hours: int = 0
    rows_written: int = 0


class Lake:
    """Seals complete hours into Parquet and keeps the history views in step.

    Works on its own DuckDB cursor, so it can run beside the ingest thread."""

    def __init__(self, con: duckdb.DuckDBPyConnection, root: Path, *, grace_s: float = 120.0,
                 retain_hours: float | None = None) -> None:
        self.con = con
        self.root = root.resolve()
        self.grace = timedelta(seconds=grace_s)
        self.retain = timedelta(hours=retain_hours) if retain_hours else None
        self.root.mkdir(parents=True, exist_ok=True)
        self.con.execute("CREATE SCHEMA IF NOT EXISTS history")
        self._with_lake: set[str] = set()
        self.refresh_views()

    # ---------------------------------------------------------------- views
    def refresh_views(self) -> None:
        for table in TABLES:
            files = next((self.root / table).glob("date=*/hour=*/part-*.parquet"), None)
            self._create_view(table, files is not None)

    def _create_view(self, table: str, with_lake: bool) -> None:
        duck = (
            f"SELECT * FROM main.{table} d WHERE NOT EXISTS (SELECT 1 FROM main.lake_hours h "
            f"WHERE h.tbl = '{table}' AND h.hour = {hour_sql(table, 'd')} AND NOT h.dirty)"
        )
        sql = duck
        if with_lake:
            glob = str(self.root / table / "date=*" / "hour=*" / "part-*.parquet").replace("'", "''")
            # only recorded parts (number < parts) of hours whose rows DuckDB does not show
            lake = (
                f"SELECT * EXCLUDE (filename) FROM read_parquet('{glob}', hive_partitioning = false, "
                f"filename = true) l WHERE EXISTS (SELECT 1 FROM main.lake_hours h "
                f"WHERE h.tbl = '{table}' AND h.hour = {hour_sql(table, 'l')} "
                f"AND (NOT h.dirty OR h.pruned) AND h.parts > "
                f"CAST(regexp_extract(l.filename, 'part-([0-9]+)[.]parquet$', 1) AS INTEGER))"
            )
            sql = f"{lake} UNION ALL BY NAME {duck}"
            self._with_lake.add(table)
        self.con.execute(f"CREATE OR REPLACE VIEW history.{table} AS {sql}")

    # -------------------------------------------------------------- sealing
    def watermark(self, table: str) -> datetime | None:
        """The last event time of the streams feeding `table` (None: no data yet)."""
        return watermark(self.con, SOURCES[table])

    def seal(self, now_watermark: dict[str, datetime | None] | None = None) -> SealReport:
        """Seal every complete hour not sealed yet, re-seal dirty ones, prune past retention."""
        report = SealReport()
        for table in TABLES:
            wm = (now_watermark or {}).get(table) if now_watermark else self.watermark(table)
            if wm is None:
                continue
            complete_before = wm - self.grace
            todo = self.con.execute(
                f"""SELECT h, coalesce(l.pruned, false), coalesce(l.parts, 0), l.hour IS NOT NULL
                FROM (SELECT DISTINCT {hour_sql(table)} AS h FROM main.{table}) d
                LEFT JOIN lake_hours l ON l.tbl = ? AND l.hour = d.h
                WHERE d.h + INTERVAL 1 HOUR <= ? AND (l.hour IS NULL OR l.dirty)
                ORDER BY h""",
                [table, complete_before],
            ).fetchall()
            for hour, pruned, parts, known in todo:
                report.rows_written += self._seal_hour(table, hour, bool(pruned), int(parts))
                if known:
                    report.resealed += 1
                else:
                    report.sealed += 1
            if self.retain is not None:
                report.pruned_hours += self._prune(table, wm - self.retain)
        if report.sealed or report.resealed:
            log.info("event=lake_seal sealed=%d resealed=%d rows=%d pruned_hours=%d",
                     report.sealed, report.resealed, report.rows_written, report.pruned_hours)
        return report

    def _seal_hour(self, table: str, hour: datetime, pruned: bool, parts: int) -> int:
        in_hour = f"{hour_sql(table)} = $1"
        out = partition_dir(self.root, table, hour)
        out.mkdir(parents=True, exist_ok=True)
        # unpruned: DuckDB holds every row of the hour, so part-0 is rewritten whole
        # (idempotent); pruned: DuckDB holds only the late rows, written as a new part
        n = parts if pruned else 0
        final = out / f"part-{n}.parquet"
        tmp = out / f".part-{n}.parquet.tmp"
        sql_path = str(tmp).replace("'", "''")
        (count,) = self.con.execute(
            f"SELECT count(*) FROM main.{table} WHERE {in_hour}", [hour]).fetchone() or (0,)
        try:
            self.con.execute(
                # insertion order is arrival order, close to time order; sorting costs 5x
                f"COPY (SELECT * FROM main.{table} WHERE {in_hour}) "
                f"TO '{sql_path}' (FORMAT parquet, COMPRESSION zstd)",
                [hour],
            )
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        # unrecorded until the transaction below: the views do not read it yet (an unpruned
        # hour being re-sealed is dirty, and the views read it from DuckDB meanwhile)
        os.replace(tmp, final)
        fault_point("seal_after_rename")
        self.con.execute("BEGIN TRANSACTION")
        try:
            if pruned:
                self.con.execute(f"DELETE FROM main.{table} WHERE {in_hour}", [hour])
            self.con.execute(
                """INSERT INTO lake_hours VALUES (?, ?, ?, ?, false, ?, now()::TIMESTAMP)
                ON CONFLICT (tbl, hour) DO UPDATE SET rows = excluded.rows, parts = excluded.parts,
                    dirty = false, sealed_at = excluded.sealed_at""",
                [table, hour, count, n + 1, pruned],
            )
            if table not in self._with_lake:
                self._create_view(table, True)
            fault_point("seal_before_commit")
            self.con.execute("COMMIT")
        except BaseException:
            rollback(self.con)
            raise
        fault_point("seal_after_commit")
        if not pruned:  # parts of earlier, crashed attempts
            for stale in out.glob("part-*.parquet"):
                if stale != final:
                    stale.unlink(missing_ok=True)
        return int(count)

    def _prune(self, table: str, before: datetime) -> int:
        """Delete from DuckDB the rows of clean sealed hours older than `before`."""
        hours = [h for (h,) in self.con.execute(
            "SELECT hour FROM lake_hours WHERE tbl = ? AND NOT dirty AND NOT pruned "
            "AND hour + INTERVAL 1 HOUR <= ?", [table, before]).fetchall()]
        if not hours:
            return 0
        self.con.execute("BEGIN TRANSACTION")
        try:
            for h in hours:
                self.con.execute(f"DELETE FROM main.{table} WHERE {hour_sql(table)} = $1", [h])
                self.con.execute(
                    "UPDATE lake_hours SET pruned = true WHERE tbl = ? AND hour = ?", [table, h])
            fault_point("prune_before_commit")
            self.con.execute("COMMIT")
        except BaseException:
            rollback(self.con)
            raise
        return len(hours)

