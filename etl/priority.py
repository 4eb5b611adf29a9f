"""Order statuses take the CPU only when fills, trades and the API leave it.

The gate (etl/gate.py) makes the order-status lane wait at its checkpoints while an urgent
lane is busy; between checkpoints, the kernel decides. So the threads that decode and store
order statuses run at a lower priority (a higher nice value, Linux's per-thread niceness):
when a fills batch or a WebSocket send wants a core, the kernel gives it at once, and when
nothing else wants the cores, order statuses get all of them. Raising niceness needs no
privilege; where the system refuses it, nothing changes.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
from collections.abc import Iterator

import polars as pl

log = logging.getLogger("nodetap.priority")

BULK_NICENESS = 10  # CFS weight 110 against 1024 at nice 0: about 10 % of a contended core
_TASKS = "/proc/self/task"


def lower_thread(tid: int | None = None, niceness: int = BULK_NICENESS) -> None:
    """Lower one thread's priority (the calling thread's by default).

    A thread starts at its creator's priority, so Polars' thread pool, shared by every lane,
    is started first (if it was not yet): it must not inherit the lower priority."""
    if not hasattr(os, "setpriority"):  # pragma: no cover - not POSIX
        return
    pl.thread_pool_size()
    tid = threading.get_native_id() if tid is None else tid
    try:
        current = os.getpriority(os.PRIO_PROCESS, tid)
        if current < niceness:
            os.setpriority(os.PRIO_PROCESS, tid, niceness)
    except OSError as err:  # the thread ended, or the system refuses: run at normal priority
        log.debug("event=niceness_unchanged tid=%d error=%r", tid, err)


def _threads() -> set[int]:
    try:
        return {int(t) for t in os.listdir(_TASKS)}
    except OSError:  # pragma: no cover - no /proc
        return set()


@contextlib.contextmanager
def lowering_new_threads() -> Iterator[None]:
    """Lower the priority of every thread the block starts (e.g. a DuckDB instance's
    workers). The caller holds a lock that keeps other threads of this process from being
    started meanwhile, or accepts that they are lowered too."""
    before = _threads()
    yield
    for tid in _threads() - before:
        lower_thread(tid)

