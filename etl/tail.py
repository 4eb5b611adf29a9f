"""Find the node's streams and read only the bytes not read before, line-aligned.

A stream is one directory of hourly files (`<stream>/hourly/YYYYMMDD/H`). Its cursor
`(file, inode, offset)` says where the next batch starts; the store saves it in the
same transaction as the rows it produced.
"""

from __future__ import annotations

import bisect
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import datetime
from pathlib import Path
from typing import Literal, NamedTuple

from etl.hourfiles import (
    DAY,
    HourListing,
    hour_files,
    hour_key,
    line_start_at_or_after,
    line_start_before,
    probe_lines,
    read_lines,
    size_of,
    stat_or_none,
)
from etl.nodefiles import FP_BYTES, EmptyIndex, FileIndex, fingerprint_at, fingerprint_of

log = logging.getLogger("nodetap.tail")

Kind = Literal["orders", "fills", "trades"]
Variant = Literal["plain", "by_block", "streaming"]
# backlog | missing: bytes not read; incomplete: a backfilled `.lz4` file stops decoding there;
# truncated | replaced | rewritten | overlap: the file is read again from its start, and its rows
# are checked against the stored ones
GapReason = Literal["backlog", "missing", "incomplete", "truncated", "replaced", "rewritten", "overlap"]

# directory name -> (kind, variant)
STREAM_DIRS: dict[str, tuple[Kind, Variant]] = {
    "node_order_statuses": ("orders", "plain"),
    "node_order_statuses_by_block": ("orders", "by_block"),
    "node_order_statuses_streaming": ("orders", "streaming"),
    "node_fills": ("fills", "plain"),
    "node_fills_by_block": ("fills", "by_block"),
    "node_fills_streaming": ("fills", "streaming"),
    "node_trades": ("trades", "plain"),
}


@dataclass(frozen=True)
class Stream:
    name: str  # directory name, e.g. node_fills_by_block
    kind: Kind
    variant: Variant
    root: Path  # <node-dir>/<name>/hourly


@dataclass(frozen=True)
class Cursor:
    file: str  # "YYYYMMDD/H", relative to the stream's hourly dir; "" before the first file
    inode: int
    offset: int
    # of the bytes just before `offset` (etl/nodefiles.py); 0: unknown, not checked
    fp: int = field(default=0, compare=False)


@dataclass(frozen=True)
class Gap:
    """A byte range that was not (or may not have been) read, and why."""

    file: str
    start: int
    end: int
    reason: GapReason


class Reject(NamedTuple):
    """A line that did not become a row, stored in `rejects`."""

    file: str
    offset: int  # where the line starts in the file
    reason: str
    head: bytes  # its first bytes


# gap reasons after which a file is re-read from 0 with identity checks (etl/dedup.py)
REREAD: tuple[GapReason, ...] = ("truncated", "replaced", "rewritten", "overlap")


class PendingRead:
    """A batch's bytes, left for a parse worker to read (`Tailer.defer_reads`). The file stays
    open until then, so the bytes come from the file the tailer found them in, whatever happens
    to its path meanwhile; closed when read, or when the batch is dropped unread."""

    def __init__(self, fd: int, offset: int, n: int) -> None:
        self.fd, self.offset, self.n = fd, offset, n

    def read(self) -> bytes:
        fd, self.fd = self.fd, -1
        try:
            return os.pread(fd, self.n, self.offset)
        finally:
            os.close(fd)

    def __del__(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)


@dataclass
class Batch:
    stream: Stream
    file: str
    start: int  # offset of data[0] in file
    data: bytes  # whole lines only (none yet while `pending`)
    cursor: Cursor  # where the next batch starts
    gaps: list[Gap] = field(default_factory=list)
    dropped: bytes = b""  # head of a line given up on: unterminated at rotation, or too long
    dropped_reason: str = ""
    unread: int = 0  # bytes left behind the batch, this file and later ones
    pending: PendingRead | None = None  # `data`, not read yet: `loaded()` reads it

    @property
    def has_lines(self) -> bool:
        return bool(self.data) or self.pending is not None

    def loaded(self) -> Batch:
        """This batch with its bytes read, on the thread that parses it. Bytes the file no
        longer holds (truncated since the tailer found where the batch's lines end) become a
        `truncated` gap, and the batch ends at its last whole line; the next batch finds the
        file shorter than its cursor and reads it again from its start (`REREAD`)."""
        if self.pending is None:
            return self
        want = self.pending.n
        data = self.pending.read()
        gaps = self.gaps
        if len(data) != want or not data.endswith(b"\n"):
            got, cut = len(data), data.rfind(b"\n") + 1
            data = data[:cut]
            gaps = [*gaps, Gap(self.file, self.start + cut, self.start + want, "truncated")]
            log.warning("event=file_truncated stream=%s file=%s offset=%d size=%d (while its "
                        "lines were read; read again from its start, rows already stored are "
                        "not stored twice)", self.stream.name, self.file, self.start + cut,
                        self.start + got)
        return replace(self, data=data, gaps=gaps, pending=None)

    @classmethod
    def move(cls, stream: Stream, cursor: Cursor, gaps: list[Gap], unread: int = 0) -> Batch:
        """No lines: the cursor moves (to another file, past a gap)."""
        return cls(stream, cursor.file, cursor.offset, b"", cursor, gaps, unread=unread)

    @classmethod
    def given_up(cls, stream: Stream, at: Cursor, cursor: Cursor, gaps: list[Gap], head: bytes,
                 reason: str, unread: int = 0) -> Batch:
        """A line given up on at `at` (recorded as a reject with its `head`); `cursor` is past it."""
        return cls(stream, at.file, at.offset, b"", cursor, gaps, head, reason, unread)


_PREFERENCE = {"streaming": 0, "by_block": 1, "plain": 2}
_WARNED: set[tuple[Path, tuple[str, ...]]] = set()


def discover(node_dir: Path, only: tuple[str, ...] = ()) -> list[Stream]:
    """The streams to ingest under a node data dir, in a stable order.

    With `only`, exactly those present. Otherwise one directory per kind, so that no
    event is stored twice: the lowest-latency variant of order statuses and of fills,
    and `node_trades` only when there are no fills (a node writes one or the other)."""
    unknown = [n for n in only if n not in STREAM_DIRS]
    if unknown:
        raise ValueError(f"unknown stream(s) {unknown}; known: {', '.join(STREAM_DIRS)}")
    present = [
        Stream(name, kind, variant, node_dir / name / "hourly")
        for name, (kind, variant) in STREAM_DIRS.items()
        if (node_dir / name / "hourly").is_dir()
    ]
    if only:
        return [s for s in present if s.name in only]
    chosen: dict[str, Stream] = {}
    for s in sorted(present, key=lambda s: _PREFERENCE[s.variant]):
        chosen.setdefault(s.kind, s)
    if "fills" in chosen:
        chosen.pop("trades", None)
    ignored = [s.name for s in present if s not in chosen.values()]
    if ignored and (node_dir, tuple(ignored)) not in _WARNED:  # once per process, not per rescan
        _WARNED.add((node_dir, tuple(ignored)))
        log.warning(
            "event=streams_ignored streams=%s reason=one_variant_per_kind (set `streams` to choose)",
            ",".join(ignored),
        )
    return [s for s in present if s in chosen.values()]


def start_from_error(start_from: str) -> str | None:
    """Why `start_from` names no place to start; None for `end`, `start` or `YYYYMMDD[/H]` (a
    real date, an hour 0-23)."""
    if start_from in ("end", "start"):
        return None
    usage = f"start_from must be end, start or YYYYMMDD[/H], not {start_from!r}"
    day, sep, hour = start_from.partition("/")
    if not DAY.match(day) or (sep and not (hour.isdigit() and len(hour) <= 2)):
        return usage
    try:
        datetime(int(day[:4]), int(day[4:6]), int(day[6:]))
    except ValueError as err:
        return f"{usage}: {day} is not a date ({err})"
    if hour and int(hour) > 23:
        return f"{usage}: the hour is 0 to 23 (UTC), not {int(hour)}"
    return None


def start_floor(start_from: str) -> str:
    """The hour ("YYYYMMDD/H") a `YYYYMMDD[/H]` start begins at; "" for `end` and `start`. It
    is the stream's floor: the files before it are not its business."""
    if start_from in ("end", "start"):
        return ""
    day, _, hour = start_from.partition("/")
    return f"{day}/{int(hour or 0)}"


def initial_cursor(stream: Stream, start_from: str, since: float | None = None) -> Cursor:
    """Where a stream with no stored cursor starts. `Cursor("", 0, 0)` is before the stream's
    first file at or after its floor (`start_floor`): a start later than every file there
    reads none of them, and waits for the first one at or after it.

    `since` (epoch seconds) is when the database first looked for streams, for a stream seen
    only after that: `end` meant the lines written after it, so such a stream (its directory
    made later, or a stream added to `streams`) starts at its first file written to since
    then, from that file's start (a second of margin for the file system's coarser clock),
    not at an end that would skip what was written before it was seen."""
    files = hour_files(stream.root)
    if not files:
        return Cursor("", 0, 0)
    if start_from == "end" and since is not None:
        for rel in files:
            st = os.stat(stream.root / rel)
            if st.st_mtime >= since - 1.0:
                return Cursor(rel, st.st_ino, 0)
    if start_from == "end":
        rel = files[-1]
        st = os.stat(stream.root / rel)
        return Cursor(rel, st.st_ino, line_start_before(stream.root / rel, st.st_size))
    if start_from == "start":
        rel = files[0]
    else:
        if (err := start_from_error(start_from)) is not None:
            raise ValueError(err)
        key = hour_key(start_floor(start_from))
        later = [r for r in files if hour_key(r) >= key]
        if not later:
            return Cursor("", 0, 0)
        rel = later[0]
    return Cursor(rel, os.stat(stream.root / rel).st_ino, 0)


class Tailer:
    """Produces the next batch of whole lines of one stream after a cursor.

    With an `index` (the store's per-file cursors), a file is entered at its stored cursor,
    a file rewritten, replaced or read by another variant is read again from its start
    (flagged by a gap, so its rows are checked against the stored ones), and an hour
    file that appears after a later one is read too."""

    def __init__(
        self,
        stream: Stream,
        *,
        batch_max_bytes: int,
        max_backlog_bytes: int | None,
        rotate_grace_s: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
        index: FileIndex | None = None,
    ) -> None:
        self.stream = stream
        self.batch_max_bytes = batch_max_bytes
        # leave a batch's bytes to whoever parses it (`Batch.loaded`): the tailer only finds
        # where its lines end, in a small read of its end (etl/lanes.py sets it while a lane
        # has more to read and decodes its units whole)
        self.defer_reads = False
        self.deferred_reads = 0  # batches returned without their bytes
        self.max_backlog_bytes = max_backlog_bytes
        self.rotate_grace_s = rotate_grace_s
        self.clock = clock
        self.index: FileIndex = index or EmptyIndex()
        self._waiting_since: float | None = None  # partial tail seen with a newer file present
        self._entered = ""  # the file whose stored cursor was last consulted
        self._passed: set[str] = set()  # files this tailer has been in or skipped
        self._settled: set[str] = set()  # older files known to be read (or before the floor)
        self.listing = HourListing(stream.root)
        self._no_stray: tuple[int, str] | None = None  # (listing version, current) scanned clean

    def _enter(self, rel: str, gaps: list[Gap], at: Cursor | None = None) -> Cursor:
        """Where to read `rel` from: its stored cursor when further than `at` (checked by the
        caller like any cursor), else `at`, else its start."""
        self._entered = rel
        self._passed.add(rel)
        stored = self.index.get(rel)
        if stored is not None:
            inode, offset, fp = stored
            if at is None or offset > at.offset:
                return Cursor(rel, inode, offset, fp)
            return at
        if (at is None or at.offset == 0) and self.index.other_variant_read(rel):
            # the same hour was stored from another variant of this kind: check every row
            gaps.append(Gap(rel, 0, 0, "overlap"))
            log.warning("event=file_overlap stream=%s file=%s", self.stream.name, rel)
        if at is not None:
            return at
        st = stat_or_none(self.stream.root / rel)
        return Cursor(rel, st.st_ino if st else 0, 0)

    def _stray(self, current: str) -> str | None:
        """An hour file older than `current` that appeared late and nothing has read."""
        listing = self.listing
        if self._no_stray == (listing.version, current):
            return None  # the same files as at the last scan, which found none
        floor = hour_key(self.index.floor) if self.index.floor else None
        older = bisect.bisect_left(listing.keys, hour_key(current))
        for f in listing.files[:older]:
            if f in self._passed or f in self._settled:
                continue
            if (floor is not None and hour_key(f) < floor) or self.index.get(f) is not None:
                self._settled.add(f)
                continue
            return f
        self._no_stray = (listing.version, current)
        return None

    def next_batch(self, cur: Cursor) -> Batch | None:
        """The next batch after `cur`, or None when there is nothing new to commit."""
        gaps: list[Gap] = []
        files = self.listing.refresh()
        if not cur.file:  # the first file at or after the floor
            floor = self.index.floor
            first = bisect.bisect_left(self.listing.keys, hour_key(floor)) if floor else 0
            if first >= len(files):
                return None
            cur = self._enter(files[first], gaps)
        elif cur.file != self._entered:
            cur = self._enter(cur.file, gaps, at=cur)
        stray = self._stray(cur.file)
        if stray is not None:
            log.warning("event=file_out_of_order stream=%s file=%s current=%s",
                        self.stream.name, stray, cur.file)
            return Batch.move(self.stream, self._enter(stray, gaps), gaps)
        for _ in range(len(files) + 2):
            later = files[bisect.bisect_right(self.listing.keys, hour_key(cur.file)):]
            st = stat_or_none(self.stream.root / cur.file)
            if st is None:  # the file was deleted under us: record it, move on to the next one
                if not later:
                    return None
                gaps.append(Gap(cur.file, cur.offset, cur.offset, "missing"))
                log.warning("event=file_missing stream=%s file=%s", self.stream.name, cur.file)
                cur = self._enter(later[0], gaps)
                continue
            cur = self._checked(cur, st, gaps)
            unread = st.st_size - cur.offset + sum(size_of(self.stream.root / f) for f in later)
            if self.max_backlog_bytes is not None and unread > self.max_backlog_bytes:
                cur, skipped = self._skip_backlog(cur, st.st_size, later)
                gaps += skipped
                continue
            batch = self._read(cur, st.st_size, gaps, unread) if cur.offset < st.st_size else None
            if batch is not None:
                self._waiting_since = None
                return batch
            return self._leave(cur, st.st_size, later, gaps, unread)  # nothing whole left here
        return Batch.move(self.stream, cur, gaps) if gaps else None

    def _checked(self, cur: Cursor, st: os.stat_result, gaps: list[Gap]) -> Cursor:
        """`cur`, or the file's start when the file is not the one the cursor was in."""
        reason: GapReason | None = None
        if cur.inode and st.st_ino != cur.inode:
            reason = "replaced"
        elif st.st_size < cur.offset:
            reason = "truncated"
        elif cur.fp and cur.offset and fingerprint_at(self.stream.root / cur.file, cur.offset) != cur.fp:
            reason = "rewritten"  # same inode, not shorter, other bytes before the cursor
        if reason:
            gaps.append(Gap(cur.file, cur.offset, cur.offset, reason))
            log.warning("event=file_%s stream=%s file=%s offset=%d size=%d (read again from "
                        "its start; rows already stored are not stored twice)", reason,
                        self.stream.name, cur.file, cur.offset, st.st_size)
            return Cursor(cur.file, st.st_ino, 0)
        if not cur.inode:
            return Cursor(cur.file, st.st_ino, cur.offset, cur.fp)
        return cur

    def rotation_wait_s(self) -> float | None:
        """Seconds left before an unterminated last line of a file the node has left is given up
        on; None when no such line waits."""
        if self._waiting_since is None:
            return None
        return max(0.0, self.rotate_grace_s - (self.clock() - self._waiting_since))

    def _leave(self, cur: Cursor, size: int, later: list[str], gaps: list[Gap],
               unread: int) -> Batch | None:
        """Nothing whole is left in the cursor's file: move to the next file, or wait."""
        if not later:  # the newest file: wait for more
            return Batch.move(self.stream, cur, gaps) if gaps else None
        if cur.offset < size:
            # an unterminated last line, and the node has moved to the next hour
            now = self.clock()
            if self._waiting_since is None:
                self._waiting_since = now
            if now - self._waiting_since < self.rotate_grace_s:
                return Batch.move(self.stream, cur, gaps) if gaps else None
            with open(self.stream.root / cur.file, "rb") as f:
                f.seek(cur.offset)
                partial = f.read(min(512, size - cur.offset))
            self._waiting_since = None
            return Batch.given_up(self.stream, cur, self._enter(later[0], gaps), gaps, partial,
                                  "unterminated last line of a rotated file")
        nxt = self._enter(later[0], gaps)
        return Batch.move(self.stream, nxt, gaps, unread=unread)

    def _read(self, cur: Cursor, size: int, gaps: list[Gap], unread: int) -> Batch | None:
        n = min(size - cur.offset, self.batch_max_bytes)
        fd = os.open(self.stream.root / cur.file, os.O_RDONLY)
        try:
            probed = probe_lines(fd, cur.offset, n) if self.defer_reads else None
            if probed is not None and len(probed[1]) >= FP_BYTES:
                want, tail = probed
                nxt = Cursor(cur.file, cur.inode, cur.offset + want, fingerprint_of(tail[-FP_BYTES:]))
                pending, fd = PendingRead(fd, cur.offset, want), -1  # the batch holds the file
                self.deferred_reads += 1
                return Batch(self.stream, cur.file, cur.offset, b"", nxt, gaps,
                             unread=unread - want, pending=pending)
            data = read_lines(fd, cur.offset, n)
        finally:
            if fd >= 0:
                os.close(fd)
        cut = data.rfind(b"\n") + 1
        if cut == 0:
            if n < self.batch_max_bytes:
                return None  # a partial line waiting for its newline
            # one line longer than a whole batch: skip it up to its end, as a reject
            end = line_start_at_or_after(self.stream.root / cur.file, cur.offset + n, size)
            if end >= size and not data.endswith(b"\n"):
                return None
            return Batch.given_up(self.stream, cur, Cursor(cur.file, cur.inode, end), gaps, data[:512],
                                  f"line over batch_max_bytes ({self.batch_max_bytes})",
                                  unread=unread - (end - cur.offset))
        if cut < len(data):
            data = data[:cut]
        if cut >= FP_BYTES or cur.offset == 0:
            fp = fingerprint_of(data[max(0, cut - FP_BYTES):cut])
        else:
            fp = fingerprint_at(self.stream.root / cur.file, cur.offset + cut) or 0
        nxt = Cursor(cur.file, cur.inode, cur.offset + cut, fp)
        return Batch(self.stream, cur.file, cur.offset, data, nxt, gaps, unread=unread - cut)

    def _skip_backlog(self, cur: Cursor, size: int, later: list[str]) -> tuple[Cursor, list[Gap]]:
        """Jump to the newest data, a line start about one batch before the end."""
        root = self.stream.root
        gaps = []
        last = later[-1] if later else cur.file
        last_size = size_of(root / last)
        target = line_start_at_or_after(root / last, max(0, last_size - self.batch_max_bytes), last_size)
        if later:
            gaps.append(Gap(cur.file, cur.offset, size, "backlog"))
            for f in later[:-1]:
                gaps.append(Gap(f, 0, size_of(root / f), "backlog"))
            if target > 0:
                gaps.append(Gap(last, 0, target, "backlog"))
        else:
            gaps.append(Gap(cur.file, cur.offset, target, "backlog"))
        self._passed.update(later)
        self._entered = last
        skipped = sum(g.end - g.start for g in gaps)
        log.warning(
            "event=backlog_skip stream=%s bytes=%d from=%s:%d to=%s:%d",
            self.stream.name,
            skipped,
            cur.file,
            cur.offset,
            last,
            target,
        )
        return Cursor(last, os.stat(root / last).st_ino, target), gaps
