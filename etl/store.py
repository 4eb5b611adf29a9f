"""The DuckDB live store: rows, cursors, gaps and rejects, one transaction per batch."""

from __future__ import annotations

import contextlib
import copy
import logging
import os
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import duckdb
import orjson
import polars as pl

from etl.candles import KEY, collapse, with_close_times
from etl.config import Settings
from etl.faults import fault_point
from etl.filecursors import FileCursor, FileCursors, migrate
from etl.nodefiles import FileIndex
from etl.schema import (
    CANDLE_DB_NAMES,
    CANDLE_DB_NAMES_BACK,
    CANDLE_DB_SCHEMA,
    DATA_DDL,
    META_DDL,
    ROW_TABLES,
    hour_sql,
    hours_of,
)
from etl.tail import REREAD, Cursor, Gap, Reject
from etl.writers import Writers

log = logging.getLogger("nodetap.store")

@dataclass
class BatchResult:
    """What one batch contributes to the store, beside its rows."""

    stream: str
    kind: str
    cursor: Cursor
    file: str
    lines: int
    nbytes: int
    rejects: list[Reject]
    gaps: list[Gap]
    est_line_bytes: float
    last_time: datetime | None
    first_time: datetime | None
    # silences longer than stall_after_s in event time, in this batch or since the last one
    stalls: list[tuple[datetime, datetime]] = field(default_factory=list)
    watermark_before: datetime | None = None  # the stream's last event time before this batch
    new_rejects: int = 0  # set by the commit: rejects not stored before (a file read again has some)


def default_db_threads() -> int:
    """DuckDB writer threads for this machine: one per four cores, at least one."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return max(1, cores // 4)


def utcnow() -> datetime:
    return datetime.now(UTC).replace(tzinfo=None)


class Store:
    """Owns the writer connection; readers take `reader()` cursors."""

    def __init__(self, path: Path, threads: int | None = None, checkpoint_threshold: str = "128MB",
                 stall_after_s: float = 60.0, fsync: str = "standard") -> None:
        self.stall_after_s = stall_after_s
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self.threads = threads
        self.checkpoint_threshold = checkpoint_threshold
        self.fsync = fsync  # DuckDB's fsync_mode (setting db_fsync)
        self.con = self._connect()
        for ddl in (*DATA_DDL, *META_DDL):
            self.con.execute(ddl)
        migrate(self.con)
        self.files = FileCursors(self.con)
        self.writers = Writers()  # shared with the thread views; the lake's sealer waits on it
        self._staged: int | None = None  # `stage`'s token, until `finish` or `abandon`
        self._in_transaction = False  # inside `commit`'s transaction
        self.fold()  # units a stop left in `cursor_log`: committed, so their cursors count
        # thread views (`for_thread`) share the database: a reopen closes and replaces them all
        self._root = self
        self._views: list[Store] = []
        self._reopen_lock = threading.Lock()
        self.generation = 0  # reopens of the database this connection belongs to
        self.on_reopen: list[Callable[[duckdb.DuckDBPyConnection], None]] = []
        # what frees DuckDB memory when a commit runs out of it (the API stops its reads)
        self.memory_relief: list[Callable[[], int]] = []

    def _connect(self) -> duckdb.DuckDBPyConnection:
        con = duckdb.connect(str(self.path))
        con.execute("SET TimeZone = 'UTC'")
        con.execute("SET enable_progress_bar = false")
        # parquet, json and icu are built in; never fetch or load an extension at run time
        con.execute("SET autoinstall_known_extensions = false")
        con.execute("SET autoload_known_extensions = false")
        # DuckDB's 16 MB default checkpoints every few batches and halves insert speed
        con.execute(f"SET checkpoint_threshold = '{self.checkpoint_threshold}'")
        if self.fsync != "standard":
            con.execute(f"SET fsync_mode = '{'none' if self.fsync == 'none' else 'standard'}'")
        if self.threads:
            con.execute(f"SET threads = {int(self.threads)}")
        return con

    def healthy(self) -> bool:
        """False once DuckDB has invalidated the database (e.g. a checkpoint on a full disk), or
        another thread reopened it under this view."""
        if self.generation != self._root.generation:
            return False
        try:
            self.con.execute("SELECT 1").fetchall()
        except duckdb.Error:
            return False
        return True

    def reconnect(self) -> None:
        """Open the database again after DuckDB invalidated it; what was committed is there
        (the WAL is replayed), the file cursors are read back from it. Every connection to it
        (this store's and its thread views') is closed first: DuckDB keeps an invalidated
        database open while any connection holds it."""
        root = self._root
        with root._reopen_lock:
            if self.generation == root.generation:  # nobody reopened it since this view's
                for view in (*root._views, root):
                    with contextlib.suppress(duckdb.Error):
                        view.con.close()
                root.con = root._connect()
                root.files.reload(root.con)  # the tailers hold this object
                root.generation += 1
                for hook in root.on_reopen:
                    hook(root.con)
                log.warning("event=db_reopened db=%s", self.path)
            if self is not root:
                self.con = root.con.cursor()
                self.con.execute("SET TimeZone = 'UTC'")
            self.generation = root.generation

    @classmethod
    def from_settings(cls, s: Settings) -> Store:
        return cls(s.db, threads=s.db_threads or default_db_threads(),
                   checkpoint_threshold=s.checkpoint_threshold, stall_after_s=s.stall_after_s,
                   fsync=s.db_fsync)

    def close(self) -> None:
        with contextlib.suppress(duckdb.Error):  # an invalidated database closes with an error
            self.con.close()

    def cursors(self) -> dict[str, Cursor]:
        """Each stream's resume point: its current file, at that file's stored cursor."""
        rows = self.con.execute('SELECT stream, file, inode, "offset" FROM cursors').fetchall()
        out = {}
        for s, f, i, o in rows:
            fc = self.files.get(s, f) if f else None
            out[s] = (Cursor(f, fc.inode, fc.offset, fc.fp) if fc is not None
                      else Cursor(f or "", int(i or 0), int(o or 0)))
        return out

    def start_cursor(self, stream: str, kind: str, cursor: Cursor) -> None:
        """A stream's first cursor, before anything of it is committed (no counts, no commit
        time): a run that stops before its first commit resumes there, not at a new start."""
        self.con.execute(
            """INSERT INTO cursors VALUES (?, ?, ?, ?, ?, 0, 0, 0, 0, 0, 0, NULL, NULL)
            ON CONFLICT (stream) DO NOTHING""", [stream, kind, cursor.file, cursor.inode, cursor.offset])

    def first_start(self, wall: float, start_from: str) -> tuple[float, str, bool]:
        """When streams were first looked for in this database (epoch seconds) and the
        `start_from` of that run, and whether that is now (recorded by this call)."""
        self.con.execute("INSERT OR IGNORE INTO meta VALUES ('first_start', ?)",
                         [orjson.dumps({"at": wall, "from": start_from}).decode()])
        (value,) = self.con.execute("SELECT value FROM meta WHERE key = 'first_start'").fetchone() or ("{}",)
        first = orjson.loads(value)
        at = float(first.get("at", wall))
        return at, str(first.get("from", start_from)), at == wall

    def file_index(self, stream: str, start_file: str) -> FileIndex:
        """The stored file cursors of one stream, for its tailer. Its floor (files before it
        are not this stream's business) is fixed on first use: the file it starts at."""
        key = f"floor:{stream}"
        row = next(iter(self.con.execute("SELECT value FROM meta WHERE key = ?", [key]).fetchall()), None)
        if row is None:
            self.con.execute("INSERT OR IGNORE INTO meta VALUES (?, ?)", [key, start_file])
        return _StreamIndex(self.files, stream, row[0] if row else start_file)

    def commit(self, batch: BatchResult, rows: dict[str, pl.DataFrame],
               candles: Callable[[], pl.DataFrame] | None = None,
               trade_users: pl.DataFrame | None = None) -> bool:
        """Rows, candles, rejects, gaps and the cursor that produced them, in one transaction.

        `candles()`, called inside it, gives the new state of every candle the batch touched,
        merged with the stored ones it reads there (`stored_candles`): another writer of the
        same candle committing meanwhile makes this commit conflict (and be tried again), not
        lose its trades. `trade_users` (tid, maker) completes trades stored without a maker.
        False when the unit was found stored already (then nothing is written)."""
        con = self.con
        if self.files.committed(batch.stream, batch.cursor, batch.lines):
            # a commit reported failed (disk full at the checkpoint after it) that reached the
            # WAL: it is in the database, so it is not stored a second time
            log.warning("event=commit_already_stored stream=%s file=%s offset=%d",
                        batch.stream, batch.cursor.file, batch.cursor.offset)
            return False
        token = self.writers.begin()
        try:
            con.execute("BEGIN TRANSACTION")
            self._in_transaction = True
            try:
                files = self._write_unit(batch, rows, candles() if candles else None, trade_users, None)
                fault_point("unit_before_commit")
                con.execute("COMMIT")
            except BaseException:
                rollback(con)
                raise
        finally:
            self._in_transaction = False
            self.writers.end(token)
        self.files.remember(files)
        return True

    def stage(self, batch: BatchResult, rows: dict[str, pl.DataFrame], seq: int
              ) -> dict[tuple[str, str], FileCursor] | None:
        """`commit` of a unit committed side by side with the one before it (etl/lanes.py), on
        this view's connection, up to its COMMIT: the transaction is left open for `finish` (or
        `abandon`). Its cursor goes to `cursor_log` as entry `seq`, not to `cursors` and
        `file_cursors`, which the unit before it may still be updating: two transactions
        that update one row conflict in DuckDB even one after the other. `fold` moves it there
        once committed. Returns the unit's file cursors, or None when it is stored already."""
        con = self.con
        if self.files.committed(batch.stream, batch.cursor, batch.lines):
            return None
        self._staged = self.writers.begin()
        try:
            con.execute("BEGIN TRANSACTION")
            return self._write_unit(batch, rows, None, None, seq)
        except BaseException:
            self.abandon()
            raise

    def finish(self) -> None:
        """Commit the transaction `stage` left open (rolled back if the commit fails)."""
        try:
            self.con.execute("COMMIT")
        except BaseException:
            rollback(self.con)
            raise
        finally:
            self._end_staged()

    def abandon(self) -> None:
        """Roll back the transaction `stage` left open."""
        try:
            rollback(self.con)
        finally:
            self._end_staged()

    def _end_staged(self) -> None:
        if self._staged is not None:
            self.writers.end(self._staged)
            self._staged = None

    def fold(self, stream: str | None = None) -> int:
        """Move committed `cursor_log` entries (of `stream`, or all) into `cursors` and
        `file_cursors`, in one transaction; returns how many. The lane folds each unit it
        committed side by side once it committed; opening the store folds what a stop left."""
        con = self.con
        where, params = ("WHERE stream = ?", [stream]) if stream is not None else ("", [])
        con.execute("BEGIN TRANSACTION")
        try:
            entries = con.execute(
                'SELECT stream, seq, kind, file, inode, "offset", lines, bytes, rows, rejects, gaps, '
                f"skipped_bytes, last_time, updated_at, files FROM cursor_log {where} ORDER BY stream, seq",
                params).fetchall()
            changed: dict[tuple[str, str], FileCursor] = {}
            last: dict[str, int] = {}
            for name, seq, kind, file, inode, offset, *counts, last_time, at, files in entries:
                changed.update(FileCursors.decode(files))
                self._upsert_cursor([name, kind, file, inode, offset, *counts, last_time, at])
                last[name] = seq
            for (src, file), fc in changed.items():
                FileCursors.write(con, src, file, fc)
            for name, seq in last.items():
                con.execute("DELETE FROM cursor_log WHERE stream = ? AND seq <= ?", [name, seq])
            con.execute("COMMIT")
        except BaseException:
            rollback(con)
            raise
        self.files.remember(changed)
        return len(entries)

    def _write_unit(self, batch: BatchResult, rows: dict[str, pl.DataFrame], candles: pl.DataFrame | None,
                    trade_users: pl.DataFrame | None, seq: int | None) -> dict[tuple[str, str], FileCursor]:
        """Everything a unit stores, inside the open transaction; its cursor goes to `cursors`
        or, with a `seq`, to `cursor_log`. Returns its file cursors."""
        touched = self._insert_rows(rows)
        if trade_users is not None and trade_users.height:
            touched.append(("trades", self._complete_trades(trade_users)))
        if candles is not None and candles.height:
            touched.append(("candles", self._upsert_candles(candles)))
        self._mark_late(touched)
        now = utcnow()
        self._record_stalls(batch, now)
        rejected = batch.new_rejects = self._record_rejects(batch, now)
        self._record_gaps(batch, now)
        n = sum(f.height for f in rows.values())
        c = batch.cursor
        values = [batch.stream, batch.kind, c.file, c.inode, c.offset, batch.lines, batch.nbytes, n,
                  rejected, len(batch.gaps), sum(g.end - g.start for g in batch.gaps),
                  batch.last_time, now]
        if seq is None:
            files = self.files.advance(self.con, batch.stream, batch.cursor, batch.gaps)
            self._upsert_cursor(values)
        else:
            files = self.files.after(batch.stream, batch.cursor, batch.gaps)
            self.con.execute("INSERT INTO cursor_log VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                             [*values[:1], seq, *values[1:], FileCursors.encode(files)])
        return files

    def _insert_rows(self, rows: dict[str, pl.DataFrame]) -> list[tuple[str, list[datetime]]]:
        """Insert each table's rows; returns the hours each touched, for `_mark_late`."""
        hours = []
        for table, frame in rows.items():
            if frame.height:
                # Arrow's string views are Polars' own strings: no copy. DuckDB, handed the frame,
                # converts it to classic Arrow strings first (11 ms of a 122,880-row unit's ~150)
                arrow = frame.select(list(ROW_TABLES[table])).to_arrow(compat_level=pl.CompatLevel.newest())
                self.con.register("_batch", arrow)
                self.con.execute(f"INSERT INTO {table} SELECT * FROM _batch")
                self.con.unregister("_batch")
                hours.append((table, hours_of(table, frame)))
        return hours

    def _record_stalls(self, batch: BatchResult, now: datetime) -> None:
        """The stream said nothing for a while: candles must not be filled across it."""
        if batch.stalls:
            self.con.executemany(
                "INSERT INTO gaps VALUES (?, ?, ?, ?, 0, 0, 'stall', ?, ?, ?)",
                [[batch.stream, batch.file, batch.cursor.offset, batch.cursor.offset, t0, t1, now]
                 for t0, t1 in batch.stalls])

    def _record_rejects(self, batch: BatchResult, now: datetime) -> int:
        """Store the batch's rejects; returns how many were new. In a file read again (truncated,
        replaced, rewritten: etl/tail.py) a reject already stored (same stream, file, offset and
        line) is not stored twice; a file read once is not checked."""
        rows = [(batch.stream, r.file, r.offset, r.reason, r.head.decode("utf-8", "replace"), now)
                for r in batch.rejects]
        reread = {g.file for g in batch.gaps if g.reason in REREAD}
        again = {r.file for r in batch.rejects
                 if r.file in reread or self.files.rechecking(batch.stream, r.file)}
        if again:  # only the batch's offsets: rejects of the rest of the file are not read
            offsets = [r.offset for r in batch.rejects]
            stored = set(self.con.execute(
                'SELECT file, "offset", line FROM rejects WHERE stream = ? AND list_contains(?, file) '
                'AND "offset" BETWEEN ? AND ?', [batch.stream, sorted(again), min(offsets), max(offsets)]
            ).fetchall())
            rows = [row for row in rows if (row[1], row[2], row[4]) not in stored]
            if len(rows) < len(batch.rejects):
                log.info("event=rejects_already_stored stream=%s count=%d (a file read again)",
                         batch.stream, len(batch.rejects) - len(rows))
        if rows:
            self.con.executemany("INSERT INTO rejects VALUES (?, ?, ?, ?, ?, ?)", rows)
        return len(rows)

    def _record_gaps(self, batch: BatchResult, now: datetime) -> None:
        """Ranges not read (with an estimate of their lines); the first event after a gap
        closes its time range."""
        if batch.gaps:
            line_bytes = max(batch.est_line_bytes, 1.0)
            self.con.executemany(
                "INSERT INTO gaps VALUES (?, ?, ?, ?, ?, ?, ?, ?, NULL, ?)",
                [(batch.stream, g.file, g.start, g.end, g.end - g.start,
                  round((g.end - g.start) / line_bytes), g.reason, batch.watermark_before, now)
                 for g in batch.gaps])
        if batch.first_time is not None:
            # a file read again starts before the gap's time_from: its range stays a point, not reversed
            self.con.execute("UPDATE gaps SET time_to = greatest(?, time_from) "
                             "WHERE stream = ? AND time_to IS NULL", [batch.first_time, batch.stream])

    def _upsert_cursor(self, values: list[object]) -> None:
        """The stream's cursor after a unit, and its running counters: `values` are a `cursors`
        row with the unit's counts. An UPDATE first: 0.7 against 1.6 ms for an upsert."""
        (updated,) = self.con.execute(
            """UPDATE cursors SET kind = ?, file = ?, inode = ?, "offset" = ?, lines = lines + ?,
                bytes = bytes + ?, rows = rows + ?, rejects = rejects + ?, gaps = gaps + ?,
                skipped_bytes = skipped_bytes + ?, last_time = greatest(last_time, ?),
                updated_at = ? WHERE stream = ?""", [*values[1:], values[0]]).fetchone() or (0,)
        if updated:
            return
        self.con.execute(
            """INSERT INTO cursors VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
            ON CONFLICT (stream) DO UPDATE SET file = excluded.file,
                inode = excluded.inode, "offset" = excluded."offset",
                lines = cursors.lines + excluded.lines, bytes = cursors.bytes + excluded.bytes,
                rows = cursors.rows + excluded.rows,
                rejects = cursors.rejects + excluded.rejects,
                gaps = cursors.gaps + excluded.gaps,
                skipped_bytes = cursors.skipped_bytes + excluded.skipped_bytes,
                last_time = greatest(cursors.last_time, excluded.last_time),
                updated_at = excluded.updated_at""", values)

    def _mark_late(self, touched: list[tuple[str, list[datetime]]]) -> None:
        """Rows for an hour the lake has recorded (sealed, or about to be): have it sealed again.
        `marks` counts them: the sealer counts its seal there too, so a unit committing beside
        it conflicts with it (DuckDB sees a conflict only where both change a value), and one of
        the two is tried again (etl/writers.py). One statement for every table a unit touched,
        the hours of each a list parameter (registering a frame cost ~1.5 ms a call; a
        statement per table ~0.5 ms)."""
        touched = [(table, hours) for table, hours in touched if hours]
        if touched:
            self.con.execute(
                "UPDATE lake_hours SET dirty = true, marks = marks + 1 WHERE ("
                + " OR ".join("(tbl = ? AND list_contains(?, hour))" for _ in touched) + ")",
                [v for pair in touched for v in pair])

    def stored_candles(self, keys: pl.DataFrame) -> pl.DataFrame:
        """The stored candles with these (coin, interval, t), in the protocol's names. A candle
        of an hour the lake pruned from the database is read from the lake (`history.candles`),
        so that a trade later than `retain_hours` merges with it, not with nothing. Read in one
        snapshot, the lake may prune between two reads: `commit`'s, or a transaction of its own."""
        con = self.con
        keyed = keys.select(KEY)
        own = not self._in_transaction
        con.register("_keys", keyed)
        if own:
            con.execute("BEGIN TRANSACTION")
        try:
            pruned = self._pruned_candle_hours(keyed)
            fault_point("stored_candles_between_reads")
            old = fetch_pl(con, f"SELECT c.* FROM {'history.candles' if pruned else 'candles'} c "
                                "SEMI JOIN _keys k USING (coin, interval, t)")
            if own:
                con.execute("COMMIT")
        except BaseException:
            if own:
                rollback(con)
            raise
        finally:
            con.unregister("_keys")
        old = old.rename(CANDLE_DB_NAMES_BACK)
        return collapse(old) if pruned else old

    def _pruned_candle_hours(self, keys: pl.DataFrame) -> int:
        """How many of the candle hours of `keys` (by close time) the lake pruned."""
        hours = (with_close_times(keys).select(pl.from_epoch("T", time_unit="ms").dt.truncate("1h").unique())
                 .to_series().to_list())
        if not hours:
            return 0
        ((n,),) = self.con.execute("SELECT count(*) FROM lake_hours WHERE tbl = 'candles' AND pruned "
                                   "AND list_contains(?, hour)", [hours]).fetchall()
        return int(n)

    def pruned_candles_until_ms(self) -> int | None:
        """The end (epoch ms) of the latest candle hour the lake pruned from the database; a
        candle closing before it may be in the lake only (None: none pruned)."""
        ((hour,),) = self.con.execute(
            "SELECT max(hour) + INTERVAL 1 HOUR FROM lake_hours WHERE tbl = 'candles' AND pruned").fetchall()
        return None if hour is None else int(hour.replace(tzinfo=UTC).timestamp() * 1000)

    def latest_candles(self, closed_since_ms: int | None = None) -> pl.DataFrame:
        """The latest stored candle of each (coin, interval), in the protocol's names; only
        those of (coin, interval)s with a candle closing at `closed_since_ms` or later."""
        since = "" if closed_since_ms is None else f"WHERE t_close >= {int(closed_since_ms)}"
        old = fetch_pl(self.con, f"SELECT * FROM candles {since} QUALIFY row_number() "
                                 "OVER (PARTITION BY coin, interval ORDER BY t DESC) = 1")
        return old.rename(CANDLE_DB_NAMES_BACK)

    def _upsert_candles(self, merged: pl.DataFrame) -> list[datetime]:
        con = self.con
        stored = merged.rename(CANDLE_DB_NAMES).select(list(CANDLE_DB_SCHEMA))
        con.register("_candles", stored)
        con.execute("INSERT OR REPLACE INTO candles SELECT * FROM _candles")
        con.unregister("_candles")
        return hours_of("candles", stored)

    def last_time(self, stream: str) -> datetime | None:
        """The stream's watermark: its last event time committed."""
        rows = self.con.execute("SELECT last_time FROM cursors WHERE stream = ?", [stream]).fetchall()
        return rows[0][0] if rows else None

    def _complete_trades(self, makers: pl.DataFrame) -> list[datetime]:
        """Fill in the maker of trades stored before their maker's fill arrived; returns the
        hours of the trades completed."""
        self.con.register("_makers", makers.select("tid", "maker"))
        rows = self.con.execute(
            f"""UPDATE trades SET
                buyer = CASE WHEN trades.side = 'B' THEN trades.buyer ELSE m.maker END,
                seller = CASE WHEN trades.side = 'A' THEN trades.seller ELSE m.maker END
            FROM _makers m
            WHERE trades.tid = m.tid AND (trades.buyer IS NULL OR trades.seller IS NULL)
            RETURNING {hour_sql('trades', 'trades')}"""
        ).fetchall()
        self.con.unregister("_makers")
        return sorted({hour for (hour,) in rows})

    def unmatched_makers(self, since: datetime) -> pl.DataFrame:
        """Maker fills since `since` whose trade is not stored yet: (tid, maker, time)."""
        return fetch_pl(self.con, """SELECT f.tid, f."user" AS maker, f.time FROM fills f
            ANTI JOIN trades t USING (tid) WHERE NOT f.crossed AND f.tid <> 0 AND f.time >= ?""",
                        [since])

    def for_thread(self) -> Store:
        """A view of this store on a connection of its own, for another thread's transactions."""
        root = self._root
        with root._reopen_lock:
            view = copy.copy(root)
            view.con = root.con.cursor()
            view.con.execute("SET TimeZone = 'UTC'")
            root._views.append(view)
        return view

    def relieve_memory(self) -> int:
        """Ask whoever else uses this database's memory to let go of it (the API interrupts
        its reads); returns how many did."""
        return sum(hook() for hook in list(self._root.memory_relief))

    def reader(self) -> duckdb.DuckDBPyConnection:
        """A connection of its own to the same database, for another thread."""
        con = self.con.cursor()
        try:
            con.execute("SET TimeZone = 'UTC'")
            # nothing here scans Python variables (all goes through `register`): close that door
            con.execute("SET python_enable_replacements = false")
        except BaseException:
            con.close()
            raise
        return con

    def status(self) -> list[dict[str, object]]:
        """Every stream's `cursors` row, read on a connection of its own."""
        con = self.reader()
        try:
            return stream_rows(con)
        finally:
            con.close()

    def mark_file_complete(self, stream: str, rel: str) -> None:
        """An archive read to its end: a rerun skips it without decompressing it."""
        self.files.mark_complete(self.con, stream, rel)


class _StreamIndex:
    """`FileIndex` of one stream over the store's file cursors."""

    def __init__(self, files: FileCursors, stream: str, floor: str) -> None:
        self.files, self.stream, self.floor = files, stream, floor

    def get(self, rel: str) -> tuple[int, int, int] | None:
        fc = self.files.get(self.stream, rel)
        return None if fc is None else (fc.inode, fc.offset, fc.fp)

    def other_variant_read(self, rel: str) -> bool:
        return self.files.other_variant_read(self.stream, rel)


# ------------------------------------------------------------ cursors and gaps, read back
# (the store's writer, the lake, history readers and `nodetap status` all read them here)
def stream_rows(con: duckdb.DuckDBPyConnection) -> list[dict[str, object]]:
    """Every stream's `cursors` row (position and counters), by stream name."""
    cur = con.execute("SELECT * FROM cursors ORDER BY stream")
    names = [d[0] for d in cur.description or []]
    return [dict(zip(names, r, strict=True)) for r in cur.fetchall()]


def watermark(con: duckdb.DuckDBPyConnection, kinds: Iterable[str]) -> datetime | None:
    """The last event time the streams of these kinds committed (None: nothing yet)."""
    kinds = list(kinds)
    rows = con.execute(f"SELECT max(last_time) FROM cursors WHERE kind IN ({', '.join('?' for _ in kinds)})",
                       kinds).fetchall()  # all: a result left unfinished blocks the connection
    return rows[0][0] if rows else None


def gap_times(con: duckdb.DuckDBPyConnection, kinds: Iterable[str]
              ) -> list[tuple[datetime | None, datetime | None]]:
    """The event-time ranges the streams of these kinds are missing (skipped bytes, stalls);
    None at an end the gap does not know (its start before any event, its end still open)."""
    kinds = list(kinds)
    rows = con.execute(
        "SELECT g.time_from, g.time_to FROM gaps g JOIN cursors c USING (stream) "
        f"WHERE c.kind IN ({', '.join('?' for _ in kinds)})", kinds).fetchall()
    return [(t_from, t_to) for t_from, t_to in rows]


def rollback(con: duckdb.DuckDBPyConnection) -> None:
    """Roll back the open transaction; a failed COMMIT (e.g. disk full) has already ended it,
    a connection closed by a reopen or a database DuckDB invalidated has none, and a second
    error must not hide the first."""
    with contextlib.suppress(duckdb.Error):
        con.execute("ROLLBACK")


def fetch_pl(con: duckdb.DuckDBPyConnection, sql: str, params: list[object] | None = None) -> pl.DataFrame:
    """A query's result as a Polars frame (through Arrow, no copy of the columns)."""
    frame = pl.from_arrow(con.sql(sql, params=params or None).to_arrow_table())
    assert isinstance(frame, pl.DataFrame)
    return frame
