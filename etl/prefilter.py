"""Decode only the order-status lines that can pass the rules.

Most order statuses fail the rules (data/rules.toml keeps ~2%), and decoding a line whole
costs several times as much as reading the few fields the rules and the watermark need. So a
batch is read twice:

1. a *light* read, a compiled scan of the batch's bytes (etl/bytescan.py), of only the required
   fields (time, user, status, coin, side, limitPx, oid) and those the active rules read
   (origSz for a minimum notional, isTrigger, orderType); the rules run on that frame, which
   gives the exact per-rule counts and the event times of every line (the watermark and stall
   detection);
2. a full decode (`etl.parse.parse`) of the *candidate* lines only: those with a row the rules
   keep, a row missing a required field (so that it reaches `rejects` exactly as without
   pre-filtering), or a line the light read is not sure the full decoder reads the same (not
   JSON as the node writes it, an escape, a field of another JSON type: see etl/bytescan.py).
   The rules run again on the decoded rows, which are what is stored.

So a malformed line is decoded whole and reaches `rejects`. A batch that holds a blank or
over-long line is decoded whole as without pre-filtering. What pre-filtering changes for
`rejects`: a line whose *other* fields (the ones the rules do not read, e.g. `tif`,
`children`, or `isTrigger` when no rule reads it) have the wrong JSON type is a reject only
when it passes the rules; otherwise it is counted and dropped like any other line the rules
drop.

The light read costs ~43 ms of CPU a 64 MiB batch (the whole pre-filter ~78 ms), against ~100
ms for the byte scan reading every field and ~200 ms for Polars' NDJSON decoder on the light
fields alone (docs/benchmarks.md).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from typing import NamedTuple

import numpy as np
import polars as pl

from etl.columns import ORDERS_REQUIRED, ORDERS_SCHEMA
from etl.fields import Fields
from etl.filters import Rules, _rule_exprs, add_counts, apply_rules, mask_counts, rule_columns, rule_masks
from etl.flatten import orders_flat
from etl.parse import BadLine, Parsed, parse, parse_lines

log = logging.getLogger("nodetap.prefilter")

# below this many lines, decoding a batch whole costs less than pre-filtering it, whose frames
# and second decode cost ~6.5 ms whatever the batch (measured: 1,024 lines 7.1 against 5.9 ms
# of CPU, 4,096 lines 10.2 against 14.0 ms)
MIN_LINES = 2048

# every column the light read may read: its field in the node's line (`order.` for the order's)
# and its JSON type there
LIGHT_COLUMNS = {"time": ("time", "time"), "user": ("user", "text"), "status": ("status", "text"),
                 "coin": ("order.coin", "text"), "side": ("order.side", "text"),
                 "limit_px": ("order.limitPx", "decimal"), "orig_sz": ("order.origSz", "decimal"),
                 "oid": ("order.oid", "int"), "is_trigger": ("order.isTrigger", "bool"),
                 "order_type": ("order.orderType", "text")}


@cache
def light_fields(compared: frozenset[str]) -> tuple[Fields, tuple[str, ...]]:
    """What the light read reads when the rules compare the values of the columns `compared`
    (`filters.rule_columns`): the required columns and those, and the columns it returns.

    Each field's JSON type is checked (etl/bytescan.py); a field less saves a column to build.
    A text no rule compares is only checked to be a string (`Fields.checked`)."""
    columns = tuple(c for c in LIGHT_COLUMNS if c in ORDERS_REQUIRED or c in compared)
    path = {c: LIGHT_COLUMNS[c][0] for c in columns}
    kind = {c: LIGHT_COLUMNS[c][1] for c in columns}

    def named(*kinds: str, order: bool) -> tuple[str, ...]:
        return tuple(path[c].removeprefix("order.") for c in columns
                     if kind[c] in kinds and path[c].startswith("order.") == order)

    fields = Fields(named("time", "text", order=False), named("text", "decimal", order=True),
                    named("int", order=True), named("bool", order=True),
                    checked=tuple(path[c] for c in columns if kind[c] == "text" and c not in compared))
    return fields, columns


@dataclass
class Filtered:
    """A batch of order statuses after the rules."""

    parsed: Parsed  # the rows the rules keep (with `_line`), every reject, every line's start
    times: pl.DataFrame  # `time`, `_line` of every good row, kept or not: the stream's watermark
    counts: dict[str, tuple[int, int]]  # apply_rules counts over every good row
    decoded: int  # lines decoded whole


def filter_parsed(parsed: Parsed, rules: Rules) -> Filtered:
    """The rules applied to a batch decoded whole."""
    kept, counts = apply_rules(parsed.frame, rules)
    times = parsed.frame.select("time", "_line")
    return Filtered(Parsed(kept, parsed.rejects, parsed.starts), times, counts, parsed.lines)


class TooMany(NamedTuple):
    """The pre-filter found more candidates than `max_share` of the batch's lines: decode it whole."""

    share: float  # the candidates' share of the lines


def prefilter(variant: str, buf: bytes, rules: Rules, max_line_bytes: int = 1 << 20,
              min_lines: int = MIN_LINES, checkpoint: Callable[[], None] | None = None,
              max_share: float | None = None) -> Filtered | TooMany | None:
    """The rules applied to a batch of order-status lines, decoding whole only the lines that can
    pass; None when the batch must be decoded whole (see the module's docstring), or holds fewer
    than `min_lines` lines; `TooMany` when the lines to decode whole are more than `max_share` of
    them (decoding the batch whole then costs less, and no copy of those lines)."""
    if rules.keep_all or not _rule_exprs(rules):
        return None  # the rules keep every row: nothing to save
    from etl.bytescan import line_bounds as find_lines  # numba: loaded by `prepare`

    starts, ends = find_lines(buf)
    if len(ends) < max(min_lines, 1):
        return None
    lengths = ends - starts
    if (lengths == 0).any() or (lengths > max_line_bytes).any():
        return None
    light, unsure = _light(variant, buf, starts, ends, rules, checkpoint)
    masks = rule_masks(light, rules)
    if masks is None:
        return None  # the rules keep everything: nothing to save
    whole = ~pl.any_horizontal(pl.col(c).is_null() for c in ORDERS_REQUIRED)
    line = light.get_column("_line")
    need = light.select(line=line, need=masks.get_column("__keep") | ~light.select(whole).to_series())
    cand_lines = need.filter(pl.col("need")).get_column("line").unique().to_numpy()
    cand_lines = np.union1d(cand_lines, unsure).astype(cand_lines.dtype)
    if max_share is not None and len(cand_lines) > max_share * len(ends):
        return TooMany(len(cand_lines) / len(ends))
    in_cand = line.is_in(pl.Series(cand_lines, dtype=line.dtype).implode())
    # rows of lines not decoded again: their light values are exact
    sure = ~in_cand
    counts = mask_counts(masks.filter(sure))
    times = light.filter(sure).select("time", "_line")
    del light, masks, line, need, in_cand, sure  # the scan's buffers, before the second decode
    rejects: list[BadLine] = []
    frame = pl.DataFrame(schema={**ORDERS_SCHEMA, "_line": pl.UInt32})
    if len(cand_lines):
        full = parse_lines("orders", variant, buf, starts, ends, cand_lines, max_line_bytes)
        kept, sub_counts = apply_rules(full.frame, rules)
        counts = add_counts(counts, sub_counts)
        times = pl.concat([times, full.frame.select("time", "_line")])
        rejects, frame = full.rejects, kept
    return Filtered(Parsed(frame, rejects, starts), times, counts, len(cand_lines))


SLOW_PREPARE_S = 3.0  # a load of the byte scan that takes longer (compiling it, most likely): say so


def prepare() -> None:
    """Load the byte scan now (numba's compiled code: ~1.3 s and ~120 MB, ~18 s on 2 cores the
    first time, when it is compiled and cached): every order-status batch is read by it
    (etl/parse.py, and the light read here). So the first batch does not wait for it, and it is
    made before the long-lived objects are frozen (etl/malloc.py). A load that takes more than
    `SLOW_PREPARE_S` is logged, then its end, so that a first start does not look hung."""
    from etl.bytescan import warm

    t0 = time.monotonic()
    timer = threading.Timer(SLOW_PREPARE_S, lambda: log.warning(
        "event=scan_loading (the byte scan; the first start compiles it with numba, ~20 s on 2 cores, "
        "and caches it for later starts: set NUMBA_CACHE_DIR to a writable directory where it is not)"))
    timer.daemon = True
    timer.start()
    try:
        warm()
    finally:
        timer.cancel()
    seconds = time.monotonic() - t0
    if seconds > SLOW_PREPARE_S:
        log.info("event=scan_loaded seconds=%.1f", seconds)


def _light(variant: str, buf: bytes, starts: np.ndarray, ends: np.ndarray,
           rules: Rules, checkpoint: Callable[[], None] | None = None) -> tuple[pl.DataFrame, np.ndarray]:
    """The light rows of a batch and the lines to decode whole whatever the rules say
    (etl/bytescan.py)."""
    # imported here (or by `prepare`): numba costs ~120 MB of memory, which only order statuses need
    from etl.bytescan import scan_orders

    fields, columns = light_fields(rule_columns(rules))
    events, unsure = scan_orders(variant, buf, starts, ends, fields, checkpoint)
    return orders_flat(events, False, columns).with_columns(events.get_column("_line")), unsure


class OrdersFilter:
    """Chooses, batch by batch, between pre-filtering and decoding everything.

    Pre-filtering pays when few lines are candidates; when recent batches decoded more than
    `threshold` of their lines anyway (the built-in rules keep ~80%), decoding whole is cheaper,
    and every `probe_every` batches pre-filtering is tried again. A batch whose candidates pass
    `threshold` is decoded whole rather than its candidates copied out and decoded: so two units
    pre-filtered at once never decode most of their lines each (in block envelopes under the
    built-in rules, that took peak RSS to 1.1–1.35 GB). A lane's parse workers share
    the filter; at most `whole_at_once` of them decode a batch whole at the same time (a decoded
    batch holds ~10 times its bytes: etl/lanes.py bounds memory with it)."""

    def __init__(self, threshold: float = 0.35, probe_every: int = 16, min_lines: int = MIN_LINES,
                 whole_at_once: int = 1) -> None:
        self.threshold = threshold
        self.probe_every = probe_every
        self.min_lines = min_lines
        self.share = 0.0  # candidate share of the last pre-filtered batch
        self._since_probe = 0
        self._declined = False  # the last batch tried could not be pre-filtered
        self.prefiltered = 0  # batches
        self.whole = 0
        self._lock = threading.Lock()
        self._whole = threading.BoundedSemaphore(whole_at_once)

    def prefiltering(self, rules: Rules) -> bool:
        """Whether the next batch under `rules` is expected to be pre-filtered: the rules select,
        the last batches' candidates were few, and the last batch tried was pre-filtered (not
        declined for its shape: fewer than `min_lines` lines, a blank or over-long line)."""
        with self._lock:
            return (not rules.keep_all and bool(_rule_exprs(rules)) and not self._declined
                    and (self.share <= self.threshold or self._since_probe >= self.probe_every))

    def __call__(self, variant: str, buf: bytes, rules: Rules, max_line_bytes: int,
                 checkpoint: Callable[[], None] | None = None) -> Filtered:
        with self._lock:
            try_it = self.share <= self.threshold or self._since_probe >= self.probe_every
            self._since_probe = 0 if try_it else self._since_probe + 1
        out = (prefilter(variant, buf, rules, max_line_bytes, self.min_lines, checkpoint, self.threshold)
               if try_it else None)
        with self._lock:
            if try_it:
                self._declined = out is None
            if isinstance(out, TooMany):  # decoded whole below, one unit at a time
                self.share = out.share
                out = None
            if out is not None:
                self.share = out.decoded / max(out.parsed.lines, 1)
                self.prefiltered += 1
            else:
                self.whole += 1
        if out is None:
            with self._whole:
                out = filter_parsed(parse("orders", variant, buf, max_line_bytes), rules)
        return out
