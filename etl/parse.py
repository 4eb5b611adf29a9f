"""Parse byte ranges of node files into typed, flat Polars frames.

Every parser takes whole lines (`buf` ends with a newline) and returns
`Parsed(frame, rejects)`: the good lines as one frame, the bad ones as rejects
with their offset in `buf`. A bad line never costs the good lines around it.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import numpy as np
import orjson
import polars as pl
import pyarrow as pa
import pyarrow.compute as pc

from etl import priority
from etl.columns import (
    ENVELOPE,
    FILL,
    FILLS_REQUIRED,
    FILLS_SCHEMA,
    NODE_TRADE,
    ORDER_EVENT,
    ORDERS_NODE_NAMES,
    ORDERS_REQUIRED,
    ORDERS_SCHEMA,
    TRADES_REQUIRED,
    TRADES_SCHEMA,
)
from etl.fields import FULL
from etl.flatten import fills_flat, node_trades_flat, orders_flat

REJECT_LINE_BYTES = 512  # how much of a bad line is kept for inspection
# order statuses are read by the byte scan from this many lines on, i.e. always: it costs what
# Polars' decoder does at ~30 plain lines (2.1 against 1.9 ms of CPU), 3.6 against 8.7 ms at
# 2,200, and 3.2 against 60 ms at 1,700 one-event envelopes, which Polars explodes
# (`python -m etl.bench.decode`, docs/benchmarks.md)
SCAN_MIN_LINES = 1


def cores() -> int:
    """CPUs this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


def line_array(buf: bytes, starts: np.ndarray, ends: np.ndarray) -> pa.Array:
    """The lines of `buf` (each with its newline) as one Arrow array over `buf`, without a copy."""
    offsets = np.empty(len(starts) + 1, np.int64)
    offsets[:-1] = starts
    offsets[-1] = ends[-1] + 1 if len(ends) else 0
    return pa.Array.from_buffers(pa.large_binary(), len(starts), [None, pa.py_buffer(offsets),
                                                                  pa.py_buffer(buf)])


class BadLine(NamedTuple):
    """A line of a batch that did not become a row."""

    offset: int  # where the line starts in the batch
    reason: str
    head: bytes  # its first REJECT_LINE_BYTES bytes


@dataclass
class Parsed:
    frame: pl.DataFrame  # with `_line`: the index in `starts` of each row's line
    rejects: list[BadLine] = field(default_factory=list)
    starts: np.ndarray = field(default_factory=lambda: np.empty(0, np.int64))  # every line's start

    @property
    def lines(self) -> int:
        """Lines seen, good and bad."""
        return len(self.starts)


# ------------------------------------------------------------ line handling
# Newlines are searched a slice at a time: a mask of the whole batch (64 MiB) was fresh memory
# the kernel zero-filled at each batch, ~9 ms of CPU a batch in a `perf` profile of the pipeline
_NEWLINE_SLICE = 1 << 20


def _newlines(arr: np.ndarray, at: int) -> np.ndarray:
    """Indexes (plus `at`) of the newlines in `arr`."""
    if len(arr) <= _NEWLINE_SLICE:
        return np.flatnonzero(arr == 10) + at
    mask = np.empty(_NEWLINE_SLICE, np.bool_)
    parts = []
    for lo in range(0, len(arr), _NEWLINE_SLICE):
        part = arr[lo:lo + _NEWLINE_SLICE]
        found = mask[:len(part)]
        np.equal(part, 10, out=found)
        parts.append(np.flatnonzero(found) + (at + lo))
    return np.concatenate(parts)


_POOLS: dict[int, ThreadPoolExecutor] = {}
_POOL_LOCK = threading.Lock()


def pool() -> ThreadPoolExecutor:
    """Threads (one less than the cores) that work on parts of a batch beside the thread that
    handles it; most of what they run releases the GIL (numpy, numba's scan in etl/bytescan.py).
    Their tasks never wait on the pool. A thread of a lower priority (etl/priority.py) gets
    threads of its own priority, so its work does not run ahead of the others'."""
    nice = priority.current()
    with _POOL_LOCK:
        found = _POOLS.get(nice)
        if found is None:
            found = _POOLS[nice] = ThreadPoolExecutor(
                max(1, cores() - 1), thread_name_prefix="nodetap-part",
                initializer=priority.lower, initargs=(nice,))
        return found


def line_bounds(buf: bytes | memoryview, parts: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """Start and end (exclusive, without the newline) of every line in `buf`, searched in
    `parts` parts at once (`pool`): 6 against 12 ms of wall time for 64 MiB in two."""
    arr = np.frombuffer(buf, dtype=np.uint8)
    parts = max(1, min(parts, len(arr) >> 20))
    if parts == 1:
        ends = _newlines(arr, 0)
    else:
        cuts = [len(arr) * k // parts for k in range(parts + 1)]
        later = [pool().submit(_newlines, arr[lo:hi], lo) for lo, hi in zip(cuts[1:], cuts[2:], strict=False)]
        ends = np.concatenate([_newlines(arr[:cuts[1]], 0), *(f.result() for f in later)])
    starts = np.empty_like(ends)
    if len(ends):
        starts[0] = 0
        starts[1:] = ends[:-1] + 1
    return starts, ends


@dataclass(frozen=True)
class Format:
    """How one stream variant's lines are decoded and flattened."""

    raw: dict[str, Any]
    explode: str | None  # list column holding the events (block envelopes)
    flatten: Callable[[pl.DataFrame], pl.DataFrame]
    required: list[str]
    top: type  # JSON type of a line's top level, for the slow-path check
    schema: dict[str, pl.DataType]
    rewrite: Callable[[bytes], bytes] | None = None  # lines into what `raw` reads, before decoding
    node_names: dict[str, str] = field(default_factory=dict)  # required column -> the node's name


PAIR: dict[str, pl.DataType] = {"user": pl.String(), "f": pl.Struct(FILL)}


def _envelope(event: pl.DataType) -> dict[str, Any]:
    return {**ENVELOPE, "events": pl.List(event)}


FORMATS: dict[tuple[str, str], Format] = {
    ("orders", "plain"): Format(
        ORDER_EVENT, None, lambda d: orders_flat(d, False), ORDERS_REQUIRED, dict, ORDERS_SCHEMA,
        node_names=ORDERS_NODE_NAMES,
    ),
    ("orders", "block"): Format(_envelope(pl.Struct(ORDER_EVENT)), "events",
                                lambda d: orders_flat(d.unnest("events"), True), ORDERS_REQUIRED, dict,
                                ORDERS_SCHEMA, node_names=ORDERS_NODE_NAMES),
    # fill lines hold `[user, {fill}]` pairs, decoded as objects `{"user": ..., "f": {fill}}`: the
    # fast paths rewrite the pairs' text (`_decode_plain_fills`, `_block_pairs_to_objects`), the
    # generic one each line with orjson (`_pairs`)
    ("fills", "plain"): Format(PAIR, None, lambda d: fills_flat(d, False), FILLS_REQUIRED, list,
                               FILLS_SCHEMA, rewrite=lambda b: _pairs(b, False)),
    ("fills", "block"): Format(_envelope(pl.Struct(PAIR)), "events",
                               lambda d: fills_flat(d.unnest("events"), True), FILLS_REQUIRED, dict,
                               FILLS_SCHEMA, rewrite=lambda b: _pairs(b, True)),
    ("trades", "plain"): Format(NODE_TRADE, None, node_trades_flat, TRADES_REQUIRED, dict, TRADES_SCHEMA),
}


def _pair(event: Any) -> Any:
    """A node's `[user, {fill}]` as `{"user": user, "f": {fill}}`; anything else as it is (the
    decoder then refuses it: a reject of the wrong shape)."""
    return {"user": event[0], "f": event[1]} if isinstance(event, list) and len(event) == 2 else event


def _pairs(buf: bytes, block: bool) -> bytes:
    """Fill lines with their pairs as objects, line by line with orjson: what the fast paths do
    over the text, for lines they cannot take (their text rewrite assumes the node's layout).
    Raises on a line that is not JSON (the caller then finds it line by line).

    Two differences from the fast paths are left, in JSON no node writes: a key twice in a fill
    (orjson keeps the last, Polars the first) and an integer over 64 bits in a text field
    (orjson makes it a float, so its text changes)."""
    out = []
    for line in buf.split(b"\n")[:-1]:  # lines end with a newline; a lone \r is JSON whitespace
        value = orjson.loads(line)
        if not block:
            value = _pair(value)
        elif isinstance(value, dict) and isinstance(value.get("events"), list):
            value["events"] = [_pair(e) for e in value["events"]]
        out.append(orjson.dumps(value))
    return b"\n".join(out) + b"\n"


USER_CHARS = 42  # "0x" and 40 hex digits


def _decode_plain_fills(buf: bytes, starts: np.ndarray, ends: np.ndarray) -> pl.DataFrame | None:
    """Plain fill lines `["0x<40 hex>",{fill}]` as `user` and `f` in one NDJSON pass, or None
    when a line is laid out otherwise (the caller then decodes the batch the generic way).

    Each line's user sits at a fixed offset: it is sliced out, and the fill object is handed to
    the decoder as a line of its own (its `]` blanked out), with no second decode of the fill."""
    n, u = len(starts), USER_CHARS
    arr = np.frombuffer(buf, np.uint8)
    if not n or ((ends - starts) < u + 6).any():
        return None
    laid_out = ((arr[starts] == ord("[")) & (arr[starts + 1] == ord('"')) & (arr[starts + u + 2] == ord('"'))
                & (arr[starts + u + 3] == ord(",")) & (arr[starts + u + 4] == ord("{"))
                & (arr[ends - 1] == ord("]")))
    if not laid_out.all():
        return None
    out = bytearray(buf)
    np.frombuffer(out, np.uint8)[ends - 1] = ord(" ")
    offsets = np.empty(n + 1, np.int64)
    offsets[:-1], offsets[-1] = starts, ends[-1] + 1
    lines = pa.LargeBinaryArray.from_buffers(pa.large_binary(), n,
                                             [None, pa.py_buffer(offsets), pa.py_buffer(out)])
    users = pc.binary_slice(lines, 2, u + 2).cast(pa.large_string())
    if pc.any(pc.match_substring_regex(users, r'["\\]')).as_py():
        return None  # a quote or an escape in a user: not the layout assumed
    # with a stop: without one, pyarrow 26 fails on an even number of lines ("Negative buffer
    # resize"), which sent every such batch to the generic decode
    fills = pc.binary_slice(lines, u + 4, int((ends - starts).max()) + 1)
    pos = np.frombuffer(fills.buffers()[1], np.int64)[fills.offset: fills.offset + n + 1]
    data = fills.buffers()[2]
    raw = pl.read_ndjson(memoryview(data)[pos[0]: pos[-1]].tobytes(), schema=FILL)
    if raw.height != n:
        return None
    return raw.select(pl.struct(pl.all()).alias("f")).with_columns(pl.Series("user", users))


def _block_pairs_to_objects(buf: bytes) -> bytes | None:
    """Block fill lines with each `[user, {fill}]` pair of `events` rewritten as
    `{"user": user, "f": {fill}}`. A fill object holds no array, so `",{"`, `],["`, `[["` and
    `}]]` occur only around the pairs; a line laid out otherwise comes out as invalid JSON or
    missing fields, and the caller decodes the batch the generic way. None when these occur
    elsewhere too (inside a string: the rewrite would change its value), by their counts: each
    pair opens with `[["` or `],["`, holds one `",{"`, and each list of pairs ends with `}]]`."""
    firsts = buf.count(b'[["')
    if buf.count(b'",{"') != firsts + buf.count(b'],["') or buf.count(b'}]]') != firsts:
        return None
    out = buf.replace(b'",{"', b'","f":{"')
    return out.replace(b'],["', b'},{"user":"').replace(b'[["', b'[{"user":"').replace(b'}]]', b'}}]')


def _decode(fmt: Format, buf: bytes) -> pl.DataFrame:
    return pl.read_ndjson(fmt.rewrite(buf) if fmt.rewrite else buf, schema=fmt.raw)


def _flatten(fmt: Format, raw: pl.DataFrame, lines: int) -> pl.DataFrame:
    """The rows of `raw`, one decoded line per row, with `_line`. Raises when the decoder gave
    another number of rows than `lines` (it skips a line of whitespace only): the row numbers
    would be wrong, so the caller decodes line by line."""
    if raw.height != lines:
        raise ValueError(f"{raw.height} rows decoded from {lines} lines")
    if fmt.explode:
        if raw.get_column(fmt.explode).has_nulls():  # `[]` is an empty block; no list is no block
            raise ValueError(f"a block line without an `{fmt.explode}` list")
        raw = raw.with_row_index("_line").explode(fmt.explode).drop_nulls(fmt.explode)
        flat = fmt.flatten(raw)
        return flat.with_columns(raw["_line"])
    return fmt.flatten(raw).with_columns(pl.int_range(pl.len(), dtype=pl.UInt32).alias("_line"))


def parse(kind: str, variant: str, buf: bytes, max_line_bytes: int = 1 << 20,
          scan_min_lines: int = SCAN_MIN_LINES) -> Parsed:
    """Parse whole lines of one stream into its flat frame (plus `_line`, the line index
    within `buf` of each row), quarantining bad lines. Batches of order statuses of at least
    `scan_min_lines` lines are read by the byte scan (etl/bytescan.py); the others, the lines it
    is not sure of and the other streams, by Polars."""
    fmt = FORMATS[(kind, "plain" if variant == "plain" else "block")]
    plain_fills = kind == "fills" and variant == "plain"
    starts, ends = line_bounds(buf)
    n = len(ends)
    if n == 0:
        return Parsed(pl.DataFrame(schema={**fmt.schema, "_line": pl.UInt32}), [], starts)
    long = (ends - starts) > max_line_bytes
    blank = (ends - starts) == 0
    if not long.any() and not blank.any():
        if kind == "orders" and n >= scan_min_lines:
            return _scan_orders(variant, buf, starts, ends, max_line_bytes)
        if kind == "fills":
            try:
                objects = None if plain_fills else _block_pairs_to_objects(buf)
                raw = (_decode_plain_fills(buf, starts, ends) if plain_fills
                       else None if objects is None else pl.read_ndjson(objects, schema=fmt.raw))
                flat = None if raw is None else _flatten(fmt, raw, n)
                if flat is not None and len(flat) and _missing(flat, fmt.required) is None:
                    return Parsed(flat, [], starts)
            except Exception:  # noqa: BLE001 - laid out otherwise: the generic decode below
                pass
        try:
            flat = _flatten(fmt, _decode(fmt, buf), n)
            bad = _missing(flat, fmt.required)
            if bad is None:
                return Parsed(flat, [], starts)
        except Exception:  # noqa: BLE001 - any decode error sends the batch to the slow path
            pass
    return _slow_parse(fmt, buf, starts, ends, long, blank)


def _scan_orders(variant: str, buf: bytes, starts: np.ndarray, ends: np.ndarray,
                 max_line_bytes: int) -> Parsed:
    """Order statuses read by the byte scan (etl/bytescan.py), the lines it is not sure of (and
    those missing a required field, for the reject's reason) by Polars."""
    from etl.bytescan import scan_orders as byte_scan  # numba: loaded by `etl.prefilter.prepare`

    events, unsure = byte_scan(variant, buf, starts, ends, FULL)
    flat = orders_flat(events, variant != "plain").with_columns(events.get_column("_line"))
    missing = _missing(flat, ORDERS_REQUIRED)
    if missing is not None:
        unsure = np.union1d(unsure, missing.to_numpy()).astype(np.uint32)
    if not len(unsure):
        return Parsed(flat, [], starts)
    sure = flat.filter(~pl.col("_line").is_in(pl.Series(unsure).implode()))
    no_scan = len(ends) + 1  # every line again would loop
    part = parse_lines("orders", variant, buf, starts, ends, unsure, max_line_bytes, no_scan)
    return Parsed(pl.concat([sure, part.frame]).sort("_line", maintain_order=True), part.rejects, starts)


def take_lines(buf: bytes, starts: np.ndarray, ends: np.ndarray, idx: np.ndarray) -> tuple[bytes, np.ndarray]:
    """The lines `idx` of `buf` (with their newlines) as one buffer, and where each starts in it."""
    lines = line_array(buf, starts, ends)
    picked = lines.take(pa.array(idx, pa.int64()))
    pos = np.frombuffer(picked.buffers()[1], np.int64)[picked.offset: picked.offset + len(idx) + 1]
    data = picked.buffers()[2]
    out = data.to_pybytes()[pos[0]: pos[-1]] if data is not None else b""
    return out, (pos[:-1] - pos[0])


def parse_lines(kind: str, variant: str, buf: bytes, starts: np.ndarray, ends: np.ndarray, idx: np.ndarray,
                max_line_bytes: int, scan_min_lines: int = SCAN_MIN_LINES) -> Parsed:
    """`parse` of the lines `idx` (ascending) of `buf` only, with `_line` and the rejects'
    offsets those of `buf`."""
    sub, sub_starts = take_lines(buf, starts, ends, idx)
    part = parse(kind, variant, sub, max_line_bytes, scan_min_lines)
    lines = idx.astype(np.uint32)[part.frame["_line"].to_numpy()]
    frame = part.frame.with_columns(pl.Series("_line", lines, dtype=pl.UInt32))
    k = np.searchsorted(sub_starts, [r.offset for r in part.rejects], "right") - 1
    moved = starts[idx][k] - sub_starts[k]  # sub-buffer offset -> offset in `buf`
    rejects = [r._replace(offset=r.offset + int(d)) for r, d in zip(part.rejects, moved, strict=True)]
    return Parsed(frame, rejects, starts)


def _incomplete(required: list[str]) -> pl.Expr:
    """Whether a row misses a required field."""
    return pl.any_horizontal(pl.col(c).is_null() for c in required)


def _missing(flat: pl.DataFrame, required: list[str]) -> pl.Series | None:
    """Line indexes of rows missing a required field, or None if every row is whole."""
    bad = flat.filter(_incomplete(required))["_line"]
    return bad if len(bad) else None


def _slow_parse(
    fmt: Format,
    buf: bytes,
    starts: np.ndarray,
    ends: np.ndarray,
    long: np.ndarray,
    blank: np.ndarray,
) -> Parsed:
    """Find the bad lines one by one, then decode the good ones together."""
    rejects: list[BadLine] = []
    good: list[int] = []
    for i in range(len(ends)):
        s, e = int(starts[i]), int(ends[i])
        if blank[i]:
            continue
        if long[i]:
            rejects.append(BadLine(s, f"line of {e - s} bytes over max_line_bytes",
                                   buf[s : s + REJECT_LINE_BYTES]))
            continue
        line = buf[s:e]
        try:
            value = orjson.loads(line)
        except orjson.JSONDecodeError as err:
            rejects.append(BadLine(s, f"invalid JSON: {err}", line[:REJECT_LINE_BYTES]))
            continue
        if not isinstance(value, fmt.top):
            rejects.append(BadLine(s, f"expected a JSON {fmt.top.__name__}", line[:REJECT_LINE_BYTES]))
            continue
        good.append(i)
    frames = _decode_isolating(fmt, buf, starts, ends, good, rejects)
    flat = pl.concat(frames) if frames else pl.DataFrame(schema={**fmt.schema, "_line": pl.UInt32})
    bad = _missing(flat, fmt.required)
    if bad is not None:
        for i, reason in _missing_reasons(flat, bad, fmt).items():
            s, e = int(starts[i]), int(ends[i])
            rejects.append(BadLine(s, reason, buf[s:e][:REJECT_LINE_BYTES]))
        # only the rows missing a field: a block's other events are stored
        flat = flat.filter(~_incomplete(fmt.required))
    rejects.sort()
    return Parsed(flat, rejects, starts)


def _missing_reasons(flat: pl.DataFrame, bad: pl.Series, fmt: Format) -> dict[int, str]:
    """The reject reason of each line of `bad`, naming (as the node does) the required fields its
    rows lack, a block's events together, and how many of a block's events lack them (the others
    are stored); computed for the rejected lines only."""
    rows = flat.filter(pl.col("_line").is_in(bad.implode())).group_by("_line").agg(
        *(pl.col(c).is_null().any() for c in fmt.required),
        _incomplete(fmt.required).sum().alias("_bad"), pl.len().alias("_all"))
    reasons = {}
    for line, *nulls, n_bad, n_all in rows.sort("_line").iter_rows():
        names = [fmt.node_names.get(c, c) for c, null in zip(fmt.required, nulls, strict=True) if null]
        plural = "s" if len(names) > 1 else ""
        reason = f"missing or out-of-range required field{plural}: {', '.join(names)}"
        if fmt.explode:
            stored = n_all - n_bad
            reason += (f", in {n_bad} of the block's {n_all} events (the other {stored} stored)" if stored
                       else f", in every one of the block's {n_all} events")
        reasons[int(line)] = reason
    return reasons


def _decode_isolating(
    fmt: Format,
    buf: bytes,
    starts: np.ndarray,
    ends: np.ndarray,
    idx: list[int],
    rejects: list[BadLine],
) -> list[pl.DataFrame]:
    """Decode lines `idx` together; when the decoder refuses, bisect to find the line."""
    if not idx:
        return []
    chunk = b"".join(buf[int(starts[i]) : int(ends[i]) + 1] for i in idx)
    try:
        flat = _flatten(fmt, _decode(fmt, chunk), len(idx))
    except Exception as err:  # noqa: BLE001
        if len(idx) == 1:
            s, e = int(starts[idx[0]]), int(ends[idx[0]])
            reason = f"wrong shape: {str(err).splitlines()[0][:200]}"
            rejects.append(BadLine(s, reason, buf[s:e][:REJECT_LINE_BYTES]))
            return []
        mid = len(idx) // 2
        return (_decode_isolating(fmt, buf, starts, ends, idx[:mid], rejects)
                + _decode_isolating(fmt, buf, starts, ends, idx[mid:], rejects))
    # map chunk line numbers back to line numbers in `buf`
    lines = np.asarray(idx, dtype=np.uint32)[flat["_line"].to_numpy()]
    return [flat.with_columns(pl.Series("_line", lines, dtype=pl.UInt32))]
