"""Units committed side by side (`commit_units`, etl/lanes.py): each in a transaction of its own,
committed in order, its cursor in `cursor_log` until folded into `cursors` and `file_cursors`.
Exactly once holds: every line stored once, in file order, and the cursors where a unit
committed one at a time would have left them."""

from __future__ import annotations

import logging
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import etl.lanes
from etl.config import Settings
from etl.parse import parse
from etl.pipeline import Pipeline
from etl.simulate import generate
from etl.store import BatchResult, Store
from etl.tail import Cursor
from tests.conftest import ROOT, query, run_cli

ORDERS = "node_order_statuses"


def oids_in_file_order(node: Path) -> list[int]:
    files = sorted((p for p in (node / ORDERS).rglob("*") if p.is_file()),
                   key=lambda p: (p.parent.name, int(p.name)))
    return [oid for p in files for oid in parse("orders", "plain", p.read_bytes()).frame["oid"].to_list()]


def catch_up(node: Path, db: Path, **settings: object) -> tuple[Pipeline, Store]:
    s = Settings(node_dir=node, db=db, start_from="start", keep_all=True, streams=(ORDERS,),
                 batch_max_bytes=256 << 10, commit_units=2, db_threads=2, **settings)  # type: ignore[arg-type]
    store = Store.from_settings(s)
    pipe = Pipeline(s, store)
    pipe.run_once()
    return pipe, store


def test_units_committed_side_by_side_store_every_line_once_in_file_order(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(etl.lanes, "SIDE_BY_SIDE_ROWS", 200)  # a row group is 122,880 rows
    node = tmp_path / "node"
    generate(node, lines=20_000, kinds=("orders",), seed=5)
    want = oids_in_file_order(node)
    pipe, store = catch_up(node, tmp_path / "s.duckdb")
    try:
        lane = pipe.states[ORDERS]
        assert lane.commit_units == 2 and lane._seq > 10  # most units went side by side
        got = [r[0] for r in store.con.execute("SELECT oid FROM orders ORDER BY rowid").fetchall()]
        assert got == want
        assert query_one(store, "SELECT count(*) FROM cursor_log") == 0  # every entry folded
        size = sum(p.stat().st_size for p in (node / ORDERS).rglob("*") if p.is_file())
        assert store.con.execute("SELECT lines, rows, bytes FROM cursors").fetchall() == [
            (len(want), len(want), size)]
        offsets = dict(store.con.execute('SELECT file, "offset" FROM file_cursors').fetchall())
        assert offsets == {f"{p.parent.name}/{p.name}": p.stat().st_size
                           for p in (node / ORDERS).rglob("*") if p.is_file()}
    finally:
        pipe.close()
        store.close()


def test_a_unit_that_fails_side_by_side_is_committed_again_alone(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    """A side-by-side transaction that fails (a conflict, memory, here an injected error) rolls
    back, the units after it roll back too, and the lane commits them all alone, in order."""
    monkeypatch.setattr(etl.lanes, "SIDE_BY_SIDE_ROWS", 200)
    monkeypatch.setenv("NODETAP_FAULT", "raise:side_by_side_staged")
    node = tmp_path / "node"
    generate(node, lines=8_000, kinds=("orders",), seed=6)
    want = oids_in_file_order(node)
    with caplog.at_level(logging.WARNING, logger="nodetap.lanes"):
        pipe, store = catch_up(node, tmp_path / "f.duckdb")
    try:
        assert pipe.states[ORDERS]._seq > 2
        assert "event=side_by_side_failed" in caplog.text and "FaultInjected" in caplog.text
        got = [r[0] for r in store.con.execute("SELECT oid FROM orders ORDER BY rowid").fetchall()]
        assert got == want
        assert store.con.execute("SELECT lines, rows FROM cursors").fetchall() == [(len(want), len(want))]
        assert query_one(store, "SELECT count(*) FROM cursor_log") == 0
    finally:
        pipe.close()
        store.close()


def query_one(store: Store, sql: str) -> object:
    row = store.con.execute(sql).fetchone()
    assert row is not None
    return row[0]


def test_opening_the_store_folds_cursor_log_entries_a_stop_left(tmp_path: Path) -> None:
    """A unit committed side by side whose cursor the lane had not yet folded (the process
    stopped in between) counts on the next start: `cursors` and `file_cursors` move to it."""
    db = tmp_path / "l.duckdb"
    store = Store(db)
    view = store.for_thread()
    for seq, (offset, lines) in enumerate([(1000, 10), (2500, 15)], start=1):
        batch = BatchResult(stream=ORDERS, kind="orders", cursor=Cursor("20260105/10", 7, offset, 99),
                            file="20260105/10", lines=lines, nbytes=offset, rejects=[], gaps=[],
                            est_line_bytes=100.0, last_time=None, first_time=None)
        assert view.stage(batch, {}, seq) is not None
        view.finish()
    assert query_one(store, "SELECT count(*) FROM cursor_log") == 2
    assert store.con.execute("SELECT count(*) FROM cursors").fetchone() == (0,)
    store.close()

    again = Store(db)
    try:
        assert query_one(again, "SELECT count(*) FROM cursor_log") == 0
        assert again.con.execute('SELECT file, inode, "offset", lines, bytes FROM cursors').fetchall() == [
            ("20260105/10", 7, 2500, 25, 3500)]
        fc = again.files.get(ORDERS, "20260105/10")
        assert fc is not None and (fc.inode, fc.offset, fc.fp) == (7, 2500, 99)
        assert again.cursors()[ORDERS] == Cursor("20260105/10", 7, 2500, 99)
    finally:
        again.close()


@pytest.mark.reliability
def test_kill_9_while_committing_side_by_side_loses_and_duplicates_nothing(tmp_path: Path) -> None:
    """Keep-all over whole row groups, two units committing side by side: `ingest` killed at
    random moments, then finished with --once, stores every line once, in file order."""
    node = tmp_path / "node"
    generate(node, lines=1_000_000, kinds=("orders",), seed=12)
    want = oids_in_file_order(node)
    db = tmp_path / "k.duckdb"
    cmd = [sys.executable, "-m", "etl.cli", "ingest", "--node-dir", str(node), "--db", str(db),
           "--from", "start", "--keep-all"]
    env = {"NODETAP_COMMIT_UNITS": "2", "NODETAP_DB_THREADS": "2"}
    rng = random.Random(4)
    for _ in range(10):
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                env={**os.environ, **env})
        time.sleep(rng.uniform(1.0, 2.5))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    run_cli(*cmd[3:], "--once", env=env, timeout=300)
    assert [r[0] for r in query(db, "SELECT oid FROM orders ORDER BY rowid")] == want
    assert query(db, "SELECT lines, rows FROM cursors") == [(len(want), len(want))]
    assert query(db, "SELECT count(*) FROM cursor_log") == [(0,)]
