"""The WebSocket hub under load (marked `load`, not run by default: `pytest -m load -s`).

`nodetap serve` runs as a subprocess, and the latency benchmark's writer (etl/bench/writer.py:
pre-rendered simulator blocks, replayed and stamped with the wall clock; the simulator alone
cannot write 100K lines/s) in a process of its own, at 100K lines/s; this process holds
500 WebSocket clients on mixed channels (trades, candles, filtered and whole order feeds), 20
of them raw sockets that never read. It samples the server's RSS every second and measures, for
the reading clients, the delay from a trade's time to its arrival, then how long ingest takes
to have nothing unread once the writer stops. Results go to stdout as JSON (and into
docs/reliability.md by hand)."""

from __future__ import annotations

import asyncio
import json
import multiprocessing
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import orjson
import psutil
import pytest
from websockets.asyncio.client import connect

from etl.bench.writer import FILL_SHARE, write
from tests.conftest import ROOT, free_port
from tests.test_ws_limits import raw_client

pytestmark = pytest.mark.load

RATE = 100_000
DURATION_S = 60.0
COINS = ["BTC", "ETH", "SOL", "HYPE", "PURR/USDC", "@107", "km:USTECH"]
CLIENTS = 500
STALLED = 20


def subscriptions(i: int) -> list[dict[str, Any]]:
    """The mix: trades, candles, filtered orders, and a few whole order feeds."""
    coin = COINS[i % len(COINS)]
    kind = i % 10
    if kind < 4:
        return [{"type": "trades", "coin": coin}]
    if kind < 7:
        return [{"type": "candle", "coin": coin, "interval": "1m"}, {"type": "trades", "coin": coin}]
    if kind < 9:
        return [{"type": "orders", "coin": coin, "minNotional": 1000}]
    return [{"type": "orders", "coin": "*"}]


async def reader(url: str, i: int, stop: asyncio.Event, delays: list[float], counts: dict[str, int]) -> None:
    async with connect(url, max_size=None, max_queue=None, open_timeout=60, ping_interval=None) as ws:
        for sub in subscriptions(i):
            await ws.send(orjson.dumps({"method": "subscribe", "subscription": sub}).decode())
        while not stop.is_set():
            try:
                raw = await asyncio.wait_for(ws.recv(), 1.0)
            except TimeoutError:
                continue
            now_ms = time.time() * 1000
            message = orjson.loads(raw)
            channel = message["channel"]
            counts[channel] = counts.get(channel, 0) + 1
            if channel == "trades":
                delays.extend(now_ms - t["time"] for t in message["data"])


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))], 1) if ordered else float("nan")


def test_500_clients_while_ingesting_100k_lines_per_second(tmp_path: Path) -> None:
    port = free_port()
    node, db = tmp_path / "node", tmp_path / "load.duckdb"
    env = {**os.environ, "NODETAP_WS_MAX_LAG_S": "5", "NODETAP_SEAL_INTERVAL_S": "3600"}
    ctx = multiprocessing.get_context("spawn")
    notes: Any = ctx.Queue()
    writer = ctx.Process(target=write, args=(str(node), RATE * (1 - FILL_SHARE), RATE * FILL_SHARE,
                                             DURATION_S + 15, 70.0, notes))
    writer.start()
    assert notes.get(timeout=120)[0] == "start"
    server = subprocess.Popen([sys.executable, "-m", "etl.cli", "serve", "--node-dir", str(node),
                               "--db", str(db), "--port", str(port),
                               "--rules", str(ROOT / "data" / "rules.toml"), "--log-level", "WARNING"],
                              cwd=ROOT, env=env)
    proc = psutil.Process(server.pid)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(url + "/healthz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline and server.poll() is None, "server did not start"
            time.sleep(0.2)
        result = asyncio.run(_run(url, port, proc))
        hub = httpx.get(url + "/v1/status", timeout=30).json()
        result["hub"] = hub["hub"]
        result["streams"] = [{k: s.get(k) for k in ("stream", "lines", "lag_bytes", "skipped_bytes", "gaps")}
                             for s in hub["streams"]]
        writer.join(120)
        _, lines, seconds, behind, _ = notes.get(timeout=10)
        result["writer"] = {"lines": lines, "lines_per_s": round(lines / seconds),
                            "most_behind_s": round(behind, 2)}
        # ingest catches up once the writer stops: how long until nothing is left unread
        stopped = time.monotonic()
        while any(s["lag_bytes"] for s in httpx.get(url + "/v1/status", timeout=30).json()["streams"]):
            assert time.monotonic() - stopped < 60, "ingest did not catch up within 60 s of the writer's end"
            time.sleep(0.2)
        result["caught_up_s_after_writer"] = round(time.monotonic() - stopped, 1)
        print(json.dumps(result, indent=1))
        assert server.poll() is None
        assert result["hub"]["lagged_disconnects"] >= STALLED
        assert result["trade_delays"] > 1000
    finally:
        if writer.is_alive():
            writer.terminate()
        server.send_signal(signal.SIGINT)
        try:
            server.wait(30)
        except subprocess.TimeoutExpired:
            server.kill()


async def _run(url: str, port: int, proc: psutil.Process) -> dict[str, Any]:
    stop = asyncio.Event()
    delays: list[float] = []
    counts: dict[str, int] = {}
    ws_url = url.replace("http", "ws") + "/ws"
    readers = []
    for i in range(CLIENTS - STALLED):
        readers.append(asyncio.create_task(reader(ws_url, i, stop, delays, counts)))
        if i % 50 == 49:
            await asyncio.sleep(0.2)
    stalled = [raw_client(port, [{"type": "orders", "coin": "*"}]) for _ in range(STALLED)]
    rss: list[tuple[float, int]] = []
    t0 = time.monotonic()
    while time.monotonic() - t0 < DURATION_S:
        await asyncio.sleep(1.0)
        rss.append((round(time.monotonic() - t0, 1), proc.memory_info().rss >> 20))
        if any(r.done() for r in readers):
            break
    stop.set()
    failed = [r.exception() for r in readers if r.done() and not r.cancelled() and r.exception()]
    await asyncio.gather(*readers, return_exceptions=True)
    for sock in stalled:
        sock.close()
    return {"clients": CLIENTS, "stalled": STALLED, "duration_s": DURATION_S, "rate": RATE,
            "reader_errors": [repr(e) for e in failed[:5]], "messages": counts,
            "trade_delays": len(delays), "delay_ms_p50": pct(delays, 0.5), "delay_ms_p99": pct(delays, 0.99),
            "delay_ms_max": pct(delays, 1.0), "rss_mib": rss}
