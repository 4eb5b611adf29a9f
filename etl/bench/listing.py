"""What the tailer pays, per batch, for a node dir that keeps its files.

    python -m etl.bench.listing [DAYS ...]   (default: 1 90 365)

For each number of days, one stream of 24 hour files a day (empty but the newest) in a
temporary dir, every older file already read; prints the time of `Tailer.next_batch` when
nothing is new (what each wake-up and each caught-up batch costs) and of `hour_files` (the
whole listing, as the tailer did before every batch).
"""

from __future__ import annotations

import itertools
import os
import sys
import tempfile
import time
from datetime import date, timedelta
from pathlib import Path

from etl.hourfiles import HourListing, hour_files
from etl.tail import Cursor, Stream, Tailer


def _per_call_ms(fn: object, n: int = 200) -> float:
    assert callable(fn)
    t0 = time.perf_counter()
    for _ in range(n):
        fn()
    return (time.perf_counter() - t0) / n * 1000


def measure(days: int) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "node_order_statuses" / "hourly"
        rels = []
        for d in range(days):
            day = (date(2025, 1, 1) + timedelta(days=d)).strftime("%Y%m%d")
            (root / day).mkdir(parents=True)
            for h in range(24):
                (root / day / str(h)).write_bytes(b"")
                rels.append(f"{day}/{h}")
        newest = root / rels[-1]
        newest.write_bytes(b'{"a":1}\n')
        # file times within 2 s of now are not trusted (HourListing): measure what a node
        # whose files were written before sees
        old = time.time() - 3600
        for p in (root, *(root / r.split("/")[0] for r in rels[::24])):
            os.utime(p, (old, old))
        tailer = Tailer(Stream("node_order_statuses", "orders", "plain", root),
                        batch_max_bytes=1 << 20, max_backlog_bytes=None)
        tailer._settled.update(rels[:-1])  # every older file read
        cur = Cursor(rels[-1], newest.stat().st_ino, newest.stat().st_size)
        tailer.next_batch(cur)
        listing = HourListing(root)
        listing.refresh()
        seconds = itertools.count(1)  # a clock a second further on each call: every day checked
        full = HourListing(root, clock_ns=lambda: time.time_ns() + next(seconds) * 1_000_000_000)
        return {"days": days, "files": len(rels),
                "next_batch_ms": _per_call_ms(lambda: tailer.next_batch(cur)),
                "listing_full_pass_ms": _per_call_ms(full.refresh),
                "hour_files_ms": _per_call_ms(lambda: hour_files(root))}


def main(argv: list[str]) -> None:
    print("| days of files | files | next_batch, nothing new (ms) | full pass, once a second (ms) "
          "| whole listing, as before (ms) |")
    print("| --- | --- | --- | --- | --- |")
    for days in [int(a) for a in argv] or [1, 90, 365]:
        r = measure(days)
        print(f"| {r['days']} | {r['files']:,} | {r['next_batch_ms']:.3f} | "
              f"{r['listing_full_pass_ms']:.2f} | {r['hour_files_ms']:.2f} |")


if __name__ == "__main__":
    main(sys.argv[1:])
