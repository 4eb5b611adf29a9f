"""The Parquet lake: sealing complete hours, idempotence, late rows, retention, history views."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

import orjson
import polars as pl
import pytest

from etl.config import Settings
from etl.pipeline import Pipeline
from etl.store import Store


def order_line(t: str, oid: int, coin: str = "BTC", px: str = "100.0") -> bytes:
    ms = int(datetime.fromisoformat(t).timestamp() * 1000)
    return orjson.dumps({
        "time": t, "user": "0xabc", "hash": None, "builder": None, "status": "open",
        "order": {"coin": coin, "side": "B", "limitPx": px, "sz": "1.0", "oid": oid,
                  "timestamp": ms, "triggerCondition": "N/A", "isTrigger": False,
                  "triggerPx": "0.0", "children": [], "isPositionTpsl": False,
                  "reduceOnly": False, "orderType": "Limit", "origSz": "1.0", "tif": "Gtc",
                  "cloid": None}})


def fill_lines(t: str, tid: int, coin: str = "BTC", px: str = "100.0", sz: str = "2.0") -> bytes:
    ms = int(datetime.fromisoformat(t + "+00:00").timestamp() * 1000)

    def one(user: str, side: str, crossed: bool) -> bytes:
        return orjson.dumps([user, {
            "coin": coin, "px": px, "sz": sz, "side": side, "time": ms, "startPosition": "0.0",
            "dir": "Open Long", "closedPnl": "0.0", "hash": "0x01", "oid": tid * 10 + crossed,
            "crossed": crossed, "fee": "0.0", "tid": tid, "feeToken": "USDC", "twapId": None}])

    return one("0xtaker", "B", True) + b"\n" + one("0xmaker", "A", False)


class Node:
    """A hand-written node dir: lines at chosen times, appended on demand."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def add_order(self, t: str, oid: int, **kw: str) -> None:
        self._append("node_order_statuses", t, order_line(t, oid, **kw))

    def add_trade(self, t: str, tid: int, **kw: str) -> None:
        self._append("node_fills", t, fill_lines(t, tid, **kw))

    def _append(self, stream: str, t: str, data: bytes) -> None:
        # the node writes by its wall clock: a late event lands in the current file
        path = self.root / stream / "hourly" / "20260105" / str(self.hour_of_writes)
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "ab") as f:
            f.write(data + b"\n")

    hour_of_writes = 10


@pytest.fixture
def node(tmp_path: Path) -> Node:
    return Node(tmp_path / "node")


def run(tmp_path: Path, node: Node, **kw: object) -> tuple[Store, Pipeline]:
    s = Settings(node_dir=node.root, db=tmp_path / "l.duckdb", start_from="start", keep_all=True,
                 seal_grace_s=60, lake_dir=tmp_path / "lake", candle_intervals=("1m", "1h"),
                 **kw)  # type: ignore[arg-type]
    store = Store.from_settings(s)
    pipe = Pipeline(s, store)
    pipe.run_once()
    pipe.flush()
    return store, pipe


def lake_rows(tmp_path: Path, table: str) -> pl.DataFrame:
    files = sorted((tmp_path / "lake" / table).glob("date=*/hour=*/part-*.parquet"))
    return pl.concat([pl.read_parquet(f) for f in files]) if files else pl.DataFrame()


def fill_node(node: Node) -> None:
    node.hour_of_writes = 10
    node.add_order("2026-01-05T10:10:00", 1)
    node.add_order("2026-01-05T10:50:00", 2, coin="PURR/USDC")
    node.add_trade("2026-01-05T10:50:00", 101)
    node.hour_of_writes = 11
    node.add_order("2026-01-05T11:20:00", 3, coin="@107")
    node.add_trade("2026-01-05T11:20:00", 102, coin="km:USTECH")
    node.hour_of_writes = 12
    node.add_order("2026-01-05T12:30:00", 4)
    node.add_trade("2026-01-05T12:30:00", 103)


def test_complete_hours_are_sealed_once_and_views_have_no_seam(tmp_path: Path, node: Node) -> None:
    fill_node(node)
    store, pipe = run(tmp_path, node)
    lake = pipe.lake()
    report = lake.seal()
    # watermark 12:30, grace 60 s: hours 10 and 11 are complete, 12 is not
    assert sorted(p.parent.name for p in (tmp_path / "lake" / "orders").glob("*/*/part-0.parquet")) == [
        "hour=10", "hour=11"]
    assert (tmp_path / "lake" / "orders" / "date=2026-01-05" / "hour=10" / "part-0.parquet").exists()
    assert lake_rows(tmp_path, "orders")["oid"].sort().to_list() == [1, 2, 3]
    assert lake_rows(tmp_path, "trades")["tid"].sort().to_list() == [101, 102]
    assert report.sealed == 2 + 2 + 2 + 2  # orders, fills, trades, candles x hours 10 and 11
    con = store.con
    assert con.execute("SELECT oid FROM history.orders ORDER BY oid").fetchall() == [
        (1,), (2,), (3,), (4,)]
    assert con.execute("SELECT count(*), count(DISTINCT tid) FROM history.trades").fetchone() == (3, 3)
    # DuckDB still holds the rows (retain_hours), the view shows each once
    assert con.execute("SELECT count(*) FROM main.orders").fetchone() == (4,)
    # sealing again changes nothing
    before = {p: p.read_bytes() for p in (tmp_path / "lake").rglob("*.parquet")}
    again = lake.seal()
    assert (again.sealed, again.resealed) == (0, 0)
    assert {p: p.read_bytes() for p in (tmp_path / "lake").rglob("*.parquet")} == before
    pipe.close()
    store.close()


def test_candles_are_sealed_by_their_close_hour(tmp_path: Path, node: Node) -> None:
    fill_node(node)
    store, pipe = run(tmp_path, node)
    pipe.lake().seal()
    got = lake_rows(tmp_path, "candles").sort("coin", "interval")
    # the 10:50 BTC trade: 1m candle closes 10:50:59.999 (hour 10), 1h candle 10:59:59.999
    assert got.select("coin", "interval", "t", "t_close", "o", "v", "n").rows() == [
        ("BTC", "1h", 1767607200000, 1767610799999, 100.0, 2.0, 1),
        ("BTC", "1m", 1767610200000, 1767610259999, 100.0, 2.0, 1),
        ("km:USTECH", "1h", 1767610800000, 1767614399999, 100.0, 2.0, 1),
        ("km:USTECH", "1m", 1767612000000, 1767612059999, 100.0, 2.0, 1),
    ]
    assert store.con.execute("SELECT count(*) FROM history.candles").fetchone() == (6,)
    pipe.close()
    store.close()


def test_late_rows_reseal_their_hour(tmp_path: Path, node: Node) -> None:
    fill_node(node)
    store, pipe = run(tmp_path, node)
    lake = pipe.lake()
    lake.seal()
    # a row for 10:30 arrives in the 12h file (the node wrote it late)
    node.hour_of_writes = 12
    node.add_order("2026-01-05T10:30:00", 5)
    pipe.run_once()
    assert store.con.execute(
        "SELECT dirty FROM lake_hours WHERE tbl = 'orders' AND hour = '2026-01-05 10:00'"
    ).fetchone() == (True,)
    # before re-sealing, the view already shows the late row exactly once
    assert store.con.execute("SELECT oid FROM history.orders ORDER BY oid").fetchall() == [
        (1,), (2,), (3,), (4,), (5,)]
    report = lake.seal()
    assert report.resealed == 1
    hour10 = pl.read_parquet(tmp_path / "lake/orders/date=2026-01-05/hour=10/part-0.parquet")
    assert hour10["oid"].to_list() == [1, 2, 5]  # in arrival order
    assert store.con.execute("SELECT count(*) FROM history.orders").fetchone() == (5,)
    pipe.close()
    store.close()


def test_a_late_trade_reseals_the_hours_of_its_fills_trade_and_candles_only(
        tmp_path: Path, node: Node) -> None:
    """One unit of fills touches three tables: each of their sealed hours that it touches is
    marked for sealing again (one statement, etl/store.py), and no other hour."""
    fill_node(node)
    store, pipe = run(tmp_path, node)
    pipe.lake().seal()
    sealed = set(store.con.execute("SELECT tbl, hour FROM lake_hours WHERE NOT dirty").fetchall())
    assert {t for t, _ in sealed} >= {"fills", "trades", "candles", "orders"}
    node.hour_of_writes = 12
    node.add_trade("2026-01-05T10:40:00", 104)  # late: its fills, trade and candles are in hour 10
    pipe.run_once()
    dirty = store.con.execute(
        "SELECT tbl, strftime(hour, '%H') FROM lake_hours WHERE dirty ORDER BY 1").fetchall()
    # candles are sealed by their close hour: the 1m and 1h candles of 10:40 close in hour 10
    assert dirty == [("candles", "10"), ("fills", "10"), ("trades", "10")]
    pipe.close()
    store.close()


def test_retention_prunes_only_sealed_rows_and_late_rows_become_new_parts(
        tmp_path: Path, node: Node) -> None:
    fill_node(node)
    store, pipe = run(tmp_path, node, retain_hours=1.0)
    lake = pipe.lake()
    report = lake.seal()
    # watermark 12:30, retain 1 h: hour 10 (ends 11:00 <= 11:30) is pruned, hour 11 is not
    assert report.pruned_hours == 4
    con = store.con
    assert con.execute("SELECT oid FROM main.orders ORDER BY oid").fetchall() == [(3,), (4,)]
    assert con.execute("SELECT oid FROM history.orders ORDER BY oid").fetchall() == [
        (1,), (2,), (3,), (4,)]
    # a late row for the pruned hour: written as part-1, nothing lost, nothing doubled
    node.add_order("2026-01-05T10:05:00", 6)
    pipe.run_once()
    assert con.execute("SELECT oid FROM history.orders ORDER BY oid").fetchall() == [
        (1,), (2,), (3,), (4,), (6,)]
    lake.seal()
    part1 = tmp_path / "lake/orders/date=2026-01-05/hour=10/part-1.parquet"
    assert pl.read_parquet(part1)["oid"].to_list() == [6]
    assert con.execute("SELECT oid FROM history.orders ORDER BY oid").fetchall() == [
        (1,), (2,), (3,), (4,), (6,)]
    assert con.execute("SELECT count(*) FROM main.orders WHERE oid = 6").fetchone() == (0,)
    pipe.close()
    store.close()


def test_a_held_candle_whose_hour_was_pruned_is_asked_of_duckdb(tmp_path: Path, node: Node) -> None:
    # the fills lane holds OLD's latest candles (etl.candles.LatestCandles); the lake then
    # prunes their hour, so a late trade in them merges with what DuckDB holds (nothing), as
    # it did before the lane held candles, not with the candle held
    node.add_trade("2026-01-05T10:00:30", 1, coin="OLD", px="5.0")
    node.add_trade("2026-01-05T12:30:00", 2, coin="BTC")
    store, pipe = run(tmp_path, node, retain_hours=1.0)
    assert pipe.lake().seal().pruned_hours > 0
    assert store.con.execute("SELECT count(*) FROM main.candles WHERE coin = 'OLD'").fetchone() == (0,)
    node.add_trade("2026-01-05T10:00:40", 3, coin="OLD", px="6.0")
    pipe.run_once()
    assert store.con.execute(
        "SELECT interval, o, c, n FROM main.candles WHERE coin = 'OLD' ORDER BY interval").fetchall() == [
        ("1h", 6.0, 6.0, 1), ("1m", 6.0, 6.0, 1)]
    pipe.close()
    store.close()


def test_held_candles_go_stale_by_the_latest_source_the_lake_prunes_by(tmp_path: Path, node: Node) -> None:
    # the lake prunes candles by the latest event time of every fills and trades stream, here
    # a backfilled file two days ahead of the live lane: a candle the lane holds is pruned
    # while its own watermark is still in that hour, and the next trade in it is merged with
    # what DuckDB holds (nothing), not with the candle held
    from etl.backfill import backfill

    archive = tmp_path / "archive" / "node_fills" / "hourly" / "20260107" / "10"
    archive.parent.mkdir(parents=True)
    archive.write_bytes(fill_lines("2026-01-07T10:00:00", 99, coin="ETH") + b"\n")
    s = Settings(node_dir=node.root, db=tmp_path / "l.duckdb", start_from="start", keep_all=True,
                 seal_grace_s=60, lake_dir=tmp_path / "lake", candle_intervals=("1m",), retain_hours=1.0)
    store = Store.from_settings(s)
    backfill([archive], store, batch_max_bytes=1 << 20, max_line_bytes=1 << 20, progress=False)
    pipe = Pipeline(s, store)
    node.add_trade("2026-01-05T10:00:10", 1, px="100.0", sz="1.0")
    pipe.run_once()
    assert pipe.lake().seal().pruned_hours > 0
    node.add_trade("2026-01-05T10:00:20", 2, px="100.0", sz="1.0")
    pipe.run_once()
    assert store.con.execute("SELECT coin, n FROM main.candles ORDER BY coin").fetchall() == [("BTC", 1)]
    pipe.close()
    store.close()


def test_lake_is_readable_by_polars_and_a_fresh_duckdb(tmp_path: Path, node: Node) -> None:
    import duckdb

    fill_node(node)
    store, pipe = run(tmp_path, node)
    pipe.lake().seal()
    pipe.close()
    store.close()
    glob = str(tmp_path / "lake" / "orders" / "**" / "*.parquet")
    fresh = duckdb.connect()
    rows = fresh.execute(f"SELECT oid, coin, \"date\", \"hour\" FROM read_parquet('{glob}', "
                         "hive_partitioning = true) ORDER BY oid").fetchall()
    assert [(r[0], r[1]) for r in rows] == [(1, "BTC"), (2, "PURR/USDC"), (3, "@107")]
    lazy = pl.scan_parquet(tmp_path / "lake" / "orders", hive_partitioning=True)
    assert lazy.select(pl.len()).collect().item() == 3
    meta = __import__("pyarrow.parquet", fromlist=["x"]).ParquetFile(
        next((tmp_path / "lake" / "orders").rglob("*.parquet"))).metadata
    assert meta.row_group(0).column(0).compression == "ZSTD"
