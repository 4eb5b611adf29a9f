"""What a database belongs to: one node dir, and one Parquet lake that belongs to it.

A database records the node dir it reads (`meta.node_dir`) and an id of its own
(`meta.db_id`). Opening it on another node dir is refused: its cursors describe the other
node's files. A lake holds a manifest (`nodetap-lake.json`) naming the database that seals
into it; another database refuses to seal there.
"""

from __future__ import annotations

import logging
import os
import uuid
from pathlib import Path

import duckdb
import orjson

log = logging.getLogger("nodetap.identity")

MANIFEST = "nodetap-lake.json"


class IdentityError(Exception):
    """A database or a lake belongs to something else; the message says what to do."""


def _meta(con: duckdb.DuckDBPyConnection, key: str) -> str | None:
    row = next(iter(con.execute("SELECT value FROM meta WHERE key = ?", [key]).fetchall()), None)
    return None if row is None else str(row[0])


def db_id(con: duckdb.DuckDBPyConnection) -> str:
    """This database's id, made on first use (a copied file keeps it: the copy is the same DB)."""
    found = _meta(con, "db_id")
    if found is None:
        found = uuid.uuid4().hex
        con.execute("INSERT OR IGNORE INTO meta VALUES ('db_id', ?)", [found])
        found = _meta(con, "db_id") or found
    return found


def bind_node(con: duckdb.DuckDBPyConnection, db: Path, node_dir: Path, *,
              rebind: bool = False) -> None:
    """Bind the database to `node_dir` on first use; refuse another node dir later. A node dir
    that does not exist yet binds nothing (the pipeline binds it once it appears): a mistyped
    path, fixed before anything was read, does not hold the database."""
    want = str(node_dir.resolve())
    have = _meta(con, "node_dir")
    if have == want:
        return
    if have is None and not node_dir.is_dir():
        return
    if have is None:
        con.execute("INSERT OR IGNORE INTO meta VALUES ('node_dir', ?)", [want])
        log.info("event=db_bound db=%s node_dir=%s", db, want)
        return
    if not rebind:
        raise IdentityError(
            f"database {db} belongs to node dir {have}, not {want}: its cursors describe that "
            f"node's files. Use a new --db (setting db) for {want}; or, if the node dir itself "
            f"moved to {want}, pass --rebind-node-dir once to bind {db} to it")
    con.execute("UPDATE meta SET value = ? WHERE key = 'node_dir'", [want])
    log.warning("event=db_rebound db=%s from=%s to=%s", db, have, want)


def default_lake(con: duckdb.DuckDBPyConnection, db: Path) -> Path:
    """`<db>.lake` beside the database; a database that sealed into the shared `lake/` of
    earlier versions keeps it (and claims it), with a warning."""
    new = db.with_name(db.name + ".lake")
    legacy = db.parent / "lake"
    if new.exists() or not legacy.is_dir():
        return new
    (sealed,) = con.execute("SELECT count(*) FROM lake_hours").fetchall()[0]
    owner = _read_manifest(legacy)
    if sealed and (owner is None or owner.get("db_id") == db_id(con)):
        log.warning("event=lake_legacy_location db=%s lake=%s (a lake per database is now "
                    "%s; move it there, or set lake_dir)", db, legacy, new)
        return legacy
    return new


def _read_manifest(root: Path) -> dict[str, str] | None:
    try:
        data = orjson.loads((root / MANIFEST).read_bytes())
    except FileNotFoundError:
        return None
    except orjson.JSONDecodeError as err:
        raise IdentityError(f"lake {root}: {MANIFEST} is not valid JSON ({err}); "
                            "fix or remove it") from err
    return data if isinstance(data, dict) else None


def reads_own_lake(con: duckdb.DuckDBPyConnection, db: Path, root: Path) -> bool:
    """Whether the lake at `root` is this database's, at this path (read-only: checks, claims
    nothing). A database moved or copied since it last claimed its lake is not at this path."""
    try:
        owner = _read_manifest(root)
    except IdentityError:
        return False
    return (owner is not None and owner.get("db_id") == _meta(con, "db_id")
            and owner.get("db") == str(db.resolve()))


def claim_lake(con: duckdb.DuckDBPyConnection, db: Path, root: Path) -> Path:
    """Make sure the lake at `root` is this database's (claiming a new or empty one)."""
    root = root.resolve()
    me = {"db": str(db.resolve()), "db_id": db_id(con)}
    owner = _read_manifest(root)
    if owner is not None:
        if owner.get("db_id") != me["db_id"]:
            which = (f"an earlier database at this path, {me['db']} (deleted and made again?)"
                     if owner.get("db") == me["db"] else f"database {owner.get('db')}, not {me['db']}")
            raise IdentityError(
                f"lake {root} belongs to {which}: each database seals into a lake of its own. "
                "Give this one another lake_dir (--lake), leave lake_dir empty for "
                f"{db.name}.lake beside it, or remove the old lake if its hours are not needed")
        if owner.get("db") != me["db"]:
            _write_manifest(root, me)  # the database file moved; the lake is still its own
        if _meta(con, "lake_dir") != str(root):
            _remember_lake(con, root)
        return root
    (sealed,) = con.execute(
        "SELECT count(DISTINCT hour) FROM lake_hours WHERE sealed_at IS NOT NULL").fetchall()[0]
    parquet = root.is_dir() and next(root.glob("*/date=*/hour=*/*.parquet"), None) is not None
    if parquet and not sealed:
        raise IdentityError(
            f"lake {root} holds Parquet files but no {MANIFEST}, and database {me['db']} never "
            "sealed an hour: they are another database's. Give this one another lake_dir (--lake)")
    where = _meta(con, "lake_dir")
    if sealed and not parquet and where == str(root):  # its own lake, emptied by hand
        log.warning("event=lake_emptied lake=%s db=%s (its manifest and parts are gone: the hours "
                    "sealed there are no longer in history.*)", root, me["db"])
    elif sealed and not parquet:  # (a lake of versions before manifests holds its parts)
        raise IdentityError(
            f"database {me['db']} sealed {sealed} hour{'s' if sealed != 1 else ''} into "
            f"{f'lake {where}' if where else 'another lake'}, "
            f"not into {root}, which holds none of them: with it, they would vanish from history.* "
            "and retention would delete the rows DuckDB still holds. "
            + (f"Set lake_dir (--lake) to {where}, or move that lake to {root}" if where else
               "Set lake_dir (--lake) to that lake, or move it here")
            + " (a copied database needs a copy of its lake beside it: <db>.lake)")
    root.mkdir(parents=True, exist_ok=True)
    _write_manifest(root, me)
    _remember_lake(con, root)
    log.info("event=lake_claimed lake=%s db=%s", root, me["db"])
    return root


def _remember_lake(con: duckdb.DuckDBPyConnection, root: Path) -> None:
    """Record the lake this database seals into, to name it if it is ever looked for elsewhere."""
    con.execute("INSERT INTO meta VALUES ('lake_dir', ?) ON CONFLICT (key) DO UPDATE "
                "SET value = excluded.value", [str(root)])


def _write_manifest(root: Path, me: dict[str, str]) -> None:
    tmp = root / f".{MANIFEST}.tmp"
    tmp.write_bytes(orjson.dumps(me, option=orjson.OPT_INDENT_2))
    os.replace(tmp, root / MANIFEST)
