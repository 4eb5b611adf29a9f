"""The node's hour files: finding them, and reading whole lines from them.

Paths are `<stream>/hourly/YYYYMMDD/H`, `H` the UTC hour 0-23, not zero-padded; a file is
named by its path relative to the stream's `hourly` dir ("YYYYMMDD/H").
"""

from __future__ import annotations

import os
import re
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


def stat_or_none(path: Path) -> os.stat_result | None:
    try:
        return os.stat(path)
    except FileNotFoundError:
        return None


TAIL_PROBE = 64 << 10


def read_lines(fd: int, offset: int, n: int) -> bytes:
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
