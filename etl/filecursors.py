"""One cursor space per hour file, shared by `ingest`/`serve` and `backfill`.

The `file_cursors` table holds, per (stream dir, "YYYYMMDD/H"), how far the file was
read, its inode and the fingerprint of the bytes before that offset. Both modes move it
in the same transaction as the rows they store, so whichever mode comes first, the other
starts where it stopped. The table is small (one row per hour file) and kept in memory
too, for the tailer, which runs on the parse thread.
"""

from __future__ import annotations

import json
import logging
import re
import threading
from dataclasses import dataclass
from pathlib import Path

import duckdb

from etl.tail import REREAD, STREAM_DIRS, Cursor, Gap

log = logging.getLogger("nodetap.store")

BACKFILL_PREFIX = "backfill:"  # cursors rows of backfill's counters: `backfill:<stream>`
SCHEMA_VERSION = "2"  # 1: cursors per stream only; 2: + file_cursors, meta
_DAY = re.compile(r"^\d{8}$")


@dataclass(frozen=True)
class FileCursor:
    inode: int
    offset: int
    fp: int
    recheck: bool
    complete: bool


def source_of(stream: str) -> str:
    """The stream dir whose files a batch of `stream` reads (backfill counts apart)."""
    return stream.removeprefix(BACKFILL_PREFIX)


def file_key(path: Path) -> tuple[str, str] | None:
    """(stream dir, "YYYYMMDD/H") of a node hour file path (`.lz4` or not), else None."""
    parts = path.parts
    if len(parts) < 3 or not _DAY.match(parts[-2]):
        return None
    hour = parts[-1].removesuffix(".lz4")
    if not hour.isdigit():
        return None
    stream = next((p for p in reversed(parts[:-2]) if p in STREAM_DIRS), None)
    return (stream, f"{parts[-2]}/{int(hour)}") if stream else None


class FileCursors:
    """The `file_cursors` table and its in-memory copy (read from any thread)."""

    def __init__(self, con: duckdb.DuckDBPyConnection) -> None:
        self._lock = threading.Lock()
        self._files: dict[tuple[str, str], FileCursor] = {}
        self.reload(con)

    def reload(self, con: duckdb.DuckDBPyConnection) -> None:
        """Read the table again (after the database was reopened)."""
        files = {}
        for stream, file, inode, offset, fp, recheck, complete in con.execute(
                'SELECT stream, file, inode, "offset", fp, recheck, complete FROM file_cursors'
        ).fetchall():
            files[(stream, file)] = FileCursor(int(inode or 0), int(offset or 0), int(fp or 0),
                                               bool(recheck), bool(complete))
        with self._lock:
            self._files = files

    def get(self, stream: str, file: str) -> FileCursor | None:
        with self._lock:
            return self._files.get((stream, file))

    def other_variant_read(self, stream: str, file: str) -> bool:
        kind = STREAM_DIRS.get(stream, ("", ""))[0]
        with self._lock:
            return any((name, file) in self._files for name, (k, _) in STREAM_DIRS.items()
                       if k == kind and name != stream)

    def rechecking(self, stream: str, file: str) -> bool:
        fc = self.get(source_of(stream), file)
        return fc is not None and fc.recheck

    def committed(self, stream: str, cursor: Cursor, lines: int) -> bool:
        """A batch of `lines` lines ending at `cursor` is stored already (same end, same
        inode, same bytes before it)."""
        if not lines or not cursor.file or not cursor.fp:
            return False
        fc = self.get(source_of(stream), cursor.file)
        return (fc is not None and fc.offset == cursor.offset and fc.inode == cursor.inode
                and fc.fp == cursor.fp)

    def advance(self, con: duckdb.DuckDBPyConnection, stream: str, cursor: Cursor,
                gaps: list[Gap]) -> dict[tuple[str, str], FileCursor]:
        """Write a batch's file cursors inside its transaction; returns them, for `remember`
        once the transaction has committed."""
        out = self.after(stream, cursor, gaps)
        for (src, file), fc in out.items():
            self.write(con, src, file, fc)
        return out

    def after(self, stream: str, cursor: Cursor, gaps: list[Gap]) -> dict[tuple[str, str], FileCursor]:
        """A batch's file cursors once it is stored (what `advance` writes)."""
        source = source_of(stream)
        out: dict[tuple[str, str], FileCursor] = {}
        reread = {g.file for g in gaps if g.reason in REREAD}
        for g in gaps:
            if g.reason == "backlog":  # skipped over: never a stray file to read later
                old = out.get((source, g.file)) or self.get(source, g.file)
                if old is None or old.offset < g.end:
                    out[(source, g.file)] = FileCursor(old.inode if old else 0, g.end, 0,
                                                       bool(old and old.recheck), False)
        if cursor.file:
            old = self.get(source, cursor.file)
            out[(source, cursor.file)] = FileCursor(
                cursor.inode, cursor.offset, cursor.fp,
                cursor.file in reread or bool(old and old.recheck), bool(old and old.complete))
        return out

    def remember(self, changed: dict[tuple[str, str], FileCursor]) -> None:
        with self._lock:
            self._files.update(changed)

    def mark_complete(self, con: duckdb.DuckDBPyConnection, stream: str, file: str) -> None:
        """A compressed file read to its end by backfill: a rerun skips it without reading."""
        old = self.get(stream, file)
        fc = FileCursor(old.inode, old.offset, old.fp, old.recheck, True) if old else \
            FileCursor(0, 0, 0, False, True)
        self.write(con, stream, file, fc)
        self.remember({(stream, file): fc})

    @staticmethod
    def encode(changed: dict[tuple[str, str], FileCursor]) -> str:
        """File cursors as the JSON text of a `cursor_log` row."""
        return json.dumps([[src, file, fc.inode, fc.offset, fc.fp, fc.recheck, fc.complete]
                           for (src, file), fc in changed.items()])

    @staticmethod
    def decode(text: str | None) -> dict[tuple[str, str], FileCursor]:
        return {(src, file): FileCursor(int(inode), int(offset), int(fp), bool(recheck), bool(complete))
                for src, file, inode, offset, fp, recheck, complete in json.loads(text or "[]")}

    @staticmethod
    def write(con: duckdb.DuckDBPyConnection, stream: str, file: str, fc: FileCursor) -> None:
        (updated,) = con.execute(  # an UPDATE first: half the cost of an upsert
            """UPDATE file_cursors SET inode = ?, "offset" = ?, fp = ?, recheck = ?, complete = ?,
                updated_at = now()::TIMESTAMP WHERE stream = ? AND file = ?""",
            [fc.inode, fc.offset, fc.fp, fc.recheck, fc.complete, stream, file]).fetchone() or (0,)
        if updated:
            return
        con.execute(
            """INSERT INTO file_cursors VALUES (?, ?, ?, ?, ?, ?, ?, now()::TIMESTAMP)
            ON CONFLICT (stream, file) DO UPDATE SET inode = excluded.inode,
                "offset" = excluded."offset", fp = excluded.fp, recheck = excluded.recheck,
                complete = excluded.complete, updated_at = excluded.updated_at""",
            [stream, file, fc.inode, fc.offset, fc.fp, fc.recheck, fc.complete])


def migrate(con: duckdb.DuckDBPyConnection) -> None:
    """Bring a database made before file cursors (schema 1) to schema 2, in place.

    Schema 1 kept one cursor per live stream and one per backfilled file path. Each becomes
    the cursor of its hour file; a live stream's current file becomes its floor (older files
    were read before, or skipped on purpose by `start_from`)."""
    row = next(iter(con.execute("SELECT value FROM meta WHERE key = 'schema'").fetchall()), None)
    if row is not None:
        return
    con.execute("BEGIN TRANSACTION")
    try:
        found: dict[tuple[str, str], FileCursor] = {}
        for stream, file, inode, offset in con.execute(
                'SELECT stream, file, inode, "offset" FROM cursors').fetchall():
            if stream in STREAM_DIRS and file:
                key: tuple[str, str] | None = (stream, file)
                con.execute("INSERT OR IGNORE INTO meta VALUES (?, ?)", [f"floor:{stream}", file])
            elif stream.startswith(BACKFILL_PREFIX) and stream[len(BACKFILL_PREFIX):].startswith("/"):
                key = file_key(Path(stream[len(BACKFILL_PREFIX):]))
            else:
                key = None
            if key is None:
                continue
            done = file == "done"
            fc = FileCursor(0 if done else int(inode or 0), int(offset or 0), 0, False, done)
            old = found.get(key)
            if old is None or old.offset < fc.offset:
                found[key] = fc
        for (src, f), fc in found.items():
            FileCursors.write(con, src, f, fc)
        moved = len(found)
        con.execute("INSERT INTO meta VALUES ('schema', ?)", [SCHEMA_VERSION])
        con.execute("COMMIT")
    except BaseException:
        con.execute("ROLLBACK")
        raise
    if moved:
        log.info("event=db_migrated schema=%s file_cursors=%d (cursors per hour file, shared by "
                 "ingest and backfill)", SCHEMA_VERSION, moved)
