"""How fast DuckDB stores keep-all units: one transaction after another, or side by side.

    python -m etl.bench.appends [UNITS [DB_THREADS]]   (default: 4 units, 2 threads)

Generates one row group (122,880 rows) of simulated order statuses, decodes them as the
pipeline does, and stores UNITS copies into the `orders` table of a fresh database through
the store's own calls, each copy with its cursor, in a transaction of its own:

- one after another (`Store.commit`), each committed before the next begins: what a lane
  does with `commit_units = 1`;
- side by side (`Store.stage` on one connection per unit, on threads, then `Store.finish` in
  order, each after the one before it, then `Store.fold`): what a lane does with
  `commit_units = UNITS` (etl/lanes.py).

Prints wall and CPU seconds of each, best of three, checkpoint included. DuckDB compresses a
whole row group while it is inserted, on a thread of its own, when it has more than one
thread (`db_threads`); with one, it compresses at COMMIT, and commits run in order.
"""

from __future__ import annotations

import resource
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

import polars as pl

from etl.bench.stages import batch
from etl.parse import parse
from etl.schema import ROW_TABLES
from etl.store import BatchResult, Store
from etl.tail import Cursor

ROW_GROUP = 122_880


def _cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def _rows(tmp: Path) -> pl.DataFrame:
    frame = parse("orders", "plain", batch(tmp)).frame.select(list(ROW_TABLES["orders"]))
    assert frame.height >= ROW_GROUP, "a 64 MiB batch holds ~141K order statuses"
    return frame.head(ROW_GROUP)


def _unit(i: int, rows: int) -> BatchResult:
    return BatchResult(stream="node_order_statuses", kind="orders",
                       cursor=Cursor("20260105/10", 1, (i + 1) * 1000), file="20260105/10", lines=rows,
                       nbytes=1000, rejects=[], gaps=[], est_line_bytes=475.0, last_time=None,
                       first_time=None)


def one_after_another(store: Store, units: list[pl.DataFrame], first: int) -> None:
    for i, rows in enumerate(units, start=first):
        store.commit(_unit(i, rows.height), {"orders": rows})


def side_by_side(store: Store, units: list[pl.DataFrame], first: int) -> None:
    views = [store.for_thread() for _ in units]
    done = [threading.Event() for _ in units]

    def run(k: int) -> None:
        views[k].stage(_unit(first + k, units[k].height), {"orders": units[k]}, first + k)
        if k:
            done[k - 1].wait()
        views[k].finish()
        done[k].set()

    threads = [threading.Thread(target=run, args=(k,)) for k in range(len(units))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    store.fold()


def best(fn: Callable[[int], None], store: Store, units: int, runs: int = 3) -> tuple[float, float]:
    wall = cpu = float("inf")
    for r in range(runs):
        w, c = time.perf_counter(), _cpu()
        fn(r * units)
        store.con.execute("CHECKPOINT")
        wall, cpu = min(wall, time.perf_counter() - w), min(cpu, _cpu() - c)
    return wall, cpu


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 4
    threads = int(sys.argv[2]) if len(sys.argv) > 2 else 2
    with tempfile.TemporaryDirectory() as tmp:
        rows = _rows(Path(tmp))
        units = [rows] * n
        for name, fn in (("one after another", one_after_another), ("side by side", side_by_side)):
            store = Store(Path(tmp) / f"{name}.duckdb", threads=threads)
            try:
                wall, cpu = best(lambda first, fn=fn, store=store: fn(store, units, first),  # type: ignore[misc]
                                 store, n)
            finally:
                store.close()
            print(f"{name:18s} {n} x {rows.height:,} rows, {threads} DuckDB threads: {wall:.3f} s wall, "
                  f"{cpu:.3f} s CPU, {rows.height * n / wall / 1000:.0f}K rows/s")


if __name__ == "__main__":
    main()
