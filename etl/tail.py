"""Find the node's streams and read only the bytes not read before, line-aligned.

A stream is one directory of hourly files (`<stream>/hourly/YYYYMMDD/H`). Its cursor
`(file, inode, offset)` says where the next batch starts; the store saves it in the
same transaction as the rows it produced.
"""

from __future__ import annotations

import logging
import os
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from etl.nodefiles import FP_BYTES, EmptyIndex, FileIndex, fingerprint_at, fingerprint_of

log = logging.getLogger("nodetap.tail")

# directory name -> (kind, variant)
STREAM_DIRS: dict[str, tuple[str, str]] = {
    "node_order_statuses": ("orders", "plain"),
    "node_order_statuses_by_block": ("orders", "by_block"),
    "node_order_statuses_streaming": ("orders", "streaming"),
    "node_fills": ("fills", "plain"),
    "node_fills_by_block": ("fills", "by_block"),
    "node_fills_streaming": ("fills", "streaming"),
    "node_trades": ("trades", "plain"),
}
_DAY = re.compile(r"^\d{8}$")
_HOUR = re.compile(r"^(\d{1,2})(\.lz4)?$")


@dataclass(frozen=True)
class Stream:
    name: str  # directory name, e.g. node_fills_by_block
    kind: str  # orders | fills | trades
    variant: str  # plain | by_block | streaming
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
    # backlog | missing: bytes not read; truncated | replaced | rewritten | overlap: the file
    # is read again from its start, and its rows are checked against the stored ones
    reason: str


# gap reasons after which a file is re-read from 0 with identity checks (etl/dedup.py)
REREAD = ("truncated", "replaced", "rewritten", "overlap")


@dataclass
class Batch:
    stream: Stream
    file: str
    start: int  # offset of data[0] in file
    data: bytes  # whole lines only
    cursor: Cursor  # where the next batch starts
    gaps: list[Gap] = field(default_factory=list)
    dropped: bytes = b""  # head of a line given up on: unterminated at rotation, or too long
    dropped_reason: str = ""
    unread: int = 0  # bytes left behind the batch, this file and later ones


_PREFERENCE = {"streaming": 0, "by_block": 1, "plain": 2}


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
    if ignored:
        log.warning(
            "event=streams_ignored streams=%s reason=one_variant_per_kind (set `streams` to choose)",
            ",".join(ignored),
        )
    return [s for s in present if s in chosen.values()]


def hour_files(root: Path) -> list[str]:
    """Every hour file of a stream as "YYYYMMDD/H", oldest first."""
    out: list[tuple[str, int, str]] = []
    try:
        days = [d for d in os.listdir(root) if _DAY.match(d)]
    except FileNotFoundError:
        return []
    for day in days:
        try:
            names = os.listdir(root / day)
        except FileNotFoundError:
            continue
        for name in names:
            m = _HOUR.match(name)
            if m and not m.group(2):
                out.append((day, int(m.group(1)), f"{day}/{name}"))
    out.sort()
    return [rel for _, _, rel in out]


def _stat(path: Path) -> os.stat_result | None:
    try:
        return os.stat(path)
    except FileNotFoundError:
        return None


TAIL_PROBE = 64 << 10


def _read_lines(fd: int, offset: int, n: int) -> bytes:
    """The whole lines in the `n` bytes at `offset`, read without a copy where possible: the last
    newline is found in a small read of the range's end, then exactly the lines are read (slicing
    a 64 MiB read costs a second 64 MiB allocation and copy). Without a newline in that end, the
    range is read whole and the caller cuts it."""
    if n > TAIL_PROBE:
        end = os.pread(fd, TAIL_PROBE, offset + n - TAIL_PROBE)
        nl = end.rfind(b"\n")
        if nl >= 0 and len(end) == TAIL_PROBE:
            want = n - TAIL_PROBE + nl + 1
            data = os.pread(fd, want, offset)
            if len(data) == want:
                return data
    return os.pread(fd, n, offset)


def _line_start_at_or_after(path: Path, pos: int, size: int) -> int:
    """The first line start at or after `pos` (or `size` when there is none)."""
    if pos <= 0:
        return 0
    with open(path, "rb") as f:
        base = pos - 1  # a line starts at pos when the byte before it is a newline
        f.seek(base)
        while base < size:
            chunk = f.read(1 << 16)
            if not chunk:
                break
            i = chunk.find(b"\n")
            if i >= 0:
                return min(base + i + 1, size)
            base += len(chunk)
    return size


def _line_start_before(path: Path, size: int) -> int:
    """The offset just after the last newline of the first `size` bytes (0 if none)."""
    with open(path, "rb") as f:
        end = size
        while end > 0:
            start = max(0, end - (1 << 16))
            f.seek(start)
            chunk = f.read(end - start)
            i = chunk.rfind(b"\n")
            if i >= 0:
                return start + i + 1
            end = start
    return 0


def initial_cursor(stream: Stream, start_from: str) -> Cursor:
    """Where a stream with no stored cursor starts."""
    files = hour_files(stream.root)
    if not files:
        return Cursor("", 0, 0)
    if start_from == "end":
        rel = files[-1]
        st = os.stat(stream.root / rel)
        return Cursor(rel, st.st_ino, _line_start_before(stream.root / rel, st.st_size))
    if start_from == "start":
        rel = files[0]
    else:
        day, _, hour = start_from.partition("/")
        if not _DAY.match(day) or (hour and not hour.isdigit()):
            raise ValueError(f"start_from must be end, start or YYYYMMDD[/H], not {start_from!r}")
        key = (day, int(hour or 0))
        later = [r for r in files if (r.split("/")[0], int(r.split("/")[1])) >= key]
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
        self.max_backlog_bytes = max_backlog_bytes
        self.rotate_grace_s = rotate_grace_s
        self.clock = clock
        self.index: FileIndex = index or EmptyIndex()
        self._waiting_since: float | None = None  # partial tail seen with a newer file present
        self._entered = ""  # the file whose stored cursor was last consulted
        self._passed: set[str] = set()  # files this tailer has been in or skipped
        self._settled: set[str] = set()  # older files known to be read (or before the floor)

    def unread_after(self, cur: Cursor) -> int:
        """Bytes the node has written after `cur`: the rest of its file and all later files."""
        files = hour_files(self.stream.root)
        later = [f for f in files if not cur.file or _key(f) > _key(cur.file)]
        rest = max(0, _size(self.stream.root / cur.file) - cur.offset) if cur.file else 0
        return rest + sum(_size(self.stream.root / f) for f in later)

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
        st = _stat(self.stream.root / rel)
        return Cursor(rel, st.st_ino if st else 0, 0)

    def _stray(self, files: list[str], current: str) -> str | None:
        """An hour file older than `current` that appeared late and nothing has read."""
        floor = _key(self.index.floor) if self.index.floor else None
        for f in files:
            if _key(f) >= _key(current):
                return None
            if f in self._passed or f in self._settled:
                continue
            if (floor is not None and _key(f) < floor) or self.index.get(f) is not None:
                self._settled.add(f)
                continue
            return f
        return None

    def next_batch(self, cur: Cursor) -> Batch | None:
        """The next batch after `cur`, or None when there is nothing new to commit."""
        gaps: list[Gap] = []
        root = self.stream.root
        files = hour_files(root)
        if not cur.file:
            if not files:
                return None
            cur = self._enter(files[0], gaps)
        elif cur.file != self._entered:
            cur = self._enter(cur.file, gaps, at=cur)
        stray = self._stray(files, cur.file)
        if stray is not None:
            log.warning("event=file_out_of_order stream=%s file=%s current=%s",
                        self.stream.name, stray, cur.file)
            nxt = self._enter(stray, gaps)
            return Batch(self.stream, nxt.file, nxt.offset, b"", nxt, gaps)
        for _ in range(len(files) + 2):
            path = root / cur.file
            st = _stat(path)
            later = [f for f in files if _key(f) > _key(cur.file)]
            if st is None:
                # the file was deleted under us: record it, move on to the next one
                if not later:
                    return None
                gaps.append(Gap(cur.file, cur.offset, cur.offset, "missing"))
                log.warning("event=file_missing stream=%s file=%s", self.stream.name, cur.file)
                cur = self._enter(later[0], gaps)
                continue
            reason = ""
            if cur.inode and st.st_ino != cur.inode:
                reason = "replaced"
            elif st.st_size < cur.offset:
                reason = "truncated"
            elif cur.fp and cur.offset and fingerprint_at(path, cur.offset) != cur.fp:
                reason = "rewritten"  # same inode, not shorter, other bytes before the cursor
            if reason:
                gaps.append(Gap(cur.file, cur.offset, cur.offset, reason))
                log.warning("event=file_%s stream=%s file=%s offset=%d size=%d (read again from "
                            "its start; rows already stored are not stored twice)", reason,
                            self.stream.name, cur.file, cur.offset, st.st_size)
                cur = Cursor(cur.file, st.st_ino, 0)
            elif not cur.inode:
                cur = Cursor(cur.file, st.st_ino, cur.offset, cur.fp)
            unread = st.st_size - cur.offset + sum(_size(root / f) for f in later)
            if self.max_backlog_bytes is not None and unread > self.max_backlog_bytes:
                cur, skipped = self._skip_backlog(cur, st.st_size, later)
                gaps += skipped
                continue
            if cur.offset < st.st_size:
                batch = self._read(cur, st.st_size, gaps, unread)
                if batch is not None:
                    self._waiting_since = None
                    return batch
            # nothing whole left in this file
            if not later:
                break
            if cur.offset < st.st_size:
                # an unterminated last line, and the node has moved to the next hour
                now = self.clock()
                if self._waiting_since is None:
                    self._waiting_since = now
                if now - self._waiting_since < self.rotate_grace_s:
                    break
                with open(path, "rb") as f:
                    f.seek(cur.offset)
                    partial = f.read(min(512, st.st_size - cur.offset))
                self._waiting_since = None
                left = cur.file
                nxt = self._enter(later[0], gaps)
                return Batch(
                    self.stream,
                    left,
                    cur.offset,
                    b"",
                    nxt,
                    gaps,
                    partial,
                    "unterminated last line of a rotated file",
                )
            cur = self._enter(later[0], gaps)
            return Batch(self.stream, cur.file, cur.offset, b"", cur, gaps, unread=unread)
        if gaps:
            return Batch(self.stream, cur.file, cur.offset, b"", cur, gaps)
        return None

    def _read(self, cur: Cursor, size: int, gaps: list[Gap], unread: int) -> Batch | None:
        n = min(size - cur.offset, self.batch_max_bytes)
        fd = os.open(self.stream.root / cur.file, os.O_RDONLY)
        try:
            data = _read_lines(fd, cur.offset, n)
        finally:
            os.close(fd)
        cut = data.rfind(b"\n") + 1
        if cut == 0:
            if n < self.batch_max_bytes:
                return None  # a partial line waiting for its newline
            # one line longer than a whole batch: skip it up to its end, as a reject
            end = _line_start_at_or_after(self.stream.root / cur.file, cur.offset + n, size)
            if end >= size and not data.endswith(b"\n"):
                return None
            nxt = Cursor(cur.file, cur.inode, end)
            return Batch(
                self.stream,
                cur.file,
                cur.offset,
                b"",
                nxt,
                gaps,
                data[:512],
                f"line over batch_max_bytes ({self.batch_max_bytes})",
                unread=unread - (end - cur.offset),
            )
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
        last_size = _size(root / last)
        target = _line_start_at_or_after(root / last, max(0, last_size - self.batch_max_bytes), last_size)
        if later:
            gaps.append(Gap(cur.file, cur.offset, size, "backlog"))
            for f in later[:-1]:
                gaps.append(Gap(f, 0, _size(root / f), "backlog"))
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


def _key(rel: str) -> tuple[str, int]:
    day, hour = rel.split("/")
    return day, int(hour)


def _size(path: Path) -> int:
    st = _stat(path)
    return st.st_size if st else 0
