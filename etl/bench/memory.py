"""Peak RSS of an ingest whose backlog is many times `max_backlog_bytes`.

The order statuses of the data set are the backlog; `max_backlog_bytes` is set to a
`factor`-th of them with `backlog = "drop"`, so the pipeline skips the oldest data (recorded
in `gaps`) and ingests the rest, keep-all (every row stored: the most memory the rules allow).
`batch_max_bytes` is a quarter of the limit, as in tests/test_ingest.py's memory test: the tail
jumps to about one batch before the end, so a batch must be smaller than the limit.
Memory must not depend on the backlog: this number stays near the throughput rows' peak RSS,
which ingest the whole backlog with `backlog = "keep"`.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from etl.bench.data import Dataset
from etl.bench.measure import run_child
from etl.config import Settings
from etl.simulate import ORDER_STREAM


def measure(data: Dataset, work: Path, factor: int = 20) -> dict[str, Any]:
    limit = max(4, data.order_bytes // factor)
    batch = min(Settings().batch_max_bytes, limit // 4)
    run_dir = work / "runs" / "memory"
    shutil.rmtree(run_dir, ignore_errors=True)
    run_dir.mkdir(parents=True)
    try:
        out = run_child("nodetap", {
            "node": str(data.node), "db": str(run_dir / "bench.duckdb"), "backlog": "drop",
            "max_backlog_bytes": limit, "batch_max_bytes": batch, "rules": "", "keep_all": True,
            "streams": [ORDER_STREAM],
        })
    finally:
        shutil.rmtree(run_dir, ignore_errors=True)
    out.update(name=f"backlog {factor}x max_backlog_bytes, drop, keep-all",
               backlog_bytes=data.order_bytes, max_backlog_bytes=limit, batch_max_bytes=batch,
               factor=factor)
    return out
