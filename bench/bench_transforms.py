"""Cost of the orders filter and of candles, per million rows, on this machine.

    python bench/bench_transforms.py [--rows 1000000]

Order statuses and trades come from the simulator (parsed by the real parser); each
transform runs 5 times on the same frame and the median is printed.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import polars as pl

from etl.candles import DEFAULT_INTERVALS, candles_multi, merge
from etl.filters import load_rules
from etl.parse import parse, trades_from_fills
from etl.simulate import generate


def timed(fn, runs: int = 5) -> float:  # type: ignore[no-untyped-def]
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=1_000_000)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as d:
        node = Path(d)
        generate(node, lines=int(args.rows * 1.25), kinds=("orders", "fills"))
        read = lambda s: b"".join(p.read_bytes() for p in sorted((node / s).rglob("*")) if p.is_file())  # noqa: E731
        orders = parse("orders", "plain", read("node_order_statuses")).frame.drop("_line")
        fills = parse("fills", "plain", read("node_fills")).frame.drop("_line")
    trades = trades_from_fills(fills)
    # trades are ~5% of lines in the simulator: repeat them to a million rows
    reps = max(1, args.rows // max(trades.height, 1))
    many = pl.concat([trades] * reps)
    rules = load_rules(Path("data/rules.toml"))
    from etl.filters import apply_rules

    kept = apply_rules(orders, rules)[0].height
    t_filter = timed(lambda: apply_rules(orders, rules))
    print(f"orders filter (data/rules.toml): {orders.height} rows, kept {kept}: "
          f"{t_filter * 1e3:.1f} ms = {t_filter / orders.height * 1e6 * 1e3:.1f} ms per million rows")
    t_candles = timed(lambda: candles_multi(many, DEFAULT_INTERVALS))
    print(f"candles {','.join(DEFAULT_INTERVALS)}: {many.height} trades: {t_candles * 1e3:.1f} ms = "
          f"{t_candles / many.height * 1e6 * 1e3:.1f} ms per million trades")
    half = many.height // 2
    a = candles_multi(many.slice(0, half), DEFAULT_INTERVALS)
    b = candles_multi(many.slice(half), DEFAULT_INTERVALS)
    t_merge = timed(lambda: merge(a, b))
    print(f"merge of two candle frames ({a.height} + {b.height} rows): {t_merge * 1e3:.1f} ms")


if __name__ == "__main__":
    main()
