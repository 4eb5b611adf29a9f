"""Live latency: from a node line written to its trade received on the `/ws` feed.

    python bench/bench_latency.py [--rates 20000,300000] [--seconds 10] [--warmup 3] [--burst-ms 70]

For each rate (order-status plus fill lines per second) on a fresh node dir and DuckDB file:
`nodetap serve` runs as a subprocess (built-in orders rules, default settings otherwise), a
writer process appends simulated blocks to the node's hour files, and this process holds one
WebSocket client subscribed to the trades of every simulated coin.

The writer pre-renders three seconds of blocks (the Python simulator alone cannot make 300K
lines a second) and replays them, with new trade ids each time. Just before writing a burst it
stamps the blocks with the wall clock (their ISO `time`, the fills' and orders' ms `time` and
`timestamp`). A trade's `time` on the feed is that stamp, so a trade's latency is its arrival
time minus its `time`, in ms, on one clock. Trades stamped during the warm-up are not counted.
A burst is `--burst-ms` of blocks written at once (70 ms: one block, as a node writes), through
the simulator's NodeWriter; the writer paces itself by lines written, so the rate holds although
block sizes vary. The run ends when every trade written has arrived.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import orjson
from websockets.sync.client import connect

from etl.simulate import BLOCK_S, COINS, FILL_STREAM, ORDER_STREAM, NodeWriter, Simulator, iso, render

ROOT = Path(__file__).resolve().parent.parent
FILL_LINES_PER_ORDER = 0.2  # 10% of order statuses are fills, two fill lines each


def prerender(rate: float, seconds: float, seed: int = 7) -> list[tuple[bytes, bytes, bytes, bytes]]:
    """Blocks of `seconds` at about `rate` lines/s: (iso time, ms time, order lines, fill lines)."""
    sim = Simulator(seed=seed, start=datetime(2001, 1, 1, tzinfo=UTC))
    per_block = rate * BLOCK_S / (1 + FILL_LINES_PER_ORDER)
    out = []
    for env, orders, fills, _ in sim.blocks(per_block):
        o = b"".join(line + b"\n" for line in render(ORDER_STREAM, "plain", env, orders))
        f = b"".join(line + b"\n" for line in render(FILL_STREAM, "plain", env, fills))
        out.append((iso(sim.now).encode(), str(int(sim.now.timestamp() * 1000)).encode(), o, f))
        if len(out) * BLOCK_S >= seconds:
            return out
    raise AssertionError("unreachable")


def write(node: str, rate: float, seconds: float, burst_ms: float, done: mp.Queue) -> None:
    """Append the blocks at `rate` for `seconds`, a burst at a time, each stamped when written."""
    blocks = prerender(rate, 3.0)
    per_burst = max(1, round(burst_ms / 1000 / BLOCK_S))
    writer = NodeWriter(Path(node))  # the simulator's writer: hour files, rotated on the clock

    lines = written = trades = 0
    worst_behind = 0.0
    done.put(("start", time.time() * 1000))
    started = time.monotonic()
    while time.monotonic() - started < seconds:
        now = datetime.now(UTC)
        stamp_iso, stamp_ms = iso(now).encode(), str(int(now.timestamp() * 1000)).encode()
        orders, fills = [], []
        for i in range(written, written + per_burst):
            b_iso, b_ms, o, f = blocks[i % len(blocks)]
            orders.append(o.replace(b_iso, stamp_iso).replace(b_ms, stamp_ms))
            # a new trade id per replay (tids start at 5000000...): trades are unique by tid
            replay = b'"tid":5%03d' % (i // len(blocks) % 1000)
            fills.append(f.replace(b_ms, stamp_ms).replace(b'"tid":5000', replay))
        for stream, data in ((ORDER_STREAM, b"".join(orders)), (FILL_STREAM, b"".join(fills))):
            if data:
                writer.write(stream, now, [data[:-1]])  # whole lines; it adds the last newline
        writer.flush()
        lines += sum(x.count(b"\n") for x in orders + fills)
        trades += sum(x.count(b'"crossed":true') for x in fills)  # one taker fill per trade
        written += per_burst
        # paced by lines written: block sizes vary a lot (as on a node)
        ahead = started + lines / rate - time.monotonic()
        worst_behind = max(worst_behind, -ahead)
        if ahead > 0:
            time.sleep(ahead)
    writer.close()
    done.put(("done", lines, time.monotonic() - started, worst_behind, trades))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_server(node: Path, db: Path, port: int, log: Path, debounce_ms: int | None,
                 rules: str = "") -> subprocess.Popen[bytes]:
    env = {**os.environ, "NODETAP_RULES_FILE": rules, "NODETAP_SEAL_INTERVAL_S": "3600"}
    if debounce_ms is not None:
        env["NODETAP_DEBOUNCE_MS"] = str(debounce_ms)
    cmd = [sys.executable, "-m", "etl.cli", "serve", "--node-dir", str(node), "--db", str(db),
           "--from", "start", "--port", str(port)]
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log.open("wb"), stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"nodetap serve exited {proc.returncode}; see {log}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return proc
        except OSError:
            time.sleep(0.1)
    proc.kill()
    raise RuntimeError(f"nodetap serve did not listen on {port}; see {log}")


def stop_server(proc: subprocess.Popen[bytes]) -> None:
    proc.send_signal(signal.SIGINT)  # a clean first signal
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def run(rate: float, args: argparse.Namespace, work: Path) -> None:
    node, db, port = work / "node", work / "bench.duckdb", free_port()
    node.mkdir(parents=True)
    server = start_server(node, db, port, work / "serve.log", args.debounce_ms, args.rules)
    latencies: list[float] = []
    try:
        with connect(f"ws://127.0.0.1:{port}/ws", max_size=None, max_queue=None) as ws:
            for coin in COINS:
                sub = {"type": "trades", "coin": coin}
                ws.send(orjson.dumps({"method": "subscribe", "subscription": sub}))
                assert orjson.loads(ws.recv(timeout=10))["channel"] == "subscriptionResponse"
            done: mp.Queue = mp.get_context("spawn").Queue()
            writer = mp.get_context("spawn").Process(
                target=write, args=(str(node), rate, args.warmup + args.seconds, args.burst_ms, done))
            writer.start()
            counted_from = float("inf")  # trades stamped after the warm-up
            result = None
            received = 0
            last_message = time.monotonic()
            while result is None or received < result[3]:  # until every trade written has come
                while not done.empty():
                    note = done.get()
                    if note[0] == "start":
                        counted_from = note[1] + args.warmup * 1000
                    else:
                        result, last_message = note[1:], time.monotonic()
                try:
                    raw = ws.recv(timeout=0.5)
                except TimeoutError:
                    if result is not None and time.monotonic() - last_message > args.quiet:
                        break  # the writer is done and the feed has gone quiet
                    continue
                now_ms = time.time() * 1000
                last_message = time.monotonic()
                message = orjson.loads(raw)
                if message["channel"] != "trades":
                    continue
                received += len(message["data"])
                for trade in message["data"]:
                    if trade["time"] >= counted_from:
                        latencies.append(now_ms - trade["time"])
            writer.join(10)
    finally:
        stop_server(server)
    lines, seconds, behind, written = result
    if not latencies:
        log = (work / "serve.log").read_text()[-3000:]
        raise RuntimeError(f"no trade received at {rate:.0f} lines/s; the server said:\n{log}")
    latencies.sort()
    q = statistics.quantiles(latencies, n=100) if len(latencies) > 1 else latencies * 99
    print(f"rate {rate / 1e3:.0f}K lines/s (written {lines / seconds / 1e3:.0f}K lines/s, writer at most "
          f"{behind * 1000:.0f} ms behind), burst {args.burst_ms:g} ms: {received}/{written} trades "
          f"received, {len(latencies)} after the warm-up; "
          f"latency ms p50 {q[49]:.1f} p99 {q[98]:.1f} max {latencies[-1]:.1f}", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rates", default="20000,300000", help="lines/s, comma-separated")
    ap.add_argument("--seconds", type=float, default=10.0, help="measured seconds per rate")
    ap.add_argument("--warmup", type=float, default=3.0, help="seconds written before measuring")
    ap.add_argument("--rules", default="", help="rules file for serve (default: built-in rules, "
                    "which keep ~80%% of order statuses; data/rules.toml keeps ~2%%)")
    ap.add_argument("--burst-ms", type=float, default=70.0, help="blocks written at once, in ms of blocks")
    ap.add_argument("--debounce-ms", type=int, help="setting debounce_ms (default: the setting's default)")
    ap.add_argument("--quiet", type=float, default=30.0,
                    help="after the writer stops, give up when no trade came for this many seconds")
    ap.add_argument("--dir", type=Path, help="work dir (default: a temp dir)")
    args = ap.parse_args()
    print(f"cores={os.cpu_count()} seconds={args.seconds} warmup={args.warmup}", flush=True)
    for rate in (float(r) for r in args.rates.split(",")):
        with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
            run(rate, args, Path(tmp))


if __name__ == "__main__":
    main()
