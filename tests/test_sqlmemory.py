"""`POST /v1/sql` bounds the memory one query may take: issue 11's memory and scalar bombs are
answered 4xx within the time limit by a real `nodetap serve` process, whose resident memory
(sampled from outside) never grows past the bound."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import psutil
import pytest

from api.sqllimits import query_memory_budget
from etl.config import memory_size
from tests.conftest import ROOT, free_port, wait_for

DB_MEMORY_LIMIT = "256MB"
BUDGET = query_memory_budget(DB_MEMORY_LIMIT)  # 384 MB: what one query may grow the server by
TIMEOUT_S = 5.0


@dataclass
class Server:
    url: str
    proc: psutil.Process


@contextmanager
def nodetap_serve(node: Path, db: Path) -> Iterator[Server]:
    port = free_port()
    env = {**os.environ, "NODETAP_DB_MEMORY_LIMIT": DB_MEMORY_LIMIT, "NODETAP_SQL_TIMEOUT_S": str(TIMEOUT_S)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "etl.cli", "serve", "--node-dir", str(node), "--db", str(db),
         "--from", "start", "--port", str(port)],
        cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    url = f"http://127.0.0.1:{port}"

    def up() -> bool:
        try:
            return httpx.get(url + "/healthz", timeout=2).status_code == 200
        except httpx.TransportError:
            return proc.poll() is not None  # exited: fail below, with its stderr

    try:
        wait_for(up, timeout=60)
        assert proc.poll() is None, proc.communicate()[1].decode()[-2000:]
        yield Server(url, psutil.Process(proc.pid))
    finally:
        proc.terminate()
        proc.communicate(timeout=30)


def peak_growth(server: Server, run: Callable[[], httpx.Response]) -> tuple[httpx.Response, int, float]:
    """`run()`'s answer, how far the server's RSS rose above where it was before, and the seconds."""
    start = server.proc.memory_info().rss
    peak = start
    done = threading.Event()

    def sample() -> None:
        nonlocal peak
        while not done.wait(0.005):
            peak = max(peak, server.proc.memory_info().rss)

    sampler = threading.Thread(target=sample)
    sampler.start()
    t0 = time.monotonic()
    try:
        response = run()
    finally:
        elapsed = time.monotonic() - t0
        done.set()
        sampler.join()
    return response, peak - start, elapsed


def test_memory_sizes_parse_as_duckdb_writes_them() -> None:
    assert memory_size("2GB") == 2_000_000_000 and memory_size("512MiB") == 512 << 20
    assert memory_size("1.5 GB") == 1_500_000_000
    assert BUDGET == 384_000_000
    for text in ("lots", "100"):  # DuckDB refuses a bare number too
        with pytest.raises(ValueError, match=f"'{text}' is not a memory size"):
            memory_size(text)


def test_issue_11_memory_bombs_get_a_4xx_within_the_limit_and_a_bounded_rss(
        make_node_dir: Callable[..., Path], tmp_path: Path) -> None:
    node = make_node_dir(lines=500)
    duckdb_oom = "the query needs more memory than the server allows (256MB, setting db_memory_limit)"
    one_call = 400_000_000  # what one call may build before the watch can stop the query
    bombs = {
        # a list aggregate over 1e9 rows: DuckDB accounts for it and fails it at memory_limit
        "SELECT list(range) FROM range(1000000000)": duckdb_oom,
        # refused before they run (api.sqllimits): growth in a recursive CTE, or of an aggregate's
        # one value, or sizes given as literals
        "WITH RECURSIVE r(s) AS (SELECT 'x' UNION ALL SELECT s || s FROM r WHERE length(s) < 4000000000) "
        "SELECT max(length(s)) FROM r": "||: may not grow a value inside a recursive CTE",
        "SELECT length(replace(s, 'x', 'xxxxxxxxxx')) FROM (SELECT string_agg('x', '') AS s "
        "FROM range(40000000))": "replace: may not grow the result of string_agg(...)",
        "SELECT repeat('x', 2000000000)": "repeat: would build 2000000000 bytes",
        "SELECT range(50000000)": "range: would build a list of 50000000 elements",
    }
    with nodetap_serve(node, tmp_path / "m.duckdb") as server, httpx.Client(base_url=server.url) as client:
        for sql, message in bombs.items():
            r, grew, seconds = peak_growth(server, lambda q=sql: client.post(  # type: ignore[misc]
                "/v1/sql", json={"sql": q}, timeout=60))
            assert r.status_code == 400, (sql, r.text)
            assert message in r.json()["error"], (sql, r.json()["error"])
            assert seconds < TIMEOUT_S + 1, (sql, seconds)
            # the bound: the budget, passed at most by the one call that crossed it
            assert grew < BUDGET + one_call, (sql, grew >> 20)
        # the server is fine afterwards
        r = client.post("/v1/sql", json={"sql": "SELECT count(*) AS n FROM range(10)"})
        assert r.status_code == 200 and r.json()["rows"] == [[10]]
