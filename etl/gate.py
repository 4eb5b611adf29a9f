"""Order statuses give way to fills and trades when both want the same cores.

Lanes run concurrently, but on two cores a lane catching up on order statuses (hundreds of
MB/s of JSON) takes the CPU that a fills lane needs to publish its next trades within one
batch. So the fills and trades lanes are *urgent* while they are caught up: while one of them
is processing, the order-status lane waits at its next checkpoint (before parsing a unit and
before committing one), and between the slices of a batch's byte scan (etl/bytescan.py),
the scan's half of the work a unit of order statuses takes to pre-filter. It waits at most
`max_wait_s` per checkpoint (the scan's checkpoints of one unit: that in all), so a busy fills
lane slows it down but never stops it: under overload no lane starves another.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

MAX_WAIT_S = 0.25


class Gate:
    def __init__(self, max_wait_s: float = MAX_WAIT_S) -> None:
        self.max_wait_s = max_wait_s
        self._cond = threading.Condition()
        self._urgent = 0
        self.urgent_lanes = 0  # lanes that may be urgent (`Lane`s of fills and trades)
        self.waiting = 0  # bulk lanes waiting now
        self.waits = 0  # checkpoints at which a bulk lane gave way
        self.waited_s = 0.0

    @contextmanager
    def urgent(self) -> Iterator[None]:
        """Bulk lanes give way while this block runs."""
        with self._cond:
            self._urgent += 1
        try:
            yield
        finally:
            with self._cond:
                self._urgent -= 1
                if not self._urgent:
                    self._cond.notify_all()

    def give_way(self, max_wait_s: float | None = None) -> float:
        """Called by a bulk lane at a checkpoint: wait while an urgent lane is busy (at most
        `max_wait_s`, by default the gate's); returns the seconds waited."""
        if not self._urgent:  # the common case, without the lock
            return 0.0
        t0 = time.perf_counter()
        with self._cond:
            self.waiting += 1
            self._cond.wait_for(lambda: not self._urgent,
                                timeout=self.max_wait_s if max_wait_s is None else max_wait_s)
            self.waiting -= 1
            self.waits += 1
            waited = time.perf_counter() - t0
            self.waited_s += waited
        return waited

    def budget(self) -> Budget | None:
        """Checkpoints inside one unit's parse (between slices of the byte scan), which wait
        `max_wait_s` in all; None where no lane may be urgent (the scan then runs in one slice
        per core: ~3 % less CPU)."""
        return Budget(self, self.max_wait_s) if self.urgent_lanes else None


class Budget:
    """`Gate.give_way` for the checkpoints of one unit's work, on any of its threads: together
    they wait at most `max_wait_s`, so that a bulk lane's unit is slowed, never stopped."""

    def __init__(self, gate: Gate, max_wait_s: float) -> None:
        self.gate = gate
        self.left = max_wait_s
        self._lock = threading.Lock()

    def __call__(self) -> None:
        left = self.left
        if left > 0:
            waited = self.gate.give_way(left)  # returns at once, without a lock, when none is urgent
            if waited:
                with self._lock:
                    self.left -= waited
