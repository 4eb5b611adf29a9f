"""Lanes: each stream runs on its own, so trades never wait behind order statuses, and a
trade whose two fills land in different batches still carries both users."""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path

import duckdb
import orjson
import pytest

from etl import priority
from etl.config import Settings
from etl.lanes import Processed, default_parse_workers
from etl.parse import pool
from etl.pipeline import Pipeline
from etl.store import Store
from tests.conftest import hour_file, query, wait_for

TAKER, MAKER = "0x" + "1" * 40, "0x" + "2" * 40
def order_lines(n: int) -> bytes:
    """`n` order statuses of one block (one time), each of its own order."""
    return b"".join(
        b'{"time":"2026-01-05T10:00:00","user":"0xa","hash":null,"builder":null,"status":"open",'
        b'"order":{"coin":"BTC","side":"B","limitPx":"1.0","sz":"1","oid":%d,"timestamp":1,'
        b'"origSz":"1"}}\n' % oid for oid in range(n))


@contextmanager
def opened(settings: Settings) -> Iterator[tuple[Pipeline, Store]]:
    """A pipeline opened (its lanes made, not started) on a store of its own; both closed after."""
    store = Store.from_settings(settings)
    pipe = Pipeline(settings, store)
    try:
        pipe.open()
        yield pipe, store
    finally:
        pipe.close()
        store.close()


def fill(user: str, tid: int, crossed: bool, t: str = "2026-01-05T10:00:01") -> bytes:
    ms = int(datetime.fromisoformat(t + "+00:00").timestamp() * 1000)
    return orjson.dumps([user, {
        "coin": "BTC", "px": "100.0", "sz": "1.0", "side": "B" if crossed else "A", "time": ms,
        "startPosition": "0.0", "dir": "Open Long", "closedPnl": "0.0", "hash": "0x02",
        "oid": tid * 10 + crossed, "crossed": crossed, "fee": "0.25", "tid": tid,
        "feeToken": "USDC", "twapId": None}]) + b"\n"


class Feed:
    """A pipeline listener that records what each lane published, and when."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.items: list[tuple[float, Processed]] = []

    def __call__(self, p: Processed) -> None:
        with self.lock:
            self.items.append((time.monotonic(), p))

    def trades(self) -> list[tuple[float, dict[str, object]]]:
        with self.lock:
            return [(t, row) for t, p in self.items if "trades" in p.frames
                    for row in p.frames["trades"].to_dicts()]

    def batches(self, stream: str) -> int:
        with self.lock:
            return sum(1 for _, p in self.items if p.stream.name == stream and p.result is not None)

    def lines(self, stream: str) -> int:
        with self.lock:
            return sum(p.result.lines for _, p in self.items if p.stream.name == stream and p.result)


def running(settings: Settings, feed: Feed) -> tuple[Pipeline, threading.Thread, Store]:
    store = Store.from_settings(settings)
    pipe = Pipeline(settings, store, listeners=[feed])
    thread = threading.Thread(target=pipe.run, daemon=True)
    thread.start()
    return pipe, thread, store


def stop(pipe: Pipeline, thread: threading.Thread, store: Store) -> None:
    pipe.stop()
    thread.join(30)
    pipe.close()
    store.close()


def test_a_huge_order_status_backlog_does_not_delay_trades(
        make_node_dir: Callable[..., Path], tmp_path: Path) -> None:
    # ~60 MB of order statuses, read 256 KiB at a time with every row kept: seconds of work
    src = make_node_dir(lines=2000, kinds=("orders",), name="src",
                        start=datetime(2026, 1, 5, 10, 0, tzinfo=UTC))
    lines = b"".join(p.read_bytes() for p in sorted(src.rglob("*")) if p.is_file())
    node = tmp_path / "node"
    orders = hour_file(node, "node_order_statuses", "20260105", 10)
    orders.write_bytes(lines * 60)
    fills = hour_file(node, "node_fills", "20260105", 10)
    fills.write_bytes(b"")
    s = Settings(node_dir=node, db=tmp_path / "d.duckdb", start_from="start", backlog="keep",
                 keep_all=True, batch_max_bytes=256 << 10, debounce_ms=5)
    feed = Feed()
    pipe, thread, store = running(s, feed)
    try:
        wait_for(lambda: feed.batches("node_order_statuses") >= 3, timeout=60)
        fills_batches = feed.batches("node_fills")
        written = time.monotonic()
        with open(fills, "ab") as f:
            f.write(fill(TAKER, 7, True) + fill(MAKER, 7, False))
        wait_for(lambda: any(row["tid"] == 7 for _, row in feed.trades()), timeout=30)
        orders_lane = pipe.states["node_order_statuses"]
        # published while the order statuses were still far behind ...
        assert orders_lane.cursor.offset < orders.stat().st_size // 2
        # ... by the first fills batch after the write, both users on it
        assert feed.batches("node_fills") == fills_batches + 1
        (at, trade), = [(t, row) for t, row in feed.trades() if row["tid"] == 7]
        assert (trade["buyer"], trade["seller"]) == (TAKER, MAKER)
        assert at - written < 5.0  # the orders lane alone needs far longer to catch up
    finally:
        stop(pipe, thread, store)


def test_a_trade_split_over_two_batches_goes_out_once_with_both_users(tmp_path: Path) -> None:
    node = tmp_path / "node"
    fills = hour_file(node, "node_fills", "20260105", 10)
    fills.write_bytes(fill(TAKER, 1, True) + fill(MAKER, 1, False))
    s = Settings(node_dir=node, db=tmp_path / "d.duckdb", start_from="start", debounce_ms=5)
    feed = Feed()
    pipe, thread, store = running(s, feed)
    try:
        wait_for(lambda: len(feed.trades()) == 1, timeout=30)
        batches = feed.batches("node_fills")
        with open(fills, "ab") as f:  # the taker's fill in one batch ...
            f.write(fill(TAKER, 2, True))
        wait_for(lambda: feed.batches("node_fills") > batches, timeout=30)
        with open(fills, "ab") as f:  # ... its maker's in the next
            f.write(fill(MAKER, 2, False))
        wait_for(lambda: len(feed.trades()) == 2, timeout=30)
    finally:
        stop(pipe, thread, store)
    users = {row["tid"]: (row["buyer"], row["seller"]) for _, row in feed.trades()}
    assert users == {1: (TAKER, MAKER), 2: (TAKER, MAKER)}
    assert query(s.db, "SELECT tid, buyer, seller FROM trades ORDER BY tid") == [
        (1, TAKER, MAKER), (2, TAKER, MAKER)]


def test_a_fill_whose_maker_never_comes_goes_out_after_the_hold(tmp_path: Path) -> None:
    node = tmp_path / "node"
    fills = hour_file(node, "node_fills", "20260105", 10)
    fills.write_bytes(fill(TAKER, 3, True))
    s = Settings(node_dir=node, db=tmp_path / "d.duckdb", start_from="start", debounce_ms=5)
    feed = Feed()
    pipe, thread, store = running(s, feed)
    try:
        wait_for(lambda: len(feed.trades()) == 1, timeout=30)
    finally:
        stop(pipe, thread, store)
    ((_, trade),) = feed.trades()
    assert (trade["tid"], trade["buyer"], trade["seller"]) == (3, TAKER, None)


def stored(store: Store) -> dict[str, int]:
    con = store.reader()
    try:
        return {kind: con.execute(f"SELECT count(*) FROM {table}").fetchone()[0]  # type: ignore[index]
                for kind, table in (("order_statuses", "orders"), ("fills", "fills"))}
    finally:
        con.close()


def take_memory(store: Store) -> None:
    """Lower DuckDB's memory limit to just above what it uses (a block of 256 KiB no longer
    fits), trying again while the pipeline's own queries move what it uses."""
    for _ in range(100):
        used = store.con.execute("SELECT sum(memory_usage_bytes) FROM duckdb_memory()").fetchone()
        try:
            store.con.execute(f"SET memory_limit = '{int(used[0]) + (32 << 10)}B'")  # type: ignore[index]
            return
        except duckdb.OutOfMemoryException:
            continue
    raise AssertionError("could not lower DuckDB's memory limit")


def test_a_commit_out_of_memory_waits_and_commits_once_memory_is_back(
        make_node_dir: Callable[..., Path], settings_for: Callable[..., Settings],
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    src = make_node_dir(lines=2000, kinds=("orders", "fills"), name="src")
    files = {p.relative_to(src): p.read_bytes() for p in src.rglob("*") if p.is_file()}
    lines = {kind: sum(data.count(b"\n") for rel, data in files.items() if rel.parts[0] == f"node_{kind}")
             for kind in ("order_statuses", "fills")}
    node = tmp_path / "node"
    for rel in files:  # the hour files, empty for now
        (node / rel).parent.mkdir(parents=True, exist_ok=True)
        (node / rel).write_bytes(b"")
    s = settings_for(node, keep_all=True)
    store = Store.from_settings(s)
    pipe = Pipeline(s, store, listeners=[])
    relieved: list[int] = []
    store.memory_relief.append(lambda: relieved.append(1) or 0)
    thread = threading.Thread(target=pipe.run, daemon=True)
    caplog.set_level(logging.WARNING)
    thread.start()
    try:
        lanes = pipe.states
        wait_for(lambda: len(lanes) == 2 and all(lane.thread is not None for lane in lanes.values()),
                 timeout=60)
        # DuckDB's memory is taken (as by SQL queries): every commit runs out of it
        take_memory(store)
        for rel, data in files.items():
            (node / rel).write_bytes(data)
        wait_for(lambda: all(lane.memory_waits >= 2 for lane in lanes.values()), timeout=60)
        assert all(lane.cursor.offset == 0 for lane in lanes.values())  # nothing stored yet
        assert all(lane.thread is not None and lane.thread.is_alive() for lane in lanes.values())
        assert relieved  # the API's reads would have been interrupted
        store.con.execute("SET memory_limit = '1GB'")  # the queries are over
        wait_for(lambda: stored(store) == lines, timeout=60)
    finally:
        pipe.stop()
        thread.join(30)
        pipe.close()
        store.close()
    events = [r.getMessage().split()[0] for r in caplog.records]
    assert "event=commit_out_of_memory" in events and "event=commit_memory_back" in events
    assert "event=lane_error" not in events and "event=pipeline_error" not in events
    # every line once
    assert query(s.db, "SELECT count(*) = count(DISTINCT (user, oid, status, time)) FROM orders") == [(True,)]
    assert query(s.db, "SELECT count(*) = count(DISTINCT (tid, user)) FROM fills") == [(True,)]


def test_a_lane_reads_the_next_hour_file_before_committing_the_move_to_it(tmp_path: Path) -> None:
    """The batch that moves the cursor to the next file holds no lines: the lane reads on past it,
    so that the next file's lines parse while the last file's commit (etl/lanes.py)."""
    node = tmp_path / "node"
    hour_file(node, "node_fills", "20260105", 10).write_bytes(fill(TAKER, 1, True) + fill(MAKER, 1, False))
    hour_file(node, "node_fills", "20260105", 11).write_bytes(
        fill(TAKER, 2, True, "2026-01-05T11:00:01") + fill(MAKER, 2, False, "2026-01-05T11:00:01"))
    s = Settings(node_dir=node, db=tmp_path / "d.duckdb", start_from="start", parse_workers=1)
    with opened(s) as (pipe, store):
        lane = pipe.states["node_fills"]
        assert lane.step()  # hour 10's lines, committed
        assert lane.read_cursor.file == "20260105/11" and lane.read_cursor.offset > 0
        assert lane.drain() == 2  # the move, then hour 11's lines
        assert store.con.execute("SELECT count(*) FROM fills").fetchone() == (4,)


@pytest.mark.parametrize(("keep_all", "parse_workers"), [(False, 0), (True, 0), (False, 1)])
def test_an_order_lane_that_pre_filters_parses_two_units_at_once(
        tmp_path: Path, keep_all: bool, parse_workers: int) -> None:
    """With the default `parse_workers`, an order-status lane behind reads and parses two units
    at once while its rules pre-filter (each holds a fraction of a decoded unit), else
    `workers`; a `parse_workers` set by hand is kept (etl/lanes.py)."""
    node = tmp_path / "node"
    hour_file(node, "node_order_statuses", "20260105", 10).write_bytes(order_lines(3000))
    s = Settings(node_dir=node, db=tmp_path / "d.duckdb", start_from="start", keep_all=keep_all,
                 parse_workers=parse_workers, batch_max_bytes=64 << 10)
    with opened(s) as (pipe, store):
        lane = pipe.states["node_order_statuses"]
        want = lane.workers if keep_all or parse_workers else max(lane.workers, 2)
        assert lane.workers == (parse_workers or default_parse_workers())
        lane.behind = True
        lane._read_ahead()
        assert sum(1 for f in lane._pending if f not in lane._empty) == want
        assert lane.drain() > 0
        assert store.con.execute("SELECT count(*) FROM orders").fetchone() == (3000 if keep_all else 0,)


@pytest.mark.parametrize("keep_all", [True, False])
def test_a_lane_behind_reads_the_bytes_of_a_batch_decoded_whole_on_its_parse_worker(
        tmp_path: Path, keep_all: bool) -> None:
    """Behind, a lane whose units are decoded whole leaves each batch's bytes to its parse
    worker (its own thread commits the unit before); one whose rules pre-filter reads them
    itself (etl/lanes.py). Every line is stored once either way."""
    node = tmp_path / "node"
    hour_file(node, "node_order_statuses", "20260105", 10).write_bytes(order_lines(6000))  # ~1.2 MB
    s = Settings(node_dir=node, db=tmp_path / "d.duckdb", start_from="start", keep_all=keep_all,
                 batch_max_bytes=256 << 10)
    with opened(s) as (pipe, store):
        lane = pipe.states["node_order_statuses"]
        lane.behind = True
        lane._read_ahead()
        read = sum(1 for f in lane._pending if f not in lane._empty)
        assert read >= 1 and lane.tailer.deferred_reads == (read if keep_all else 0)
        assert lane.drain() > 0
        assert store.con.execute("SELECT lines FROM cursors").fetchone() == (6000,)
        assert store.con.execute("SELECT count(*) FROM orders").fetchone() == (6000 if keep_all else 0,)


def test_the_end_of_a_backlog_parses_two_units_at_once_too(tmp_path: Path) -> None:
    """A lane no longer behind (less than four live batches unread) still pre-filters two units
    at once while a whole live batch more waits behind the last one read (etl/lanes.py)."""
    node = tmp_path / "node"
    # three batches of ~2,800 lines, enough to pre-filter (etl/prefilter.py)
    hour_file(node, "node_order_statuses", "20260105", 10).write_bytes(order_lines(8000))
    s = Settings(node_dir=node, db=tmp_path / "d.duckdb", start_from="start", batch_max_bytes=512 << 10)
    with opened(s) as (pipe, store):
        lane = pipe.states["node_order_statuses"]
        assert not lane.behind
        lane._read_ahead()  # the first read: how much waits behind it is not known yet
        assert len(lane._pending) == 1
        lane._read_ahead()
        assert len(lane._pending) == max(lane.workers, lane.prefilter_units)
        assert lane.drain() > 0
        assert store.con.execute("SELECT lines FROM cursors").fetchone() == (8000,)


def test_fills_lanes_register_as_urgent_so_that_the_order_scan_has_checkpoints(tmp_path: Path) -> None:
    """The byte scan of order statuses gives way between slices only where a lane may be urgent
    (etl/gate.py): a node dir with fills has one, one with order statuses alone none."""
    node = tmp_path / "node"
    hour_file(node, "node_order_statuses", "20260105", 10).write_bytes(b"")
    s = Settings(node_dir=node, db=tmp_path / "d.duckdb", start_from="start")
    for expect in (0, 1):
        with opened(s) as (pipe, store):
            assert pipe.gate.urgent_lanes == expect
            assert (pipe.gate.budget() is not None) == bool(expect)
        hour_file(node, "node_fills", "20260105", 10).write_bytes(fill(TAKER, 1, True))


def nice_of(prefix: str) -> set[int]:
    """The nice values of this process's threads whose names start with `prefix`."""
    return {os.getpriority(os.PRIO_PROCESS, t.native_id) for t in threading.enumerate()
            if t.name.startswith(prefix) and t.native_id is not None}


@pytest.mark.skipif(not priority.LINUX, reason="a thread's own nice value is Linux's")
@pytest.mark.parametrize("bulk_nice", [10, 0])
def test_order_statuses_run_at_a_lower_priority_than_fills(tmp_path: Path, bulk_nice: int) -> None:
    """The order-status lane's threads (its own, its parse and pre-filter workers) run at
    `bulk_nice`; the fills lane's at the process's own priority (etl/priority.py)."""
    node = tmp_path / "node"
    hour_file(node, "node_order_statuses", "20260105", 10).write_bytes(order_lines(4000))
    hour_file(node, "node_fills", "20260105", 10).write_bytes(fill(TAKER, 1, True) + fill(MAKER, 1, False))
    s = Settings(node_dir=node, db=tmp_path / "d.duckdb", start_from="start", bulk_nice=bulk_nice,
                 batch_max_bytes=64 << 10)  # several units: every pool's threads start
    feed = Feed()
    pipe, thread, store = running(s, feed)
    try:
        wait_for(lambda: bool(feed.trades()) and feed.lines("node_order_statuses") == 4000)
        assert nice_of("nodetap-lane-node_order_statuses") == {bulk_nice}
        assert nice_of("nodetap-parse-orders") == {bulk_nice}
        assert nice_of("nodetap-prefilter-orders") <= {bulk_nice}  # (none on one core)
        assert nice_of("nodetap-lane-node_fills") == nice_of("nodetap-parse-fills") == {0}
    finally:
        stop(pipe, thread, store)


@pytest.mark.skipif(not priority.LINUX, reason="a thread's own nice value is Linux's")
def test_work_handed_to_the_part_pool_runs_at_the_priority_of_the_thread_that_handed_it() -> None:
    def from_a_thread(nice: int) -> int:
        got: list[int] = []

        def body() -> None:
            priority.lower(nice)
            got.append(pool().submit(priority.current).result(30))

        t = threading.Thread(target=body)
        t.start()
        t.join(30)
        return got[0]

    assert from_a_thread(12) == 12
    assert from_a_thread(0) == 0
