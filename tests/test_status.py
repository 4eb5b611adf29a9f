"""Status that can be trusted (etl/status.py): lag measured when asked, the node's arrival rate
apart from nodetap's capacity, an archive shown as an archive, a dead sealer and a bad rules
edit reported where an operator looks (`/v1/status`, `/readyz`, `/metrics`, the logs)."""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import duckdb
import httpx
import orjson
import pytest
from prometheus_client.parser import text_string_to_metric_families

from etl.config import Settings
from etl.pipeline import Pipeline, status_file
from etl.status import (
    LANE_DIED,
    STATUS_STALE_S,
    FileScan,
    StreamStatus,
    read_status_document,
    scan_files,
    writer_stopped,
)
from etl.store import Store
from etl.tail import Cursor
from tests.conftest import ServerThread, hour_file, query, run_cli, wait_for
from tests.test_lake import Node, order_line

ORDERS = "node_order_statuses"


class FakeClock:
    """The pipeline's interval clock, moved by the test."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def orders(first_oid: int, n: int) -> bytes:
    """`n` order lines of one length (oids of six digits, whole-second times)."""
    return b"".join(order_line(f"2026-01-05T10:{i // 60 % 60:02d}:{i % 60:02d}", first_oid + i) + b"\n"
                    for i in range(n))


def only(pipe: Pipeline) -> StreamStatus:
    (st,) = pipe.snapshot()
    return st


def metric(text: str, name: str, **labels: str) -> list[float]:
    return [s.value for f in text_string_to_metric_families(text) for s in f.samples
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items())]


# ------------------------------------------------------------------ the pipeline's snapshot
def test_lag_bytes_is_what_the_files_hold_after_the_cursor_when_asked(tmp_path: Path) -> None:
    node = tmp_path / "node"
    f10 = hour_file(node, ORDERS, "20260105", 10)
    f10.write_bytes(orders(100_000, 50))
    s = Settings(node_dir=node, db=tmp_path / "s.duckdb", start_from="start", keep_all=True,
                 batch_max_bytes=64 << 10)
    store = Store.from_settings(s)
    pipe = Pipeline(s, store)
    try:
        pipe.run_once()
        st = only(pipe)
        # all read, the file of an hour long gone, not seen growing: an archive
        assert (st.file, st.offset, st.lag_bytes, st.mode, st.lines) == (
            "20260105/10", f10.stat().st_size, 0, "archive", 50)
        # the node writes on while the pipeline does not run: the lag grows at once, not at a commit
        more = orders(100_050, 10)
        with open(f10, "ab") as f:
            f.write(more)
        assert (only(pipe).lag_bytes, only(pipe).mode) == (len(more), "live")
        f11 = hour_file(node, ORDERS, "20260105", 11)
        f11.write_bytes(orders(100_060, 200))  # past batch_max_bytes / 4: behind
        st = only(pipe)
        assert (st.lag_bytes, st.mode, st.offset) == (len(more) + f11.stat().st_size, "catching_up",
                                                      f10.stat().st_size - len(more))
        pipe.write_status_file(force=True)  # what `nodetap status` shows while we hold the DB
        (row,) = orjson.loads(status_file(s.db).read_bytes())["streams"]
        assert (row["lag_bytes"], row["mode"]) == (st.lag_bytes, "catching_up")
        pipe.run_once()
        st = only(pipe)
        assert (st.lag_bytes, st.file, st.lines, st.mode) == (0, "20260105/11", 260, "live")  # it grew
    finally:
        assert pipe.stop() is True
        store.close()


def test_the_scan_counts_every_later_file_and_dates_the_newest(tmp_path: Path) -> None:
    root = tmp_path / ORDERS / "hourly"
    sizes = {("20260104", 23): 700, ("20260105", 9): 500, ("20260105", 10): 300, ("20260105", 11): 200,
             ("20260106", 0): 100}
    for (day, hour), size in sizes.items():
        hour_file(tmp_path, ORDERS, day, hour).write_bytes(b"x" * size)
    (root / "20260106" / "1.lz4").write_bytes(b"x" * 50)  # not the tailer's: not counted
    newest = datetime(2026, 1, 6, 0, 30, tzinfo=UTC).timestamp()
    os.utime(root / "20260106" / "0", (newest, newest))
    scan = scan_files(root, Cursor("20260105/10", 0, 120))
    assert scan == FileScan(180 + 200 + 100, {"20260105/10": 300, "20260105/11": 200, "20260106/0": 100},
                            newest, datetime(2026, 1, 6, 1, 0, tzinfo=UTC).timestamp())
    assert scan_files(root, Cursor("", 0, 0)).lag_bytes == 1800
    assert scan_files(root, Cursor("20260105/10", 0, 400)).lag_bytes == 300  # truncated under the cursor


@contextmanager
def one_hour_file(tmp_path: Path, lines: int, clock: Callable[[], float] = time.monotonic,
                  wall_clock: Callable[[], float] = time.time) -> Iterator[tuple[Path, Pipeline]]:
    """An order-status hour file of `lines` lines, and a keep-all pipeline over it (not started)."""
    f10 = hour_file(tmp_path / "node", ORDERS, "20260105", 10)
    f10.write_bytes(orders(100_000, lines))
    s = Settings(node_dir=tmp_path / "node", db=tmp_path / "s.duckdb", start_from="start", keep_all=True)
    store = Store.from_settings(s)
    pipe = Pipeline(s, store, clock=clock, wall_clock=wall_clock)
    try:
        yield f10, pipe
    finally:
        pipe.stop()
        store.close()


def test_arrival_is_the_nodes_pace_and_capacity_nodetaps(tmp_path: Path) -> None:
    clock = FakeClock()
    with one_hour_file(tmp_path, 100, clock=clock) as (f10, pipe):
        pipe.run_once()
        assert only(pipe).arrival_lines_per_s == 0.0  # the first look: nothing to compare with
        # a slow writer: 4 lines every 2 s, each batch committed as it comes
        for i in range(5):
            with open(f10, "ab") as f:
                f.write(orders(100_100 + 4 * i, 4))
            clock.now += 2.0
            pipe.run_once()
            only(pipe)
        st = only(pipe)
        assert (st.lines, st.lag_bytes, st.mode) == (120, 0, "live")
        assert st.arrival_lines_per_s == 2.0  # 20 lines in 10 s
        assert st.capacity_lines_per_s > 10 * st.arrival_lines_per_s  # 4 lines take far less than 2 s
        # a quiet node: after the window, the arrival rate falls to what was written in it
        clock.now += 10.0
        assert only(pipe).arrival_lines_per_s == 0.0


def test_a_current_hour_file_unchanged_for_an_hour_is_an_archive(tmp_path: Path) -> None:
    wall, clock = FakeClock(), FakeClock()
    wall.now = datetime(2026, 1, 5, 10, 50, tzinfo=UTC).timestamp()  # in the file's own hour
    with one_hour_file(tmp_path, 5, clock=clock, wall_clock=wall) as (f10, pipe):
        pipe.run_once()
        last = datetime(2026, 1, 5, 10, 0, 4)  # the fifth line's time
        os.utime(f10, (wall.now - 3000, wall.now - 3000))  # written 50 min ago
        st = only(pipe)
        assert (st.mode, st.lag_seconds) == ("live", (datetime(2026, 1, 5, 10, 50) - last).total_seconds())
        os.utime(f10, (wall.now - 3700, wall.now - 3700))  # 61 min ago
        assert (only(pipe).mode, only(pipe).lag_seconds) == ("archive", None)
        # a stopped node's cut last line: nothing will finish it, and nothing else is unread
        with open(f10, "ab") as f:
            f.write(orders(100_005, 1)[:-40])
        os.utime(f10, (wall.now - 3700, wall.now - 3700))
        pipe.run_once()
        assert only(pipe).mode == "live"  # seen growing: the node may finish it
        clock.now += 3601
        wall.now += 3601
        st = only(pipe)
        assert (st.lines, st.lag_bytes, st.mode, st.lag_seconds) == (5, len(orders(100_005, 1)) - 40,
                                                                     "archive", None)
        # a line end after it: lines to read, not an archive
        with open(f10, "ab") as f:
            f.write(b"\n")
        os.utime(f10, (wall.now - 3700, wall.now - 3700))
        only(pipe)  # seen growing
        clock.now += 3601
        wall.now += 3601
        assert only(pipe).mode == "live"


def test_a_pipeline_opens_nothing_until_asked_and_stops_once(tmp_path: Path) -> None:
    node = tmp_path / "node"
    hour_file(node, ORDERS, "20260105", 10).write_bytes(orders(100_000, 3))
    s = Settings(node_dir=node, db=tmp_path / "s.duckdb", start_from="start", keep_all=True,
                 debounce_ms=5, poll_interval_ms=50)
    store = Store.from_settings(s)
    pipe = Pipeline(s, store)
    try:
        assert (pipe.states, pipe.alive) == ({}, False)
        assert store.con.execute("SELECT count(*) FROM information_schema.schemata "
                                 "WHERE schema_name = 'history'").fetchone() == (0,)
        pipe.start()
        assert pipe.alive and pipe.lake() is pipe.lake()  # one lake, its views made once
        wait_for(lambda: only(pipe).lines == 3, timeout=30)
        assert pipe.sealer_health().alive
    finally:
        assert pipe.stop(timeout=30) is True
        assert pipe.stop(timeout=30) is True  # a second stop has nothing left to do
        store.close()
    assert (pipe.alive, pipe.sealer_health().alive) == (False, False)
    with pytest.raises(RuntimeError, match="started already"):
        pipe.start()


# ------------------------------------------------------------------ through the server
def test_a_stopped_nodes_cut_last_line_is_an_archive_and_ready(
        make_node_dir: Callable[..., Path], serve: Callable[..., ServerThread]) -> None:
    node = make_node_dir(lines=300)  # hour files of 2026-01-05: long over
    orders_file = node / "node_order_statuses" / "hourly" / "20260105" / "10"
    with open(orders_file, "ab") as f:
        f.write(order_line("2026-01-05T10:59:59", 99)[:60])  # the node stopped mid-line
    with serve(node, keep_all=True, ready_max_lag_s=0.5) as srv, \
            httpx.Client(base_url=srv.url, timeout=30) as client:
        def orders() -> dict[str, Any]:
            return next(s for s in client.get("/v1/status").json()["streams"]
                        if s["stream"] == "node_order_statuses")

        wait_for(lambda: orders()["last_batch_age_s"] is not None, timeout=30)
        wait_for(lambda: orders()["last_batch_age_s"] > 0.5, timeout=30)
        st = orders()
        assert (st["mode"], st["lag_bytes"], st["lag_seconds"]) == ("archive", 60, None)
        ready = client.get("/readyz")
        assert ready.status_code == 200, ready.json()


def test_a_backfilled_archive_is_shown_as_an_archive_not_as_lag(
        make_node_dir: Callable[..., Path], tmp_path: Path, serve: Callable[..., ServerThread]) -> None:
    node = make_node_dir(lines=500)
    db = tmp_path / "archive.duckdb"
    run_cli("backfill", str(node), "--db", str(db), "--quiet")
    # old hour files copied just now (fresh mtimes): the node that wrote them has moved on
    with serve(node, db=db) as srv, httpx.Client(base_url=srv.url, timeout=30) as client:
        def lanes() -> dict[str, Any]:  # the streams read from the node dir by this server
            return {s["stream"]: s for s in client.get("/v1/status").json()["streams"]
                    if not s["stream"].startswith("backfill:")}

        wait_for(lambda: all(s["last_batch_age_s"] is not None for s in lanes().values()), timeout=30)
        everything = {s["stream"]: s for s in client.get("/v1/status").json()["streams"]}
        # what `backfill` stored is listed too, as archives with its counts
        assert {n: (s["mode"], s["lag_seconds"], s["lines"] > 0) for n, s in everything.items()
                if n.startswith("backfill:")} == {
            f"backfill:{ORDERS}": ("archive", None, True), "backfill:node_fills": ("archive", None, True)}
        streams = lanes()
        assert set(streams) == {ORDERS, "node_fills"}
        for name, st in streams.items():
            size = (node / name / "hourly" / "20260105" / "10").stat().st_size
            assert (st["mode"], st["lag_seconds"], st["lag_bytes"], st["offset"]) == (
                "archive", None, 0, size), name
        text = client.get("/metrics").text
        assert metric(text, "nodetap_stream_mode", stream=ORDERS, mode="archive") == [1.0]
        assert metric(text, "nodetap_stream_mode", stream=ORDERS, mode="live") == [0.0]
        assert metric(text, "nodetap_lag_seconds", stream=ORDERS) == []
        # the node writes again: live, and its lag is the age of its last event
        with open(node / ORDERS / "hourly" / "20260105" / "10", "ab") as f:
            f.write(order_line("2026-01-05T10:59:00", 999_999) + b"\n")
        wait_for(lambda: lanes()[ORDERS]["lines"] == 1, timeout=30)
        st = lanes()[ORDERS]
        assert (st["stream"], st["mode"], st["last_time"]) == (ORDERS, "live", "2026-01-05T10:59:00")
        age = datetime.now(UTC).timestamp() - datetime(2026, 1, 5, 10, 59, tzinfo=UTC).timestamp()
        assert age - 60 < st["lag_seconds"] <= age


def test_a_sealer_that_dies_of_any_error_shows_in_readyz_metrics_and_the_log(
        tmp_path: Path, serve: Callable[..., ServerThread], monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    node = Node(tmp_path / "node")
    node.add_order("2026-01-05T10:00:00", 1)
    node.add_order("2026-01-05T11:30:00", 2)  # hour 10 is complete
    monkeypatch.setenv("NODETAP_FAULT", "raise:seal_after_rename")
    caplog.set_level(logging.ERROR, logger="nodetap.pipeline")
    with serve(node.root, keep_all=True, seal_grace_s=0.0, seal_interval_s=0.05) as srv, \
            httpx.Client(base_url=srv.url, timeout=30) as client:
        wait_for(lambda: client.get("/readyz").json()["sealer"]["alive"] is False, timeout=30)
        error = "FaultInjected: fault injected at seal_after_rename (NODETAP_FAULT=raise:seal_after_rename)"
        body = client.get("/readyz").json()
        assert body["reasons"] == [f"the lake sealer has stopped ({error}): complete hours are no "
                                   "longer sealed into the lake; restart nodetap"]
        assert body["sealer"] == {"alive": False, "last_error": error, "last_sealed_hour": None}
        assert metric(client.get("/metrics").text, "nodetap_sealer_up") == [0.0]
        assert client.get("/v1/status").json()["sealer"]["alive"] is False
        # ingestion goes on: the process is healthy, only not ready
        assert client.get("/healthz").status_code == 200
        node.add_order("2026-01-05T11:31:00", 3)
        wait_for(lambda: client.get("/v1/status").json()["streams"][0]["lines"] == 3, timeout=30)
    (died,) = [r for r in caplog.records if "event=sealer_died" in r.getMessage()]
    assert died.exc_info is not None and error in died.getMessage()


def test_a_bad_live_edit_of_the_rules_is_reported_when_the_file_changes(
        tmp_path: Path, serve: Callable[..., ServerThread], caplog: pytest.LogCaptureFixture) -> None:
    node = Node(tmp_path / "node")
    node.add_order("2026-01-05T10:00:00", 1)
    rules = tmp_path / "rules.toml"
    rules.write_text("[orders]\nmin_notional = 50\n")
    caplog.set_level(logging.ERROR, logger="nodetap.filters")
    with serve(node.root, rules_file=rules) as srv, httpx.Client(base_url=srv.url, timeout=30) as client:
        wait_for(lambda: client.get("/v1/status").json()["streams"][0]["lines"] == 1, timeout=30)
        good = client.get("/v1/rules").json()
        assert client.get("/v1/status").json()["rules"]["error"] is None
        # a bad edit, and no order line after it
        rules.write_text('[orders]\nmin_notional = "lots"\n')
        error = f"{rules}: orders.min_notional: expected a number (USD), got 'lots' (str)"
        wait_for(lambda: client.get("/v1/status").json()["rules"]["error"] == error, timeout=10)
        assert client.get("/v1/rules").json() == good  # the good rules stay in force
        assert metric(client.get("/metrics").text, "nodetap_rules_file_valid") == [0.0]
        assert any("event=rules_error" in r.getMessage() and "lots" in r.getMessage()
                   for r in caplog.records)
        assert client.get("/v1/status").json()["streams"][0]["lines"] == 1
        # fixed: the error clears and the new rules apply
        rules.write_text("[orders]\nmin_notional = 75\n")  # truncated, then written: may be read between
        wait_for(lambda: client.get("/v1/rules").json()["orders"]["min_notional"] == 75.0, timeout=10)
        assert client.get("/v1/status").json()["rules"]["error"] is None
        assert metric(client.get("/metrics").text, "nodetap_rules_file_valid") == [1.0]


def test_a_lane_that_dies_of_an_error_shows_in_healthz_and_readyz(
        tmp_path: Path, serve: Callable[..., ServerThread], monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    node = Node(tmp_path / "node")
    node.add_order("2026-01-05T10:00:00", 1)
    node.add_trade("2026-01-05T10:00:01", 1)
    monkeypatch.setenv("NODETAP_FAULT", "raise:lane_commit_orders")
    caplog.set_level(logging.ERROR, logger="nodetap.lanes")
    with serve(node.root, keep_all=True) as srv, httpx.Client(base_url=srv.url, timeout=30) as client:
        wait_for(lambda: client.get("/healthz").status_code == 503, timeout=30)
        reason = (f"the lane of {ORDERS} has stopped on an error (event=lane_error in the log): "
                  "that stream is no longer read; restart nodetap")
        assert client.get("/healthz").json() == {"status": "down", "reason": reason}
        assert reason in client.get("/readyz").json()["reasons"]
        assert metric(client.get("/metrics").text, "nodetap_pipeline_up") == [0.0]
        # the other lanes go on
        wait_for(lambda: {s["stream"]: s["lines"] for s in client.get("/v1/status").json()["streams"]}
                 .get("node_fills") == 2, timeout=30)  # a trade is two fill lines
        # the status says which stream nothing reads, and why: the API, the metrics, the CLI
        streams = {s["stream"]: s for s in client.get("/v1/status").json()["streams"]}
        assert (streams[ORDERS]["mode"], streams[ORDERS]["stopped_reason"]) == ("stopped", LANE_DIED)
        assert streams["node_fills"]["mode"] != "stopped" and streams["node_fills"]["stopped_reason"] is None
        text = client.get("/metrics").text
        assert metric(text, "nodetap_stream_mode", stream=ORDERS, mode="stopped") == [1.0]
        assert metric(text, "nodetap_stream_mode", stream="node_fills", mode="stopped") == [0.0]
        db = str(tmp_path / "api.duckdb")

        def cli_rows() -> dict[str, dict[str, Any]]:
            out = run_cli("status", "--db", db, "--node-dir", str(node.root), "--json").stdout
            return {r["stream"]: r for r in orjson.loads(out)}

        wait_for(lambda: cli_rows()[ORDERS]["mode"] == "stopped", timeout=30)  # the status file: 1/s
        rows = cli_rows()
        assert (rows[ORDERS]["running"], rows[ORDERS]["stopped_reason"]) == (True, LANE_DIED)
        assert rows["node_fills"]["stopped_reason"] is None
        printed = run_cli("status", "--db", db, "--node-dir", str(node.root)).stdout
        assert f"{ORDERS}: {LANE_DIED}" in printed and "no ingest/serve is running" not in printed
    (died,) = [r for r in caplog.records if "event=lane_error" in r.getMessage()]
    assert died.exc_info is not None and f"stream={ORDERS}" in died.getMessage()


# ------------------------------------------------------------------ nothing running
def test_status_says_stopped_when_no_ingest_or_serve_runs(make_node_dir: Callable[..., Path],
                                                          tmp_path: Path) -> None:
    node = make_node_dir(lines=500)
    db = tmp_path / "st.duckdb"
    run_cli("ingest", "--node-dir", str(node), "--db", str(db), "--from", "start", "--once")
    commit = max(r[0] for r in query(db, "SELECT updated_at FROM cursors"))

    def status(*extra: str) -> str:
        return run_cli("status", "--node-dir", str(node), "--db", str(db), *extra).stdout

    # the database opens: nothing holds it, nothing runs
    last = f"its last commit was at {commit:%Y-%m-%d %H:%M:%S} UTC"
    rows = orjson.loads(status("--json"))
    assert {(r["mode"], r["running"], r["stopped_reason"]) for r in rows} == {("stopped", False, last)}
    assert status().splitlines()[-1] == f"no ingest/serve is running on this database ({last})"

    # another program holds the database: the status file tells, left by a process that has exited
    doc = orjson.loads(status_file(db).read_bytes())
    written = datetime.fromisoformat(doc["written_at"])
    con = duckdb.connect(str(db))
    try:
        rows = orjson.loads(status("--json"))
        text = status()
    finally:
        con.close()
    why = f"its status is from {written:%Y-%m-%d %H:%M:%S} UTC: its writer, pid {doc['pid']}, has exited"
    assert {(r["mode"], r["running"], r["stopped_reason"], r["status_at"]) for r in rows} == {
        ("stopped", False, why, doc["written_at"])}
    assert [r["stream"] for r in rows] == [r["stream"] for r in doc["streams"]]
    assert text.splitlines()[-1] == f"no ingest/serve is running on this database ({why})"


def test_a_status_file_not_rewritten_for_a_while_is_a_stopped_writers() -> None:
    wall = datetime(2026, 1, 5, 10, 0, tzinfo=UTC).timestamp()
    elsewhere = {"written_at": "2026-01-05T09:59:50+00:00", "pid": 1, "host": "another-host", "streams": []}
    assert writer_stopped(elsewhere, wall) is None  # 10 s old: rewritten every second, may run
    assert writer_stopped(elsewhere, wall + STATUS_STALE_S) == (
        "not rewritten for 25 s, while a running ingest/serve rewrites it every second")
    here = {**elsewhere, "pid": os.getpid(), "host": socket.gethostname()}
    assert writer_stopped(here, wall) is None  # this process runs
    # a file of an earlier version: the rows alone, dated by the file's mtime
    old = read_status_document(b"[]", wall - 60)
    assert old == {"written_at": "2026-01-05T09:59:00+00:00", "pid": None, "host": None, "streams": []}
    assert writer_stopped(old, wall) == (
        "not rewritten for 60 s, while a running ingest/serve rewrites it every second")
