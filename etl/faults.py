"""Named fault points for the reliability tests: `NODETAP_FAULT=<name>` kills the process
with SIGKILL when it reaches that point (e.g. between writing a lake file and recording it);
`NODETAP_FAULT=raise:<name>` raises `FaultInjected` there instead (an unexpected error, as a
bug would raise). Unset, a fault point costs one environment lookup."""

from __future__ import annotations

import os
import signal

ENV = "NODETAP_FAULT"


class FaultInjected(RuntimeError):
    """Raised at a fault point named by `NODETAP_FAULT=raise:<name>`."""


def fault_point(name: str) -> None:
    fault = os.environ.get(ENV)
    if fault == name:
        os.kill(os.getpid(), signal.SIGKILL)
    elif fault == f"raise:{name}":
        raise FaultInjected(f"fault injected at {name} ({ENV}={fault})")
