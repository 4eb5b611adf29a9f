"""Latency: from a fill line written to its trade received by a WebSocket client on `/ws`.

For each scenario, on a fresh node dir and DuckDB file: `nodetap serve` runs as a subprocess
(the default rules, default settings otherwise), a writer process (`etl.bench.writer`) appends
stamped blocks at the scenario's rates, and this process holds one WebSocket client subscribed
to the trades of every simulated coin. Trades stamped during the warm-up are not counted. The
scenario ends when every trade written has arrived, or when the feed stays quiet for `quiet_s`
after the writer stopped. The server's CPU seconds and peak RSS come from its exit status.
"""

from __future__ import annotations

import math
import multiprocessing as mp
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
from websockets.sync.client import connect

from etl.bench.writer import FILL_SHARE, write
from etl.simulate import COINS


class LatencyError(RuntimeError):
    """The server did not start or no trade arrived; the message carries the server's log."""


@dataclass(frozen=True)
class Scenario:
    name: str
    order_rate: float  # order-status lines/s
    fill_rate: float  # fill lines/s


def mixed(rate: float) -> Scenario:
    """`rate` lines/s of order statuses and fills in the simulator's mix (1 fill line per 5)."""
    return Scenario(f"{rate / 1e3:g}K lines/s", rate * (1 - FILL_SHARE), rate * FILL_SHARE)


def fills_under_load(fills: float, orders: float) -> list[Scenario]:
    """The trades feed with fills alone, then with a flood of order statuses beside them."""
    return [Scenario(f"fills {fills / 1e3:g}K alone", 0.0, fills),
            Scenario(f"fills {fills / 1e3:g}K + orders {orders / 1e3:g}K", orders, fills)]


def percentile(sorted_values: list[float], p: float) -> float:
    """Nearest-rank percentile: a value that was observed."""
    return sorted_values[max(0, math.ceil(p / 100 * len(sorted_values)) - 1)]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_server(node: Path, db: Path, port: int, log: Path, rules: Path | None) -> subprocess.Popen[bytes]:
    env = {**os.environ, "NODETAP_SEAL_INTERVAL_S": "3600"}
    cmd = [sys.executable, "-m", "etl.cli", "serve", "--node-dir", str(node), "--db", str(db),
           "--from", "start", "--port", str(port)]
    if rules is None:
        env["NODETAP_RULES_FILE"] = ""  # the built-in rules
    else:
        cmd += ["--rules", str(rules)]
    with log.open("wb") as out:  # the server has its own copy of the descriptor
        proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise LatencyError(f"nodetap serve exited {proc.returncode}: {_tail(log)}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return proc
        except OSError:
            time.sleep(0.1)
    proc.kill()
    raise LatencyError(f"nodetap serve did not listen on port {port} within 60 s: {_tail(log)}")


def stop_server(proc: subprocess.Popen[bytes], timeout_s: float = 30.0) -> dict[str, float]:
    """A clean SIGINT (forced kill after `timeout_s`); the server's CPU seconds and peak RSS."""
    proc.send_signal(signal.SIGINT)
    deadline = time.monotonic() + timeout_s
    while True:
        pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
        if pid:
            break
        if time.monotonic() > deadline:
            proc.kill()
            pid, status, usage = os.wait4(proc.pid, 0)
            break
        time.sleep(0.05)
    proc.returncode = os.waitstatus_to_exitcode(status)  # reaped here, not by Popen
    return {"server_cpu_s": usage.ru_utime + usage.ru_stime,
            "server_peak_rss_mb": usage.ru_maxrss / 1024}


def _tail(log: Path) -> str:
    return log.read_text(errors="replace")[-3000:]


def _subscribe(ws: Any, timeout_s: float = 60.0) -> None:
    """Subscribe to every coin's trades; a coin is refused until the server has seen it (as
    the public API refuses unknown coins), so it is asked again while the warm-up writes. Trades
    of the coins subscribed already arrive meanwhile: they are warm-up, not counted."""
    deadline = time.monotonic() + timeout_s
    for coin in COINS:
        while True:
            ws.send(orjson.dumps({"method": "subscribe", "subscription": {"type": "trades", "coin": coin}}))
            while (reply := orjson.loads(ws.recv(timeout=30))).get("channel") == "trades":
                pass
            if reply.get("channel") == "subscriptionResponse":
                break
            if time.monotonic() > deadline:
                raise LatencyError(f"subscribing to {coin}'s trades got {reply}")
            time.sleep(0.05)


def measure(sc: Scenario, work: Path, *, seconds: float, warmup: float, burst_ms: float,
            quiet_s: float, rules: Path | None) -> dict[str, Any]:
    """Run one scenario in `work` (an empty dir); its numbers.

    The page cache's dirty pages are written out first: a scenario after one that wrote GBs
    (315K lines/s writes ~150 MB/s) otherwise inherits their writeback, during which DuckDB's
    COMMIT (an fsync of its write-ahead log) waits 100-300 ms on ext4; 20K fills/s alone after
    300K lines/s stalled so 3 times in 3, and 0 times in 2 after a `sync`."""
    os.sync()
    node, db, log, port = work / "node", work / "bench.duckdb", work / "serve.log", free_port()
    work.mkdir(parents=True, exist_ok=True)  # the node dir is the writer's: serve waits for it
    server = start_server(node, db, port, log, rules)
    latencies: list[float] = []
    received = 0
    done: tuple[Any, ...] | None = None
    ctx = mp.get_context("spawn")
    notes, ready = ctx.Queue(), ctx.Event()
    writer = ctx.Process(target=write, name="nodetap-bench-writer",
                         args=(str(node), sc.order_rate, sc.fill_rate, warmup, seconds, burst_ms, notes,
                               ready))
    try:
        with connect(f"ws://127.0.0.1:{port}/ws", max_size=None, max_queue=None) as ws:
            writer.start()
            _subscribe(ws)
            ready.set()  # the warm-up ends once every coin is subscribed (a slow start may take long)
            counted_from = math.inf  # trades stamped after the warm-up, in wall ms
            last_message = time.monotonic()
            while done is None or received < done[4]:  # until every trade written has come (or quiet)
                while not notes.empty():
                    note = notes.get()
                    if note[0] == "start":
                        counted_from = note[1]
                    else:
                        done, last_message = note, time.monotonic()
                if done is None and not writer.is_alive() and notes.empty():
                    raise LatencyError(f"the writer process exited {writer.exitcode} before it was done")
                try:
                    raw = ws.recv(timeout=0.5)
                except TimeoutError:
                    if done is not None and time.monotonic() - last_message > quiet_s:
                        break  # the writer is done and the feed has gone quiet
                    continue
                now_ms = time.time() * 1000
                last_message = time.monotonic()
                message = orjson.loads(raw)
                if message.get("channel") != "trades":
                    continue
                received += len(message["data"])
                latencies += [now_ms - t["time"] for t in message["data"] if t["time"] >= counted_from]
    finally:
        if writer.pid is not None:  # started
            writer.join(30)
            if writer.is_alive():
                writer.kill()
        usage = stop_server(server)
    if done is None or not latencies:
        raise LatencyError(f"{sc.name}: no trade counted (received {received}); "
                           f"the server said: {_tail(log)}")
    _, lines, wrote_s, behind_s, trades = done
    latencies.sort()
    return {
        "name": sc.name, "order_rate": sc.order_rate, "fill_rate": sc.fill_rate,
        "target_lines_per_s": sc.order_rate + sc.fill_rate,
        "written_lines": lines, "written_lines_per_s": lines / wrote_s,
        "writer_behind_ms": behind_s * 1000, "trades_written": trades, "trades_received": received,
        "trades_counted": len(latencies), "p50_ms": percentile(latencies, 50),
        "p99_ms": percentile(latencies, 99), "max_ms": latencies[-1], **usage,
    }

