"""What one unit of the fills lane costs: read, parse, trades, candles, commit.

    python -m etl.bench.fillunits [NODE_DIR] [UNIT_KB] [--statements]
        (default: /tmp/nodetap-bench/node-plain-1000mb-seed7, 1024)

Runs the real pipeline on the fills of a node dir (by default `nodetap bench`'s data set,
which `nodetap bench` generates), `batch_max_bytes` UNIT_KB, into a fresh database: a few
units to warm up, then up to 150 more, timed (the data set's fills are ~125 units of
1 MiB). Prints the wall and CPU milliseconds per unit (CPU: every thread of the process).
A live fills lane commits about one such unit per block the node writes, so this is the
part of a trade's latency that nodetap spends (docs/benchmarks.md). `--statements` also
prints the wall milliseconds a unit of each DuckDB call on the lane's connection (its
statements, and registering the frames they read), largest first.
"""

from __future__ import annotations

import resource
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

from etl.config import load_settings
from etl.malloc import tune
from etl.pipeline import Pipeline
from etl.store import Store

DEFAULT_NODE = Path(tempfile.gettempdir()) / "nodetap-bench" / "node-plain-1000mb-seed7"
WARM_UNITS = 5
UNITS = 150


def _cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


class TimedConnection:
    """A DuckDB connection whose calls are timed, by statement (first 70 characters)."""

    def __init__(self, con: Any) -> None:
        self._con = con
        self.seconds: defaultdict[str, float] = defaultdict(float)

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._con, name)
        if name not in ("execute", "executemany", "register", "unregister"):
            return attr
        return self._timed(name, attr)

    def _timed(self, name: str, call: Callable[..., Any]) -> Callable[..., Any]:
        def timed(*args: Any) -> Any:
            key = " ".join(str(args[0]).split())[:70] if name.startswith("execute") else name
            t0 = time.perf_counter()
            try:
                return call(*args)
            finally:
                self.seconds[key] += time.perf_counter() - t0
        return timed


def main(argv: list[str]) -> int:
    statements = "--statements" in argv
    argv = [a for a in argv if a != "--statements"]
    node = Path(argv[0]) if argv else DEFAULT_NODE
    unit_kb = int(argv[1]) if len(argv) > 1 else 1024
    if not (node / "node_fills").is_dir():
        print(f"no node_fills under {node}: run `nodetap bench --only throughput` first", file=sys.stderr)
        return 2
    tune()
    with tempfile.TemporaryDirectory() as tmp:
        s = load_settings(None, flags={
            "node_dir": node, "db": Path(tmp) / "fills.duckdb", "start_from": "start", "backlog": "keep",
            "streams": ["node_fills"], "seal_interval_s": 3600.0, "batch_max_bytes": unit_kb << 10})
        store = Store.from_settings(s)
        pipe = Pipeline(s, store)
        pipe.run_once(max_batches=WARM_UNITS)
        timed = [TimedConnection(lane.store.con) for lane in pipe.states.values()] if statements else []
        for lane, con in zip(pipe.states.values(), timed, strict=False):
            lane.store.con = con  # type: ignore[assignment]
        wall, cpu = time.perf_counter(), _cpu()
        units = pipe.run_once(max_batches=UNITS)
        wall, cpu = time.perf_counter() - wall, _cpu() - cpu
        if not units:
            print(f"the fills of {node} were all read while warming up: use a smaller UNIT_KB",
                  file=sys.stderr)
            return 2
        for lane, con in zip(pipe.states.values(), timed, strict=False):
            lane.store.con = con._con
        pipe.close()
        store.close()
    print(f"{units} units of {unit_kb} KiB of fills: {wall * 1000 / units:.1f} ms wall, "
          f"{cpu * 1000 / units:.1f} ms CPU a unit")
    for con in timed:
        for key, seconds in sorted(con.seconds.items(), key=lambda kv: -kv[1]):
            print(f"  {seconds * 1000 / units:6.2f} ms  {key}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
