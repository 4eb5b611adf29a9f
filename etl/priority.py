"""The order-status lane's threads run at a lower OS priority than the rest of nodetap.

On two cores at the node's worst burst, the node, the writer of the feed (the fills and trades
lanes), the API and the order-status lane want more CPU than there is, and one of them must
wait. The gate (etl/gate.py) makes the order-status lane wait at its checkpoints while a fills
lane is busy, but between them its workers run as long as a scan slice or a decode takes, and
the kernel shares the cores evenly. A higher nice value (`bulk_nice`, Linux: a thread's own
attribute) tells the kernel which threads come last: when the cores are short, the order
statuses fall behind and catch up when there is time, instead of the trades; when they are not,
it changes nothing. Threads a lowered thread starts inherit its value; work a lowered thread
hands to the shared part pool (etl/parse.py) runs on threads of the same value.

A nice value can only be raised without privileges, so a lowered thread stays lowered: only
threads of the order-status lane are.
"""

from __future__ import annotations

import logging
import os
import sys
import threading

log = logging.getLogger("nodetap.priority")

LINUX = sys.platform.startswith("linux")
_warned = False


def current() -> int:
    """The calling thread's nice value (0 where threads have none of their own)."""
    if not LINUX:
        return 0
    return os.getpriority(os.PRIO_PROCESS, threading.get_native_id())


def lower(nice: int) -> None:
    """Raise the calling thread's nice value to `nice` (never lower it; 0: leave it)."""
    global _warned
    if nice <= 0 or not LINUX:
        return
    tid = threading.get_native_id()
    try:
        if os.getpriority(os.PRIO_PROCESS, tid) < nice:
            os.setpriority(os.PRIO_PROCESS, tid, nice)
    except OSError as err:  # a sandbox that forbids it: run at the same priority
        if not _warned:
            _warned = True
            log.warning("event=bulk_nice_failed nice=%d error=%r (order statuses run at nodetap's "
                        "own priority; set bulk_nice = 0 to silence this)", nice, str(err))
