"""The `event=rejects` log line of one stream, rate-limited: a node writing broken lines
breaks some in most batches, and a line per batch (several a second) buries every other
event. The exact counts are in the status and the metrics, and each line in `rejects`."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime

log = logging.getLogger("nodetap.lanes")

EVERY_S = 60.0  # at most one line a minute per stream, after the first


class RejectsLog:
    """The first batch with rejects is logged at once; later ones are counted, and logged as
    one line (`count=` since `since=`) once `every_s` has passed since the last line, or at
    `flush()` (shutdown), so that the lines' counts add up to the stream's rejects."""

    def __init__(self, stream: str, clock: Callable[[], float] = time.monotonic,
                 wall: Callable[[], float] = time.time, every_s: float = EVERY_S) -> None:
        self.stream = stream
        self.clock = clock
        self.wall = wall
        self.every_s = every_s
        self.logged_at: float | None = None
        self.count = 0
        self.since = 0.0
        self.file = ""
        self.first_reason = ""
        self._lock = threading.Lock()  # the lane's thread adds; shutdown flushes from another

    def add(self, file: str, count: int, first_reason: str) -> None:
        if not count:
            return
        with self._lock:
            if not self.count:
                self.since, self.first_reason = self.wall(), first_reason
            self.count += count
            self.file = file
            if self.logged_at is None or self.clock() - self.logged_at >= self.every_s:
                self._log()

    def flush(self) -> None:
        """Log the rejects counted since the last line, if any."""
        with self._lock:
            self._log()

    def _log(self) -> None:
        if not self.count:
            return
        since = datetime.fromtimestamp(self.since, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        log.warning("event=rejects stream=%s count=%d since=%s file=%s first_reason=%r",
                    self.stream, self.count, since, self.file, self.first_reason)
        self.logged_at = self.clock()
        self.count = 0
