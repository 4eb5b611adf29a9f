"""The approach nodetap replaces: decode every line with orjson in a thread pool, make one
object per order, filter in Python. It stores nothing, so it is an upper bound on that
system's speed.

The filter is the orders rules evaluated per row in Python, with the same semantics as
`etl.filters.apply_rules` (a missing or null field fails an allow rule, a NaN notional fails
the minimum), so on the same data it keeps exactly the rows nodetap keeps.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from etl.filters import Rules

CHUNK_LINES = 10_000  # lines per task handed to the pool
READ_BYTES = 8 << 20


@dataclass(slots=True)
class Order:
    """What the replaced system kept per order."""

    time: str
    user: str
    status: str
    coin: str
    side: str
    limit_px: float
    orig_sz: float
    oid: int


class RowFilter:
    """`Rules` as a per-row Python predicate over a decoded order-status event."""

    def __init__(self, rules: Rules) -> None:
        self.keep_all = rules.keep_all
        self.coins = frozenset(rules.coins)
        self.exclude = frozenset(rules.exclude_coins)
        self.statuses = frozenset(rules.statuses)
        self.sides = frozenset(rules.sides)
        self.check_notional = rules.min_notional > 0 or bool(rules.min_notional_by_coin)
        self.min_notional = rules.min_notional
        self.by_coin = dict(rules.min_notional_by_coin)
        self.trigger = rules.trigger
        self.order_types = frozenset(rules.order_types)
        self.watch = frozenset(rules.watch_users)

    def __call__(self, ev: dict[str, Any]) -> bool:
        if self.keep_all or (self.watch and ev.get("user") in self.watch):
            return True
        order = ev.get("order") or {}
        coin = order.get("coin")
        if self.coins and coin not in self.coins:
            return False
        if coin in self.exclude:
            return False
        if self.statuses and ev.get("status") not in self.statuses:
            return False
        if self.sides and order.get("side") not in self.sides:
            return False
        if self.check_notional:
            try:
                notional = float(order["limitPx"]) * float(order["origSz"])
            except (KeyError, TypeError, ValueError):
                return False
            # `not >=` so that NaN fails, as in apply_rules
            if not notional >= self.by_coin.get(coin, self.min_notional):  # type: ignore[arg-type]
                return False
        if self.trigger == "only" and order.get("isTrigger") is not True:
            return False
        if self.trigger == "exclude" and order.get("isTrigger") is True:
            return False
        return not (self.order_types and order.get("orderType") not in self.order_types)


def process(lines: list[bytes], keep: RowFilter) -> tuple[int, int, int]:
    """(lines, kept, malformed) of one chunk: every order becomes an object, as in the replaced
    system, then the filter decides; the kept objects are dropped at the end of the chunk."""
    kept: list[Order] = []
    bad = 0
    for line in lines:
        try:
            ev = orjson.loads(line)
            o = ev["order"]
            order = Order(ev["time"], ev["user"], ev["status"], o["coin"], o["side"],
                          float(o["limitPx"]), float(o["origSz"]), o["oid"])
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
            bad += 1
            continue
        if keep(ev):
            kept.append(order)
    return len(lines), len(kept), bad


def line_chunks(files: list[Path], chunk_lines: int = CHUNK_LINES) -> Iterator[list[bytes]]:
    """Whole lines of the files, `chunk_lines` at a time (a partial last line is left out)."""
    pending: list[bytes] = []
    for path in files:
        rest = b""
        with open(path, "rb") as f:
            while block := f.read(READ_BYTES):
                block = rest + block
                end = block.rfind(b"\n") + 1
                rest = block[end:]
                pending.extend(block[:end].splitlines())
                while len(pending) >= chunk_lines:
                    yield pending[:chunk_lines]
                    del pending[:chunk_lines]
    if pending:
        yield pending


def run(files: list[Path], rules: Rules, workers: int) -> dict[str, int]:
    """Decode, filter and objectify every line of `files` on `workers` threads."""
    keep = RowFilter(rules)
    totals = {"lines": 0, "kept": 0, "malformed": 0}
    in_flight: deque[Future[tuple[int, int, int]]] = deque()

    def collect(fut: Future[tuple[int, int, int]]) -> None:
        lines, kept, bad = fut.result()
        totals["lines"] += lines
        totals["kept"] += kept
        totals["malformed"] += bad

    with ThreadPoolExecutor(workers, thread_name_prefix="replaced") as pool:
        for chunk in line_chunks(files):
            in_flight.append(pool.submit(process, chunk, keep))
            if len(in_flight) >= 2 * workers:  # bounded: the reader waits for the pool
                collect(in_flight.popleft())
        while in_flight:
            collect(in_flight.popleft())
    return totals
