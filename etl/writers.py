"""The store's write transactions in flight, for the lake's sealer.

A unit that writes rows for an hour the lake has a `lake_hours` row for marks that row dirty
in its own transaction, counting one more in its `marks`, and the sealer's transaction counts
there too: whichever writes second fails with a conflict and is tried again, so no row slips
past a seal. An hour sealed for the first time has no row to conflict on until the sealer
records it; a unit whose transaction began before that record would mark nothing. So the
sealer records the hours it is about to seal first, then waits (`wait_older`) for the
transactions begun before the record to end: every one after it sees the record. Like a
grace period in read-copy-update: writers never wait, the sealer waits for at most the
commits in flight."""

from __future__ import annotations

import threading
from collections import Counter


class Writers:
    """Counts the write transactions open, by the epoch each began in."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._epoch = 0
        self._open: Counter[int] = Counter()
        self.waiting = 0  # sealers in `wait_older` (tests wait on it)

    def begin(self) -> int:
        """Before a write transaction's BEGIN; returns the token for `end`."""
        with self._cond:
            self._open[self._epoch] += 1
            return self._epoch

    def end(self, token: int) -> None:
        """After its COMMIT or ROLLBACK."""
        with self._cond:
            self._open[token] -= 1
            if not self._open[token]:
                del self._open[token]
            self._cond.notify_all()

    def open(self) -> int:
        """How many write transactions are open."""
        with self._cond:
            return sum(self._open.values())

    def wait_older(self, timeout: float) -> bool:
        """Wait until every write transaction begun before this call has ended; False when
        `timeout` (seconds) passed first."""
        with self._cond:
            self._epoch += 1
            mine = self._epoch
            self.waiting += 1
            self._cond.notify_all()
            try:
                return self._cond.wait_for(lambda: not any(e < mine for e in self._open), timeout)
            finally:
                self.waiting -= 1

    def wait_for_waiter(self, timeout: float) -> bool:
        """Wait until a sealer is in `wait_older` (for tests)."""
        with self._cond:
            return self._cond.wait_for(lambda: self.waiting > 0, timeout)
