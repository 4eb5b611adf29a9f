"""The last state of a simulated node dir, so that the simulator continues it after a
restart (`nodetap demo` run again): the next block, order and trade ids after the last
ones written, at the last prices, never before the last event time."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson

from etl.hourfiles import hour_files
from etl.tail import STREAM_DIRS

TAIL_BYTES = 1 << 20  # of each stream's newest file: enough for the last blocks


@dataclass
class NodeState:
    block: int = 0
    oid: int = 0
    tid: int = 0
    time: datetime | None = None
    prices: dict[str, float] = field(default_factory=dict)  # coin -> last trade (or order) px
    _traded: set[str] = field(default_factory=set)


def _tail_lines(path: Path) -> list[bytes]:
    size = path.stat().st_size
    with open(path, "rb") as f:
        f.seek(max(0, size - TAIL_BYTES))
        data = f.read()
    lines = data.split(b"\n")
    return lines[1:] if size > TAIL_BYTES else lines  # the first may be cut


def _ms(value: Any) -> datetime | None:
    if isinstance(value, int):
        return datetime.fromtimestamp(value / 1000, UTC)
    if isinstance(value, str):
        return datetime.fromisoformat(value[:26]).replace(tzinfo=UTC)
    return None


def _see(state: NodeState, event: Any) -> None:
    t = None
    if isinstance(event, list) and len(event) == 2 and isinstance(event[1], dict):  # a fill
        fill = event[1]
        state.tid = max(state.tid, int(fill.get("tid") or 0))
        state.oid = max(state.oid, int(fill.get("oid") or 0))
        state.prices[fill["coin"]] = float(fill["px"])
        state._traded.add(fill["coin"])
        t = _ms(fill.get("time"))
    elif isinstance(event, dict) and "order" in event:  # an order status
        order = event["order"]
        state.oid = max(state.oid, int(order.get("oid") or 0))
        if order["coin"] not in state._traded:
            state.prices[order["coin"]] = float(order["limitPx"])
        t = _ms(event.get("time"))
    elif isinstance(event, dict) and "side_info" in event:  # a node_trades line
        state.prices[event["coin"]] = float(event["px"])
        state._traded.add(event["coin"])
        t = _ms(event.get("time"))
    if t is not None and (state.time is None or t > state.time):
        state.time = t


def last_state(out: Path) -> NodeState | None:
    """What the simulator last wrote under `out` (None when it wrote nothing yet)."""
    state = NodeState()
    found = False
    for name in STREAM_DIRS:
        files = hour_files(out / name / "hourly")
        if not files:
            continue
        path = out / name / "hourly" / files[-1]
        if not os.path.getsize(path):
            continue
        for line in _tail_lines(path):
            try:
                obj = orjson.loads(line)
            except orjson.JSONDecodeError:
                continue  # a partial or broken line
            found = True
            if isinstance(obj, dict) and "events" in obj:
                state.block = max(state.block, int(obj.get("block_number") or 0))
                for e in obj["events"]:
                    _see(state, e)
            else:
                _see(state, obj)
    return state if found else None
