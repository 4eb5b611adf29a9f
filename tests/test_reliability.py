"""`serve` killed with SIGKILL again and again while a node writes, hours seal into the lake
and DuckDB prunes them; afterwards history equals the source, event by event.

The full run (50 kills, several of them at named instants inside sealing and pruning) is
marked `reliability` (`pytest -m reliability`); the default run does a short version.
Figures of the latest full run are in docs/reliability.md.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import orjson
import pyarrow.parquet as pq
import pytest

from tests.conftest import ROOT, free_port, query, run_cli

FAULTS = ("seal_after_rename", "seal_before_commit", "seal_after_commit", "prune_before_commit")
SETTINGS = {"NODETAP_SEAL_GRACE_S": "0", "NODETAP_SEAL_INTERVAL_S": "0.2",
            "NODETAP_RETAIN_HOURS": "0.5", "NODETAP_KEEP_ALL": "true",
            "NODETAP_BATCH_MAX_BYTES": "65536", "NODETAP_DEBOUNCE_MS": "5",
            "NODETAP_START_FROM": "start", "NODETAP_LOG_LEVEL": "WARNING"}


def replay(src: Path, dst: Path, seed: int, pause: float) -> threading.Thread:
    """Append src's hour files to dst like a node: hour after hour, streams interleaved,
    chunks cut anywhere (mid-line included)."""
    rng = random.Random(seed)
    files = sorted((p for p in src.rglob("*") if p.is_file()),
                   key=lambda p: (p.parent.name, int(p.name)))
    hours = sorted({(p.parent.name, int(p.name)) for p in files})

    def run() -> None:
        for day, hour in hours:
            todo = {p: p.read_bytes() for p in files if (p.parent.name, int(p.name)) == (day, hour)}
            pos = dict.fromkeys(todo, 0)
            while any(pos[p] < len(d) for p, d in todo.items()):
                for p, data in todo.items():
                    if pos[p] >= len(data):
                        continue
                    n = rng.randint(500, 20_000)
                    out = dst / p.relative_to(src)
                    out.parent.mkdir(parents=True, exist_ok=True)
                    with open(out, "ab") as f:
                        f.write(data[pos[p]:pos[p] + n])
                    pos[p] += n
                time.sleep(pause)

    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t


def source_keys(src: Path) -> tuple[list[int], list[tuple[int, int]], list[int]]:
    oids, fills, tids = [], [], []
    for p in src.rglob("*"):
        if not p.is_file():
            continue
        for line in p.read_bytes().splitlines():
            obj = orjson.loads(line)
            if "node_order_statuses" in p.parts:
                oids.append(obj["order"]["oid"])
            else:
                fills.append((obj[1]["tid"], obj[1]["oid"]))
                if obj[1]["crossed"]:
                    tids.append(obj[1]["tid"])
    return sorted(oids), sorted(fills), sorted(tids)


def kill_serve_repeatedly(make_node_dir: Callable[..., Path], tmp_path: Path, kills: int,
                          lines: int, pause: float) -> dict[str, int]:
    src = make_node_dir(lines=lines, name="src", start=datetime(2026, 1, 5, 10, 0, tzinfo=UTC),
                        events_per_block=0.15)
    node = tmp_path / "node"
    node.mkdir()
    db = tmp_path / "r.duckdb"
    env = {**os.environ, **SETTINGS}
    rng = random.Random(1234)
    writer = replay(src, node, seed=5, pause=pause)
    done = {"kills": 0, "fault_kills": 0, "timed_kills": 0, "runs": 0}
    while writer.is_alive() or done["kills"] < kills:
        fault = rng.choice(FAULTS) if done["runs"] % 4 == 3 else ""
        proc = subprocess.Popen(
            [sys.executable, "-m", "etl.cli", "serve", "--node-dir", str(node), "--db", str(db),
             "--port", str(free_port())],
            cwd=ROOT, env={**env, "NODETAP_FAULT": fault}, stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL)
        done["runs"] += 1
        try:
            rc = proc.wait(timeout=rng.uniform(0.8, 3.0))
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGKILL)
            rc = proc.wait()
            done["timed_kills"] += 1
        else:
            assert rc == -signal.SIGKILL, f"serve exited {rc} (fault point {fault!r})"
            done["fault_kills"] += 1
        done["kills"] += 1
        if done["kills"] >= kills * 3:
            break
    writer.join()
    run_cli("ingest", "--node-dir", str(node), "--db", str(db), "--once", env=SETTINGS)
    oids, fills, tids = source_keys(src)
    assert [r[0] for r in query(db, "SELECT oid FROM history.orders ORDER BY oid")] == oids
    assert query(db, "SELECT tid, oid FROM history.fills ORDER BY ALL") == fills
    assert [r[0] for r in query(db, "SELECT tid FROM history.trades ORDER BY tid")] == tids
    (users,), = query(db, "SELECT count(*) FROM history.trades WHERE buyer IS NULL OR seller IS NULL")
    assert users == 0
    parts = list((tmp_path / "r.duckdb.lake").rglob("*.parquet"))
    lake_rows = sum(pq.ParquetFile(p).metadata.num_rows for p in parts)  # every part readable
    (pruned,), = query(db, "SELECT count(*) FILTER (WHERE pruned) FROM lake_hours")
    (sealed,), = query(db, "SELECT count(*) FROM lake_hours")
    assert pruned > 0 and sealed > pruned
    figures = {**done, "orders": len(oids), "fills": len(fills), "trades": len(tids),
               "sealed_hours": sealed, "pruned_hours": pruned, "lake_files": len(parts),
               "lake_rows": lake_rows}
    print("reliability:", " ".join(f"{k}={v}" for k, v in figures.items()))
    out = ROOT / "test-artifacts"
    out.mkdir(exist_ok=True)
    (out / f"reliability-{kills}.json").write_bytes(orjson.dumps(figures))
    return figures


def test_serve_killed_a_few_times_while_sealing_and_pruning(
        make_node_dir: Callable[..., Path], tmp_path: Path) -> None:
    kill_serve_repeatedly(make_node_dir, tmp_path, kills=4, lines=12_000, pause=0.01)


@pytest.mark.reliability
@pytest.mark.timeout(1200)
def test_serve_killed_50_times_while_sealing_and_pruning(
        make_node_dir: Callable[..., Path], tmp_path: Path) -> None:
    kills = int(os.environ.get("RELIABILITY_KILLS", "50"))
    figures = kill_serve_repeatedly(make_node_dir, tmp_path, kills=kills, lines=36_000, pause=0.05)
    assert figures["kills"] >= kills
