"""The argument parser of every command. Setting flags are generated from the settings'
declaration (etl/config.py); only the flags that are not settings are written here."""

from __future__ import annotations

import argparse
import difflib
import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from etl.cli.output import FORMATS
from etl.config import SettingSpec, canonical_choice, setting_specs, show_default, value_range
from etl.schema import TABLES

VARIANTS = ("plain", "by_block", "streaming")
Command = Callable[[argparse.Namespace], int]


def plain_text(doc: str) -> str:
    """A Markdown description as terminal help: no backticks, `%` escaped for argparse."""
    return re.sub(r"`([^`]*)`", r"\1", doc).replace("%", "%%")


def _add_setting(p: argparse.ArgumentParser, spec: SettingSpec) -> None:
    allowed = f"{value_range(spec)}; " if spec.kind in ("int", "float") else ""
    text = f"{plain_text(spec.doc)} (setting {spec.name}, NODETAP_{spec.name.upper()}; {allowed}" \
           f"default {plain_text(show_default(spec))})"
    kw: dict[str, Any] = {"dest": spec.name, "help": text, "default": None}
    if spec.kind == "bool":
        kw["action"] = "store_true"
    elif spec.kind == "tuple":
        kw.update(action="append", metavar=spec.name.upper().rstrip("S"))
    else:
        kw["type"] = {"Path": Path, "int": int, "float": float}.get(spec.kind, str)
        kw["metavar"] = spec.name.upper()
    if spec.choices:
        choices = spec.choices
        kw.update(type=lambda v: canonical_choice(v, choices), choices=choices, metavar=None)
    p.add_argument(spec.flag, **kw)


def add_settings(p: argparse.ArgumentParser, command: str) -> None:
    """`--config` and the flag of every setting that `command` takes (`config`: all)."""
    p.add_argument("--config", metavar="FILE",
                   help="TOML settings file (also NODETAP_CONFIG); every key at top level, or every key "
                        "under [nodetap]")
    for spec in setting_specs():
        if spec.flag and (command in spec.commands or command == "config"):
            _add_setting(p, spec)


def _rebind(p: argparse.ArgumentParser) -> None:
    p.add_argument("--rebind-node-dir", dest="rebind_node_dir", action="store_true",
                   help="the node dir moved: bind the database to --node-dir (it refuses "
                        "another node dir otherwise)")


def _output(p: argparse.ArgumentParser, required: bool = False) -> None:
    p.add_argument("--format", choices=FORMATS,
                   help="table (plain decimals, ISO times), csv, json, ndjson, or parquet (needs -o); "
                        "default: the -o file's extension (.parquet, .csv, .json, .ndjson), else table")
    p.add_argument("-o", "--output", required=required, metavar="FILE",
                   help="write to this file instead of standard output; its extension picks the "
                        "format (a --format that contradicts it is refused)")


def _time(p: argparse.ArgumentParser, flag: str, text: str) -> None:
    p.add_argument(flag, help=f"ISO time (UTC when no zone) or epoch ms{text}")


def whole_at_least_1(text: str) -> int:
    """An argparse type: a count (`--lines`)."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a whole number of at least 1, not {text!r}")
    return value


def positive(text: str) -> float:
    """An argparse type: a rate, a factor or a number of seconds."""
    try:
        value = float(text)
    except ValueError:
        value = 0.0
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"must be a number above 0, not {text!r}")
    return value


def share(text: str) -> float:
    """An argparse type: a fraction from 0 to 1 (`--malformed 0.01`: one line in 100)."""
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 <= value <= 1:
        raise argparse.ArgumentTypeError(f"is a share of the lines, from 0 to 1 (0.01: one line in 100), "
                                         f"not {text!r}")
    return value


def _simulate(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", required=True, help="node data dir to write into (made if missing)")
    mode = p.add_mutually_exclusive_group(required=True)
    mode.add_argument("--lines", type=whole_at_least_1,
                      help="write this many lines in all, split between the streams as a node writes "
                           "them (whole blocks: a few more), at once, on a simulated clock, then exit")
    mode.add_argument("--rate", type=positive,
                      help="order-status events per second (fills and trades on top), on the wall clock, "
                           "until Ctrl-C (or --duration)")
    p.add_argument("--duration", type=positive, help="with --rate: stop after this many seconds")
    p.add_argument("--start", help="with --lines: the simulated clock's start (ISO, UTC when no zone)")
    p.add_argument("--variant", choices=VARIANTS, default="plain")
    p.add_argument("--streams", default="orders,fills",
                   help="kinds to write: orders, fills, trades (node_trades, as nodes without "
                        "fills output write)")
    p.add_argument("--partial-writes", action="store_true",
                   help="with --rate: cut the last line of each write, as a buffered node does")
    p.add_argument("--burst-every", type=positive, help="with --rate: every N seconds, a one-second burst")
    p.add_argument("--burst-factor", type=positive, help="rate multiplier in a burst (default 5)")
    p.add_argument("--malformed", type=share, default=0.0,
                   help="share of broken lines, from 0 to 1 (0.01: one in 100)")
    p.add_argument("--seed", type=int, default=7)


def command_parser(parser: argparse.ArgumentParser, name: str) -> argparse.ArgumentParser:
    """The parser of command `name` under the `nodetap` parser."""
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    found: argparse.ArgumentParser = sub.choices[name]
    return found


def unrecognized(extras: list[str], p: argparse.ArgumentParser) -> str:
    """What a command's parser says of the arguments it does not take: each unknown flag with
    the nearest flag of the command's own (`--hots`: did you mean --host?)."""
    flags = [a for a in extras if a.startswith("-")] or extras
    known = [o for a in p._actions for o in a.option_strings if o.startswith("--")]
    said = []
    for flag in flags:
        name = flag.split("=", 1)[0]
        near = difflib.get_close_matches(name, known, n=1) if name.startswith("--") else []
        said.append(f"{name} (did you mean {near[0]}?)" if near else name)
    return f"unrecognized argument{'s' if len(said) > 1 else ''} {', '.join(said)}"


def parse(parser: argparse.ArgumentParser, argv: Sequence[str] | None) -> argparse.Namespace:
    """`parser.parse_args`, except that an argument the command does not take is refused by
    the command's parser, with its usage line, not the top-level one."""
    args, extras = parser.parse_known_args(argv)
    if extras:
        p = command_parser(parser, args.command)
        p.error(unrecognized(extras, p))
    return args


def build_parser(commands: dict[str, Command]) -> argparse.ArgumentParser:
    """The `nodetap` parser; `commands` maps each command's name to its function."""
    parser = argparse.ArgumentParser(
        prog="nodetap",
        description="Tail a Hyperliquid node's files into a live feed, candles, DuckDB and a "
                    "Parquet lake. `nodetap COMMAND --help` describes a command's flags.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND",
                                title="commands")

    def command(name: str, text: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=text, description=text[:1].upper() + text[1:] + ".")
        p.set_defaults(func=commands[name])
        if name not in ("simulate", "bench"):
            add_settings(p, name)
        return p

    p = command("demo", "simulate a node into data/demo-node and serve it (dashboard)")
    p.add_argument("--rate", type=positive, default=2000.0, help="order-status lines per second")
    p.add_argument("--variant", choices=VARIANTS, default="plain")
    p.add_argument("--malformed", type=share, default=0.0,
                   help="share of broken lines, from 0 to 1 (0.01: one in 100)")

    p = command("serve", "run the pipeline and the HTTP/WebSocket API in one process")
    _rebind(p)

    p = command("ingest", "tail a node dir into DuckDB until SIGINT/SIGTERM")
    p.add_argument("--once", action="store_true",
                   help="drain what is there (waiting out rotate_grace_s for an unterminated last "
                        "line of an hour file the node has left), seal complete hours, print status, exit")
    _rebind(p)

    p = command("backfill", "ingest existing hour files (plain or .lz4), then exit (1 when a file could "
                            "not be read whole: each is named)")
    p.add_argument("paths", nargs="+", help="hour files or directories holding them")
    p.add_argument("--stream", help="stream dir name, when the path does not say it")
    p.add_argument("--quiet", action="store_true", help="no progress bar")

    from etl.cli.info import STATUS_HELP

    p = command("status", STATUS_HELP)
    p.add_argument("--json", action="store_true", help="JSON instead of a table")

    p = command("sql", "run a read-only SQL query on the database (and the lake)")
    p.add_argument("query")
    _output(p)

    p = command("export", "write rows of a table (DuckDB + lake) to a Parquet, CSV or NDJSON file")
    p.add_argument("table", choices=TABLES)
    p.add_argument("--coin", help="only this coin's rows (a coin with none, and no candle, is refused)")
    p.add_argument("--interval", help="candles only: one of candle_intervals (the others are not stored: "
                                      "nodetap candles derives them)")
    _time(p, "--start", ", included")
    _time(p, "--end", ", excluded")
    p.add_argument("-o", "--output", required=True, metavar="FILE",
                   help="FILE.parquet (zstd), FILE.csv or FILE.ndjson: the extension says the format")

    p = command("candles", "print OHLCV candles of a coin (gaps never forward-filled)")
    p.add_argument("--coin", required=True)
    p.add_argument("--interval", default="1m",
                   help="any of 1s 5s 10s 1m 3m 5m 15m 30m 1h 2h 4h 8h 12h 1d 3d 1w 1M; those "
                        "not in candle_intervals are derived on read (default 1m)")
    _time(p, "--start", " (default: an hour before --end)")
    _time(p, "--end", " (default: the data's last trade time)")
    p.add_argument("--no-fill", action="store_true", help="only candles with trades")
    _output(p)

    _simulate(command("simulate", "write realistic node output (the project's test data)"))

    from etl.bench.run import add_arguments

    add_arguments(command("bench", "throughput, memory and latency against the replaced approach"))

    p = command("config", "print the effective settings (paths absolute), or --doc: every setting")
    p.add_argument("--doc", action="store_true",
                   help="every setting as a Markdown table (the README's), not the values")
    return parser
