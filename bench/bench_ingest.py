"""Ingest throughput: order-status lines/s and MB/s, end to end into DuckDB, every row kept.

    python bench/bench_ingest.py [--mb 1000] [--variant plain] [--dir /tmp/nodetap-bench]

Generates ~`--mb` of order statuses with the simulator (once; reused when present),
then runs the real pipeline (`Pipeline.run_once`, backlog keep) on a fresh DuckDB file
and prints the rate of three runs. The file is in the page cache, as on a live node.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from pathlib import Path

from etl.config import Settings
from etl.pipeline import Pipeline
from etl.simulate import generate
from etl.store import Store


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--mb", type=int, default=1000)
    ap.add_argument("--variant", default="plain", choices=["plain", "by_block", "streaming"])
    ap.add_argument("--dir", type=Path, default=Path("/tmp/nodetap-bench"))
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--batch-max-bytes", type=int)
    args = ap.parse_args()
    node = args.dir / f"node-{args.variant}-{args.mb}"
    if not node.exists():
        lines = args.mb * 1_000_000 // 470
        t = time.perf_counter()
        generate(node, lines=lines, variant=args.variant, kinds=("orders",))
        print(f"generated {node} in {time.perf_counter() - t:.1f}s")
    files = [p for p in node.rglob("*") if p.is_file()]
    size = sum(p.stat().st_size for p in files)
    for p in files:  # warm the page cache
        p.read_bytes()
    rates = []
    for run in range(args.runs):
        db = args.dir / "bench.duckdb"
        for p in (db, Path(str(db) + ".wal")):
            p.unlink(missing_ok=True)
        s = Settings(
            node_dir=node,
            db=db,
            start_from="start",
            backlog="keep", keep_all=True,
            **({"batch_max_bytes": args.batch_max_bytes} if args.batch_max_bytes else {}),
        )
        store = Store.from_settings(s)
        pipe = Pipeline(s, store)
        t = time.perf_counter()
        pipe.run_once()
        rows = store.con.execute("SELECT count(*) FROM orders").fetchone()[0]
        pipe.close()
        store.close()  # includes DuckDB's final checkpoint
        dt = time.perf_counter() - t
        rates.append(rows / dt)
        print(
            f"run {run + 1}: {rows} rows, {size / 1e6:.0f} MB in {dt:.2f}s = "
            f"{rows / dt / 1e3:.0f}K lines/s, {size / dt / 1e6:.0f} MB/s"
        )
    med = statistics.median(rates)
    print(
        f"median: {med / 1e3:.0f}K lines/s ({args.variant}, {size / 1e6:.0f} MB, "
        f"batch_max_bytes={s.batch_max_bytes}, cores={os.cpu_count()})"
    )


if __name__ == "__main__":
    main()
