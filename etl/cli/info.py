"""The commands that describe: status (per stream) and config (the settings)."""

from __future__ import annotations

import argparse
import os
import tomllib
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import duckdb
import orjson

from etl.cli.checks import (
    check_db,
    check_lake,
    check_node_dir,
    check_rules_file,
    check_start_from,
    database_error,
    named,
)
from etl.cli.common import CliError, settings_from
from etl.cli.output import table
from etl.config import Settings, lake_root, setting_specs, settings_table

STATUS_COLUMNS = ("stream", "file", "offset", "mode", "lag_bytes", "lag_seconds", "lines", "rows",
                  "rejects", "gaps", "skipped_bytes", "last_time")
STATUS_HELP = "per stream: " + ", ".join(c.replace("_", " ") for c in STATUS_COLUMNS[1:])


def format_status(rows: list[dict[str, Any]]) -> str:
    def shown(v: Any) -> Any:
        return round(v, 1) if isinstance(v, float) else v

    return table(STATUS_COLUMNS, [[shown(r.get(c)) for c in STATUS_COLUMNS] for r in rows])


def cmd_status(args: argparse.Namespace) -> int:
    from etl.pipeline import status_file
    from etl.status import read_status_document, stopped, writer_stopped

    s = settings_from(args)
    rows: list[dict[str, Any]]
    if not s.db.exists():
        raise CliError(f"database {s.db} does not exist ({named(s, 'db')}): `nodetap ingest` or "
                       "`nodetap serve` makes it")
    wall = datetime.now(UTC).timestamp()
    try:
        con = duckdb.connect(str(s.db), read_only=True)
    except duckdb.IOException as err:
        # another process (ingest/serve) holds the lock: use the status file it writes
        check_node_dir(s, must_exist=False)
        sf = status_file(s.db)
        if not sf.exists():
            raise database_error(s, err, "status") from err
        doc = read_status_document(sf.read_bytes(), sf.stat().st_mtime)
        if doc.get("node_dir") and _node_dir_given(args) and Path(doc["node_dir"]) != s.node_dir.resolve():
            raise CliError(_other_node_dir(s, Path(doc["node_dir"]))) from None
        rows, status_at = doc["streams"], str(doc["written_at"])
        # the lock may be another program's, and the file a process's that has exited
        why = writer_stopped(doc, wall)
        note = None if why is None else f"its status is from {_utc(status_at)}: {why}"
    else:
        try:
            s = _bound_node_dir(con, s, given=_node_dir_given(args))
            check_node_dir(s, must_exist=False)
            rows = _status_from_db(con, s, wall)
        except duckdb.CatalogException as err:
            raise CliError(f"{s.db} is not a nodetap database (--db, setting db)") from err
        finally:
            con.close()
        # the database opened: no ingest/serve holds it, none runs
        status_at = datetime.fromtimestamp(wall, UTC).isoformat()
        commits = [str(r["updated_at"]) for r in rows if r.get("updated_at")]
        note = f"its last commit was at {_utc(max(commits))}" if commits else "nothing was committed yet"
    if note is not None:
        rows = stopped(rows)
    rows = [{**r, "running": note is None, "status_at": status_at,
             "stopped_reason": note if note is not None else r.get("stopped_reason")} for r in rows]
    if args.json:
        print(orjson.dumps(rows, option=orjson.OPT_INDENT_2).decode())
    else:
        print(format_status(rows))
        if note is not None:
            print(f"no ingest/serve is running on this database ({note})")
        for r in rows:
            if note is None and r["stopped_reason"]:
                print(f"{r['stream']}: {r['stopped_reason']}")
    return 0


def _utc(iso: str) -> str:
    """An ISO time (UTC, with or without its offset) as `2026-01-05 10:00:00 UTC`."""
    return datetime.fromisoformat(iso).strftime("%Y-%m-%d %H:%M:%S UTC")


def _node_dir_given(args: argparse.Namespace) -> bool:
    """Whether a node dir was asked for: the flag, NODETAP_NODE_DIR or the config file."""
    if getattr(args, "node_dir", None) is not None or "NODETAP_NODE_DIR" in os.environ:
        return True
    config = getattr(args, "config", None) or os.environ.get("NODETAP_CONFIG")
    if not config:
        return False
    data = tomllib.loads(Path(config).read_text())  # read already by `settings_from`
    return "node_dir" in data.get("nodetap", data)


def _bound_node_dir(con: duckdb.DuckDBPyConnection, s: Settings, *, given: bool) -> Settings:
    """The settings with the node dir the database reads (bound at its first ingest): lag is
    measured against that node's files. With no node dir asked for, that one; another one
    asked for is refused, as `ingest` and `serve` refuse it."""
    try:
        rows = con.execute("SELECT value FROM meta WHERE key = 'node_dir'").fetchall()
    except duckdb.CatalogException:  # a database of a version before bindings
        return s
    if not rows or Path(rows[0][0]) == s.node_dir.resolve():
        return s
    bound = Path(rows[0][0])
    if not given:
        return replace(s, node_dir=bound)
    raise CliError(_other_node_dir(s, bound))


def _other_node_dir(s: Settings, bound: Path) -> str:
    return (f"database {s.db} reads node dir {bound}, not {s.node_dir.resolve()}: its lag is "
            f"measured against that node's files. Leave out --node-dir (setting node_dir), or "
            f"pass {bound}")


def _status_from_db(con: duckdb.DuckDBPyConnection, s: Settings, wall: float) -> list[dict[str, Any]]:
    from etl.status import catching_up_bytes, status_rows, stored_snapshot
    from etl.store import stream_rows

    return status_rows(stored_snapshot(stream_rows(con), s.node_dir, wall, catching_up_bytes(s)))


def _effective_lake(s: Settings) -> Path:
    """The lake `ingest`/`serve` would seal into (a database may keep an older location)."""
    if str(s.lake_dir) not in ("", ".") or not s.db.exists():
        return lake_root(s)
    from etl.identity import default_lake

    try:
        con = duckdb.connect(str(s.db), read_only=True)
    except duckdb.Error:
        return lake_root(s)  # held by a running server: the usual place
    try:
        return default_lake(con, s.db)
    except duckdb.Error:
        return lake_root(s)
    finally:
        con.close()


def effective(s: Settings, name: str) -> str:
    """A setting's value as the program uses it: paths absolute, empty ones resolved."""
    value = getattr(s, name)
    if name == "lake_dir":
        return str(_effective_lake(s).absolute())
    if name == "rules_file":
        if str(value) in ("", "."):
            return "(empty: the built-in rules)"
        if value == Settings().rules_file and not value.exists():
            return f"(the built-in rules: {value.absolute()} does not exist)"
    if isinstance(value, Path):
        return str(value.absolute())
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, tuple):
        return ",".join(value) if value else "(empty)"
    return str(value)


def cmd_config(args: argparse.Namespace) -> int:
    if args.doc:
        print(settings_table(), end="")
        return 0
    s = settings_from(args)
    check_given(s)
    for spec in setting_specs():
        print(f"{spec.name} = {effective(s, spec.name)}")
    return 0


def check_given(s: Settings) -> None:
    """Refuse what `ingest` would refuse, with its message: `config` shows a flag's effect, and
    a value that has none must not look accepted. The database and the lake are checked only
    where given (a flag, the environment, the config file): the defaults are made relative to
    wherever `config` runs, and it may run anywhere."""
    check_start_from(s)
    check_rules_file(s)
    if "db" in s.origins:
        check_db(s)
    if "lake_dir" in s.origins:
        check_lake(s)
