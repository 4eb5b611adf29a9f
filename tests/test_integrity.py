"""Every event stored once across modes, restarts and file faults; a database bound to its
node dir and a lake to its database; crashes inside sealing; old databases migrated."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import duckdb
import lz4.frame
import orjson
import pytest

from etl.pipeline import status_file
from tests.conftest import ROOT, query, run_cli, wait_for

ORDERS = "node_order_statuses"
FILLS = "node_fills"
KEEP = ("--keep-all", "--log-level", "WARNING")


def source_counts(node: Path) -> tuple[int, int, float]:
    """(order statuses, trades, traded size) written under a node dir."""
    orders = trades = 0
    size = 0.0
    for p in node.rglob("*"):
        if not p.is_file():
            continue
        lines = p.read_bytes().splitlines()
        if ORDERS in p.parts:
            orders += len(lines)
        elif FILLS in p.parts:
            for line in lines:
                f = orjson.loads(line)[1]
                if f["crossed"]:
                    trades += 1
                    size += float(f["sz"])
    return orders, trades, size


def stored(db: Path) -> tuple[int, int, int, int, float]:
    """(orders, distinct order statuses, trades, distinct tids, 1m candle volume) in history
    (DuckDB and the lake; DuckDB alone before anything made the views)."""
    (views,), = query(db, "SELECT count(*) FROM duckdb_views() WHERE schema_name = 'history'")
    h = "history" if views else "main"
    (o, od), = query(db, 'SELECT count(*), count(DISTINCT ("user", oid, status, time)) '
                         f"FROM {h}.orders")
    (t, td), = query(db, f"SELECT count(*), count(DISTINCT tid) FROM {h}.trades")
    (v,), = query(db, f"SELECT coalesce(sum(v), 0) FROM {h}.candles WHERE interval = '1m'")
    return o, od, t, td, round(v, 6)


def expect(node: Path) -> tuple[int, int, int, int, float]:
    o, t, size = source_counts(node)
    return o, o, t, t, round(size, 6)


def ingest_once(node: Path, db: Path, *extra: str, check: bool = True,
                env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return run_cli("ingest", "--node-dir", str(node), "--db", str(db), "--from", "start", "--once",
                   *KEEP, *extra, check=check, env=env)


def hour_files_of(node: Path, stream: str) -> list[Path]:
    return sorted((p for p in (node / stream / "hourly").rglob("*") if p.is_file()),
                  key=lambda p: (p.parent.name, int(p.name.split(".")[0])))


# ------------------------------------------------------------------ modes share file cursors
def test_backfill_then_live_stores_each_event_once(make_node_dir: Callable[..., Path],
                                                   tmp_path: Path) -> None:
    node = make_node_dir(lines=4000, start=datetime(2026, 1, 5, 10, 59, 50, tzinfo=UTC))
    db = tmp_path / "a.duckdb"
    run_cli("backfill", str(node), "--db", str(db), "--quiet", *KEEP)
    assert stored(db) == expect(node)
    ingest_once(node, db)
    assert stored(db) == expect(node)
    assert query(db, "SELECT count(*) FROM gaps") == [(0,)]


def test_live_then_backfill_stores_each_event_once(make_node_dir: Callable[..., Path],
                                                   tmp_path: Path) -> None:
    node = make_node_dir(lines=4000, start=datetime(2026, 1, 5, 10, 59, 50, tzinfo=UTC))
    # the newest hour is half written when live ingestion runs
    last = hour_files_of(node, ORDERS)[-1]
    full = last.read_bytes()
    half = full[:full.index(b"\n", len(full) // 2) + 1]
    last.write_bytes(half)
    db = tmp_path / "b.duckdb"
    ingest_once(node, db)
    with open(last, "ab") as f:
        f.write(full[len(half):])  # the node writes the rest
    out = run_cli("backfill", str(node), "--db", str(db), "--quiet", *KEEP)
    # backfill read only the second half of that one file
    assert f"lines={len(full[len(half):].splitlines())}" in out.stdout
    assert stored(db) == expect(node)
    ingest_once(node, db)
    assert stored(db) == expect(node)


def test_a_different_copy_of_a_read_hour_stores_nothing_twice(
        make_node_dir: Callable[..., Path], tmp_path: Path) -> None:
    """An archive of an hour already ingested live, with its lines in another order (another
    node's file): the bytes before the cursor differ, so it is read whole and checked."""
    node = make_node_dir(lines=3000)
    db = tmp_path / "c.duckdb"
    ingest_once(node, db)
    before = stored(db)
    archive = tmp_path / "archive" / FILLS / "hourly" / "20260105"
    archive.mkdir(parents=True)
    for f in hour_files_of(node, FILLS):
        lines = f.read_bytes().splitlines(keepends=True)
        (archive / (f.name + ".lz4")).write_bytes(lz4.frame.compress(b"".join(reversed(lines))))
    run_cli("backfill", str(tmp_path / "archive"), "--db", str(db), "--quiet", *KEEP)
    assert stored(db) == before == expect(node)
    assert query(db, "SELECT count(*), count(DISTINCT (tid, \"user\")) FROM fills")[0][0] == \
        query(db, "SELECT count(DISTINCT (tid, \"user\")) FROM fills")[0][0]


def block_counts(node: Path) -> tuple[int, int, int, int, float]:
    """Like `expect`, for `_by_block` files."""
    orders = trades = 0
    size = 0.0
    for p in node.rglob("*"):
        if p.is_file() and "_by_block" in p.parts[-4]:
            for line in p.read_bytes().splitlines():
                events = orjson.loads(line)["events"]
                if p.parts[-4].startswith(ORDERS):
                    orders += len(events)
                else:
                    taker = [e[1] for e in events if e[1]["crossed"]]
                    trades += len(taker)
                    size += sum(float(f["sz"]) for f in taker)
    return orders, orders, trades, trades, round(size, 6)


def test_the_same_hours_from_another_variant_store_nothing_twice(
        make_node_dir: Callable[..., Path], tmp_path: Path) -> None:
    """Plain files backfilled, then the node's `_by_block` files of the same hours (and
    more) ingested live: the same events in other lines, checked by identity key."""
    node = make_node_dir(lines=3000, name="plain")
    plain = expect(node)
    # the same seed gives the same events: ~200 blocks, more than the ~125 of the plain run
    blocks = make_node_dir(lines=400, name="blocks", variant="by_block")
    for d in blocks.iterdir():
        d.rename(node / d.name)
    db = tmp_path / "v.duckdb"
    run_cli("backfill", str(node / ORDERS), str(node / FILLS), "--db", str(db), "--quiet", *KEEP)
    assert stored(db) == plain
    proc = ingest_once(node, db)
    assert "event=file_overlap" in proc.stderr
    assert stored(db) == block_counts(node)
    assert query(db, "SELECT count(*) FROM orders WHERE block_number IS NULL") == [(plain[0],)]


# -------------------------------------------------------------------------- identity
def test_a_database_refuses_another_node_dir_until_rebound(
        make_node_dir: Callable[..., Path], tmp_path: Path) -> None:
    a = make_node_dir(lines=1000, name="a")
    b = make_node_dir(lines=1000, name="b", seed=9)
    db = tmp_path / "n.duckdb"
    ingest_once(a, db)
    proc = ingest_once(b, db, check=False)
    assert proc.returncode == 2
    assert f"belongs to node dir {a.resolve()}, not {b.resolve()}" in proc.stderr
    assert "--rebind-node-dir" in proc.stderr and "new --db" in proc.stderr
    # the node dir moved: a's files now live at `moved`
    moved = tmp_path / "moved"
    a.rename(moved)
    ingest_once(moved, db, "--rebind-node-dir")
    assert stored(db) == expect(moved)  # nothing read twice after the move


def test_two_databases_in_one_folder_have_their_own_lakes(
        make_node_dir: Callable[..., Path], tmp_path: Path) -> None:
    node = make_node_dir(lines=3000, start=datetime(2026, 1, 5, 10, 59, 55, tzinfo=UTC))
    env = {"NODETAP_SEAL_GRACE_S": "0", "NODETAP_RETAIN_HOURS": "0.0002"}
    b, c = tmp_path / "b.duckdb", tmp_path / "c.duckdb"
    ingest_once(node, b, env=env)
    ingest_once(node, c, env=env)
    assert (tmp_path / "b.duckdb.lake" / "orders").is_dir()
    assert (tmp_path / "c.duckdb.lake" / "orders").is_dir()
    assert orjson.loads((tmp_path / "b.duckdb.lake" / "nodetap-lake.json").read_bytes())["db"] == str(b)
    assert stored(b) == stored(c) == expect(node)
    # pointing c at b's lake is refused, and b's history is untouched
    proc = ingest_once(node, c, "--lake", str(tmp_path / "b.duckdb.lake"), check=False, env=env)
    assert proc.returncode == 2
    assert f"lake {tmp_path / 'b.duckdb.lake'} belongs to database {b}, not {c}" in proc.stderr
    assert stored(b) == expect(node)


def test_a_database_refuses_a_lake_without_the_hours_it_sealed(
        make_node_dir: Callable[..., Path], tmp_path: Path) -> None:
    node = make_node_dir(lines=3000, start=datetime(2026, 1, 5, 10, 59, 55, tzinfo=UTC))
    env = {"NODETAP_SEAL_GRACE_S": "0", "NODETAP_RETAIN_HOURS": "0.0002"}
    db = tmp_path / "a" / "n.duckdb"
    db.parent.mkdir()
    ingest_once(node, db, env=env)  # hour 10 sealed into a/n.duckdb.lake, and pruned
    lake = tmp_path / "a" / "n.duckdb.lake"
    (sealed,), = query(db, "SELECT count(*) FROM lake_hours WHERE sealed_at IS NOT NULL")
    assert sealed == 4 and stored(db) == expect(node)
    # another lake for it: refused before anything is read or pruned, naming its own lake
    proc = ingest_once(node, db, "--lake", str(tmp_path / "other"), check=False, env=env)
    assert proc.returncode == 2, proc.stderr
    assert (f"database {db} sealed 1 hour into lake {lake}, not into {tmp_path / 'other'}, "
            "which holds none of them") in proc.stderr
    assert f"Set lake_dir (--lake) to {lake}, or move that lake to {tmp_path / 'other'}" in proc.stderr
    assert stored(db) == expect(node) and not (tmp_path / "other").exists()
    # a copy of the database without its lake is refused the same way; with it, it works
    copy = tmp_path / "b" / "n.duckdb"
    copy.parent.mkdir()
    shutil.copy(db, copy)
    proc = ingest_once(node, copy, check=False, env=env)
    assert proc.returncode == 2 and f"sealed 1 hour into lake {lake}, not into {copy}.lake" in proc.stderr
    shutil.copytree(lake, tmp_path / "b" / "n.duckdb.lake")
    # its views still read a's lake: the read-only commands say so rather than read it
    proc = run_cli("sql", "--db", str(copy), "SELECT count(*) FROM history.trades", check=False)
    assert proc.returncode == 2 and (f"the history views of {copy} read the lake at {lake}, which is "
                                     "not this database's") in proc.stderr
    ingest_once(node, copy, env=env)  # makes them again
    assert stored(copy) == expect(node)
    sql = run_cli("sql", "--db", str(copy), "SELECT count(*) AS n FROM history.trades", "--format", "csv")
    assert sql.stdout.split() == ["n", str(expect(node)[2])]
    # its own lake emptied by hand (manifest included): a warning, and what DuckDB holds
    shutil.rmtree(lake)
    proc = run_cli("sql", "--db", str(db), "SELECT count(*) FROM history.trades", check=False)
    assert proc.returncode == 2
    assert "or the lake was emptied by hand): run `nodetap ingest --once`" in proc.stderr
    proc = ingest_once(node, db, env=env)
    assert "event=lake_emptied" in proc.stderr
    assert (lake / "nodetap-lake.json").exists()
    sql = run_cli("sql", "--db", str(db), "SELECT count(*) AS n FROM history.trades", "--format", "csv")
    assert int(sql.stdout.split()[1]) < expect(node)[2]  # the pruned hour's trades went with the lake


# ------------------------------------------------------------------ crashes inside sealing
def copy_until(src: Path, dst: Path, hour: int, share: float) -> None:
    """Copy src's hour files to dst: every hour before `hour` whole, `share` of that hour's
    lines (the rest is appended on a later call), nothing after it."""
    for f in (p for p in src.rglob("*") if p.is_file()):
        out = dst / f.relative_to(src)
        out.parent.mkdir(parents=True, exist_ok=True)
        lines = f.read_bytes().splitlines(keepends=True)
        h = int(f.name)
        keep = len(lines) if h < hour else int(len(lines) * share) if h == hour else 0
        have = out.stat().st_size if out.exists() else 0
        data = b"".join(lines[:keep])
        if len(data) > have:
            with open(out, "ab") as w:
                w.write(data[have:])


@pytest.mark.parametrize("point", ["seal_after_rename", "seal_before_commit",
                                   "seal_after_commit", "prune_before_commit"])
def test_sigkill_inside_sealing_leaves_no_seam_or_duplicate(
        make_node_dir: Callable[..., Path], tmp_path: Path, point: str) -> None:
    # ~1.5 h of a quiet node: hours 10 (its last minute), 11 and 12
    src = make_node_dir(lines=8000, name="src", start=datetime(2026, 1, 5, 10, 59, tzinfo=UTC),
                        events_per_block=0.2)
    node = tmp_path / "node"
    db = tmp_path / "s.duckdb"
    env = {"NODETAP_SEAL_GRACE_S": "0", "NODETAP_RETAIN_HOURS": "0"}
    copy_until(src, node, 11, 0.5)
    ingest_once(node, db, env=env)  # hour 10 sealed: the views read the lake from now on
    (sealed,), = query(db, "SELECT count(*) FROM lake_hours")
    assert sealed == 4
    copy_until(src, node, 13, 0.0)  # the rest: hour 11 completes, hour 12 begins
    if point == "prune_before_commit":
        ingest_once(node, db, env=env)  # hour 11 sealed too, nothing pruned yet
        env["NODETAP_RETAIN_HOURS"] = "0.5"
    proc = ingest_once(node, db, check=False, env={**env, "NODETAP_FAULT": point})
    assert proc.returncode == -signal.SIGKILL
    assert stored(db) == expect(src)  # right after the crash, before any recovery
    ingest_once(node, db, env=env)
    assert stored(db) == expect(src)
    (sealed, pruned), = query(db, "SELECT count(*), count(*) FILTER (WHERE pruned) FROM lake_hours")
    assert (sealed, pruned) == (8, 8 if point == "prune_before_commit" else 0)


# ---------------------------------------------------------------------------- file faults
def order(oid: int, minute: int = 10) -> bytes:
    from tests.test_lake import order_line

    return order_line(f"2026-01-05T11:{minute:02d}:00", oid)


def orders_in(db: Path) -> list[int]:
    return [r[0] for r in query(db, "SELECT oid FROM orders ORDER BY oid")]


def test_rewrite_in_place_that_grows_loses_and_doubles_nothing(tmp_path: Path) -> None:
    node = tmp_path / "node"
    hour = node / ORDERS / "hourly" / "20260105" / "11"
    hour.parent.mkdir(parents=True)
    hour.write_bytes(b"".join(order(i) + b"\n" for i in range(10, 400)))
    db = tmp_path / "r.duckdb"
    ingest_once(node, db)
    ino = hour.stat().st_ino
    with open(hour, "r+b") as f:  # same inode: truncated, then written longer
        f.truncate(0)
        f.write(b"".join(order(i) + b"\n" for i in range(400)))
    assert hour.stat().st_ino == ino
    proc = ingest_once(node, db)
    assert "event=file_rewritten" in proc.stderr
    assert orders_in(db) == list(range(400))


def test_replaced_file_never_stores_its_old_lines_again(tmp_path: Path) -> None:
    node = tmp_path / "node"
    hour = node / ORDERS / "hourly" / "20260105" / "11"
    hour.parent.mkdir(parents=True)
    hour.write_bytes(b"".join(order(i) + b"\n" for i in range(30)))
    db = tmp_path / "p.duckdb"
    ingest_once(node, db)
    new = hour.with_name("new")
    new.write_bytes(b"".join(order(i) + b"\n" for i in range(45)))
    os.rename(hour, hour.with_name("old"))  # keeps the old inode from being reused
    os.rename(new, hour)
    ingest_once(node, db)
    assert orders_in(db) == list(range(45))
    assert query(db, "SELECT reason FROM gaps") == [("replaced",)]


def test_the_gap_of_a_file_read_again_has_no_reversed_time_range(tmp_path: Path) -> None:
    """A truncated file is read again from its start, earlier than the stream's watermark: its
    gap (no bytes missing) closes at the time it opened, not before it."""
    hour = tmp_path / "node" / ORDERS / "hourly" / "20260105" / "11"
    hour.parent.mkdir(parents=True)
    lines = [order(i, minute=10 + i) for i in range(10)]
    hour.write_bytes(b"".join(line + b"\n" for line in lines))
    db = tmp_path / "g.duckdb"
    ingest_once(node := tmp_path / "node", db)
    os.truncate(hour, sum(len(line) + 1 for line in lines[:5]))
    ingest_once(node, db)
    assert query(db, "SELECT reason, strftime(time_from, '%H:%M'), strftime(time_to, '%H:%M') FROM gaps") == [
        ("truncated", "11:19", "11:19")]


def test_a_file_read_again_records_its_rejects_once(tmp_path: Path) -> None:
    """A file truncated (or rewritten) under the cursor is read again from 0: its bad lines,
    recorded already, were recorded a second time (2 rejects became 4)."""
    node = tmp_path / "node"
    hour = node / ORDERS / "hourly" / "20260105" / "11"
    hour.parent.mkdir(parents=True)
    lines = [order(i) for i in range(10)]
    lines[2], lines[5] = b'{"time":"x"}', b"not json"
    hour.write_bytes(b"".join(line + b"\n" for line in lines))
    db = tmp_path / "j.duckdb"
    small = ("--batch-max-bytes", "1000")  # 2 lines a batch: rejects after the batch that goes back to 0

    def rejects() -> tuple[list[tuple[int, str]], int]:
        stored = query(db, 'SELECT "offset", line FROM rejects ORDER BY "offset", line')
        return stored, query(db, "SELECT rejects FROM cursors")[0][0]

    ingest_once(node, db, *small)
    first = rejects()
    at = [sum(len(x) + 1 for x in lines[:i]) for i in (2, 5)]
    assert first == ([(at[0], '{"time":"x"}'), (at[1], "not json")], 2)
    os.truncate(hour, hour.stat().st_size - len(lines[-1]) - 1)  # both bad lines left
    assert "event=file_truncated" in ingest_once(node, db, *small).stderr
    assert rejects() == first
    # replaced, with another bad line where one was: that one is a new reject
    lines[5] = b"NOT JSON"
    new = hour.with_name("new")
    new.write_bytes(b"".join(line + b"\n" for line in [*lines, order(10)]))
    os.rename(hour, hour.with_name("old"))  # keeps the old inode from being reused
    os.rename(new, hour)
    assert "event=file_replaced" in ingest_once(node, db, *small).stderr
    assert rejects() == ([(at[0], '{"time":"x"}'), (at[1], "NOT JSON"), (at[1], "not json")], 3)
    assert orders_in(db) == [0, 1, 3, 4, 6, 7, 8, 9, 10]


def test_backfill_counts_only_the_rejects_it_stored(tmp_path: Path) -> None:
    """Backfill's summary counts rejects as the store does: a file read again (truncated under
    its cursor) has its bad lines stored already, and they are not counted a second time."""
    hour = tmp_path / "node" / ORDERS / "hourly" / "20260105" / "11"
    hour.parent.mkdir(parents=True)
    lines = [order(i) for i in range(10)]
    lines[2], lines[5] = b'{"time":"x"}', b"not json"
    hour.write_bytes(b"".join(line + b"\n" for line in lines))
    db = tmp_path / "b.duckdb"
    first = run_cli("backfill", str(hour), "--db", str(db), "--quiet", "--keep-all")
    assert "lines=10 " in first.stdout and "rejects=2" in first.stdout
    os.truncate(hour, hour.stat().st_size - len(lines[-1]) - 1)  # both bad lines left
    again = run_cli("backfill", str(hour), "--db", str(db), "--quiet", "--keep-all")
    assert "lines=9 " in again.stdout and "rejects=0" in again.stdout
    assert query(db, "SELECT count(*) FROM rejects") == [(2,)]
    assert orders_in(db) == [0, 1, 3, 4, 6, 7, 8, 9]  # read once each


def test_an_hour_file_that_appears_late_is_read(tmp_path: Path) -> None:
    node = tmp_path / "node"
    day = node / ORDERS / "hourly" / "20260105"
    day.mkdir(parents=True)
    (day / "10").write_bytes(order(1, 5) + b"\n")
    (day / "12").write_bytes(order(2, 6) + b"\n")
    db = tmp_path / "o.duckdb"
    ingest_once(node, db)
    (day / "11").write_bytes(b"".join(order(i) + b"\n" for i in range(100, 120)))
    with open(day / "12", "ab") as f:
        f.write(order(3) + b"\n")
    proc = ingest_once(node, db)
    assert "event=file_out_of_order" in proc.stderr
    assert orders_in(db) == [1, 2, 3, *range(100, 120)]
    ingest_once(node, db)  # and never again
    assert len(orders_in(db)) == 23


def test_a_missing_node_dir_is_waited_for(make_node_dir: Callable[..., Path],
                                          tmp_path: Path) -> None:
    src = make_node_dir(lines=1000, name="src")
    node = tmp_path / "later"
    db = tmp_path / "w.duckdb"
    log = tmp_path / "ingest.log"
    with log.open("wb") as stderr:
        proc = subprocess.Popen(
            [sys.executable, "-m", "etl.cli", "ingest", "--node-dir", str(node), "--db", str(db),
             "--from", "start", "--keep-all", "--debounce-ms", "5", "--poll"],
            cwd=ROOT, stdout=subprocess.DEVNULL, stderr=stderr)
    try:
        # the dir appears once the pipeline has said it waits for it (the status file is written
        # before it looks: a dir made then would never have been missing)
        wait_for(lambda: b"event=node_dir_missing" in log.read_bytes(), timeout=60)
        assert proc.poll() is None and status_file(db).exists()
        src.rename(node)
        total = sum(len(p.read_bytes().splitlines()) for p in node.rglob("*") if p.is_file())
        wait_for(lambda: sum(r.get("lines", 0) for r in orjson.loads(
            status_file(db).read_bytes())["streams"]) == total, timeout=60)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)
    err = log.read_bytes()
    assert proc.returncode == 0, err
    assert b"event=node_dir_found" in err
    # bound to it once it appeared, not before
    assert err.index(b"event=node_dir_found") < err.index(b"event=db_bound")
    assert query(db, "SELECT value FROM meta WHERE key = 'node_dir'") == [(str(node.resolve()),)]


def test_a_mistyped_node_dir_never_found_does_not_hold_the_database(
        make_node_dir: Callable[..., Path], tmp_path: Path) -> None:
    node = make_node_dir(lines=500)
    db = tmp_path / "m.duckdb"
    log = tmp_path / "typo.log"
    with log.open("wb") as stderr:
        proc = subprocess.Popen(
            [sys.executable, "-m", "etl.cli", "ingest", "--node-dir", str(tmp_path / "nod"), "--db", str(db),
             "--poll"], cwd=ROOT, stdout=subprocess.DEVNULL, stderr=stderr)
    try:
        wait_for(lambda: b"event=node_dir_missing" in log.read_bytes(), timeout=60)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)
    assert proc.returncode == 0 and b"event=db_bound" not in log.read_bytes()
    ingest_once(node, db)  # the path fixed: this node dir's database
    assert query(db, "SELECT value FROM meta WHERE key = 'node_dir'") == [(str(node.resolve()),)]


# ------------------------------------------------------------------------------ migration
def test_a_database_of_the_previous_version_resumes_without_duplicates(
        make_node_dir: Callable[..., Path], tmp_path: Path) -> None:
    node = make_node_dir(lines=4000, start=datetime(2026, 1, 5, 10, 59, 50, tzinfo=UTC))
    last = hour_files_of(node, ORDERS)[-1]
    full = last.read_bytes()
    half = full[:full.index(b"\n", len(full) // 2) + 1]
    last.write_bytes(half)
    db = tmp_path / "old.duckdb"
    env = {"NODETAP_SEAL_GRACE_S": "0"}
    ingest_once(node, db, env=env)
    # what version 1 left: cursors per stream only, no file cursors, no identity, and the
    # lake in `lake/` beside the database, without a manifest
    con = duckdb.connect(str(db))
    con.execute("DROP TABLE file_cursors")
    con.execute("DROP TABLE meta")
    con.close()
    (tmp_path / "old.duckdb.lake" / "nodetap-lake.json").unlink()
    (tmp_path / "old.duckdb.lake").rename(tmp_path / "lake")
    with open(last, "ab") as f:
        f.write(full[len(half):])
    proc = ingest_once(node, db, "--log-level", "INFO", env=env)
    assert "event=db_migrated" in proc.stderr and "event=lake_legacy_location" in proc.stderr
    assert stored(db) == expect(node)
    assert (tmp_path / "lake" / "nodetap-lake.json").exists()
    assert not (tmp_path / "old.duckdb.lake").exists()
    assert query(db, "SELECT value FROM meta WHERE key = 'node_dir'") == [(str(node.resolve()),)]


# ------------------------------------------------------------------ a node writing events again
def _block_of(line: bytes) -> object:
    """What a line's events share with the rest of their block: its number, else its time."""
    obj = orjson.loads(line)
    if isinstance(obj, list):
        return obj[1]["time"]
    return obj.get("block_number") or obj["time"]


def _block_start(lines: list[bytes], share: float) -> int:
    """The index of the first line of the first block at `share` of `lines` or after."""
    k = int(len(lines) * share)
    while 0 < k < len(lines) and _block_of(lines[k]) == _block_of(lines[k - 1]):
        k += 1
    return k


def _replay(path: Path, share: float) -> bytes:
    """The lines of `path` from the first block at `share` of its lines on: what a node
    restarted from a checkpoint writes again."""
    lines = path.read_bytes().splitlines(keepends=True)
    return b"".join(lines[_block_start(lines, share):])


@pytest.mark.parametrize("variant", ["plain", "by_block"])
def test_events_a_restarted_node_writes_again_are_stored_once(
        make_node_dir: Callable[..., Path], tmp_path: Path, variant: str) -> None:
    """A node restarted from its last checkpoint writes the blocks after it again, after the
    lines already in its hour file (hyperliquid-dex/node#136), or into the next hour's file:
    the events stored already are dropped, whether the run reading them read the events before
    (it keeps the keys of its watermark's) or not (the store is asked), and the events after
    them are stored."""
    node = make_node_dir(lines=6000, variant=variant)
    want = stored_of(shutil.copytree(node, tmp_path / "whole"), tmp_path)
    sfx = "" if variant == "plain" else "_by_block"
    last = {kind: hour_files_of(node, kind + sfx)[-1] for kind in (ORDERS, FILLS)}
    later = {}
    for kind, path in last.items():  # the last fifth of each file is written after the restarts
        lines = path.read_bytes().splitlines(keepends=True)
        k = _block_start(lines, 0.8)
        path.write_bytes(b"".join(lines[:k]))
        later[kind] = b"".join(lines[k:])
    db = tmp_path / "r.duckdb"
    small = ("--batch-max-bytes", "100000")  # blocks cut across units
    ingest_once(node, db, *small)
    first = stored(db)
    assert first[0] == first[1] > 0 and first[2] == first[3] > 0  # (orders, distinct, trades, distinct, v)
    # the node restarts: the last third of each file written again after it, read by a new run
    for path in last.values():
        with open(path, "ab") as f:
            f.write(_replay(path, 0.66))
    out = ingest_once(node, db, *small).stderr
    assert stored(db) == first
    assert "event=rewind" in out
    # a run that stays: the node writes the next hour's file, restarts and writes the end of it
    # again into it (the run has the keys of its watermark's events), then the events after them
    nxt = {kind: path.with_name(str(int(path.name) + 1)) for kind, path in last.items()}
    log = tmp_path / "live.log"
    with log.open("wb") as stderr:
        proc = subprocess.Popen(
            [sys.executable, "-m", "etl.cli", "ingest", "--node-dir", str(node), "--db", str(db),
             *KEEP, *small, "--debounce-ms", "5", "--poll"], cwd=ROOT, stdout=subprocess.DEVNULL,
            stderr=stderr)
    try:
        for step in range(3):
            for kind, path in nxt.items():
                lines = later[kind].splitlines(keepends=True)
                cut = _block_start(lines, 0.25) + 1  # inside a block (plain: a line per event)
                half = _block_start(lines, 0.5)
                with open(path, "ab") as f:
                    f.write(b"".join(lines[:cut] if step == 0 else lines[cut:half] if step == 1 else
                                     lines[_block_start(lines[:half], 0.5):]))
            written = sum(len(p.read_bytes().splitlines()) for p in node.rglob("*") if p.is_file())
            wait_for(lambda n=written: sum(r.get("lines", 0) for r in orjson.loads(
                status_file(db).read_bytes())["streams"]) == n, timeout=60)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)
    assert proc.returncode == 0, log.read_text()
    assert "event=rewind" in log.read_text()
    got = stored(db)
    assert got[:4] == want[:4] and got[4] == pytest.approx(want[4])
    assert not query(db, "SELECT * FROM rejects")
    # an archive holding a rewind, backfilled: each event once
    archive = shutil.copytree(tmp_path / "whole", tmp_path / "archive")
    for kind in (ORDERS, FILLS):
        path = hour_files_of(archive, kind + sfx)[-1]
        with open(path, "ab") as f:
            f.write(_replay(path, 0.5))
    run_cli("backfill", str(archive), "--db", str(tmp_path / "b.duckdb"), "--quiet", "--keep-all",
            "--batch-max-bytes", "100000")
    got = stored(tmp_path / "b.duckdb")
    assert got[:4] == want[:4] and got[4] == pytest.approx(want[4])


def stored_of(node: Path, tmp_path: Path) -> tuple[int, int, int, int, float]:
    """What a node dir alone stores."""
    db = tmp_path / f"{node.name}.duckdb"
    ingest_once(node, db)
    return stored(db)
