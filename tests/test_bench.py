"""`nodetap bench` end to end on a tiny data set: every measurement is there and sane."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest

from etl.bench.replaced import RowFilter, line_chunks, process
from etl.filters import Rules, apply_rules, load_rules
from etl.parse import parse
from etl.simulate import Simulator
from tests.conftest import ROOT, run_cli

WATCHED = "0x" + "e5" * 20  # a user the rules watch


def _kept_by_rules(files: list[str]) -> int:
    """Rows of the order-status files that nodetap's own vectorised filter keeps."""
    data = b"".join(Path(f).read_bytes() for f in files)
    frame = parse("orders", "plain", data).frame
    return apply_rules(frame, load_rules(ROOT / "data" / "rules.toml"))[0].height


@pytest.mark.timeout(300)  # ~40 s on a quiet 2-core machine: a net for a hang, not a measure
def test_bench_tiny_run_reports_every_measurement(tmp_path: Path) -> None:
    out = tmp_path / "result.json"
    proc = run_cli("bench", "--mb", "3", "--rates", "2000", "--seconds", "2", "--warmup", "1",
                   "--fills-under-load", "1000:2000", "--cores", "1", "--dir", str(tmp_path / "work"),
                   "--json", str(out), timeout=280)
    r = orjson.loads(out.read_bytes())

    assert (r["cores"], len(r["cpus"]), r["runs"]) == (1, 1, 1)
    assert r["rules"] == str(ROOT / "data" / "rules.toml")
    assert r["machine"]["versions"]["polars"] and r["machine"]["versions"]["duckdb"]
    assert r["machine"]["logical_cpus"] >= 1 and r["machine"]["python"].startswith("3.")
    data = r["data"]
    lines = data["order_lines"]
    assert lines > 5000 and data["fill_lines"] > 500
    assert 2.5e6 < data["order_bytes"] + data["fill_bytes"] < 3.5e6

    rows = {t["kind"] + ("-all" if t["keep_all"] else ""): t for t in r["throughput"]}
    assert sorted(rows) == ["duckdb", "nodetap", "nodetap-all", "replaced"]
    for t in rows.values():
        assert t["lines"] == lines  # every measurement read every line
        assert t["cpus"] == 1  # --cores reached the measurement's process
        assert t["seconds"] > 0 and t["cpu_s"] > 0 and t["peak_rss_mb"] > 30
        assert t["lines_per_s"] == pytest.approx(lines / t["seconds"])
        assert t["mb_per_s"] == pytest.approx(data["order_bytes"] / t["seconds"] / 1e6)
        assert t["vs_replaced"] == pytest.approx(t["lines_per_s"] / rows["replaced"]["lines_per_s"])
    kept = _kept_by_rules(data["order_files"])
    assert 0 < kept < lines / 10
    assert rows["nodetap"]["kept"] == rows["replaced"]["kept"] == kept
    assert rows["nodetap-all"]["kept"] == rows["duckdb"]["kept"] == lines

    m = r["memory"]
    assert m["backlog_bytes"] == data["order_bytes"] and m["backlog_bytes"] >= 20 * m["max_backlog_bytes"]
    assert 0 < m["skipped_bytes"] < data["order_bytes"] and m["gaps"] >= 1
    assert 0 < m["lines"] < lines and m["peak_rss_mb"] > 30

    names = [x["name"] for x in r["latency"]]
    assert names == ["2K lines/s", "fills 1K alone", "fills 1K + orders 2K"]
    assert [(x["order_rate"], x["fill_rate"]) for x in r["latency"][1:]] == [(0, 1000), (2000, 1000)]
    for x in r["latency"]:
        # trades before the coin was seen are not sent (the server refuses unknown coins)
        assert 0 < x["trades_counted"] <= x["trades_received"] <= x["trades_written"]
        assert 0 < x["p50_ms"] <= x["p99_ms"] <= x["max_ms"] < 10_000
        assert x["written_lines_per_s"] > 0.5 * x["target_lines_per_s"]
        assert x["server_cpu_s"] > 0 and x["server_peak_rss_mb"] > 30

    table = proc.stdout
    for row in ["| nodetap, data/rules.toml |", "| nodetap, keep-all |", "| replaced: orjson per line",
                "| DuckDB read_json into a typed table |", "| backlog 20x max_backlog_bytes",
                "| 2K lines/s |", "| fills 1K alone |", "| fills 1K + orders 2K |"]:
        assert row in table
    assert "1 of " in table.splitlines()[0]  # the cores used


@pytest.mark.parametrize("rules", [
    Rules(),
    Rules(keep_all=True),
    Rules(coins=("BTC", "@107"), statuses=(), min_notional=500.0),
    Rules(exclude_coins=("ETH",), sides=("A",), min_notional_by_coin={"BTC": 2000.0, "PURR/USDC": 1.0}),
    Rules(trigger="only", statuses=("open", "triggered")),
    Rules(trigger="exclude", order_types=("Limit",), min_notional=1000.0),
    Rules(statuses=("rejected",), watch_users=(WATCHED,)),
], ids=["defaults", "keep_all", "coins", "exclude_sides_by_coin", "trigger_only", "exclude_types",
        "watch"])
def test_replaced_filter_keeps_what_apply_rules_keeps(rules: Rules) -> None:
    sim = Simulator(seed=3)
    events = [sim.order_event() for _ in range(3000)]
    events[0]["user"] = WATCHED
    events[1]["order"]["limitPx"] = "NaN"  # type: ignore[index]
    events[2]["order"]["isTrigger"] = None  # type: ignore[index]
    lines = [orjson.dumps(e) for e in events]
    frame = parse("orders", "plain", b"\n".join(lines) + b"\n").frame
    expected = apply_rules(frame, rules)[0].get_column("oid").to_list()
    keep = RowFilter(rules)
    kept = [e["order"]["oid"] for e in events if keep(e)]  # type: ignore[index]
    assert kept == expected
    assert process(lines, keep) == (3000, len(expected), 0)


def test_line_chunks_yields_every_whole_line(tmp_path: Path) -> None:
    a, b = tmp_path / "10", tmp_path / "11"
    a.write_bytes(b"".join(b"%d\n" % i for i in range(25)))
    b.write_bytes(b"25\n26\npartial")
    chunks = list(line_chunks([a, b], chunk_lines=10))
    assert [len(c) for c in chunks] == [10, 10, 7]
    assert [int(x) for c in chunks for x in c] == list(range(27))


@pytest.mark.parametrize(("flags", "message"), [
    (["--cores", "100000"], "--cores 100000: this process may use"),
    (["--only", "throughput,speed"], "--only 'throughput,speed': choose from throughput, memory, latency"),
    (["--fills-under-load", "20000"], "--fills-under-load '20000': expected FILLS:ORDERS lines/s"),
    (["--rates", "20000,-1"], "--rates '20000,-1': rates must be positive"),
    (["--rules", "no-such-rules.toml"], "--rules no-such-rules.toml: no such file"),
])
def test_bench_rejects_bad_flags_before_running(tmp_path: Path, flags: list[str], message: str) -> None:
    proc = run_cli("bench", *flags, "--dir", str(tmp_path / "work"), check=False)
    assert proc.returncode == 2
    assert f"nodetap bench: {message}" in proc.stderr
    assert not (tmp_path / "work").exists()  # nothing generated, nothing measured


def test_appends_bench_stores_every_unit_both_ways(tmp_path: Path) -> None:
    """etl/bench/appends.py: side by side, every unit's rows are stored once, as one after another."""
    from etl.bench.appends import one_after_another, side_by_side
    from etl.schema import ROW_TABLES
    from etl.store import Store

    node = tmp_path / "node"
    from etl.simulate import generate

    generate(node, lines=2_000, kinds=("orders",))
    buf = b"".join(p.read_bytes() for p in sorted((node / "node_order_statuses").rglob("*")) if p.is_file())
    rows = parse("orders", "plain", buf).frame.select(list(ROW_TABLES["orders"]))
    store = Store(tmp_path / "a.duckdb")
    try:
        one_after_another(store, [rows] * 2, 0)
        side_by_side(store, [rows] * 3, 2)
        (n,) = store.con.execute("SELECT count(*) FROM orders").fetchone() or (0,)
        cursor = store.con.execute('SELECT "offset", lines FROM cursors').fetchall()
        log = store.con.execute("SELECT count(*) FROM cursor_log").fetchone()
    finally:
        store.close()
    assert n == 5 * rows.height > 0
    assert cursor == [(5000, 5 * rows.height)] and log == (0,)  # the last unit's, all folded


def test_a_unit_found_stored_already_is_not_written_again_and_commit_says_so(tmp_path: Path) -> None:
    # what a lane meets when a commit reported failed (disk full at the checkpoint after its
    # COMMIT) reached the database: `commit` returns False, and the lane then drops the
    # candles it holds (etl/lanes.py `_store`)
    from dataclasses import replace

    from etl.bench.appends import _unit
    from etl.schema import ROW_TABLES
    from etl.simulate import generate
    from etl.store import Store

    node = tmp_path / "node"
    generate(node, lines=500, kinds=("orders",))
    buf = b"".join(p.read_bytes() for p in sorted((node / "node_order_statuses").rglob("*")) if p.is_file())
    rows = parse("orders", "plain", buf).frame.select(list(ROW_TABLES["orders"]))
    # a unit read from a real file: its cursor carries the file's fingerprint
    unit = replace(_unit(0, rows.height), cursor=replace(_unit(0, rows.height).cursor, fp=7))
    store = Store(tmp_path / "a.duckdb")
    try:
        assert store.commit(unit, {"orders": rows}) is True
        assert store.commit(unit, {"orders": rows}) is False
        (n,) = store.con.execute("SELECT count(*) FROM orders").fetchone() or (0,)
    finally:
        store.close()
    assert n == rows.height > 0


def test_fill_units_bench_times_units_of_a_node_dirs_fills(tmp_path: Path,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    """etl/bench/fillunits.py: the fills lane over real files, units of UNIT_KB."""
    from etl.bench.fillunits import main
    from etl.simulate import generate

    node = tmp_path / "node"
    generate(node, lines=6_000, kinds=("fills",))
    assert main([str(node), "16"]) == 0
    out = capsys.readouterr().out
    units = int(out.split()[0])
    assert units > 5 and " KiB of fills: " in out and "ms CPU a unit" in out
    assert main([str(node), "16", "--statements"]) == 0
    timed = capsys.readouterr().out.splitlines()[1:]
    assert any(line.endswith("  COMMIT") for line in timed)
    assert any("INSERT INTO fills SELECT * FROM _batch" in line for line in timed)
    assert main([str(tmp_path / "nowhere")]) == 2
    assert "no node_fills under" in capsys.readouterr().err
