"""A full disk pauses ingestion instead of ending it.

A commit that fails for lack of space has stored nothing (DuckDB ends the transaction;
the cursor did not move), so the batch is kept in memory and committed again once space
is back. When the failure hit DuckDB's checkpoint, DuckDB invalidates the database: it is
opened again (the WAL replayed) once there is space, and a batch that turns out to have
reached the WAL is not stored twice (Store.commit checks its cursor).

One error line names the volume, the database and the settings concerned; a line
every `LOG_EVERY_S` while it lasts; one when it is over. DuckDB's WAL grows up to
`checkpoint_threshold` before it is folded into the database file: on a volume with less
free space than that, the threshold is lowered to a share of the free space.
"""

from __future__ import annotations

import errno
import logging
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

import duckdb

from etl.config import memory_size

if TYPE_CHECKING:
    from etl.store import Store

log = logging.getLogger("nodetap.disk")

T = TypeVar("T")
RETRY_S = 2.0
LOG_EVERY_S = 60.0
WAL_SHARE = 8  # the WAL may take at most 1/WAL_SHARE of the free space
MIN_THRESHOLD = 1 << 20  # the least `checkpoint_threshold` allows (etl/config.py)


class DiskFullError(OSError):
    """Ingestion stopped while waiting for disk space."""


def is_disk_full(err: BaseException) -> bool:
    """Whether an error (or one it was raised from) is a full disk."""
    seen: BaseException | None = err
    while seen is not None:
        if isinstance(seen, OSError) and seen.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        if "No space left on device" in str(seen) or "Disk quota exceeded" in str(seen):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def volume_of(path: Path) -> Path:
    """The mount point holding `path`."""
    p = path.resolve()
    while not p.exists():
        p = p.parent
    while not os.path.ismount(p):
        p = p.parent
    return p


def free_bytes(path: Path) -> int:
    st = os.statvfs(volume_of(path))
    return st.f_bavail * st.f_frsize


def fitting_threshold(configured: str, free: int) -> int:
    """The WAL checkpoint threshold to use: the configured one, or less when space is short."""
    return max(MIN_THRESHOLD, min(memory_size(configured), free // WAL_SHARE))


class DiskAlarm:
    """What the guards of one database (one per lane) share: one `disk_full` error for the
    pipeline, not one per lane, and one `disk_space_back`."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.last_log = float("-inf")
        self.raised = False


class DiskGuard:
    """Runs commits; a full disk pauses and retries them until space is back or `stop`."""

    def __init__(self, store: Store, stop: threading.Event, *, retry_s: float = RETRY_S,
                 clock: Callable[[], float] = time.monotonic, alarm: DiskAlarm | None = None) -> None:
        self.alarm = alarm or DiskAlarm()
        self.store, self.db, self.configured = store, store.path, store.checkpoint_threshold
        self.stop, self.retry_s, self.clock = stop, retry_s, clock
        self.threshold = 0
        self.paused_s = 0.0  # total, for status and tests
        self.pauses = 0
        self._calls = 0
        self._logged = 0
        self.adapt()

    def adapt(self) -> None:
        """Set DuckDB's checkpoint threshold for the free space now (when it changed much)."""
        want = fitting_threshold(self.configured, free_bytes(self.db))
        if self.threshold and abs(want - self.threshold) * 4 < self.threshold:
            return
        if want < memory_size(self.configured) and want != self._logged:
            self._logged = want
            log.info("event=wal_threshold bytes=%d configured=%s free=%d volume=%s", want,
                     self.configured, free_bytes(self.db), volume_of(self.db))
        self.store.con.execute(f"SET checkpoint_threshold = '{want}B'")
        self.threshold = want

    def _recover(self) -> None:
        """Reopen an invalidated database (when there is room for it) and fit the WAL."""
        try:
            if not self.store.healthy():
                self.store.reconnect()
                self.threshold = 0
            self.adapt()
        except duckdb.Error as err:
            if not is_disk_full(err):
                raise

    def run(self, commit: Callable[[], T]) -> T:
        """`commit()`, retried while the disk is full."""
        started = None
        self._calls += 1
        if self._calls % 64 == 0:  # the database grows: keep the WAL within the free space
            self.adapt()
        while True:
            try:
                out = commit()
            except Exception as err:
                if not self.store.healthy() and not is_disk_full(err):
                    # another lane reopened the database under this one: on the new connection
                    self._recover()
                    continue
                if not is_disk_full(err):
                    raise
                now = self.clock()
                if started is None:
                    started = now
                    self.pauses += 1
                with self.alarm.lock:
                    announce = now - self.alarm.last_log >= LOG_EVERY_S
                    if announce:
                        self.alarm.last_log, self.alarm.raised = now, True
                if announce:
                    log.error(
                        "event=disk_full volume=%s db=%s free=%d waited_s=%.0f error=%r "
                        "(ingestion paused, nothing lost: it retries every %.0f s and resumes "
                        "when space is freed on %s, or move `db`/`lake_dir` to a larger volume; "
                        "`checkpoint_threshold` is lowered to fit)", volume_of(self.db), self.db,
                        free_bytes(self.db), now - started, str(err).splitlines()[0][:200],
                        self.retry_s, volume_of(self.db))
                if self.stop.wait(self.retry_s):
                    raise DiskFullError(errno.ENOSPC, f"stopped while {volume_of(self.db)} "
                                        "was full; the batch is read again on the next start") from err
                self._recover()
                continue
            if started is not None:
                waited = self.clock() - started
                self.paused_s += waited
                with self.alarm.lock:
                    back, self.alarm.raised = self.alarm.raised, False
                    self.alarm.last_log = float("-inf")
                if back:
                    log.warning("event=disk_space_back volume=%s waited_s=%.1f (ingestion resumed)",
                                volume_of(self.db), waited)
                self.adapt()
            return out
