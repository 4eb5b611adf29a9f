"""Decoding a batch of order statuses whole: the byte scan against Polars' decoder alone.

    python -m etl.bench.decode

Generates order statuses in each variant (plain, `_by_block`, `_streaming`; seed 7, as `nodetap
bench`), then decodes the first 16 KiB, 64 KiB, 256 KiB, 1 MiB and 4 MiB of each with
`etl.parse.parse`: through the byte scan (etl/bytescan.py, the lines it is not sure of by Polars)
and with Polars alone. Prints the CPU milliseconds of each (every thread,
`time.process_time`), best of five.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

from etl.parse import parse
from etl.prefilter import prepare
from etl.simulate import generate

SIZES = (16 << 10, 64 << 10, 256 << 10, 1 << 20, 4 << 20)
POLARS_ONLY = 1 << 62


def cpu_ms(variant: str, buf: bytes, scan_min_lines: int) -> float:
    parse("orders", variant, buf, scan_min_lines=scan_min_lines)
    best = float("inf")
    for _ in range(5):
        c = time.process_time()
        parse("orders", variant, buf, scan_min_lines=scan_min_lines)
        best = min(best, time.process_time() - c)
    return best * 1000


def main() -> None:
    prepare()  # numba's compiled scan, loaded before timing
    print("| variant | bytes | lines | rows | byte scan, CPU ms | Polars alone, CPU ms |")
    print("| --- | --- | --- | --- | --- | --- |")
    with tempfile.TemporaryDirectory() as tmp:
        for variant in ("plain", "by_block", "streaming"):
            node = Path(tmp) / variant
            lines = 2_000 if variant == "by_block" else 40_000  # a block line holds ~20 events
            generate(node, lines=lines, variant=variant, kinds=("orders",))
            data = b"".join(p.read_bytes() for p in sorted(node.rglob("*")) if p.is_file())
            for size in SIZES:
                buf = data[:size]
                buf = buf[: buf.rindex(b"\n") + 1]
                rows = parse("orders", variant, buf).frame.height
                print(f"| {variant} | {size >> 10} KiB | {buf.count(10):,} | {rows:,} | "
                      f"{cpu_ms(variant, buf, 1):.2f} | {cpu_ms(variant, buf, POLARS_ONLY):.2f} |")


if __name__ == "__main__":
    main()
