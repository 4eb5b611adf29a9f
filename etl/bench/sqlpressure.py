"""Ingestion while SQL queries fill DuckDB's memory: nothing lost, no lane ended.

    python -m etl.bench.sqlpressure [--mb 1000] [--memory 120MB] [--seconds 40] [--clients 3]

`nodetap serve` catches up on the bench's order statuses (every row kept, from the start)
with a small `db_memory_limit`, while `--clients` threads send memory-hungry queries to
`POST /v1/sql` without pause. Prints the answers by status, whether the pipeline is alive,
the lines stored against the lines written, and the server's memory events
(`commit_out_of_memory`, `reads_interrupted_for_ingest`, `commit_memory_back`).
"""

from __future__ import annotations

import argparse
import collections
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx

from etl.bench.data import prepare
from etl.bench.latency import free_port

QUERIES = (
    "SELECT \"user\", list(struct_pack(h := hash, c := cloid, t := time)) FROM orders GROUP BY ALL "
    "ORDER BY 1 LIMIT 2",
    "SELECT hash, cloid, \"user\", time, oid FROM orders ORDER BY hash DESC, cloid LIMIT 5",
    "SELECT \"user\", list(hash), list(coin), list(cloid) FROM orders GROUP BY ALL ORDER BY 1 LIMIT 5",
    "SELECT count(DISTINCT hash || cloid), count(DISTINCT \"user\" || coin || oid) FROM orders",
)


def main(argv: list[str]) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--mb", type=int, default=1000)
    p.add_argument("--dir", type=Path, default=Path(tempfile.gettempdir()) / "nodetap-bench")
    p.add_argument("--memory", default="120MB", help="db_memory_limit")
    p.add_argument("--seconds", type=float, default=40.0)
    p.add_argument("--clients", type=int, default=3)
    args = p.parse_args(argv)
    data = prepare(args.dir, args.mb, log=False)
    work = Path(tempfile.mkdtemp(prefix="nodetap-sqlpressure-"))
    port = free_port()
    env = {**os.environ, "NODETAP_DB_MEMORY_LIMIT": args.memory}
    log = work / "server.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "etl.cli", "serve", "--node-dir", str(data.node), "--db",
             str(work / "db.duckdb"), "--from", "start", "--backlog", "keep", "--keep-all",
             "--stream", "node_order_statuses", "--port", str(port), "--lake", str(work / "lake")],
            env=env, stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    answers: collections.Counter[str] = collections.Counter()
    lock = threading.Lock()
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                httpx.get(url + "/healthz", timeout=2)
                break
            except httpx.TransportError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise SystemExit(f"nodetap serve did not start: {log.read_text()[-2000:]}") from None
                time.sleep(0.2)
        end = time.monotonic() + args.seconds

        def client() -> None:
            with httpx.Client(base_url=url, timeout=60) as c:
                while time.monotonic() < end:
                    for sql in QUERIES:
                        r = c.post("/v1/sql", json={"sql": sql})
                        key = str(r.status_code) if r.status_code == 200 else \
                            f"{r.status_code} {r.json().get('code', '')}"
                        with lock:
                            answers[key] += 1

        threads = [threading.Thread(target=client) for _ in range(args.clients)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        status = httpx.get(url + "/v1/status", timeout=30).json()
    finally:
        proc.terminate()
        proc.wait(60)
    lines = sum(s["lines"] for s in status["streams"])
    events = collections.Counter(word for line in log.read_text().splitlines()
                                 for word in line.split() if word.startswith("event="))
    print(f"db_memory_limit {args.memory}, {args.clients} SQL clients for {args.seconds:g} s")
    print("answers:", ", ".join(f"{k}: {v}" for k, v in sorted(answers.items())))
    print(f"pipeline alive: {status['pipeline_alive']}; lines stored {lines:,} of {data.order_lines:,}")
    print("events:", ", ".join(f"{k.removeprefix('event=')}: {v}" for k, v in sorted(events.items())
                                if "memory" in k or "interrupt" in k or "error" in k))


if __name__ == "__main__":
    main(sys.argv[1:])
