"""The node's hour files: finding them, and reading whole lines from them.

Paths are `<stream>/hourly/YYYYMMDD/H`, `H` the UTC hour 0-23, not zero-padded; a file is
named by its path relative to the stream's `hourly` dir ("YYYYMMDD/H").
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Callable
from pathlib import Path

DAY = re.compile(r"^\d{8}$")
HOUR = re.compile(r"^(\d{1,2})(\.lz4)?$")


def hour_files(root: Path, from_day: str = "") -> list[str]:
    """Every hour file of a stream as "YYYYMMDD/H" (of the day `from_day` and later), oldest
    first."""
    out: list[tuple[str, int, str]] = []
    try:
        days = [d for d in os.listdir(root) if DAY.match(d) and d >= from_day]
    except FileNotFoundError:
        return []
    for day in days:
        try:
            names = os.listdir(root / day)
        except FileNotFoundError:
            continue
        for name in names:
            m = HOUR.match(name)
            if m and not m.group(2):
                out.append((day, int(m.group(1)), f"{day}/{name}"))
    out.sort()
    return [rel for _, _, rel in out]



class HourListing:
    """`hour_files(root)` kept between calls, for a tailer that asks before every batch.

    A node that keeps its files holds thousands of them (24 a day per stream), and listing
    them all before each batch cost 4 ms at 90 days and 20 ms at a year. So a day directory
    is listed again only when its modification time moved (a file was added, renamed or
    removed in it), or is too recent to trust: a file created within the same timestamp tick
    as the last listing would not move it. The two newest days are checked on every call,
    older ones once a second (an hour file that appears late in an old day is seen within a
    second). `keys` are the files' `hour_key`s, for bisection; `version` changes whenever the
    list does."""

    RACY_NS = 2_000_000_000
    OLD_DAYS_EVERY_NS = 1_000_000_000

    def __init__(self, root: Path, clock_ns: Callable[[], int] = time.time_ns) -> None:
        self.root = root
        self.clock_ns = clock_ns  # wall clock, as file times are
        self.files: list[str] = []
        self.keys: list[tuple[str, int]] = []
        self.version = 0
        self._root_mtime: int | None = None
        self._day_names: list[str] = []
        self._days: dict[str, tuple[int, list[tuple[int, str]]]] = {}  # day: (mtime, hours)
        self._old_days_at = 0

    def refresh(self) -> list[str]:
        now = self.clock_ns()
        try:
            st = os.stat(self.root)
            changed = False
            if st.st_mtime_ns != self._root_mtime or now - st.st_mtime_ns < self.RACY_NS:
                names = sorted(d for d in os.listdir(self.root) if DAY.match(d))
                self._root_mtime = st.st_mtime_ns
                if names != self._day_names:
                    self._day_names = names
                    self._days = {d: v for d, v in self._days.items() if d in names}
                    changed = True
        except FileNotFoundError:
            names, changed = [], bool(self._day_names)
            self._day_names, self._days, self._root_mtime = [], {}, None
        days = self._day_names
        if now - self._old_days_at >= self.OLD_DAYS_EVERY_NS:
            self._old_days_at = now
        else:
            days = days[-2:]
        for day in days:
            changed = self._refresh_day(day, now) or changed
        if changed:
            self.files = [rel for day in self._day_names if day in self._days
                          for _, rel in self._days[day][1]]
            self.keys = [hour_key(f) for f in self.files]
            self.version += 1
        return self.files

    def _refresh_day(self, day: str, now: int) -> bool:
        """List one day again if it may have changed; whether its hours changed."""
        cached = self._days.get(day)
        try:
            mtime = os.stat(self.root / day).st_mtime_ns
            if cached is not None and cached[0] == mtime and now - mtime >= self.RACY_NS:
                return False
            names = os.listdir(self.root / day)
        except FileNotFoundError:
            return self._days.pop(day, None) is not None
        hours = sorted((int(m.group(1)), f"{day}/{name}") for name in names
                       if (m := HOUR.match(name)) and not m.group(2))
        self._days[day] = (mtime, hours)
        return cached is None or cached[1] != hours

def stat_or_none(path: Path) -> os.stat_result | None:
    try:
        return os.stat(path)
    except FileNotFoundError:
        return None


TAIL_PROBE = 64 << 10


def probe_lines(fd: int, offset: int, n: int) -> tuple[int, bytes] | None:
    """Where the whole lines in the `n` bytes at `offset` end, from a small read of the range's
    end: (their length, the bytes of that read up to the last newline); None when the range is
    not longer than that read or its end holds no newline."""
    if n <= TAIL_PROBE:
        return None
    end = os.pread(fd, TAIL_PROBE, offset + n - TAIL_PROBE)
    nl = end.rfind(b"\n")
    if nl < 0 or len(end) < TAIL_PROBE:
        return None
    return n - TAIL_PROBE + nl + 1, end[:nl + 1]


def read_lines(fd: int, offset: int, n: int) -> bytes:
    """The whole lines in the `n` bytes at `offset`, read without a copy where possible: the last
    newline is found in a small read of the range's end, then exactly the lines are read (slicing
    a 64 MiB read costs a second 64 MiB allocation and copy). Without a newline in that end, the
    range is read whole and the caller cuts it."""
    probed = probe_lines(fd, offset, n)
    if probed is not None:
        want = probed[0]
        data = os.pread(fd, want, offset)
        if len(data) == want:
            return data
    return os.pread(fd, n, offset)


def line_start_at_or_after(path: Path, pos: int, size: int) -> int:
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


def line_start_before(path: Path, size: int) -> int:
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


def hour_key(rel: str) -> tuple[str, int]:
    day, hour = rel.split("/")
    return day, int(hour)


def size_of(path: Path) -> int:
    st = stat_or_none(path)
    return st.st_size if st else 0
