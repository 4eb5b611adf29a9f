"""The benchmark's data: a simulated node dir (order statuses plus fills), generated once."""

from __future__ import annotations

import os
import shutil
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import orjson

from etl.simulate import FILL_STREAM, ORDER_STREAM, generate

LINE_BYTES = 455  # mean over order statuses (~475 B) and fills (~360 B), as simulated
SEED = 7
CHUNK = 8 << 20


@dataclass(frozen=True)
class Dataset:
    node: Path
    order_files: tuple[Path, ...]
    fill_files: tuple[Path, ...]
    order_lines: int
    order_bytes: int
    fill_lines: int
    fill_bytes: int

    def summary(self) -> dict[str, object]:
        out = asdict(self)
        out["node"] = str(self.node)
        out["order_files"] = [str(p) for p in self.order_files]
        out["fill_files"] = [str(p) for p in self.fill_files]
        return out


def hour_files(node: Path, stream: str) -> tuple[Path, ...]:
    """The stream's hour files in time order (`<stream>/hourly/YYYYMMDD/H`)."""
    files = [p for p in (node / stream / "hourly").glob("*/*") if p.is_file()]
    return tuple(sorted(files, key=lambda p: (p.parent.name, int(p.name))))


def count_lines(files: tuple[Path, ...]) -> tuple[int, int]:
    """(newlines, bytes) of the files, read in large chunks; also warms the page cache."""
    lines = size = 0
    buf = bytearray(CHUNK)
    for path in files:
        with open(path, "rb", buffering=0) as f:
            while n := f.readinto(buf):
                lines += buf.count(b"\n", 0, n)
                size += n
    return lines, size


def prepare(work: Path, mb: int, log: bool = True) -> Dataset:
    """The node dir for `mb` MB under `work`, generated on first use and reused after.

    Generation writes into a temporary directory renamed into place at the end, so an
    interrupted run never leaves a half-written data set that a later run would trust.
    """
    node = work / f"node-plain-{mb}mb-seed{SEED}"
    meta = node / "bench.json"
    if not meta.exists():
        tmp = work / f".{node.name}.tmp-{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        t = time.perf_counter()
        if log:
            print(f"bench: generating ~{mb} MB of order statuses and fills into {node}",
                  file=sys.stderr, flush=True)
        generate(tmp, lines=max(1000, mb * 1_000_000 // LINE_BYTES), variant="plain",
                 kinds=("orders", "fills"), seed=SEED)
        (tmp / "bench.json").write_bytes(orjson.dumps({"mb": mb, "seed": SEED}))
        shutil.rmtree(node, ignore_errors=True)
        os.replace(tmp, node)
        if log:
            print(f"bench: generated in {time.perf_counter() - t:.1f} s", file=sys.stderr, flush=True)
    orders, fills = hour_files(node, ORDER_STREAM), hour_files(node, FILL_STREAM)
    # counting reads every byte: the files are in the page cache from here on, as on a live node
    order_lines, order_bytes = count_lines(orders)
    fill_lines, fill_bytes = count_lines(fills)
    return Dataset(node, orders, fills, order_lines, order_bytes, fill_lines, fill_bytes)

