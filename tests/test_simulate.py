"""The simulator: deterministic, realistic, and honest about partial writes and bursts."""

from __future__ import annotations

import threading
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path

import orjson

from etl.config import Settings
from etl.pipeline import Pipeline
from etl.simulate import generate, run_live
from etl.store import Store


def test_same_seed_same_bytes(tmp_path: Path) -> None:
    a, b, c = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    for out, seed in ((a, 3), (b, 3), (c, 4)):
        generate(out, lines=3000, variant="by_block", seed=seed)
    files = sorted(p.relative_to(a) for p in a.rglob("*") if p.is_file())
    assert files and all((a / f).read_bytes() == (b / f).read_bytes() for f in files)
    assert any((a / f).read_bytes() != (c / f).read_bytes() for f in files if (c / f).exists())


def test_output_looks_like_mainnet(tmp_path: Path) -> None:
    generate(tmp_path, lines=20_000, kinds=("orders", "fills", "trades"),
             start=datetime(2026, 1, 5, 10, 59, 45, tzinfo=UTC))
    orders = [orjson.loads(x) for p in (tmp_path / "node_order_statuses").rglob("*") if p.is_file()
              for x in p.read_bytes().splitlines()]
    coins = Counter(o["order"]["coin"] for o in orders)
    assert {"BTC", "PURR/USDC", "@107", "km:USTECH"} <= set(coins)
    statuses = Counter(o["status"] for o in orders)
    assert statuses.most_common(2)[0][0] == "open" and "badAloPxRejected" in statuses
    fills = [orjson.loads(x) for p in (tmp_path / "node_fills").rglob("*") if p.is_file()
             for x in p.read_bytes().splitlines()]
    by_tid = Counter(f[1]["tid"] for f in fills)
    assert set(by_tid.values()) == {2}  # every trade as two fills
    assert sum(f[1]["crossed"] for f in fills) == len(by_tid)  # one taker each
    # hour files by the simulated clock: 20K lines from 10:59:45 cross into hour 11
    assert sorted(p.name for p in (tmp_path / "node_order_statuses").rglob("*") if p.is_file()) == [
        "10", "11"]


def test_live_partial_writes_and_bursts_are_ingested_exactly(tmp_path: Path) -> None:
    node = tmp_path / "node"
    stop = threading.Event()
    seen_partial = []

    def watch_for_partial_lines() -> None:
        while not stop.is_set():
            for p in node.rglob("*"):
                if p.is_file() and p.stat().st_size and not p.read_bytes().endswith(b"\n"):
                    seen_partial.append(p)
                    return
            stop.wait(0.01)  # look again until the writer is done

    watcher = threading.Thread(target=watch_for_partial_lines)
    watcher.start()
    written = run_live(node, rate=3000, partial_writes=True, burst_every_s=1.0, burst_factor=4,
                       burst_s=0.3, duration_s=2.0)
    stop.set()
    watcher.join()
    assert seen_partial, "a partial last line was visible while writing"
    s = Settings(node_dir=node, db=tmp_path / "s.duckdb", start_from="start", keep_all=True)
    store = Store.from_settings(s)
    pipe = Pipeline(s, store)
    pipe.run_once()
    pipe.close()
    lines = sum(len(p.read_bytes().splitlines()) for p in node.rglob("*") if p.is_file())
    assert lines == written
    assert store.con.execute("SELECT sum(lines), sum(rejects) FROM cursors").fetchone() == (written, 0)
    store.close()
    # 2 s at 3000 lines/s with two bursts at 4x for 0.3 s: more than the plain rate gives
    assert written > 2 * 3000 * 1.2
