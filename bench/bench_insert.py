"""DuckDB insert rate by rows per insert: why nodetap commits whole row groups.

    python bench/bench_insert.py --file NODE_ORDER_STATUSES_HOUR_FILE [--mb 400]

Parses the first `--mb` of an order-status hour file once, then inserts the rows into a
fresh DuckDB file in chunks of various sizes (1 writer thread, checkpoint_threshold
128MB, one transaction per chunk) and prints rows/s including the final checkpoint,
and the file size.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import duckdb

from etl.parse import ORDERS_SCHEMA, parse
from etl.schema import table_ddl


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--file", type=Path, required=True)
    ap.add_argument("--mb", type=int, default=400)
    ap.add_argument("--db", type=Path, default=Path("/tmp/nodetap-bench-insert.duckdb"))
    args = ap.parse_args()
    data = args.file.read_bytes()[: args.mb << 20]
    data = data[: data.rfind(b"\n") + 1]
    frame = parse("orders", "plain", data).frame.drop("_line")
    print(f"{frame.height} rows parsed")
    for rows in [70_000, 100_000, 122_880, 140_000, 200_000, 245_760]:
        args.db.unlink(missing_ok=True)
        con = duckdb.connect(str(args.db))
        con.execute(table_ddl("orders", ORDERS_SCHEMA))
        con.execute("SET threads = 1")
        con.execute("SET checkpoint_threshold = '128MB'")
        t = time.perf_counter()
        for i in range(0, frame.height, rows):
            chunk = frame.slice(i, rows)
            con.execute("BEGIN")
            con.register("_b", chunk)
            con.execute("INSERT INTO orders SELECT * FROM _b")
            con.unregister("_b")
            con.execute("COMMIT")
        con.close()
        dt = time.perf_counter() - t
        print(f"rows per insert {rows:>7}: {frame.height / dt / 1e3:.0f}K rows/s, "
              f"file {os.path.getsize(args.db) / 1e6:.0f} MB")
    args.db.unlink(missing_ok=True)


if __name__ == "__main__":
    main()
