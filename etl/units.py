"""Units of commit: the rows of whole lines of one file, and the cursor just after them.

A read batch becomes a `Unit`. While the pipeline catches up, units are merged and
split so that each insert holds whole DuckDB row groups (122,880 rows): a partial row
group costs a WAL write and a re-compression at checkpoint, which halves the insert
rate and doubles the file. The rows held back (`carry`) are from lines after the
committed cursor, so a crash re-reads them: exactly-once holds at any instant.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace

import numpy as np
import polars as pl

from etl.filters import Rules, add_counts
from etl.parse import parse
from etl.prefilter import OrdersFilter
from etl.tail import Batch, Cursor, Gap, Reject, Stream

ROW_GROUP = 122_880  # DuckDB's default row group size


@dataclass
class Unit:
    stream: Stream
    file: str
    start: int  # file offset of the first line
    cursor: Cursor  # where the line after the last one starts
    frame: pl.DataFrame | None  # rows of the stream's kind, with `_offset` (their line's start)
    line_offsets: np.ndarray  # start of every line, good or bad, ascending
    rejects: list[Reject] = field(default_factory=list)
    gaps: list[Gap] = field(default_factory=list)
    unread: int = 0  # bytes the node had written past this unit when it was read
    dropped_lines: int = 0  # lines given up on by the tailer (in rejects too)
    # order statuses filtered while parsing: `frame` holds the kept rows only, `times` the
    # `time` and `_offset` of every good row (the watermark), `counts` the rules' counts
    times: pl.DataFrame | None = None
    counts: dict[str, tuple[int, int]] | None = None
    counted_with: Rules | None = None  # the rules `counts` are of

    @property
    def rows(self) -> int:
        return 0 if self.frame is None else self.frame.height

    @property
    def lines(self) -> int:
        return len(self.line_offsets) + self.dropped_lines

    @property
    def bytes(self) -> int:
        return self.cursor.offset - self.start if self.cursor.file == self.file else 0


def unit_of(batch: Batch, max_line_bytes: int, rules: Rules | None = None,
            orders_filter: OrdersFilter | None = None, checkpoint: Callable[[], None] | None = None) -> Unit:
    """Parse a batch into a unit (on a worker thread). With `rules`, order statuses are filtered
    here, decoding whole only the lines that can pass (etl/prefilter.py); `checkpoint` is called
    between slices of the pre-filter's byte scan (etl/gate.py)."""
    rejects: list[Reject] = []
    frame = times = counts = None
    offsets = np.empty(0, np.int64)
    if batch.data:
        kind, variant = batch.stream.kind, batch.stream.variant
        if kind == "orders" and rules is not None:
            filtered = (orders_filter or OrdersFilter())(variant, batch.data, rules, max_line_bytes,
                                                         checkpoint)
            parsed, counts = filtered.parsed, filtered.counts
        else:
            parsed = parse(kind, variant, batch.data, max_line_bytes)
        offsets = parsed.starts.astype(np.int64) + batch.start
        frame = _with_offsets(parsed.frame, offsets)
        if counts is not None:
            times = _with_offsets(filtered.times, offsets)
        rejects = [Reject(batch.file, batch.start + r.offset, r.reason, r.head) for r in parsed.rejects]
    dropped = 0
    if batch.dropped:
        rejects.append(Reject(batch.file, batch.start, batch.dropped_reason, batch.dropped))
        dropped = 1
    start = batch.start if batch.data or batch.dropped else batch.cursor.offset
    file = batch.file if batch.data or batch.dropped else batch.cursor.file
    return Unit(batch.stream, file, start, batch.cursor, frame, offsets, rejects, batch.gaps,
                batch.unread, dropped, times, counts, rules if counts is not None else None)


def _with_offsets(frame: pl.DataFrame, offsets: np.ndarray) -> pl.DataFrame:
    """`_line` (a line's index in the batch) replaced by `_offset` (its start in the file)."""
    line = frame["_line"].to_numpy()
    return frame.drop("_line").with_columns(pl.Series("_offset", offsets[line], dtype=pl.Int64))


def event_times(u: Unit) -> pl.Series | None:
    """The event time of every good row of the unit, kept by the rules or not."""
    if u.times is not None:
        return u.times["time"]
    return None if u.frame is None else u.frame["time"]


def can_merge(a: Unit, b: Unit) -> bool:
    """b continues a in the same file, with nothing skipped between."""
    return (
        a.cursor.file == b.file == a.file
        and a.cursor.inode == b.cursor.inode
        and b.start == a.cursor.offset
        and not b.gaps
        and not b.dropped_lines
    )


def merge(a: Unit, b: Unit) -> Unit:
    frames = [f for f in (a.frame, b.frame) if f is not None]
    return replace(
        a,
        cursor=b.cursor,
        frame=pl.concat(frames) if frames else None,
        line_offsets=np.concatenate([a.line_offsets, b.line_offsets]),
        rejects=a.rejects + b.rejects,
        unread=b.unread,
        dropped_lines=a.dropped_lines + b.dropped_lines,
        times=None if a.times is None or b.times is None else pl.concat([a.times, b.times]),
        counts=None if a.counts is None or b.counts is None else add_counts(a.counts, b.counts),
        counted_with=a.counted_with if a.counted_with == b.counted_with else None,  # rules changed between
    )


def split_whole_row_groups(u: Unit) -> tuple[Unit, Unit | None]:
    """(head, tail): head ends on the line boundary at or before the last whole row group."""
    if u.frame is None or u.rows < ROW_GROUP or u.dropped_lines:
        return u, None
    cut_row = (u.rows // ROW_GROUP) * ROW_GROUP
    if cut_row >= u.rows:
        return u, None
    cut = int(u.frame["_offset"][cut_row])  # the first line held back
    if cut <= u.start:
        return u, None
    in_head = u.frame["_offset"] < cut
    n_lines = int(np.searchsorted(u.line_offsets, cut))
    head = replace(
        u,
        cursor=Cursor(u.file, u.cursor.inode, cut),
        frame=u.frame.filter(in_head),
        line_offsets=u.line_offsets[:n_lines],
        rejects=[r for r in u.rejects if r.offset < cut],
        unread=u.unread + (u.cursor.offset - cut),
        times=None if u.times is None else u.times.filter(pl.col("_offset") < cut),
    )
    tail = replace(
        u,
        start=cut,
        frame=u.frame.filter(~in_head),
        line_offsets=u.line_offsets[n_lines:],
        rejects=[r for r in u.rejects if r.offset >= cut],
        gaps=[],
        times=None if u.times is None else u.times.filter(pl.col("_offset") >= cut),
        # the rules' counts are running totals for /v1/status: the head carries them all
        counts=None if u.counts is None else {},
    )
    return head, tail
