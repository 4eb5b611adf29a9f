"""The DuckDB side of `POST /v1/sql`: a process-wide lock-down, then one read-only transaction
per query.

DuckDB 2.0 opens a database file once per process: a second handle with other settings, or a
read-only ATTACH of the same file, is refused ("Unique file handle conflict"), and another
process cannot open it while the writer holds it. So HTTP SQL runs on a cursor of the store's
own database, made unable to write in three ways:

1. `lock_instance`, once `serve` has created its views: `enable_external_access = false` (no
   file, network, extension or Python-object access from any SQL), with the lake's root as the
   only allowed directory (the `history.*` views read it and sealing writes it), a
   `memory_limit` (`db_memory_limit`), then `lock_configuration = true`: only the per-cursor
   settings the store's readers set (`ALLOWED_CONFIGS`) can change afterwards.
2. `sql_cursor`: every query runs inside `BEGIN TRANSACTION READ ONLY`, where DuckDB refuses
   any write to the database, wherever it hides (a data-modifying CTE, EXPLAIN ANALYZE).
3. `api.sqlguard` refuses anything but a query before it runs.

What this leaves: SQL can read (and, with COPY, write) files under the lake's root only, and the
guard refuses COPY and ATTACH wherever they appear.
"""

from __future__ import annotations

import logging
from pathlib import Path

import duckdb

from api.errors import ServerBusy
from etl.store import Store

log = logging.getLogger("nodetap.sql")

# what the store's readers set on each new cursor (`Store.reader`); everything else is locked
# (and the WAL threshold, which the disk guard fits to the free space: etl/diskspace.py)
ALLOWED_CONFIGS = ("TimeZone", "python_enable_replacements", "checkpoint_threshold")


def _quote(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def lock_instance(con: duckdb.DuckDBPyConnection, lake_root: Path, memory_limit: str) -> None:
    """Lock the whole DuckDB instance behind `con`: no external access but the lake, a memory
    limit, no configuration changes. Cannot be undone in this process."""
    root = str(lake_root.resolve()).rstrip("/") + "/"
    con.execute(f"SET allowed_directories = [{_quote(root)}]")
    con.execute("SET enable_external_access = false")
    try:
        con.execute(f"SET memory_limit = {_quote(memory_limit)}")
    except duckdb.Error as err:
        raise ValueError(f"db_memory_limit {memory_limit!r} is not a DuckDB memory size such as "
                         f"'2GB' or '512MiB': {err}") from None
    con.execute(f"SET allowed_configs = [{', '.join(map(_quote, ALLOWED_CONFIGS))}]")
    con.execute("SET lock_configuration = true")
    log.info("event=duckdb_locked allowed_dir=%s memory_limit=%s", root, memory_limit)


def memory_busy() -> ServerBusy:
    return ServerBusy("the server's database memory (setting db_memory_limit) is in use by "
                      "ingestion or other queries; retry in a moment")


def sql_cursor(store: Store) -> duckdb.DuckDBPyConnection:
    """A new cursor inside a read-only transaction; closing it ends the transaction. 503 when
    DuckDB has no memory left even for that."""
    try:
        con = store.reader()
    except duckdb.OutOfMemoryException:
        raise memory_busy() from None
    try:
        con.execute("BEGIN TRANSACTION READ ONLY")
    except duckdb.OutOfMemoryException:
        con.close()
        raise memory_busy() from None
    except BaseException:
        con.close()
        raise
    return con
