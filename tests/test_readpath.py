"""The tail's read of whole lines, and the allocator tuning for large batches."""

from __future__ import annotations

import os
import platform
import subprocess
import sys
from pathlib import Path

import pytest

from etl.hourfiles import TAIL_PROBE, read_lines
from etl.malloc import TRIM_THRESHOLD, tune


def _read(path: Path, offset: int, n: int) -> bytes:
    fd = os.open(path, os.O_RDONLY)
    try:
        return read_lines(fd, offset, n)
    finally:
        os.close(fd)


def test_reads_exactly_the_whole_lines_of_a_large_range(tmp_path: Path) -> None:
    line = b'{"a":"' + b"x" * 90 + b'"}\n'
    body = line * 5000 + b'{"partial'
    path = tmp_path / "f"
    path.write_bytes(body)
    got = _read(path, len(line), len(body) - len(line))
    assert got == line * 4999  # from the second line, without the partial one


def test_a_line_longer_than_the_probe_is_read_whole_for_the_caller_to_cut(tmp_path: Path) -> None:
    long_line = b"y" * (TAIL_PROBE * 2) + b"\n"
    body = b"short\n" + long_line[:-1]  # the long line has no newline yet
    path = tmp_path / "f"
    path.write_bytes(body)
    got = _read(path, 0, len(body))
    assert got == body  # no newline in the probe: everything, the caller cuts at b"short\n"


def test_small_ranges_and_whole_files_read_as_they_are(tmp_path: Path) -> None:
    path = tmp_path / "f"
    path.write_bytes(b"a\n" * (TAIL_PROBE // 2 + 10))
    size = path.stat().st_size
    assert _read(path, 0, size) == path.read_bytes()
    assert _read(path, 0, 4) == b"a\na\n"  # below the probe size: one read


@pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc",
                    reason="the tuning applies to glibc only")
def test_malloc_tuning_takes_effect_on_glibc() -> None:
    assert tune() is True
    assert tune() is True  # once per process; calling again is harmless


RELIEVE = """
import etl.malloc as m
assert m.tune()
def rss():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096
bufs = [b"x" * (8 << 20) for _ in range(96)]  # 96 buffers of 8 MiB, written
del bufs[::2]  # every other one freed: 384 MiB free between live buffers
before = rss()
print(m.relieve(), before - rss(), m.relieve())
again = [b"y" * (8 << 20) for _ in range(40)]  # 320 MiB of the freed room written again
print(m.relieve())
del again
print(m.relieve())
"""


@pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc",
                    reason="the tuning applies to glibc only")
def test_freed_memory_between_live_buffers_goes_back_to_the_kernel() -> None:
    """glibc keeps memory freed between live buffers resident (it trims only the heap's top);
    `relieve` gives it back once more than TRIM_THRESHOLD is free, then has nothing to do until
    that much more has been freed."""
    out = subprocess.run([sys.executable, "-c", RELIEVE], capture_output=True, text=True, check=True,
                         cwd=Path(__file__).resolve().parent.parent)
    trimmed, released, again, reused, freed = out.stdout.split()
    assert trimmed == "True" and again == "False"
    assert int(released) > TRIM_THRESHOLD // 2  # most of the 384 MiB
    # written again, those pages are resident again: freed once more, they are given back again
    assert reused == "False" and freed == "True"
