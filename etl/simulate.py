"""A deterministic simulator of a Hyperliquid non-validator node's output files.

It is the project's own source of demo, test and benchmark data: order statuses,
fills and trades for perps, spot (`PURR/USDC`, `@107`) and HIP-3 (`km:USTECH`)
coins, written in the node's hourly layout `<out>/<stream>/hourly/YYYYMMDD/H`.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson

log = logging.getLogger("nodetap.simulate")

# coin -> (start price, size decimals, price decimals)
COINS: dict[str, tuple[float, int, int]] = {
    "BTC": (97_000.0, 5, 0),
    "ETH": (3_400.0, 4, 1),
    "SOL": (180.0, 2, 3),
    "HYPE": (25.0, 2, 4),
    "PURR/USDC": (0.2, 0, 5),
    "@107": (24.9, 2, 4),
    "km:USTECH": (21_000.0, 3, 1),
}
# weights of the order statuses, roughly mainnet's mix
STATUSES: list[tuple[str, int]] = [
    ("open", 38),
    ("canceled", 30),
    ("filled", 10),
    ("badAloPxRejected", 8),
    ("iocCancelRejected", 4),
    ("triggered", 1),
    ("perpMarginRejected", 2),
    ("reduceOnlyCanceled", 2),
    ("minTradeNtlRejected", 2),
    ("selfTradeCanceled", 1),
    ("siblingFilledCanceled", 1),
    ("scheduledCancel", 1),
]
ORDER_STREAM = "node_order_statuses"
FILL_STREAM = "node_fills"
TRADE_STREAM = "node_trades"
VARIANT_SUFFIX = {"plain": "", "by_block": "_by_block", "streaming": "_streaming"}
BLOCK_S = 0.07  # the chain makes a block every ~70 ms
BLOCK_VOL = 0.001 / (60 / BLOCK_S) ** 0.5  # per-block volatility for ~0.1% per minute


def iso(ts: datetime) -> str:
    """Format like the node: no zone, 9 fractional digits."""
    return ts.strftime("%Y-%m-%dT%H:%M:%S.%f") + "000"


@dataclass
class Simulator:
    """Generates node events; the same seed gives the same events."""

    seed: int = 7
    start: datetime = field(default_factory=lambda: datetime(2026, 1, 5, 10, 58, tzinfo=UTC))
    wall_clock: bool = False  # blocks take the wall clock's time instead of a simulated one

    def __post_init__(self) -> None:
        self.rng = random.Random(self.seed)
        self.prices = {c: p for c, (p, _, _) in COINS.items()}
        self.users = [f"0x{self.rng.getrandbits(160):040x}" for _ in range(400)]
        self.block = 800_000_000
        self.now = self.start
        self.oid = 300_000_000_000
        self.tid = 500_000_000_000_000
        self._status_names = [s for s, _ in STATUSES]
        self._status_weights = [w for _, w in STATUSES]

    def continue_from(self, out: Path) -> bool:
        """Continue the node already written under `out` (etl/simstate.py): ids after its last
        ones, its last prices, never before its last event; a fresh random sequence."""
        from etl.simstate import last_state

        state = last_state(out)
        if state is None:
            return False
        self.block = max(self.block, state.block)
        self.oid = max(self.oid, state.oid)
        self.tid = max(self.tid, state.tid)
        self.prices.update({c: p for c, p in state.prices.items() if c in self.prices})
        if state.time is not None and state.time > self.now:
            self.now = state.time
        self.rng = random.Random(f"{self.seed}:{self.block}:{self.oid}")
        log.info("event=simulate_continue out=%s block=%d oid=%d tid=%d time=%s", out,
                 self.block, self.oid, self.tid, state.time)
        return True

    def _coin(self) -> str:
        return self.rng.choices(list(COINS), weights=[30, 20, 12, 15, 5, 5, 3])[0]

    def _step_price(self, coin: str) -> float:
        # a tick of noise per event around the block's mid (see _move_prices)
        return self.prices[coin] * (1.0 + self.rng.gauss(0.0, 0.00005))

    def _move_prices(self) -> None:
        """One block's random walk: ~0.1% a minute, whatever the event rate."""
        for coin, p in self.prices.items():
            self.prices[coin] = p * (1.0 + self.rng.gauss(0.0, BLOCK_VOL))

    def _fmt(self, coin: str, px: float, sz: float) -> tuple[str, str]:
        _, szd, pxd = COINS[coin]
        return f"{px:.{pxd}f}", f"{max(sz, 10**-szd):.{szd}f}"

    def order_event(self) -> dict[str, object]:
        coin = self._coin()
        mid = self._step_price(coin)
        side = self.rng.choice("AB")
        px = mid * (1 + (0.001 if side == "A" else -0.001) * self.rng.expovariate(1.0))
        notional = self.rng.lognormvariate(6.0, 1.8)  # median ~400 USD, long tail
        px_s, sz_s = self._fmt(coin, px, notional / px)
        status = self.rng.choices(self._status_names, weights=self._status_weights)[0]
        self.oid += 1
        trigger = status == "triggered" or self.rng.random() < 0.03
        ms = int(self.now.timestamp() * 1000)
        remaining = "0.0" if status == "filled" else sz_s
        return {
            "time": iso(self.now),
            "user": self.rng.choice(self.users),
            "hash": None if self.rng.random() < 0.6 else f"0x{self.rng.getrandbits(256):064x}",
            "builder": None,
            "status": status,
            "order": {
                "coin": coin,
                "side": side,
                "limitPx": px_s,
                "sz": remaining,
                "oid": self.oid,
                "timestamp": ms,
                "triggerCondition": "Price above " + px_s if trigger else "N/A",
                "isTrigger": trigger,
                "triggerPx": px_s if trigger else "0.0",
                "children": [],
                "isPositionTpsl": False,
                "reduceOnly": self.rng.random() < 0.1,
                "orderType": "Stop Market" if trigger else "Limit",
                "origSz": sz_s,
                "tif": None if trigger else self.rng.choice(["Alo", "Gtc", "Ioc"]),
                "cloid": None if self.rng.random() < 0.5 else f"0x{self.rng.getrandbits(128):032x}",
            },
        }

    def trade(self) -> tuple[list[object], list[object], dict[str, Any]]:
        """One trade as (taker fill, maker fill, node_trades line)."""
        coin = self._coin()
        px = self._step_price(coin)
        px_s, sz_s = self._fmt(coin, px, self.rng.lognormvariate(5.5, 1.5) / px)
        taker_side = self.rng.choice("AB")
        taker, maker = self.rng.sample(self.users, 2)
        self.tid += self.rng.randint(1, 50)
        h = f"0x{self.rng.getrandbits(256):064x}"
        ms = int(self.now.timestamp() * 1000)

        def fill(user: str, side: str, crossed: bool) -> list[object]:
            self.oid += 1
            return [
                user,
                {
                    "coin": coin,
                    "px": px_s,
                    "sz": sz_s,
                    "side": side,
                    "time": ms,
                    "startPosition": "0.0",
                    "dir": "Open Long" if side == "B" else "Open Short",
                    "closedPnl": "0.0",
                    "hash": h,
                    "oid": self.oid,
                    "crossed": crossed,
                    "fee": "0.01" if crossed else "-0.001",
                    "tid": self.tid,
                    "feeToken": "USDC",
                    "twapId": None,
                },
            ]

        maker_side = "B" if taker_side == "A" else "A"
        buyer, seller = (taker, maker) if taker_side == "B" else (maker, taker)
        info = [
            {"user": u, "start_pos": "0.0", "oid": self.oid, "twap_id": None, "cloid": None}
            for u in (buyer, seller)
        ]
        line = {
            "coin": coin,
            "side": taker_side,
            "time": iso(self.now),
            "px": px_s,
            "sz": sz_s,
            "hash": h,
            "trade_dir_override": "Na",
            "side_info": info,
        }
        return fill(taker, taker_side, True), fill(maker, maker_side, False), line

    def blocks(
        self, events_per_block: float | Callable[[], float]
    ) -> Iterator[tuple[dict[str, object], list[Any], list[Any], list[Any]]]:
        """Yield (envelope, order events, fill events, trade lines) per block, forever.
        `events_per_block` may be a function, asked once a block (bursts)."""
        rate = events_per_block if callable(events_per_block) else (lambda: events_per_block)
        while True:
            self.block += 1
            self._move_prices()
            if self.wall_clock:
                self.now = max(datetime.now(UTC), self.now + timedelta(milliseconds=1))
            else:
                self.now += timedelta(seconds=BLOCK_S)
            env = {
                "local_time": iso(self.now + timedelta(milliseconds=300)),
                "block_time": iso(self.now),
                "block_number": self.block,
            }
            n = max(0, int(self.rng.expovariate(1.0 / max(rate(), 1e-9)) + 0.5))
            orders = [self.order_event() for _ in range(n)]
            fills: list[list[object]] = []
            trades: list[dict[str, object]] = []
            for o in orders:
                if o["status"] == "filled":
                    taker, maker, line = self.trade()
                    fills += [taker, maker]
                    trades.append(line)
            yield env, orders, fills, trades


def render(stream: str, variant: str, env: dict[str, object], events: list[Any]) -> list[bytes]:
    """Lines of one block for a stream in a variant (no trailing newline)."""
    if variant == "by_block":
        return [orjson.dumps({**env, "events": events})]
    if variant == "streaming":
        return [orjson.dumps({**env, "events": [e]}) for e in events]
    return [orjson.dumps(e) for e in events]


KINDS = ("orders", "fills", "trades")


def stream_dirs(variant: str, kinds: tuple[str, ...]) -> dict[str, str]:
    """Directory name per kind written ('orders', 'fills', 'trades')."""
    unknown = set(kinds) - set(KINDS)
    if unknown:
        raise ValueError(f"unknown stream kind(s) {sorted(unknown)}; choose from {KINDS}")
    suffix = VARIANT_SUFFIX[variant]
    dirs = {"orders": ORDER_STREAM + suffix, "fills": FILL_STREAM + suffix, "trades": TRADE_STREAM}
    return {k: v for k, v in dirs.items() if k in kinds}


def hour_path(out: Path, stream: str, ts: datetime) -> Path:
    return out / stream / "hourly" / ts.strftime("%Y%m%d") / str(ts.hour)


class NodeWriter:
    """Appends lines to the hourly files, rotating on the simulated clock."""

    def __init__(self, out: Path, malformed_share: float = 0.0, seed: int = 7,
                 partial_writes: bool = False) -> None:
        self.out = out
        self.files: dict[str, tuple[Path, object]] = {}
        self.malformed_share = malformed_share
        self.rng = random.Random(seed + 1)
        self.lines = 0
        # like a node without --disable-output-file-buffering: the last line of a write
        # is often cut, its rest arriving with the next write
        self.partial_writes = partial_writes
        self.held: dict[str, bytes] = {}

    def write(self, stream: str, ts: datetime, lines: list[bytes]) -> None:
        if not lines:
            return
        path = hour_path(self.out, stream, ts)
        cur = self.files.get(stream)
        if cur is None or cur[0] != path:
            if cur is not None:
                cur[1].write(self.held.pop(stream, b""))  # type: ignore[attr-defined]
                cur[1].close()  # type: ignore[attr-defined]
            path.parent.mkdir(parents=True, exist_ok=True)
            cur = (path, open(path, "ab"))  # noqa: SIM115 - kept open across calls
            self.files[stream] = cur
            if _ends_mid_line(path):  # a run killed mid-write: keep its cut line apart
                cur[1].write(b"\n")
        if self.malformed_share:
            lines = [self._maybe_break(x) for x in lines]
        data = self.held.pop(stream, b"") + b"\n".join(lines) + b"\n"
        if self.partial_writes:
            cut = len(data) - self.rng.randint(1, min(len(lines[-1]), 200))
            data, self.held[stream] = data[:cut], data[cut:]
        cur[1].write(data)  # type: ignore[attr-defined]
        self.lines += len(lines)

    def _maybe_break(self, line: bytes) -> bytes:
        if self.rng.random() >= self.malformed_share:
            return line
        return line[: self.rng.randint(1, max(1, len(line) - 2))]

    def flush(self) -> None:
        for _, f in self.files.values():
            f.flush()  # type: ignore[attr-defined]

    def close(self) -> None:
        for stream, (_, f) in self.files.items():
            f.write(self.held.pop(stream, b""))  # type: ignore[attr-defined]
            f.close()  # type: ignore[attr-defined]
        self.files.clear()


def _ends_mid_line(path: Path) -> bool:
    with open(path, "rb") as f:
        f.seek(0, 2)
        if f.tell() == 0:
            return False
        f.seek(-1, 2)
        return f.read(1) != b"\n"


def _write_block(writer: NodeWriter, dirs: dict[str, str], variant: str, now: datetime,
                 env: dict[str, object], orders: list[Any], fills: list[Any], trades: list[Any]) -> None:
    events = {"orders": orders, "fills": fills}
    for kind, name in dirs.items():
        if kind == "trades":
            writer.write(name, now, [orjson.dumps(t) for t in trades])
        else:
            writer.write(name, now, render(name, variant, env, events[kind]))


def generate(out: Path, *, lines: int, variant: str = "plain", kinds: tuple[str, ...] = ("orders", "fills"),
             seed: int = 7, start: datetime | None = None, events_per_block: float = 20.0,
             malformed_share: float = 0.0) -> int:
    """Write about `lines` lines over all streams, on a simulated clock, as fast as
    possible; returns the number of lines written."""
    sim = Simulator(seed=seed, start=start) if start else Simulator(seed=seed)
    writer = NodeWriter(out, malformed_share, seed)
    dirs = stream_dirs(variant, kinds)
    for block in sim.blocks(events_per_block):
        _write_block(writer, dirs, variant, sim.now, *block)
        if writer.lines >= lines:
            break
    writer.close()
    return writer.lines


def run_live(
    out: Path,
    *,
    rate: float,
    variant: str = "plain",
    kinds: tuple[str, ...] = ("orders", "fills"),
    seed: int = 7,
    malformed_share: float = 0.0,
    stop: threading.Event | None = None,
    duration_s: float | None = None,
    partial_writes: bool = False,
    burst_every_s: float | None = None,
    burst_factor: float = 5.0,
    burst_s: float = 1.0,
) -> int:
    """Write at about `rate` order-status lines per second on the wall clock until stopped;
    every `burst_every_s`, `burst_factor` times that for `burst_s`."""
    stop = stop or threading.Event()
    sim = Simulator(seed=seed, start=datetime.now(UTC), wall_clock=True)
    sim.continue_from(out)
    first_block = sim.block
    writer = NodeWriter(out, malformed_share, seed, partial_writes)
    dirs = stream_dirs(variant, kinds)
    per_block = max(rate * BLOCK_S, 0.01)
    started = time.monotonic()

    def block_rate() -> float:
        if burst_every_s and (time.monotonic() - started) % burst_every_s < burst_s:
            return per_block * burst_factor
        return per_block

    log.info("event=simulate_start out=%s rate=%s variant=%s", out, rate, variant)
    for env, orders, fills, trades in sim.blocks(block_rate):
        _write_block(writer, dirs, variant, sim.now, env, orders, fills, trades)
        writer.flush()
        elapsed = time.monotonic() - started
        if duration_s is not None and elapsed >= duration_s:
            break
        ahead = (sim.block - first_block) * BLOCK_S - elapsed
        if stop.wait(max(0.0, ahead)):
            break
    writer.close()
    return writer.lines
