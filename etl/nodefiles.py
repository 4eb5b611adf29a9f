"""What the tailer knows about a node's files beyond one cursor: which were read, by whom,
what the bytes before a cursor looked like, and waiting for a node dir that is not there yet.

Every hour file has its own cursor in the store (`file_cursors`), whichever mode read it
(`ingest`/`serve` or `backfill`), so a file read by one mode is never read again by the
other. A cursor carries a fingerprint of the bytes just before it (as Vector's file source
does), so a file rewritten in place is noticed even when it has grown past the cursor.
"""

from __future__ import annotations

import hashlib
import logging
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

log = logging.getLogger("nodetap.tail")

FP_BYTES = 256  # bytes before a cursor that its fingerprint covers (half a line or so)


def fingerprint_of(window: bytes) -> int:
    """A nonzero 56-bit fingerprint of the bytes just before a cursor (0 means unknown)."""
    if not window:
        return 0
    return int.from_bytes(hashlib.blake2b(window, digest_size=7).digest(), "big") or 1


def fingerprint_at(path: Path, offset: int) -> int | None:
    """The fingerprint of the `FP_BYTES` before `offset` in the file now (None: file gone)."""
    if offset <= 0:
        return 0
    start = max(0, offset - FP_BYTES)
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return None
    try:
        window = os.pread(fd, offset - start, start)
    finally:
        os.close(fd)
    if len(window) < offset - start:
        return None  # the file is shorter than the cursor
    return fingerprint_of(window)


class FileIndex(Protocol):
    """The stored per-file cursors of one stream, as the tailer sees them."""

    floor: str  # files before this one ("YYYYMMDD/H") are not this stream's business

    def get(self, rel: str) -> tuple[int, int, int] | None:
        """(inode, offset, fingerprint) stored for the file, or None when never read."""
        ...

    def other_variant_read(self, rel: str) -> bool:
        """Another variant of the same kind (e.g. plain vs by_block) stored this hour."""
        ...


class EmptyIndex:
    """No stored file cursors: every file is new (tests and one-off tools)."""

    floor = ""

    def get(self, rel: str) -> tuple[int, int, int] | None:
        return None

    def other_variant_read(self, rel: str) -> bool:
        return False


def wait_for_dir(path: Path, stop: threading.Event, *, log_every_s: float = 60.0,
                 poll_s: float = 1.0, clock: Callable[[], float] = time.monotonic) -> bool:
    """Wait until `path` is a directory, logging every `log_every_s`; False when stopped."""
    last_log = float("-inf")
    started = clock()
    while not path.is_dir():
        now = clock()
        if now - last_log >= log_every_s:
            log.warning("event=node_dir_missing path=%s waited_s=%.0f (setting node_dir; "
                        "nodetap waits for it)", path.absolute(), now - started)
            last_log = now
        if stop.wait(poll_s):
            return False
    if last_log > float("-inf"):
        log.info("event=node_dir_found path=%s waited_s=%.0f", path, clock() - started)
    return True
