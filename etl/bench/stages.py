"""Where the pre-filter's time goes, stage by stage, on one batch of order statuses.

    python -m etl.bench.stages [RULES]   (default: data/rules.toml)

Generates one 64 MiB batch of simulated order statuses (plain variant, seed 7, as
`nodetap bench`), then times each stage of `etl.prefilter.prefilter` on it, and the whole:
CPU of every thread (`time.process_time`) and wall, best of five. Stages marked "2 cores"
run on every core; the others on one thread. It also times the scan without the layout (every
line by the general scan).
"""

from __future__ import annotations

import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from etl import bytescan
from etl.columns import ORDERS_REQUIRED
from etl.filters import apply_rules, load_rules, rule_columns, rule_masks
from etl.flatten import orders_flat
from etl.parse import cores, line_bounds, parse_lines
from etl.prefilter import light_fields, prefilter
from etl.simulate import generate

BATCH = 64 << 20


def timed(name: str, fn: Callable[[], Any], runs: int = 5) -> Any:
    cpu = wall = float("inf")
    out = None
    for _ in range(runs):
        c, w = time.process_time(), time.perf_counter()
        out = fn()
        cpu, wall = min(cpu, time.process_time() - c), min(wall, time.perf_counter() - w)
    print(f"| {name} | {cpu * 1000:.1f} | {wall * 1000:.1f} |")
    return out


def batch(tmp: Path) -> bytes:
    node = tmp / "node"
    generate(node, lines=BATCH // 400, kinds=("orders",))
    data = b"".join(p.read_bytes() for p in sorted((node / "node_order_statuses").rglob("*")) if p.is_file())
    data = data[:BATCH]
    return data[: data.rindex(b"\n") + 1]


def main() -> None:
    rules = load_rules(Path(sys.argv[1] if len(sys.argv) > 1 else "data/rules.toml"))
    with tempfile.TemporaryDirectory() as tmp:
        buf = batch(Path(tmp))
    fields, columns = light_fields(rule_columns(rules))
    starts, ends = line_bounds(buf)
    print(f"{len(buf) / 2**20:.1f} MiB, {len(ends):,} lines; light read: {', '.join(columns)}\n")
    print("| stage | CPU ms | wall ms |\n| --- | --- | --- |")
    out = timed("prefilter(), all of it (2 cores)", lambda: prefilter("plain", buf, rules))
    timed("newline search (`bytescan.line_bounds`: libc's memchr, as `prefilter`)",
          lambda: bytescan.line_bounds(buf))
    timed("newline search (`parse.line_bounds`: numpy, one part)", lambda: line_bounds(buf))
    timed("newline search (`parse.line_bounds`: numpy, a part per core)",
          lambda: line_bounds(buf, cores()))
    events, unsure = timed("the byte scan (`bytescan.scan_orders`, 2 cores)",
                           lambda: bytescan.scan_orders("plain", buf, starts, ends, fields))
    timed("the byte scan without the layout (every line by the general scan, 2 cores)",
          lambda: bytescan.scan_orders("plain", buf, starts, ends, fields, laid_out=False))
    light = timed("flattening (`orders_flat`)",
                  lambda: orders_flat(events, False, columns).with_columns(events.get_column("_line")))
    masks = timed("the rules (`rule_masks`)", lambda: rule_masks(light, rules))
    assert masks is not None
    whole = ~pl.any_horizontal(pl.col(c).is_null() for c in ORDERS_REQUIRED)
    need = masks.get_column("__keep") | ~light.select(whole).to_series()
    cand = np.union1d(light.get_column("_line").filter(need).unique().to_numpy(), unsure)
    full = timed(f"full decoding of the {len(cand):,} candidate lines",
                 lambda: parse_lines("orders", "plain", buf, starts, ends, cand, 1 << 20))
    timed("the rules on them (`apply_rules`)", lambda: apply_rules(full.frame, rules))
    print(f"\nkept {out.parsed.frame.height:,} rows of {len(ends):,} lines; decoded whole: {out.decoded:,}")


if __name__ == "__main__":
    main()
