"""Named fault points for the reliability tests: `NODETAP_FAULT=<name>` kills the process
with SIGKILL when it reaches that point (e.g. between writing a lake file and recording it).
Unset, a fault point costs one environment lookup."""

from __future__ import annotations

import os
import signal

ENV = "NODETAP_FAULT"


def fault_point(name: str) -> None:
    if os.environ.get(ENV) == name:
        os.kill(os.getpid(), signal.SIGKILL)
