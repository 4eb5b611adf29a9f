"""Reuse the pages of large buffers from batch to batch (glibc's allocator).

A lane that is behind reads 64 MiB per batch and makes a few buffers of that size from it
(the bytes read, a newline mask, the pre-filtered lines). glibc serves a request that large
with a fresh `mmap` each time: over its dynamic mmap threshold (at most 32 MiB), or too big
for a thread's arena (64 MiB heaps). The kernel then zero-fills every page at first touch and
unmaps them at free. Measured on the project's 2-core machine: `os.pread` of 64 MiB costs
35 ms of CPU that way, and 9 ms when the pages are reused (docs/benchmarks.md).

`tune()` sets, once per process and before any lane thread starts:
- one arena (`M_ARENA_MAX`), so that a lane thread's large request is served from the main
  heap like the main thread's (Polars, Arrow and DuckDB use their own allocators; the glibc
  heap holds Python's and numpy's buffers);
- an mmap threshold of `MMAP_THRESHOLD` (256 MiB), above any batch;
- a trim threshold of `TRIM_THRESHOLD` (256 MiB): free memory at the top of the heap up to
  that size is kept for the next batch instead of being returned to the kernel. An
  order-status lane that pre-filters holds three batches at once (two parsing, one being
  read): with 128 MiB, half its 64 MiB reads still mapped fresh pages (16,384 page faults,
  35 against 9 ms of CPU); with 256 MiB, only the first few do.

glibc trims only the heap's top: freed buffers between live ones stay resident. Order statuses
in block envelopes, pre-filtered two units at a time while most lines pass the rules, left
400–670 MiB free in the heap and a peak RSS of 1.25 GB. So `relieve()`, called by the parse
workers after each unit, gives the freed pages back to the kernel (`malloc_trim`) once more
than `TRIM_THRESHOLD` has been freed since the last time, and memory stays bounded: the heap
holds the live buffers (bounded per lane, etl/lanes.py) plus at most `TRIM_THRESHOLD` of freed
pages still resident, give or take a unit's worth between two calls. Elsewhere than glibc
(musl, macOS) this does nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
import logging
import platform
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

log = logging.getLogger("nodetap.malloc")

M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
M_ARENA_MAX = -8
MMAP_THRESHOLD = 256 << 20
TRIM_THRESHOLD = 256 << 20

_done = False


class _MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in (
        "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks",
        "keepcost")]


_heap: tuple[Any, Any] | None = None  # glibc's mallinfo2 and malloc_trim, once `tune` took effect
_relieve_lock = threading.Lock()
_given_back = 0  # free bytes in the heap at the last trim, or the fewest since (reused: resident again)


def relieve() -> bool:
    """Give the heap's free pages back to the kernel when more than `TRIM_THRESHOLD` has been freed
    since they last were; True when it did. The free chunks stay the heap's (glibc counts them free
    after the trim too), so what counts is how far the free bytes grew past their low since the
    last trim. A few microseconds when there is nothing to give back."""
    global _given_back
    if _heap is None:
        return False
    mallinfo2, malloc_trim = _heap
    with _relieve_lock:
        free = mallinfo2().fordblks
        _given_back = min(_given_back, free)
        if free - _given_back <= TRIM_THRESHOLD:
            return False
        malloc_trim(0)
        _given_back = mallinfo2().fordblks
    return True


def tune() -> bool:
    """Apply the settings above; True where they took effect (glibc)."""
    global _done
    if _done:
        return True
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    ok = all(mallopt(param, value) == 1 for param, value in (
        (M_ARENA_MAX, 1), (M_MMAP_THRESHOLD, MMAP_THRESHOLD), (M_TRIM_THRESHOLD, TRIM_THRESHOLD)))
    if not ok:
        log.info("event=malloc_tune_refused (glibc kept its defaults)")
        return False
    global _heap
    try:
        mallinfo2, malloc_trim = libc.mallinfo2, libc.malloc_trim  # glibc 2.33 and later
    except AttributeError:
        mallinfo2 = None
    if mallinfo2 is not None:
        mallinfo2.restype = _MallInfo2
        mallinfo2.argtypes = []
        malloc_trim.restype = ctypes.c_int
        malloc_trim.argtypes = [ctypes.c_size_t]
        _heap = (mallinfo2, malloc_trim)
    _done = True
    return True


_frozen = 0
_frozen_lock = threading.Lock()


@contextmanager
def startup_frozen() -> Iterator[None]:
    """Python's cycle collector skips every object made so far: once started, nodetap holds
    ~130K objects from start-up (modules, numba's compiled scan), which each full collection
    walked again, 0.1 s of a 1.8 s catch-up run (docs/benchmarks.md). Garbage is collected
    first; the objects are handed back when the last such context ends (servers in one process
    may overlap), so that the interpreter's shutdown collects them as usual."""
    global _frozen
    with _frozen_lock:
        _frozen += 1
        if _frozen == 1:
            gc.collect()
            gc.freeze()
    try:
        yield
    finally:
        with _frozen_lock:
            _frozen -= 1
            if _frozen == 0:
                gc.unfreeze()
