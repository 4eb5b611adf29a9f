"""Named fault points for the reliability tests: `NODETAP_FAULT=<name>` kills the process
with SIGKILL when it reaches that point (e.g. between writing a lake file and recording it);
`NODETAP_FAULT=raise:<name>` raises `FaultInjected` there instead (an unexpected error, as a
bug would raise). In-process tests can run code there (`run_at`), e.g. commit a unit while the
lake's sealer is between reading an hour and recording it. Unset, a fault point costs one
environment lookup and one dictionary look-up."""

from __future__ import annotations

import os
import signal
from collections.abc import Callable, Iterator
from contextlib import contextmanager

ENV = "NODETAP_FAULT"
_HOOKS: dict[str, Callable[[], None]] = {}


class FaultInjected(RuntimeError):
    """Raised at a fault point named by `NODETAP_FAULT=raise:<name>`."""


@contextmanager
def run_at(name: str, hook: Callable[[], None]) -> Iterator[None]:
    """Run `hook` whenever the fault point `name` is reached, while in this block."""
    _HOOKS[name] = hook
    try:
        yield
    finally:
        del _HOOKS[name]


def fault_point(name: str) -> None:
    hook = _HOOKS.get(name)
    if hook is not None:
        hook()
    fault = os.environ.get(ENV)
    if fault == name:
        os.kill(os.getpid(), signal.SIGKILL)
    elif fault == f"raise:{name}":
        raise FaultInjected(f"fault injected at {name} ({ENV}={fault})")
