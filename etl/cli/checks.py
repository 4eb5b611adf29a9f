"""Checks made before a command starts anything: the node dir's layout, the rules file, the
port. Each failure is a `CliError` naming the flag and, where it can tell, what to pass."""

from __future__ import annotations

import errno
import logging
import os
import socket
from pathlib import Path

from etl.cli.common import CliError
from etl.config import Settings, setting_specs
from etl.filters import RulesError, load_rules
from etl.tail import STREAM_DIRS, discover, start_from_error

log = logging.getLogger("nodetap.cli")

LAYOUT = ("<node-dir>/node_order_statuses[_by_block|_streaming]/hourly/YYYYMMDD/H, "
          "or node_fills[_by_block|_streaming]/..., or node_trades/...")
_LOOK_DOWN = 200  # entries looked at below a wrong node dir, at most


def named(s: Settings, name: str) -> str:
    """A setting as a message names it: the flag or variable that set it, or the config file,
    with the setting's name; a relative path from a config file also says what it resolved to
    (the working directory's, not the file's)."""
    origin = s.origins.get(name)
    if origin is not None and origin.kind == "file":
        value = getattr(s, name)
        relative = isinstance(value, Path) and str(value) not in ("", ".") and not value.is_absolute()
        resolved = (f"; a relative path there is relative to the working directory, not to the file: "
                    f"{value.absolute()}") if relative else ""
        return f"setting {name} in {origin.where}{resolved}"
    if origin is not None and origin.kind == "env":
        return f"{origin.where}, setting {name}"
    flag = next(spec.flag for spec in setting_specs() if spec.name == name)
    return f"{flag}, setting {name}" if flag else f"setting {name}"


def holds_streams(path: Path) -> bool:
    """Whether `path` has at least one stream dir (`<stream>/hourly`) in it."""
    return any((path / name / "hourly").is_dir() for name in STREAM_DIRS)


def _node_dir_near(path: Path) -> Path | None:
    """The node dir the user probably meant: an ancestor of a stream's own dir (given
    `.../node_fills/hourly`), or a dir below the one given (given `~/hl`: `~/hl/data`)."""
    for parent in [path, *path.parents][:5]:
        if parent.name in STREAM_DIRS and holds_streams(parent.parent):
            return parent.parent
    seen = 0
    level = [path]
    for _ in range(2):
        below: list[Path] = []
        for d in level:
            try:
                entries = sorted(os.scandir(d), key=lambda e: e.name)
            except OSError:
                continue
            for entry in entries:
                seen += 1
                if seen > _LOOK_DOWN:
                    return None
                if entry.is_dir() and not entry.name.startswith("."):
                    sub = Path(entry.path)
                    if holds_streams(sub):
                        return sub
                    below.append(sub)
        level = below
    return None


def check_node_dir(s: Settings, *, must_exist: bool) -> None:
    """Refuse a node dir that is a file, or that exists and holds none of the streams to
    read. A missing or empty one is refused only with `must_exist` (otherwise it is waited
    for: a node set up but not writing yet)."""
    path = s.node_dir
    if path.is_file():
        raise CliError(f"--node-dir {path} is a file, not a directory: pass the node's data dir "
                       f"(usually ~/hl/data), laid out {LAYOUT} (setting node_dir)")
    if not path.exists():
        if must_exist:
            raise CliError(f"node dir {path} does not exist ({named(s, 'node_dir')})")
        return
    if not path.is_dir():
        raise CliError(f"--node-dir {path} is not a directory (setting node_dir)")
    if discover(path, s.streams):
        return
    if s.streams and holds_streams(path):
        found = sorted(n for n in STREAM_DIRS if (path / n / "hourly").is_dir())
        raise CliError(f"node dir {path} holds none of the streams asked for "
                       f"({', '.join(s.streams)}; --stream, setting streams); it holds: "
                       f"{', '.join(found)}")
    near = _node_dir_near(path)
    if near is None and not must_exist and not any(path.iterdir()):
        # an empty dir: a node set up but not writing yet; its streams are waited for
        log.warning("event=node_dir_empty node_dir=%s expected=%r (waiting for the node's first "
                    "file)", path, LAYOUT)
        return
    hint = f"; did you mean --node-dir {near}?" if near is not None else ""
    raise CliError(f"node dir {path} holds no node output: expected {LAYOUT} "
                   f"({named(s, 'node_dir')}){hint}")


def check_rules_file(s: Settings) -> None:
    """A rules file given that does not exist (the default one may be missing: defaults), or
    whose rules are not valid: said before the database is made, not after."""
    path = s.rules_file
    if str(path) in ("", ".") or path == Settings().rules_file and not path.exists():
        return
    if not path.exists():
        if "rules_file" in s.origins and s.origins["rules_file"].kind != "flag":
            raise CliError(f"rules file {path}: no such file ({named(s, 'rules_file')}; see docs/rules.md)")
        raise CliError(f"--rules {path}: no such file (setting rules_file; see docs/rules.md)")
    if path.is_dir():
        raise CliError(f"--rules {path} is a directory, not a rules file (setting rules_file)")
    try:
        load_rules(path)
    except RulesError as err:
        raise CliError(f"{err} ({named(s, 'rules_file')}; see docs/rules.md)") from None


def check_port(host: str, port: int) -> None:
    """Bind `host:port` as the server will (SO_REUSEADDR), then let it go, so that a port in
    use is reported before the pipeline, the database or the banner start."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as err:
        raise CliError(f"cannot listen on {host}:{port}: {err.strerror} (--host, setting host)") from err
    family, kind, proto, _, addr = infos[0]
    with socket.socket(family, kind, proto) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(addr)
        except OSError as err:
            if err.errno == errno.EADDRINUSE:
                raise CliError(f"port {port} on {host} is already in use by another program: "
                               f"pick another with --port (setting port)") from err
            raise CliError(f"cannot listen on {host}:{port}: {err.strerror} "
                           f"(--host, --port; settings host, port)") from err


def check_start_from(s: Settings) -> None:
    """Refuse a `--from` that names no place to start, before the database is made."""
    err = start_from_error(s.start_from)
    if err is not None:
        raise CliError(f"{err} (--from, setting start_from; a day and hour as 20260105/9)")


def check_db(s: Settings) -> None:
    """Refuse a `--db` that cannot be a database file: a directory, under a file, or in a
    directory that does not exist (it is not made: a typo would put a database elsewhere)."""
    db = s.db
    if db.is_dir():
        raise CliError(f"--db {db} is a directory: pass a file in it, e.g. {db / 'nodetap.duckdb'} "
                       "(setting db)")
    for parent in db.parents:
        if parent.exists():
            if not parent.is_dir():
                raise CliError(f"--db {db}: {parent} is a file, not a directory; pass a path in "
                               "a directory (setting db)")
            break
    parent = db.absolute().parent
    if not parent.is_dir():
        raise CliError(f"database {db}: directory {parent} does not exist ({named(s, 'db')}): create it "
                       f"(mkdir -p {parent}) or pass a path in a directory that exists")


# what a command reads while `ingest`/`serve` holds the database: the server's endpoint for it
SERVED = {"sql": "POST /v1/sql", "export": "GET /v1/export/<table>.<format>", "candles": "GET /v1/candles",
          "status": "GET /v1/status"}


def database_error(s: Settings, err: Exception, command: str) -> CliError:
    """DuckDB's refusal to open `--db`, said with what to do about that refusal: not a DuckDB
    file, a directory, held by another process (reading commands: the server's endpoint), on a
    read-only volume, or (another version's file) DuckDB's own words."""
    db, said = s.db, str(err).splitlines()[0].removeprefix("IO Error: ")
    where = named(s, "db")
    if db.is_dir():
        return CliError(f"--db {db} is a directory: pass the database file in it, e.g. "
                        f"{db / 'nodetap.duckdb'} ({where})")
    if "not a valid DuckDB database file" in said:
        return CliError(f"--db {db} is not a DuckDB database file ({where}): pass the .duckdb file that "
                        "`nodetap ingest` or `serve` made (e.g. data/nodetap.duckdb)")
    if "Could not set lock" in said:
        pid = said.partition("Conflicting lock is held in ")[2].partition(". See also")[0]
        holder = pid or "another process"
        if command in SERVED:
            return CliError(f"database {db} is held by {holder}: while `nodetap ingest` or `serve` runs on "
                            f"it, ask the server ({SERVED[command]}), or stop that process")
        return CliError(f"database {db} is held by {holder} ({where}): stop that process, or pass "
                        "another file")
    parent = db.absolute().parent
    if "Read-only file system" in said or parent.is_dir() and os.statvfs(parent).f_flag & os.ST_RDONLY:
        return CliError(f"cannot open database {db}: {parent} is on a read-only file system ({where}): "
                        "pass a path on a volume this user can write to")
    return CliError(f"cannot open database {db}: {said.rstrip('!.')} ({where})")


def check_lake(s: Settings) -> None:
    """Refuse a `--lake` that cannot be written: a file, under a file, or where nothing can be
    written (a read-only file system, no permission), before the database is made and bound."""
    lake = s.lake_dir
    if str(lake) in ("", "."):
        return  # <db>.lake, beside the database
    for path in (lake, *lake.absolute().parents):
        if not path.exists():
            continue
        if not path.is_dir():
            where = "" if path == lake else f": {path} is a file"
            raise CliError(f"lake {lake} is not a directory{where} ({named(s, 'lake_dir')}): pass a "
                           "directory (it is made if missing), or leave lake_dir empty for <db>.lake "
                           "beside the database")
        if not os.access(path, os.W_OK):
            why = ("is on a read-only file system" if os.statvfs(path).f_flag & os.ST_RDONLY
                   else "is not writable by this user")
            raise CliError(f"lake {lake} cannot be written: {path} {why} ({named(s, 'lake_dir')}): pass "
                           "a directory this user can write to, or leave lake_dir empty for <db>.lake "
                           "beside the database")
        return
