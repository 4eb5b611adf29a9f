"""How fast DuckDB stores keep-all units: one transaction after another, or side by side.

    python -m etl.bench.appends [UNITS]   (default: 4)

Generates one row group (122,880 rows) of simulated order statuses, decodes them as the
pipeline does, and inserts UNITS copies into the store's `orders` table of a fresh database
(the store's own schema), each copy in its own transaction:

- one after another, each committed before the next begins (what a lane does: its rows and
  its cursor in one transaction, units in order);
- side by side: one connection per unit, the inserts at once on threads, then the commits in
  order.

Prints wall and CPU seconds of each, best of three. DuckDB compresses a transaction's row
group on the thread that inserts or commits it, so the second way uses more than one core;
docs/benchmarks.md explains why the pipeline cannot commit its units that way today.
"""

from __future__ import annotations

import resource
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

import duckdb
import polars as pl

from etl.bench.stages import batch
from etl.parse import parse
from etl.schema import ROW_TABLES
from etl.store import Store

ROW_GROUP = 122_880


def _cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def _rows(tmp: Path) -> pl.DataFrame:
    frame = parse("orders", "plain", batch(tmp)).frame.select(list(ROW_TABLES["orders"]))
    assert frame.height >= ROW_GROUP, "a 64 MiB batch holds ~141K order statuses"
    return frame.head(ROW_GROUP)


def _insert(con: duckdb.DuckDBPyConnection, rows: pl.DataFrame) -> None:
    con.execute("BEGIN TRANSACTION")
    con.register("_unit", rows)
    con.execute("INSERT INTO orders SELECT * FROM _unit")
    con.unregister("_unit")


def one_after_another(con: duckdb.DuckDBPyConnection, units: list[pl.DataFrame]) -> None:
    for rows in units:
        _insert(con, rows)
        con.execute("COMMIT")


def side_by_side(con: duckdb.DuckDBPyConnection, units: list[pl.DataFrame]) -> None:
    cons = [con.cursor() for _ in units]
    threads = [threading.Thread(target=_insert, args=(c, rows)) for c, rows in zip(cons, units, strict=True)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for c in cons:
        c.execute("COMMIT")
        c.close()


def best(fn: Callable[[], None], con: duckdb.DuckDBPyConnection, runs: int = 3) -> tuple[float, float]:
    wall = cpu = float("inf")
    for _ in range(runs):
        w, c = time.perf_counter(), _cpu()
        fn()
        con.execute("CHECKPOINT")
        wall, cpu = min(wall, time.perf_counter() - w), min(cpu, _cpu() - c)
    return wall, cpu


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 4
    with tempfile.TemporaryDirectory() as tmp:
        rows = _rows(Path(tmp))
        units = [rows] * n
        store = Store(Path(tmp) / "appends.duckdb")
        try:
            for name, fn in (("one after another", one_after_another), ("side by side", side_by_side)):
                wall, cpu = best(lambda fn=fn: fn(store.con, units), store.con)  # type: ignore[misc]
                print(f"{name:18s} {n} x {rows.height:,} rows: {wall:.3f} s wall, {cpu:.3f} s CPU, "
                      f"{rows.height * n / wall / 1000:.0f}K rows/s")
        finally:
            store.close()


if __name__ == "__main__":
    main()
