"""`nodetap` command line: one module per group of commands, the parser generated from the
settings' declaration (etl/config.py)."""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence

from etl.cli.args import Command, build_parser, parse
from etl.cli.common import CliError
from etl.cli.history import cmd_candles, cmd_export, cmd_sql
from etl.cli.info import cmd_config, cmd_status
from etl.cli.run import cmd_backfill, cmd_bench, cmd_demo, cmd_ingest, cmd_serve, cmd_simulate
from etl.config import ConfigError

COMMANDS: dict[str, Command] = {
    "demo": cmd_demo, "serve": cmd_serve, "ingest": cmd_ingest, "backfill": cmd_backfill,
    "status": cmd_status, "sql": cmd_sql, "export": cmd_export, "candles": cmd_candles,
    "simulate": cmd_simulate, "bench": cmd_bench, "config": cmd_config,
}
EXIT_BROKEN_PIPE = 141  # 128 + SIGPIPE, what a shell shows for `yes | head`

__all__ = ["COMMANDS", "CliError", "build_parser", "main"]


def _quiet_broken_pipe() -> int:
    """The reader of our output went away (`nodetap config --doc | head`): no traceback, and
    no second error when Python flushes standard output at exit."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    return EXIT_BROKEN_PIPE


def main(argv: Sequence[str] | None = None) -> int:
    try:
        return _run(argv)
    except BrokenPipeError:
        return _quiet_broken_pipe()


def _run(argv: Sequence[str] | None) -> int:
    from etl.identity import IdentityError
    from etl.malloc import tune as tune_malloc

    try:
        args = parse(build_parser(COMMANDS), argv)
    except SystemExit:  # --help, or a usage error: what argparse printed goes out now
        sys.stdout.flush()
        raise
    tune_malloc()  # before any thread starts (etl/malloc.py)
    try:
        code = int(args.func(args))
        sys.stdout.flush()
        return code
    except (IdentityError, CliError) as err:
        print(f"nodetap {args.command}: {err}", file=sys.stderr)
        return 2
    except ConfigError as err:
        print(f"nodetap: {err}", file=sys.stderr)
        return 2
    except ValueError as err:  # HistoryError, RulesError: precise messages of bad input
        print(f"nodetap {args.command}: {err}", file=sys.stderr)
        return 2
