"""One throughput measurement, in a process of its own.

    python -m etl.bench.measure KIND < params.json   ->  one JSON line on stdout

A fresh process per measurement makes its peak RSS and CPU time its own, and it inherits the
CPU affinity `nodetap bench --cores` set. CPU seconds are the process's user + system time
(every thread: Polars', DuckDB's, the pool's) over the timed phase only, not start-up.
"""

from __future__ import annotations

import os
import resource
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson

KINDS = ("nodetap", "replaced", "duckdb")


class MeasureError(RuntimeError):
    """A measurement process failed; the message carries the end of its output."""


def _cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)  # every thread of the process
    return r.ru_utime + r.ru_stime


def timed(fn: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """Run `fn`, adding its wall and CPU seconds and the process's peak RSS to what it returns."""
    wall, cpu = time.perf_counter(), _cpu()
    out = fn()
    out["seconds"] = time.perf_counter() - wall
    out["cpu_s"] = _cpu() - cpu
    out["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    out["cpus"] = len(os.sched_getaffinity(0))  # inherited from `nodetap bench --cores`
    return out


def nodetap(p: dict[str, Any]) -> dict[str, Any]:
    """The real pipeline: `run_once()`, `close()`, `store.close()` (DuckDB's final checkpoint).

    Settings are the defaults, then `NODETAP_*` variables (to try e.g. `NODETAP_DB_THREADS=4`),
    then what the measurement fixes; those that differ from the defaults are reported."""
    import duckdb

    from etl.config import Settings, load_settings, settings_doc
    from etl.malloc import startup_frozen, tune
    from etl.pipeline import Pipeline
    from etl.prefilter import prepare
    from etl.store import Store

    fixed: dict[str, Any] = {k: p[k] for k in ("max_backlog_bytes", "batch_max_bytes") if k in p}
    s = load_settings(None, flags={
        **fixed, "node_dir": p["node"], "db": p["db"], "start_from": "start", "backlog": p["backlog"],
        "rules_file": p["rules"], "keep_all": p["keep_all"], "streams": list(p["streams"]),
        "seal_interval_s": 3600.0})
    default = Settings()
    changed = {name: str(getattr(s, name)) for name, _, _ in settings_doc()
               if getattr(s, name) != getattr(default, name) and name not in ("node_dir", "db")}

    tune()  # as `nodetap` does at start

    def work() -> dict[str, Any]:
        store = Store.from_settings(s)
        pipe = Pipeline(s, store)
        pipe.run_once()
        pipe.close()
        store.close()
        return {}

    prepare()
    with startup_frozen():  # as `nodetap ingest` and `serve` run, once started
        out = timed(work)
    con = duckdb.connect(p["db"], read_only=True)
    try:
        lines, skipped, gaps, rejects = con.execute(
            "SELECT sum(lines), sum(skipped_bytes), sum(gaps), sum(rejects) FROM cursors").fetchone() or ()
        (kept,) = con.execute("SELECT count(*) FROM orders").fetchone() or (0,)
    finally:
        con.close()
    out.update(lines=int(lines or 0), kept=int(kept), skipped_bytes=int(skipped or 0),
               gaps=int(gaps or 0), rejects=int(rejects or 0), settings=changed)
    return out


def replaced(p: dict[str, Any]) -> dict[str, Any]:
    from etl.bench.replaced import run
    from etl.filters import Rules, load_rules

    rules = load_rules(Path(p["rules"])) if p["rules"] else Rules()
    files = [Path(f) for f in p["files"]]
    return timed(lambda: run(files, rules, p["workers"]))


def read_json_sql(files: list[str]) -> str:
    """DuckDB's `read_json` into a typed table: explicit columns, flattened in SQL, the same
    columns as nodetap's `orders` table."""
    listed = ", ".join("'" + f.replace("'", "''") + "'" for f in files)
    order = (
        "STRUCT(coin VARCHAR, side VARCHAR, limitPx VARCHAR, sz VARCHAR, oid BIGINT, "
        '"timestamp" BIGINT, triggerCondition VARCHAR, isTrigger BOOLEAN, triggerPx VARCHAR, '
        "children JSON, isPositionTpsl BOOLEAN, reduceOnly BOOLEAN, orderType VARCHAR, "
        "origSz VARCHAR, tif VARCHAR, cloid VARCHAR)"
    )
    columns = (f"{{'time': 'VARCHAR', 'user': 'VARCHAR', 'hash': 'VARCHAR', 'builder': 'VARCHAR', "
               f"'status': 'VARCHAR', 'order': '{order}'}}")
    return f"""CREATE TABLE orders AS SELECT
        "time"::TIMESTAMP AS "time", NULL::BIGINT AS block_number, NULL::TIMESTAMP AS block_time,
        "user", status, o.coin, o.side, o.limitPx::DOUBLE AS limit_px, o.sz::DOUBLE AS sz,
        o.origSz::DOUBLE AS orig_sz, o.oid, epoch_ms(o."timestamp") AS order_time,
        o.orderType AS order_type, o.tif, o.reduceOnly AS reduce_only, o.isTrigger AS is_trigger,
        o.triggerCondition AS trigger_condition, o.triggerPx::DOUBLE AS trigger_px,
        o.isPositionTpsl AS is_position_tpsl, o.children::VARCHAR AS children, o.cloid, hash, builder
    FROM (SELECT *, "order" AS o FROM read_json([{listed}], format = 'newline_delimited',
                                                columns = {columns}))"""


def duckdb_read_json(p: dict[str, Any]) -> dict[str, Any]:
    import duckdb

    def work() -> dict[str, Any]:
        con = duckdb.connect(p["db"])
        con.execute(f"SET threads = {int(p['threads'])}")
        con.execute(read_json_sql(p["files"]))
        (n,) = con.execute("SELECT count(*) FROM orders").fetchone() or (0,)
        con.close()  # the final checkpoint, as nodetap's timing includes it
        return {"lines": int(n), "kept": int(n)}

    return timed(work)


def run_child(kind: str, params: dict[str, Any], timeout_s: float = 6 * 3600) -> dict[str, Any]:
    """Run one measurement in a fresh Python process; its result as a dict. The page cache's
    dirty pages (the runs before, the generated data) are written out first: their writeback
    would stall this run's commits (`etl.bench.latency.measure`)."""
    os.sync()
    proc = subprocess.run([sys.executable, "-m", "etl.bench.measure", kind],
                          input=orjson.dumps(params), capture_output=True, timeout=timeout_s)
    if proc.returncode != 0:
        tail = (proc.stdout + proc.stderr).decode(errors="replace")[-3000:]
        raise MeasureError(f"measurement {kind} exited {proc.returncode}:\n{tail}")
    result: dict[str, Any] = orjson.loads(proc.stdout.splitlines()[-1])
    return result


def main() -> None:
    kind = sys.argv[1]
    params = orjson.loads(sys.stdin.buffer.read())
    fn = {"nodetap": nodetap, "replaced": replaced, "duckdb": duckdb_read_json}[kind]
    sys.stdout.buffer.write(orjson.dumps(fn(params)) + b"\n")


if __name__ == "__main__":
    main()
