"""Candles and filters through the real pipeline and store; the history CLI commands."""

from __future__ import annotations

import random
from datetime import datetime, timedelta
from pathlib import Path

import duckdb
import orjson
import polars as pl
import pytest

from etl.candles import CANDLE_SCHEMA, candles_multi
from etl.config import Settings
from etl.history import HistoryError, explain_sql_error, read_candles
from etl.pipeline import Pipeline
from etl.store import Store, fetch_pl
from tests.conftest import run_cli
from tests.test_lake import Node, order_line

MIN = 60_000
T0 = 1767607200000  # 2026-01-05T10:00:00Z


def pipeline(tmp_path: Path, node: Node, **kw: object) -> tuple[Store, Pipeline]:
    base: dict[str, object] = {"node_dir": node.root, "db": tmp_path / "h.duckdb",
                               "start_from": "start", "keep_all": True, "candle_intervals": ("1m",),
                               "stall_after_s": 300.0}
    base.update(kw)
    s = Settings(**base)  # type: ignore[arg-type]
    store = Store.from_settings(s)
    return store, Pipeline(s, store)


def test_candles_merge_across_batches_and_late_trades_correct_them(tmp_path: Path) -> None:
    node = Node(tmp_path / "node")
    store, pipe = pipeline(tmp_path, node)
    node.add_trade("2026-01-05T10:00:10", 1, px="100.0", sz="1.0")
    node.add_trade("2026-01-05T10:00:20", 2, px="105.0", sz="1.0")
    pipe.run_once()
    node.add_trade("2026-01-05T10:00:50", 3, px="95.0", sz="2.0")
    node.add_trade("2026-01-05T10:01:30", 4, px="101.0", sz="1.0")
    pipe.run_once()
    # a late trade for the closed 10:00 candle, earlier than its first trade
    node.add_trade("2026-01-05T10:00:05", 5, px="110.0", sz="1.0")
    pipe.run_once()
    got = read_candles(store.con, "BTC", "1m", T0, T0 + MIN, fill=False)
    assert got.select("t", "o", "h", "l", "c", "v", "n").rows() == [
        (T0, 110.0, 110.0, 95.0, 95.0, 5.0, 4),
        (T0 + MIN, 101.0, 101.0, 101.0, 101.0, 1.0, 1),
    ]
    assert got["vq"].to_list() == [100.0 + 105.0 + 190.0 + 110.0, 101.0]
    pipe.close()
    store.close()


def test_candles_stay_those_of_one_pass_over_every_trade_across_late_trades_and_restarts(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # the lane merges each unit's candles with the latest ones it holds (etl.candles.
    # LatestCandles) and asks the database only for others: trades minutes, hours and days
    # late, coins first seen late, and restarts, which read the held candles from the database
    node = Node(tmp_path / "node")
    intervals = ("1m", "1h", "1d")
    rng = random.Random(7)
    base = datetime(2026, 1, 5, 10)
    arrived: list[tuple[datetime, str, float, float]] = []
    store, pipe = pipeline(tmp_path, node, candle_intervals=intervals)
    asked: list[int] = []
    real_ask = Store.stored_candles

    def counting(self: Store, keys: pl.DataFrame) -> pl.DataFrame:
        asked.append(keys.height)
        return real_ask(self, keys)

    monkeypatch.setattr(Store, "stored_candles", counting)
    old = base + timedelta(hours=4)
    scripted = [  # (time, coin) rounds after the random ones, 2 days on
        [(old, "OLD")],
        [(old + timedelta(days=2), "BTC")],
        "restart",  # holds the candles of the last day: none of OLD
        [(old - timedelta(minutes=5), "OLD")],  # days late, and older than OLD's stored candle
        [(old + timedelta(seconds=1), "OLD")],  # days late, in OLD's stored candle
    ]
    tid, now = 0, base
    for round_ in range(16 + len(scripted)):
        step = scripted[round_ - 16] if round_ >= 16 else None
        if round_ in (6, 11) or step == "restart":  # the lane reads the latest candles again
            pipe.close()
            store.close()
            store, pipe = pipeline(tmp_path, node, candle_intervals=intervals)
            if step == "restart":
                continue
        if step is None:
            step = []
            for _ in range(rng.randint(1, 12)):
                now += timedelta(seconds=rng.choice([1, 7, 30, 61]))
                late = rng.choice([timedelta(0)] * 6 + [timedelta(minutes=3), timedelta(hours=2),
                                                        timedelta(days=2)])
                coins = ["BTC", "ETH", "@107"] + ([f"NEW{round_}"] if late else [])
                step.append((now - late, rng.choice(coins)))
        for t, coin in step:
            px, sz = float(rng.randint(90, 110)), float(rng.choice([0.5, 1.0, 2.0]))
            tid += 1
            node.add_trade(t.isoformat(timespec="milliseconds"), tid, coin=coin, px=str(px), sz=str(sz))
            arrived.append((t, coin, px, sz))
        pipe.run_once()
        trades = pl.DataFrame(arrived, schema={"time": pl.Datetime("us"), "coin": pl.String,
                                               "px": pl.Float64, "sz": pl.Float64}, orient="row")
        want = candles_multi(trades, intervals).sort("coin", "interval", "t")
        got = (fetch_pl(store.con, "SELECT * FROM candles").rename({"t_close": "T"})
               .select(list(CANDLE_SCHEMA)).sort("coin", "interval", "t"))
        assert got.equals(want), f"round {round_}"
    assert pipe.states["node_fills"].latest_candles is not None
    # most units are answered by the held candles: the keys asked of the database are few
    assert sum(asked) < len(arrived)
    pipe.close()
    store.close()


def add_node_trade(node: Node, t: str, n: int) -> None:
    """A `node_trades` line: BTC, 1.0 at 100.0, at `t`."""
    node._append("node_trades", t, orjson.dumps({
        "coin": "BTC", "side": "B", "time": t, "px": "100.0", "sz": "1.0",
        "hash": "0x%064x" % (n + 12345), "trade_dir_override": "Na",
        "side_info": [{"user": "0xa", "start_pos": "0", "oid": n * 7, "twap_id": None, "cloid": None},
                      {"user": "0xb", "start_pos": "0", "oid": n * 7 + 1, "twap_id": None,
                       "cloid": None}]}))


def test_two_lanes_writing_candles_both_count(tmp_path: Path) -> None:
    # fills and trades both chosen: two lanes write the same candles, so neither answers from
    # the candles it holds (the other lane's writes would be lost)
    node = Node(tmp_path / "node")
    node.add_trade("2026-01-05T10:00:10", 1, px="100.0", sz="1.0")
    add_node_trade(node, "2026-01-05T09:59:00.000", 100)
    store, pipe = pipeline(tmp_path, node, streams=("node_fills", "node_trades"))
    pipe.run_once()
    add_node_trade(node, "2026-01-05T10:00:20.000", 101)
    pipe.run_once()
    node.add_trade("2026-01-05T10:00:30", 3, px="100.0", sz="1.0")
    pipe.run_once()
    assert store.con.execute(
        "SELECT t, n, v FROM candles WHERE coin = 'BTC' AND interval = '1m' ORDER BY t").fetchall() == [
        (T0 - MIN, 1, 1.0), (T0, 3, 3.0)]
    pipe.close()
    store.close()


def test_a_candle_another_lane_commits_meanwhile_is_not_overwritten(tmp_path: Path) -> None:
    # two lanes write BTC's candles (a second fills variant found while running): lane B reads
    # the stored candle inside its commit, so lane A's commit of it meanwhile makes B's commit
    # conflict, and B's next try merges A's trade too, instead of writing over it
    import duckdb

    from etl.candles import merge
    from etl.faults import run_at
    from etl.store import BatchResult
    from etl.tail import Cursor

    store = Store(tmp_path / "s.duckdb")
    lane_a, lane_b = store.for_thread(), store.for_thread()

    def commit(view: Store, stream: str, offset: int, t: str, px: float) -> bool:
        at = datetime.fromisoformat(t)
        trades = pl.DataFrame({"time": [at], "coin": ["BTC"], "px": [px], "sz": [1.0]})
        new = candles_multi(trades, ("1m", "1d"))
        unit = BatchResult(stream=stream, kind="fills", cursor=Cursor("20260105/10", 1, offset),
                           file="20260105/10", lines=1, nbytes=offset, rejects=[], gaps=[],
                           est_line_bytes=1.0, last_time=at, first_time=at)
        return view.commit(unit, {}, lambda: merge(view.stored_candles(new), new))

    assert commit(lane_a, "node_fills", 10, "2026-01-05T10:00:01", 100.0)
    done: list[bool] = []

    def lane_a_commits() -> None:
        if not done:
            done.append(False)  # lane A's own read reaches this point too
            done[0] = commit(lane_a, "node_fills", 20, "2026-01-05T10:00:02", 101.0)

    with run_at("stored_candles_between_reads", lane_a_commits), pytest.raises(duckdb.TransactionException):
        commit(lane_b, "node_fills_by_block", 10, "2026-01-05T10:00:03", 102.0)
    assert done == [True]
    assert commit(lane_b, "node_fills_by_block", 10, "2026-01-05T10:00:03", 102.0)  # tried again
    assert store.con.execute("SELECT interval, o, c, n, v FROM candles ORDER BY interval").fetchall() == [
        ("1d", 100.0, 102.0, 3, 3.0), ("1m", 100.0, 102.0, 3, 3.0)]
    store.close()


def test_two_lanes_making_the_same_new_candle_at_once_both_count(tmp_path: Path) -> None:
    # the fills lane reads BTC's 10:00 candle (none yet) while the trades lane stores it: the
    # fills lane's insert then finds the key taken (a constraint error, not a conflict) and
    # is tried again, merging the other lane's trade; neither lane stops
    import threading

    from etl.faults import run_at

    node = Node(tmp_path / "node")
    node.add_trade("2026-01-05T10:00:10", 1, px="100.0", sz="1.0")
    add_node_trade(node, "2026-01-05T10:00:20.000", 100)
    store, pipe = pipeline(tmp_path, node, streams=("node_fills", "node_trades"))
    reader = store.reader()
    waited: list[bool] = []

    def fills_waits_for_trades() -> None:
        if threading.current_thread().name.endswith("node_fills") and not waited:
            waited.append(False)
            deadline = threading.Event()
            for _ in range(3000):  # until the trades lane committed the candle (30 s at most)
                if reader.execute("SELECT count(*) FROM candles").fetchall() == [(1,)]:
                    waited[0] = True
                    break
                deadline.wait(0.01)

    with run_at("stored_candles_between_reads", fills_waits_for_trades):
        pipe.run_once()
    assert waited == [True]
    assert store.con.execute("SELECT t, n, v FROM candles WHERE interval = '1m'").fetchall() == [(T0, 2, 2.0)]
    reader.close()
    pipe.close()
    store.close()


def test_forward_fill_stops_at_the_watermark_and_never_crosses_a_stall(tmp_path: Path) -> None:
    node = Node(tmp_path / "node")
    store, pipe = pipeline(tmp_path, node)
    node.add_trade("2026-01-05T10:00:10", 1, px="100.0")
    node.add_trade("2026-01-05T10:03:10", 2, px="103.0")  # 10:01 and 10:02 are empty
    pipe.run_once()
    got = read_candles(store.con, "BTC", "1m", T0, T0 + 10 * MIN)
    assert got.select("t", "c", "v", "filled").rows() == [
        (T0, 100.0, 2.0, False),
        (T0 + MIN, 100.0, 0.0, True),
        (T0 + 2 * MIN, 100.0, 0.0, True),
        (T0 + 3 * MIN, 103.0, 2.0, False),  # nothing after: the watermark is 10:03:10
    ]
    # the feed dies for 10 minutes (over stall_after_s), then comes back
    node.add_trade("2026-01-05T10:14:00", 3, px="114.0")
    pipe.run_once()
    assert store.con.execute("SELECT reason, time_from, time_to FROM gaps").fetchall()[0][0] == "stall"
    got = read_candles(store.con, "BTC", "1m", T0, T0 + 20 * MIN)
    assert got.filter(pl.col("t") > T0 + 3 * MIN).select("t", "filled").rows() == [
        (T0 + 14 * MIN, False)]  # no flat candles across the stall
    pipe.close()
    store.close()


def test_a_silence_inside_one_batch_is_a_stall_too(tmp_path: Path) -> None:
    node = Node(tmp_path / "node")
    node.add_trade("2026-01-05T10:00:10", 1, px="100.0")
    node.add_trade("2026-01-05T10:09:10", 2, px="109.0")  # 9 minutes of silence, same batch
    store, pipe = pipeline(tmp_path, node)
    pipe.run_once()
    got = read_candles(store.con, "BTC", "1m", T0, T0 + 10 * MIN)
    assert got.select("t", "filled").rows() == [(T0, False), (T0 + 9 * MIN, False)]
    assert store.con.execute("SELECT reason FROM gaps").fetchall() == [("stall",)]
    # the status's `gaps` counts byte ranges of the files only: a stall is not one (docs/operations.md)
    assert [(st.stream, st.gaps) for st in pipe.snapshot()] == [("node_fills", 0)]
    pipe.close()
    store.close()


def test_rules_filter_before_storing_and_reload_without_restart(tmp_path: Path) -> None:
    node = Node(tmp_path / "node")
    rules = tmp_path / "rules.toml"
    rules.write_text('[orders]\nstatuses = []\nmin_notional = 150\n'
                     '[orders.min_notional_by_coin]\n"@107" = 50\n')
    store, pipe = pipeline(tmp_path, node, keep_all=False, rules_file=rules)
    node.add_order("2026-01-05T10:00:01", 1, px="100.0")  # notional 100: dropped
    node.add_order("2026-01-05T10:00:02", 2, px="200.0")  # kept
    node.add_order("2026-01-05T10:00:03", 3, px="60.0", coin="@107")  # per-coin minimum 50: kept
    pipe.run_once()
    assert store.con.execute("SELECT oid FROM orders ORDER BY oid").fetchall() == [(2,), (3,)]
    rules.write_text('[orders]\nstatuses = []\nmin_notional = 50\n')
    node.add_order("2026-01-05T10:00:04", 4, px="100.0")
    pipe.run_once()
    assert store.con.execute("SELECT oid FROM orders ORDER BY oid").fetchall() == [(2,), (3,), (4,)]
    stats = pipe.rules.stats()  # type: ignore[union-attr]
    assert stats["total"] == {"seen": 1, "kept": 1}  # the rules' counters start again at a change
    # every line counts, kept or not; `rows` counts what was stored
    assert store.con.execute("SELECT lines, rows FROM cursors").fetchone() == (4, 3)
    pipe.close()
    store.close()


def test_history_commands(tmp_path: Path) -> None:
    node = Node(tmp_path / "node")
    node.add_trade("2026-01-05T10:00:10", 1, px="100.0")
    node.add_trade("2026-01-05T10:00:20", 2, coin="PURR/USDC", px="0.2", sz="10.0")
    node.add_trade("2026-01-05T10:02:10", 3, px="102.0")
    db = str(tmp_path / "c.duckdb")
    run_cli("ingest", "--node-dir", str(node.root), "--db", db, "--from", "start", "--once",
            env={"NODETAP_STALL_AFTER_S": "600"})
    out = run_cli("sql", "SELECT tid, coin, px FROM history.trades ORDER BY tid", "--db", db,
                  "--format", "json").stdout
    assert orjson.loads(out) == [{"tid": 1, "coin": "BTC", "px": 100.0},
                                 {"tid": 2, "coin": "PURR/USDC", "px": 0.2},
                                 {"tid": 3, "coin": "BTC", "px": 102.0}]
    csv = run_cli("sql", "SELECT tid FROM trades ORDER BY tid", "--db", db, "--format", "csv").stdout
    assert csv.splitlines() == ["tid", "1", "2", "3"]
    target = tmp_path / "purr.parquet"
    run_cli("export", "trades", "--coin", "PURR/USDC", "-o", str(target), "--db", db)
    assert pl.read_parquet(target).select("tid", "coin", "sz").rows() == [(2, "PURR/USDC", 10.0)]
    out = run_cli("candles", "--coin", "BTC", "--interval", "1m", "--start", "2026-01-05T10:00",
                  "--end", "2026-01-05T10:03", "--db", db, "--format", "json").stdout
    assert [(c["t"], c["c"], c["filled"]) for c in orjson.loads(out)] == [
        (T0, 100.0, False), (T0 + MIN, 100.0, True), (T0 + 2 * MIN, 102.0, False)]
    bad = run_cli("sql", "SELEC 1", "--db", db, check=False)
    assert bad.returncode == 2 and "syntax error" in bad.stderr
    assert "write it \"offset\"" not in bad.stderr
    bad = run_cli("sql", "SELECT stream, offset FROM cursors", "--db", db, check=False)
    assert bad.returncode == 2 and 'write it "offset", in double quotes' in bad.stderr
    assert run_cli("sql", 'SELECT "offset" > 0 AS read FROM cursors LIMIT 1', "--db", db,
                   "--format", "csv").stdout.splitlines() == ["read", "true"]
    bad = run_cli("candles", "--coin", "BTC", "--interval", "2m", "--db", db, check=False)
    assert bad.returncode == 2 and "unknown interval '2m'" in bad.stderr


def test_orders_line_helper_is_valid() -> None:
    assert orjson.loads(order_line("2026-01-05T10:00:00", 1))["order"]["oid"] == 1


def _node_trades_tid(line: dict[str, object]) -> int:
    """The tid a node_trades line gets (etl.parse): the hash's first 48 bits and both order ids."""
    buyer, seller = line["side_info"]  # type: ignore[misc]
    return int(str(line["hash"])[2:14], 16) ^ (buyer["oid"] * 2) ^ (seller["oid"] * 4)


def test_node_trades_get_a_stable_tid_and_a_trade_written_per_side_counts_once(
        samples: Path, tmp_path: Path) -> None:
    from etl.backfill import backfill

    node = tmp_path / "node"
    hour = node / "node_trades" / "hourly" / "20240919" / "10"
    hour.parent.mkdir(parents=True)
    data = (samples / "node_trades_2024.jsonl").read_bytes()
    hour.write_bytes(data)
    lines = [orjson.loads(x) for x in data.splitlines()]
    # 4 lines: 2 trades, each written once as "B" and once as "A"; the first line is kept
    expected = [("AXL", "B", _node_trades_tid(lines[2]), "0x768484f7e2ebb675c57838366c02ae99ba2a9b08"),
                ("ZK", "B", _node_trades_tid(lines[0]), "0xc64cc00b46101bd40aa1c3121195e85c0b0918d8")]
    assert _node_trades_tid(lines[0]) == _node_trades_tid(lines[1]) != _node_trades_tid(lines[2])
    assert expected[0][2] == 0x2225285dad56 ^ (14849960103 * 2) ^ (14849962335 * 4)
    trades = "SELECT coin, side, tid, buyer FROM trades ORDER BY coin"
    store, pipe = pipeline(tmp_path, Node(node))
    pipe.run_once()
    assert store.con.execute(trades).fetchall() == expected
    assert store.con.execute("SELECT sum(n) FROM candles WHERE interval = '1m'").fetchone() == (2,)
    # the node rewrites the hour file (a new inode, the same lines): read again, the same tids,
    # nothing counted twice
    again = hour.with_name("10.new")
    again.write_bytes(data)
    again.replace(hour)
    pipe.run_once()
    assert store.con.execute("SELECT lines FROM cursors").fetchall() == [(8,)]  # it was read again
    assert store.con.execute(trades).fetchall() == expected
    assert store.con.execute("SELECT sum(n) FROM candles WHERE interval = '1m'").fetchone() == (2,)
    pipe.close()
    store.close()
    # a backfill of the same file into another database gives the same tids
    other = Store.from_settings(Settings(node_dir=node, db=tmp_path / "b.duckdb"))
    backfill([hour], other, batch_max_bytes=1 << 20, max_line_bytes=1 << 20, progress=False)
    assert other.con.execute(trades).fetchall() == expected
    other.close()


def test_a_read_that_would_fill_too_many_candles_is_refused_before_it_makes_them(tmp_path: Path) -> None:
    """A trade years before the others, then candles from the start of time at 1s: filling every
    empty second up to the watermark made ~1e8 rows and took 12 GB (found by fuzzing). The read
    is refused with what to do; a shorter range is served."""
    node = Node(tmp_path / "node")
    store, pipe = pipeline(tmp_path, node, candle_intervals=("1s", "1m"), stall_after_s=10 ** 9)
    node.add_trade("2026-01-05T10:00:10", 1, px="100.0")
    pipe.run_once()
    node.add_trade("2026-02-05T10:00:10", 2, px="101.0")  # 31 days of empty seconds after the first
    pipe.run_once()
    with pytest.raises(HistoryError, match=r"2,678,401 1s candles .* at most 1,000,000 a request"):
        read_candles(store.con, "BTC", "1s", 0, 2**53)
    month = read_candles(store.con, "BTC", "1m", 0, 2**53)  # 44,641 candles, most of them filled
    assert month.height == 31 * 1440 + 1 and month["filled"].sum() == month.height - 2
    pipe.close()
    store.close()


@pytest.mark.parametrize(("sql", "hinted"), [
    ("SELECT stream, offset FROM cursors", True),
    ("SELECT * FROM cursors ORDER BY offset LIMIT 5", True),
    ("SELECT offset::BIGINT FROM cursors WHERE offset IS NOT NULL", True),
    ("SELECT offset FROM cursors LIMIT 5 OFFSET 2", True),  # the clause stays a clause
    ("SELECT c.offset, FROM cursors c WHERE", False),  # c.offset is fine; the error is elsewhere
    ("SELECT * FROM cursors LIMIT 10 OFFSET", False),  # an unfinished clause, not a column
    ("SELECT 'offset, x' FRM cursors", False),  # in a string
])
def test_a_syntax_error_from_a_bare_offset_column_says_to_quote_it(sql: str, hinted: bool) -> None:
    with pytest.raises(duckdb.ParserException) as caught:
        duckdb.extract_statements(sql)
    message = explain_sql_error(sql, str(caught.value))
    assert ('write it "offset", in double quotes' in message) is hinted
    assert message.splitlines()[1:] == str(caught.value).splitlines()[1:]  # DuckDB's pointer kept
