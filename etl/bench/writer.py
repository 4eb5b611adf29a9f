"""The latency benchmark's node writer: simulated blocks appended at a set rate, each line
stamped with the wall clock as it is written.

The Python simulator alone cannot make 300K lines a second, so the writer pre-renders a few
seconds of blocks and replays them, with new trade ids each time. Just before writing a burst
it stamps the blocks with the wall clock: the order statuses' ISO `time` and ms `timestamp`,
the fills' ms `time`. A trade's `time` on the feed is the stamp of the taker fill it comes
from, so its latency is its arrival time minus its `time`, on one clock. Order statuses and
fills have rates of their own, so that the trades feed can be measured alone and under a flood
of order statuses. A burst is `burst_ms` of blocks written at once (70 ms: one block, as a node
writes); the writer paces itself by lines written, since block sizes vary a lot, as on a node.
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from multiprocessing.queues import Queue
from pathlib import Path
from typing import Any

from etl.simulate import BLOCK_S, FILL_STREAM, ORDER_STREAM, NodeWriter, Simulator, iso, render

PRERENDER_S = 2.0  # seconds of blocks rendered once, then replayed
FILL_SHARE = 0.2 / 1.2  # the simulator's mix: two fill lines per filled order, 10% filled


@dataclass(frozen=True)
class Block:
    iso: bytes  # the block's time as the order statuses carry it
    ms: bytes  # and as epoch ms (orders' `timestamp`, fills' `time`)
    orders: bytes  # newline-terminated lines
    fills: bytes


def prerender(order_rate: float, fill_rate: float, seconds: float, seed: int = 7) -> list[Block]:
    """Blocks covering `seconds` at about `order_rate` order-status and `fill_rate` fill lines/s."""
    sim = Simulator(seed=seed, start=datetime(2001, 1, 1, tzinfo=UTC))
    rng = random.Random(seed + 2)
    trades_per_block = fill_rate * BLOCK_S / 2  # two fill lines per trade
    out: list[Block] = []
    for env, orders, _, _ in sim.blocks(order_rate * BLOCK_S):
        n = int(rng.expovariate(1.0 / trades_per_block) + 0.5) if trades_per_block > 0 else 0
        fills = [f for _ in range(n) for f in sim.trade()[:2]]
        out.append(Block(
            iso(sim.now).encode(),
            str(int(sim.now.timestamp() * 1000)).encode(),
            b"".join(line + b"\n" for line in render(ORDER_STREAM, "plain", env, orders)),
            b"".join(line + b"\n" for line in render(FILL_STREAM, "plain", env, fills)),
        ))
        if len(out) * BLOCK_S >= seconds:
            return out
    raise AssertionError("unreachable: Simulator.blocks is endless")


def stamp(block: Block, now_iso: bytes, now_ms: bytes, replay: int) -> tuple[bytes, bytes]:
    """The block's (order lines, fill lines) with the wall clock's time and, on replay `n`,
    trade ids that no earlier replay used (the simulator's tids all start with 5000)."""
    orders = block.orders.replace(b'"time":"' + block.iso, b'"time":"' + now_iso)
    orders = orders.replace(b'"timestamp":' + block.ms, b'"timestamp":' + now_ms)
    fills = block.fills.replace(b'"time":' + block.ms, b'"time":' + now_ms)
    if replay:
        fills = fills.replace(b'"tid":5000', b'"tid":5%03d' % (replay % 1000))
    return orders, fills


def write(node: str, order_rate: float, fill_rate: float, seconds: float, burst_ms: float,
          notes: Queue[Any]) -> None:
    """Append the blocks for `seconds`, a burst at a time; notes ("start", wall ms) then
    ("done", lines, seconds, most seconds behind the rate, trades written)."""
    rate = order_rate + fill_rate
    blocks = prerender(order_rate, fill_rate, min(PRERENDER_S, seconds))
    per_burst = max(1, round(burst_ms / 1000 / BLOCK_S))
    writer = NodeWriter(Path(node))  # the simulator's writer: hour files, rotated on the clock
    lines = written = trades = 0
    worst_behind = 0.0
    notes.put(("start", time.time() * 1000))
    started = time.monotonic()
    while time.monotonic() - started < seconds:
        now = datetime.now(UTC)
        now_iso, now_ms = iso(now).encode(), str(int(now.timestamp() * 1000)).encode()
        orders, fills = [], []
        for i in range(written, written + per_burst):
            o, f = stamp(blocks[i % len(blocks)], now_iso, now_ms, i // len(blocks))
            orders.append(o)
            fills.append(f)
        for stream, data in ((ORDER_STREAM, b"".join(orders)), (FILL_STREAM, b"".join(fills))):
            if data:
                writer.write(stream, now, [data[:-1]])  # whole lines; it adds the last newline
        writer.flush()
        lines += sum(x.count(b"\n") for x in orders + fills)
        trades += sum(x.count(b'"crossed":true') for x in fills)  # one taker fill per trade
        written += per_burst
        ahead = started + lines / rate - time.monotonic()
        worst_behind = max(worst_behind, -ahead)
        if ahead > 0:
            time.sleep(ahead)
    writer.close()
    notes.put(("done", lines, time.monotonic() - started, worst_behind, trades))
