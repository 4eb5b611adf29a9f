"""The latency benchmark's node writer: simulated blocks appended at a set rate, each line
stamped with the wall clock as it is written.

The Python simulator alone cannot make 300K lines a second, so the writer pre-renders a few
seconds of blocks and replays them, with new trade ids each time. It writes a burst's order
statuses, then its fills, each stamped with the wall clock just before they are written: the
order statuses' ISO `time` and ms `timestamp`, the fills' ms `time`. A trade's `time` on the
feed is the stamp of the taker fill it comes from, so its latency is its arrival time minus
its `time`, on one clock, from its fill line's write on. (Stamping the fills with the order
statuses, before those were stamped and written, counted the writer's own work in the
trades' latency: under 300K order statuses/s, 24 ms at the median and 164 ms at p99 on the
project's 2-core machine.) Order statuses and
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


def stamp_orders(block: Block, now: datetime) -> bytes:
    """The block's order lines with the wall clock's time."""
    now_ms = str(int(now.timestamp() * 1000)).encode()
    orders = block.orders.replace(b'"time":"' + block.iso, b'"time":"' + iso(now).encode())
    return orders.replace(b'"timestamp":' + block.ms, b'"timestamp":' + now_ms)


def stamp_fills(block: Block, now: datetime, replay: int) -> bytes:
    """The block's fill lines with the wall clock's time and, on replay `n`, trade ids that no
    earlier replay used (the simulator's tids all start with 5000)."""
    fills = block.fills.replace(b'"time":' + block.ms, b'"time":' + str(int(now.timestamp() * 1000)).encode())
    if replay:
        fills = fills.replace(b'"tid":5000', b'"tid":5%03d' % (replay % 1000))
    return fills


WARMUP_MAX_S = 60.0  # a warm-up waits this long at most for the client to subscribe


def write(node: str, order_rate: float, fill_rate: float, warmup: float, seconds: float, burst_ms: float,
          notes: Queue[Any], ready: Any) -> None:
    """Append the blocks, a burst at a time: a warm-up of at least `warmup` seconds that lasts
    until `ready` (an Event: the client has subscribed; at most WARMUP_MAX_S more), then
    `seconds`; notes ("start", wall ms of the end of the warm-up) then ("done", lines, seconds,
    most seconds behind the rate, trades written)."""
    rate = order_rate + fill_rate
    blocks = prerender(order_rate, fill_rate, min(PRERENDER_S, warmup + seconds))
    per_burst = max(1, round(burst_ms / 1000 / BLOCK_S))
    writer = NodeWriter(Path(node))  # the simulator's writer: hour files, rotated on the clock
    lines = written = trades = 0
    worst_behind = 0.0
    started = time.monotonic()
    counted: float | None = None  # when the warm-up ended
    while counted is None or time.monotonic() - counted < seconds:
        if counted is None and (time.monotonic() - started >= warmup
                                and (ready.is_set() or time.monotonic() - started > warmup + WARMUP_MAX_S)):
            counted = time.monotonic()
            notes.put(("start", time.time() * 1000))
        burst = range(written, written + per_burst)
        now = datetime.now(UTC)
        orders = [stamp_orders(blocks[i % len(blocks)], now) for i in burst]
        _append(writer, ORDER_STREAM, now, orders)
        now = datetime.now(UTC)  # the fills' stamp: when they are written, after the orders
        fills = [stamp_fills(blocks[i % len(blocks)], now, i // len(blocks)) for i in burst]
        _append(writer, FILL_STREAM, now, fills)
        lines += sum(x.count(b"\n") for x in orders + fills)
        trades += sum(x.count(b'"crossed":true') for x in fills)  # one taker fill per trade
        written += per_burst
        ahead = started + lines / rate - time.monotonic()
        worst_behind = max(worst_behind, -ahead)
        if ahead > 0:
            time.sleep(ahead)
    writer.close()
    notes.put(("done", lines, time.monotonic() - started, worst_behind, trades))


def _append(writer: NodeWriter, stream: str, now: datetime, blocks: list[bytes]) -> None:
    data = b"".join(blocks)
    if data:
        writer.write(stream, now, [data[:-1]])  # whole lines; it adds the last newline
        writer.flush()
