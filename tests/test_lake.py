"""The Parquet lake: sealing complete hours, idempotence, late rows, retention, history views."""

from __future__ import annotations

import shutil
from datetime import datetime
from pathlib import Path

import duckdb
import orjson
import polars as pl
import pytest

from api.infodata import all_mids, recent_trades
from api.routes.snapshots import coins_sql, rows_of
from etl.config import Settings
from etl.history import read_candles
from etl.lake import Lake, partition_dir
from etl.pipeline import Pipeline
from etl.schema import TABLES
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
    assert con.execute("SELECT rows, parts FROM lake_hours WHERE tbl = 'orders' "
                       "AND hour = '2026-01-05 10:00'").fetchone() == (3, 2)  # parts 0 and 1
    assert con.execute("SELECT oid FROM history.orders ORDER BY oid").fetchall() == [
        (1,), (2,), (3,), (4,), (6,)]
    assert con.execute("SELECT count(*) FROM main.orders WHERE oid = 6").fetchone() == (0,)
    pipe.close()
    store.close()


def test_the_views_answer_with_no_partition_left(tmp_path: Path, node: Node) -> None:
    fill_node(node)
    store, pipe = run(tmp_path, node, retain_hours=1.0)
    pipe.lake().seal()  # hours 10 and 11 sealed, hour 10 pruned from DuckDB
    reader = store.reader()  # as the server reads, its views bound before the files go
    assert reader.execute("SELECT count(*) FROM history.fills").fetchone() == (6,)
    # the pruned hour's partitions deleted by hand, as docs/operations.md shows: its rows go
    for table in TABLES:
        shutil.rmtree(partition_dir(tmp_path / "lake", table, datetime(2026, 1, 5, 10)))
    assert reader.execute("SELECT oid FROM history.orders ORDER BY oid").fetchall() == [(3,), (4,)]
    # then every partition: no file left is no lake rows, not an error (hour 11's rows, sealed,
    # are read from the lake only; hour 12's from DuckDB)
    for table in TABLES:
        shutil.rmtree(tmp_path / "lake" / table)
    for con in (reader, store.con):
        assert con.execute("SELECT oid FROM history.orders ORDER BY oid").fetchall() == [(4,)]
        assert con.execute("SELECT tid FROM history.trades ORDER BY tid").fetchall() == [(103,)]
        assert con.execute("SELECT count(*) FROM history.fills").fetchone() == (2,)
        assert con.execute("SELECT DISTINCT coin FROM history.candles").fetchall() == [("BTC",)]
    reader.close()
    pipe.close()
    store.close()


def candle_rows(store: Store, table: str, coin: str) -> list[tuple[object, ...]]:
    return store.con.execute(f"SELECT interval, t, o, h, l, c, v, n FROM {table}.candles WHERE coin = ? "
                             "ORDER BY interval, t", [coin]).fetchall()


def candle_parts(tmp_path: Path, hour: str) -> list[str]:
    return sorted(p.name for p in (tmp_path / "lake/candles/date=2026-01-05" / f"hour={hour}").glob("part-*"))


def test_a_late_trade_in_a_pruned_hour_merges_with_the_lakes_candle(tmp_path: Path, node: Node) -> None:
    # OLD's candles are pruned from DuckDB (retain_hours); trades days late still make one
    # candle each, the lake's merged with theirs (read from the lake after a restart, then
    # held by the lane), in history at every step and in the lake
    node.add_trade("2026-01-05T10:00:30", 1, coin="OLD", px="5.0")
    node.add_trade("2026-01-05T12:30:00", 2, coin="BTC")
    store, pipe = run(tmp_path, node, retain_hours=1.0)
    lake = pipe.lake()
    assert lake.seal().pruned_hours > 0
    assert candle_rows(store, "main", "OLD") == []
    pipe.close()
    store.close()
    store, pipe = run(tmp_path, node, retain_hours=1.0)  # a restart: OLD's candles are not held
    lake = pipe.lake()
    t1h, t1m = 1767607200000, 1767607200000  # 10:00 both
    node.add_trade("2026-01-05T10:00:40", 3, coin="OLD", px="6.0")
    pipe.run_once()
    merged = [("1h", t1h, 5.0, 6.0, 5.0, 6.0, 4.0, 2), ("1m", t1m, 5.0, 6.0, 5.0, 6.0, 4.0, 2)]
    assert candle_rows(store, "main", "OLD") == merged
    assert candle_rows(store, "history", "OLD") == merged  # DuckDB's candle stands for the lake's
    lake.seal()
    assert candle_rows(store, "history", "OLD") == merged
    assert candle_rows(store, "main", "OLD") == []
    assert store.con.execute("SELECT first_part, parts FROM lake_hours WHERE tbl = 'candles' "
                             "AND hour = '2026-01-05 10:00'").fetchall() == [(1, 2)]
    old_candles = lake_rows(tmp_path, "candles").filter(pl.col("coin") == "OLD")
    assert sorted(old_candles["n"].to_list()) == [1, 1, 2, 2]  # part-0's and part-1's
    node.add_trade("2026-01-05T10:00:50", 4, coin="OLD", px="4.0")
    pipe.run_once()
    lake.seal()
    assert candle_rows(store, "history", "OLD") == [
        ("1h", t1h, 5.0, 6.0, 4.0, 4.0, 6.0, 3), ("1m", t1m, 5.0, 6.0, 4.0, 4.0, 6.0, 3)]
    # parts merged into a later one are deleted once no read can still be using them
    assert candle_parts(tmp_path, "10") == ["part-0.parquet", "part-1.parquet", "part-2.parquet"]
    store.con.execute("UPDATE lake_hours SET sealed_at = sealed_at - INTERVAL 2 DAY")  # stopped a while
    lake.seal()
    assert candle_parts(tmp_path, "10") == ["part-2.parquet"]
    assert candle_rows(store, "history", "OLD")[0][-1] == 3
    pipe.close()
    store.close()


@pytest.mark.parametrize("late_trade", [False, True], ids=["sealed", "late-trade-first"])
def test_candle_parts_left_apart_by_an_older_version_are_merged(tmp_path: Path, node: Node,
                                                                 late_trade: bool) -> None:
    # before 2026-11-30 a late trade's candle in a pruned hour went into a part of its own,
    # beside the lake's candle of the same key: the next seal merges them into one, and a
    # trade later still merges with both
    node.add_trade("2026-01-05T10:00:30", 1, coin="OLD", px="5.0")
    node.add_trade("2026-01-05T12:30:00", 2, coin="BTC")
    store, pipe = run(tmp_path, node, retain_hours=1.0)
    pipe.lake().seal()
    hour = tmp_path / "lake/candles/date=2026-01-05/hour=10"
    late = pl.read_parquet(hour / "part-0.parquet").with_columns(
        o=pl.lit(6.0), h=pl.lit(6.0), l=pl.lit(6.0), c=pl.lit(6.0), vq=pl.lit(12.0), vwap=pl.lit(6.0),
        t_first=pl.col("t_first") + 10_000, t_last=pl.col("t_last") + 10_000)
    late.write_parquet(hour / "part-1.parquet")
    store.con.execute("UPDATE lake_hours SET parts = 2 WHERE tbl = 'candles' AND hour = '2026-01-05 10:00'")
    assert len(candle_rows(store, "history", "OLD")) == 4
    pipe.close()
    store.close()
    store, pipe = run(tmp_path, node, retain_hours=1.0)  # the version that merges them
    t = 1767607200000
    want = [("1h", t, 5.0, 6.0, 5.0, 6.0, 4.0, 2), ("1m", t, 5.0, 6.0, 5.0, 6.0, 4.0, 2)]
    if late_trade:
        node.add_trade("2026-01-05T10:00:50", 3, coin="OLD", px="7.0")
        pipe.run_once()
        want = [("1h", t, 5.0, 7.0, 5.0, 7.0, 6.0, 3), ("1m", t, 5.0, 7.0, 5.0, 7.0, 6.0, 3)]
        assert candle_rows(store, "history", "OLD") == want
    pipe.lake().seal()
    assert candle_rows(store, "history", "OLD") == want
    assert store.con.execute("SELECT first_part, parts, dirty FROM lake_hours WHERE tbl = 'candles' "
                             "AND hour = '2026-01-05 10:00'").fetchall() == [(2, 3, False)]
    pipe.close()
    store.close()


def history_oids(store: Store) -> list[int]:
    return [oid for (oid,) in store.con.execute("SELECT oid FROM history.orders ORDER BY oid").fetchall()]


def recorded_lake_oids(store: Store, tmp_path: Path) -> list[int]:
    """The oids in the orders parts `lake_hours` records (first_part .. parts-1), not in any file."""
    files = [partition_dir(tmp_path / "lake", "orders", hour) / f"part-{n}.parquet"
             for hour, first, parts in store.con.execute(
                 "SELECT hour, first_part, parts FROM lake_hours WHERE tbl = 'orders'").fetchall()
             for n in range(first, parts)]
    return sorted(pl.concat([pl.read_parquet(f) for f in files])["oid"].to_list()) if files else []


def assert_kept(store: Store, tmp_path: Path, lake: Lake, want: list[int]) -> None:
    """`want` in history now, after the next seal, and in the recorded parts once all is sealed."""
    assert history_oids(store) == want
    lake.seal()
    assert history_oids(store) == want
    dirty = store.con.execute("SELECT hour FROM lake_hours WHERE tbl = 'orders' AND dirty").fetchall()
    assert dirty == []
    assert recorded_lake_oids(store, tmp_path) == [oid for oid in want if oid != 4]  # 4: hour 12, open


@pytest.mark.parametrize("pruned", [False, True], ids=["first-seal", "pruned-hour"])
def test_a_unit_committed_while_its_hour_is_sealed_is_kept(tmp_path: Path, node: Node, pruned: bool) -> None:
    # a late order committed between the sealer reading an hour and recording it: the seal
    # conflicts and the hour stays dirty, so the order is neither hidden nor deleted
    from etl.faults import run_at

    fill_node(node)
    store, pipe = run(tmp_path, node, **({"retain_hours": 1.0} if pruned else {}))
    lake = pipe.lake()
    node.hour_of_writes = 12
    if pruned:
        lake.seal()
        node.add_order("2026-01-05T10:05:00", 6)
        pipe.run_once()
    done: list[int] = []

    def late_order() -> None:
        if not done:
            done.append(1)
            node.add_order("2026-01-05T10:07:00", 8)
            assert pipe.run_once() == 1

    with run_at("seal_after_rename", late_order):
        lake.seal()
    assert done
    assert_kept(store, tmp_path, lake, [1, 2, 3, 4, *([6] if pruned else []), 8])
    pipe.close()
    store.close()


def test_a_first_seal_waits_for_a_unit_begun_before_it(tmp_path: Path, node: Node) -> None:
    # a unit whose transaction began before the sealer recorded the hour marks nothing; the
    # sealer waits for it, so its rows are in what the seal reads
    import threading

    from etl.faults import run_at

    fill_node(node)
    store, pipe = run(tmp_path, node)
    lake = pipe.lake()
    in_unit, release = threading.Event(), threading.Event()

    def hold() -> None:
        in_unit.set()
        assert release.wait(30)

    node.hour_of_writes = 12
    node.add_order("2026-01-05T10:07:00", 8)
    with run_at("unit_before_commit", hold):
        lane = threading.Thread(target=pipe.run_once)
        lane.start()
        assert in_unit.wait(30)
    sealer = threading.Thread(target=lake.seal)
    sealer.start()
    waited = store.writers.wait_for_waiter(30)
    release.set()
    lane.join(30)
    sealer.join(30)
    assert waited
    assert_kept(store, tmp_path, lake, [1, 2, 3, 4, 8])
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


def test_a_late_trade_in_a_pruned_hour_is_not_held_over_a_newer_candle_in_the_lake(
        tmp_path: Path, node: Node) -> None:
    # after a restart OLD's late 10:00 candle is in DuckDB, its newer 10:05 one in the lake
    # only: the lane must not take 10:00 for OLD's newest candle, or a trade at 10:05 would
    # merge with nothing
    node.add_trade("2026-01-05T10:00:30", 1, coin="OLD", px="5.0")
    node.add_trade("2026-01-05T10:05:30", 2, coin="OLD", px="5.0")
    node.add_trade("2026-01-05T12:30:00", 3, coin="BTC")
    store, pipe = run(tmp_path, node, retain_hours=1.0)
    pipe.lake().seal()
    pipe.close()
    store.close()
    store, pipe = run(tmp_path, node, retain_hours=1.0)
    node.add_trade("2026-01-05T10:00:40", 4, coin="OLD", px="6.0")
    pipe.run_once()
    node.add_trade("2026-01-05T10:05:40", 5, coin="OLD", px="7.0")
    pipe.run_once()
    t0, t5 = 1767607200000, 1767607500000
    want = [("1h", t0, 5.0, 7.0, 5.0, 7.0, 8.0, 4), ("1m", t0, 5.0, 6.0, 5.0, 6.0, 4.0, 2),
            ("1m", t5, 5.0, 7.0, 5.0, 7.0, 4.0, 2)]
    assert candle_rows(store, "history", "OLD") == want
    pipe.lake().seal()
    assert candle_rows(store, "history", "OLD") == want
    pipe.close()
    store.close()


def test_a_prune_between_the_reads_of_stored_candles_loses_nothing(tmp_path: Path, node: Node) -> None:
    # the lake prunes OLD's hour while the lane looks up OLD's 10:00 candle in its commit: one
    # snapshot, and the commit conflicts with the prune and is tried again (the sealed hour
    # is only pruned here: a first seal would wait for the lane's transaction, on its thread)
    from etl.faults import run_at

    node.add_trade("2026-01-05T10:00:30", 1, coin="OLD", px="5.0")
    node.add_trade("2026-01-05T10:05:30", 2, coin="OLD", px="5.0")  # held: 10:00 is asked
    node.add_trade("2026-01-05T10:50:00", 3, coin="BTC")
    store, pipe = run(tmp_path, node, retain_hours=1.0)
    lake = pipe.lake()
    assert lake.seal({"candles": datetime(2026, 1, 5, 11, 30)}).sealed == 1
    pruned: list[int] = []

    def prune() -> None:
        if not pruned:
            pruned.append(lake.seal({"candles": datetime(2026, 1, 5, 12, 30)}).pruned_hours)

    node.add_trade("2026-01-05T10:00:40", 4, coin="OLD", px="6.0")
    with run_at("stored_candles_between_reads", prune):
        pipe.run_once()
    assert pruned == [1]
    t0 = 1767607200000
    want = ("1m", t0, 5.0, 6.0, 5.0, 6.0, 4.0, 2)
    assert [r for r in candle_rows(store, "history", "OLD") if r[:2] == ("1m", t0)] == [want]
    assert lake.seal({"candles": datetime(2026, 1, 5, 12, 30)}).resealed == 1
    assert [r for r in candle_rows(store, "history", "OLD") if r[:2] == ("1m", t0)] == [want]
    pipe.close()
    store.close()


def test_a_unit_staged_on_a_closed_connection_leaves_no_writer_open(tmp_path: Path, node: Node) -> None:
    # another lane reopened the database (a full disk) before a side-by-side unit began: the
    # unit fails, and the sealer does not wait for it
    from etl.store import BatchResult
    from etl.tail import Cursor

    fill_node(node)
    store, pipe = run(tmp_path, node)
    view = store.for_thread()
    store.reconnect()
    result = BatchResult(stream="node_order_statuses", kind="orders", cursor=Cursor("20260105/10", 1, 5),
                         file="20260105/10", lines=1, nbytes=5, rejects=[], gaps=[], est_line_bytes=5.0,
                         last_time=None, first_time=None)
    with pytest.raises(duckdb.ConnectionException):
        view.stage(result, {}, seq=1)
    assert store.writers.open() == 0
    pipe._lake = None  # the sealer's cursor was closed by the reopen too
    assert pipe.lake().seal().sealed == 8
    pipe.close()
    store.close()


def test_trades_of_one_millisecond_are_taken_in_arrival_order(tmp_path: Path, node: Node) -> None:
    """The trades of one block share a millisecond. In the order the node wrote them (not by
    tid), the first opens a candle and the last closes it, for the candles derived on read (1s
    here, from the trades) as for the stored ones (1m); the last is the coin's last price and the
    newest of its recent trades; from DuckDB, from the lake, and with a late trade for a pruned
    hour (DuckDB's row after the lake's)."""
    def candles_of(interval: str) -> list[tuple[float, float, float, float, int]]:
        frame = read_candles(store.con, "ETH", interval, T, T + 59_999, fill=False, stored=("1m", "1h"))
        return frame.select("o", "h", "l", "c", "n").rows()

    def recent() -> list[float]:
        return [float(t["px"]) for t in recent_trades(store.con, "ETH")]

    def last_px() -> float:
        return {c["coin"]: c["last_px"] for c in rows_of(store.con, coins_sql(store.con), [])}["ETH"]

    for tid, px in ((40, "10.0"), (30, "11.0"), (20, "12.0"), (10, "13.0")):  # tids falling
        node.add_trade("2026-01-05T10:10:00", tid, coin="ETH", px=px)
    node.hour_of_writes = 12
    node.add_trade("2026-01-05T12:30:00", 103)
    store, pipe = run(tmp_path, node, retain_hours=1.0)
    T = 1767607800000  # 10:10:00
    assert candles_of("1m") == candles_of("1s") == [(10.0, 13.0, 10.0, 13.0, 4)]
    assert recent() == [10.0, 11.0, 12.0, 13.0] and last_px() == all_mids(store.con)["ETH"] == 13.0
    pipe.lake().seal()  # hour 10 in the lake only
    assert store.con.execute("SELECT count(*) FROM main.trades WHERE coin = 'ETH'").fetchone() == (0,)
    assert candles_of("1s") == [(10.0, 13.0, 10.0, 13.0, 4)]
    assert recent() == [10.0, 11.0, 12.0, 13.0] and last_px() == 13.0
    node.add_trade("2026-01-05T10:10:00", 1, coin="ETH", px="9.0")  # late, lowest tid: it closes
    pipe.run_once()
    pipe.flush()
    assert candles_of("1m") == candles_of("1s") == [(10.0, 13.0, 9.0, 9.0, 5)]
    assert last_px() == 9.0
    pipe.close()
    store.close()
