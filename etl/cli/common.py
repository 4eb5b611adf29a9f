"""What every command shares: settings from the flags, logging, signals, the error type."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
from pathlib import Path
from types import FrameType
from typing import Any

from etl.config import Settings, load_settings, setting_specs

log = logging.getLogger("nodetap")


class CliError(Exception):
    """A command cannot run as asked; the message says why and what to do."""


def setup_logging(level: str) -> None:
    logging.basicConfig(
        level=getattr(logging, level.upper(), logging.INFO),
        format="%(asctime)s level=%(levelname)s logger=%(name)s %(message)s",
        stream=sys.stderr,
    )
    # watchfiles logs every wake-up at INFO: one line per batch is noise here
    logging.getLogger("watchfiles").setLevel(logging.WARNING)


def settings_from(args: argparse.Namespace, **overrides: Any) -> Settings:
    """The settings: defaults < `--config` file (or NODETAP_CONFIG) < environment < the
    flags given (a flag left out is None, and does not override)."""
    flags: dict[str, Any] = dict(overrides)
    for spec in setting_specs():
        value = getattr(args, spec.name, None)
        if spec.flag and value is not None:
            flags[spec.name] = value
    config = getattr(args, "config", None) or os.environ.get("NODETAP_CONFIG")
    return load_settings(Path(config) if config else None, flags=flags)


def install_signals(stop: threading.Event) -> None:
    """First SIGINT/SIGTERM: finish the batch, commit, exit 0. Second: exit at once."""

    def handler(signum: int, _frame: FrameType | None) -> None:
        if stop.is_set():
            log.warning("event=forced_exit signal=%d", signum)
            os._exit(130)
        log.info("event=shutdown signal=%d (again to force)", signum)
        stop.set()

    signal.signal(signal.SIGINT, handler)
    signal.signal(signal.SIGTERM, handler)
