"""`nodetap` command line: ingest, backfill, status, simulate, config."""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import signal
import sys
import threading
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType
from typing import Any

import duckdb
import orjson

from etl.config import ConfigError, Settings, load_settings, settings_doc

log = logging.getLogger("nodetap")


def _setup_logging(level: str) -> None:
    logging.basicConfig(
        level=getattr(logging, level.upper(), logging.INFO),
        format="%(asctime)s level=%(levelname)s logger=%(name)s %(message)s",
        stream=sys.stderr,
    )
    # watchfiles logs every wake-up at INFO: one line per batch is noise here
    logging.getLogger("watchfiles").setLevel(logging.WARNING)


def _settings(args: argparse.Namespace) -> Settings:
    flags: dict[str, Any] = {}
    for name in (
        "node_dir",
        "db",
        "start_from",
        "backlog",
        "max_backlog_bytes",
        "batch_max_bytes",
        "max_line_bytes",
        "debounce_ms",
        "log_level",
    ):
        if getattr(args, name, None) is not None:
            flags[name] = getattr(args, name)
    for name in ("poll", "keep_all"):
        if getattr(args, name, False):
            flags[name] = True
    for name in ("rules_file", "lake_dir", "host", "port"):
        if getattr(args, name, None) is not None:
            flags[name] = getattr(args, name)
    if getattr(args, "streams", None):
        flags["streams"] = args.streams
    config = args.config or os.environ.get("NODETAP_CONFIG")
    return load_settings(Path(config) if config else None, flags=flags)


def _node_settings(args: argparse.Namespace) -> Settings:
    """Settings for a command that reads a node dir, with logging set up, after checking
    that the database is this node's and the lake this database's."""
    from etl.identity import bind_node, claim_lake, default_lake
    from etl.store import Store

    s = _settings(args)
    _setup_logging(s.log_level)
    if getattr(args, "once", False) and not s.node_dir.is_dir():
        raise CliError(f"node dir {s.node_dir} does not exist (--node-dir, setting node_dir)")
    store = Store(s.db)
    try:
        bind_node(store.con, s.db, s.node_dir, rebind=getattr(args, "rebind_node_dir", False))
        if str(s.lake_dir) in ("", "."):
            claim_lake(store.con, s.db, default_lake(store.con, s.db))
        else:
            claim_lake(store.con, s.db, s.lake_dir)
    finally:
        store.close()
    return s


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


def cmd_ingest(args: argparse.Namespace) -> int:
    from etl.pipeline import Pipeline
    from etl.status import status_rows
    from etl.store import Store

    s = _node_settings(args)
    store = Store.from_settings(s)
    pipe = Pipeline(s, store)
    install_signals(pipe.stop_event)
    try:
        if args.once:
            pipe.run_once()
            pipe.flush()
            pipe.lake().seal()
            print(_fmt_status(status_rows(pipe.snapshot())))
        else:
            pipe.run()
    finally:
        pipe.stop()
        store.close()
    return 0


def _serve_until_signal(app: Any, s: Settings, log_level: str) -> None:
    """uvicorn until SIGINT/SIGTERM: the first stops it gracefully (the lifespan commits the
    batch in flight), a second forces it. Unlike `uvicorn.run`, the signal is not raised
    again afterwards, so a clean stop exits 0."""
    import uvicorn

    class Server(uvicorn.Server):
        @contextlib.contextmanager
        def capture_signals(self) -> Iterator[None]:
            def handler(signum: int, _frame: FrameType | None) -> None:
                if self.should_exit:
                    log.warning("event=forced_exit signal=%d", signum)
                    self.force_exit = True
                log.info("event=shutdown signal=%d (again to force)", signum)
                self.should_exit = True

            old = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
            try:
                yield
            finally:
                for sig, h in old.items():
                    signal.signal(sig, h)

    config = uvicorn.Config(app, host=s.host, port=s.port, log_level=log_level,
                            ws_max_size=1 << 20, timeout_graceful_shutdown=10)
    Server(config).run()


def cmd_serve(args: argparse.Namespace) -> int:
    from api.app import create_app

    s = _node_settings(args)
    print(f"nodetap: serving http://{s.host}:{s.port}/ (dashboard), ws://{s.host}:{s.port}/ws",
          file=sys.stderr)
    _serve_until_signal(create_app(s), s, s.log_level.lower())
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    """The simulator writing a node dir, and `serve` on it, until Ctrl-C."""
    from api.app import create_app
    from etl.simulate import run_live

    s = _settings(args)
    s.node_dir.mkdir(parents=True, exist_ok=True)
    s = _node_settings(args)
    stop = threading.Event()
    sim = threading.Thread(
        target=run_live, name="nodetap-simulate", daemon=True,
        kwargs={"out": s.node_dir, "rate": args.rate, "variant": args.variant, "stop": stop,
                "malformed_share": args.malformed},
    )
    sim.start()
    print(f"\nnodetap demo: simulating a node at {args.rate:.0f} lines/s into {s.node_dir}\n"
          f"  dashboard  http://{s.host}:{s.port}/\n"
          f"  websocket  ws://{s.host}:{s.port}/ws\n"
          f"  API docs   http://{s.host}:{s.port}/docs\n"
          "  Ctrl-C stops both.\n", file=sys.stderr, flush=True)
    try:
        _serve_until_signal(create_app(s), s, "warning")
    finally:
        stop.set()
        sim.join(10)
    return 0


def cmd_backfill(args: argparse.Namespace) -> int:
    from etl.backfill import BackfillError, backfill
    from etl.pipeline import Shaping, rules_file_for
    from etl.store import Store

    s = _settings(args)
    _setup_logging(s.log_level)
    stop = threading.Event()
    install_signals(stop)
    store = Store.from_settings(s)
    try:
        totals = backfill(
            [Path(p) for p in args.paths],
            store,
            batch_max_bytes=s.batch_max_bytes,
            max_line_bytes=s.max_line_bytes,
            stream=args.stream,
            stop=stop,
            progress=not args.quiet,
            shaping=Shaping(rules_file_for(s), s.candle_intervals),
        )
    except BackfillError as err:
        print(f"nodetap backfill: {err}", file=sys.stderr)
        return 2
    finally:
        store.close()
    print(" ".join(f"{k}={v}" for k, v in totals.items()))
    return 0


def _fmt_status(rows: list[dict[str, Any]]) -> str:
    cols = [
        "stream",
        "file",
        "offset",
        "mode",
        "lag_bytes",
        "lag_seconds",
        "lines",
        "rows",
        "rejects",
        "gaps",
        "skipped_bytes",
        "last_time",
    ]
    table = [cols] + [[_cell(r.get(c)) for c in cols] for r in rows]
    widths = [max(len(r[i]) for r in table) for i in range(len(cols))]
    return "\n".join("  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)) for r in table)


def _cell(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.1f}"
    return str(v)


def cmd_status(args: argparse.Namespace) -> int:
    from etl.pipeline import status_file

    s = _settings(args)
    rows: list[dict[str, Any]]
    try:
        con = duckdb.connect(str(s.db), read_only=True)
    except duckdb.IOException as err:
        # another process (ingest/serve) holds the lock: use the status file it writes
        sf = status_file(s.db)
        if not sf.exists():
            print(f"nodetap status: cannot open {s.db}: {err}", file=sys.stderr)
            return 2
        rows = orjson.loads(sf.read_bytes())
    else:
        try:
            rows = _status_from_db(con, s)
        except duckdb.CatalogException:
            print(f"nodetap status: {s.db} is not a nodetap database", file=sys.stderr)
            return 2
        finally:
            con.close()
    if args.json:
        print(orjson.dumps(rows, option=orjson.OPT_INDENT_2).decode())
    else:
        print(_fmt_status(rows))
    return 0


def _status_from_db(con: duckdb.DuckDBPyConnection, s: Settings) -> list[dict[str, Any]]:
    from etl.status import catching_up_bytes, status_rows, stored_snapshot

    cur = con.execute("SELECT * FROM cursors ORDER BY stream")
    names = [d[0] for d in cur.description]
    rows = [dict(zip(names, r, strict=True)) for r in cur.fetchall()]
    return status_rows(stored_snapshot(rows, s.node_dir, datetime.now(UTC).timestamp(),
                                       catching_up_bytes(s)))


def cmd_simulate(args: argparse.Namespace) -> int:
    from etl.simulate import generate, run_live

    _setup_logging("INFO")
    out = Path(args.out)
    kinds = tuple(k.strip() for k in args.streams.split(",") if k.strip())
    if args.lines:
        start = datetime.fromisoformat(args.start).replace(tzinfo=UTC) if args.start else None
        n = generate(
            out,
            start=start,
            lines=args.lines,
            variant=args.variant,
            kinds=kinds,
            seed=args.seed,
            malformed_share=args.malformed,
        )
        print(f"wrote {n} lines under {out}")
        return 0
    stop = threading.Event()
    install_signals(stop)
    n = run_live(
        out,
        rate=args.rate,
        variant=args.variant,
        kinds=kinds,
        seed=args.seed,
        malformed_share=args.malformed,
        stop=stop,
        duration_s=args.duration,
        partial_writes=args.partial_writes,
        burst_every_s=args.burst_every,
        burst_factor=args.burst_factor,
    )
    print(f"wrote {n} lines under {out}")
    return 0


def _read_only(s: Settings) -> duckdb.DuckDBPyConnection:
    try:
        con = duckdb.connect(str(s.db), read_only=True)
    except duckdb.IOException as err:
        raise CliError(
            f"cannot open {s.db} read-only: {err}. While `nodetap ingest`/`serve` runs, query "
            "through the server (POST /v1/sql, GET /v1/export/...)"
        ) from err
    con.execute("SET TimeZone = 'UTC'")
    con.execute("SET enable_progress_bar = false")
    return con


def _write_frame(frame: Any, fmt: str, out: str | None) -> None:
    import polars as pl

    assert isinstance(frame, pl.DataFrame)
    if fmt == "parquet":
        if not out:
            raise CliError("--format parquet needs -o FILE")
        frame.write_parquet(out, compression="zstd")
    elif fmt == "csv":
        text = frame.write_csv()
        Path(out).write_text(text) if out else sys.stdout.write(text)
    elif fmt == "json":
        text = orjson.dumps(frame.to_dicts(), default=str, option=orjson.OPT_INDENT_2).decode()
        Path(out).write_text(text) if out else print(text)
    else:
        with pl.Config(tbl_rows=-1, tbl_cols=-1, tbl_width_chars=200, fmt_str_lengths=66):
            print(frame)


def cmd_sql(args: argparse.Namespace) -> int:
    import polars as pl

    s = _settings(args)
    con = _read_only(s)
    try:
        frame = pl.from_arrow(con.sql(args.query).to_arrow_table())
    except duckdb.Error as err:
        raise CliError(f"SQL error: {err}") from err
    finally:
        con.close()
    _write_frame(frame, args.format, args.output)
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from etl.history import parse_time_ms, slice_sql

    s = _settings(args)
    sql, params = slice_sql(args.table, args.coin, parse_time_ms(args.start, "--start"),
                            parse_time_ms(args.end, "--end"), args.interval)
    con = _read_only(s)
    try:
        out = args.output.replace("'", "''")
        con.execute(f"COPY ({sql}) TO '{out}' (FORMAT parquet, COMPRESSION zstd)", params)
        (n,) = con.execute(f"SELECT count(*) FROM read_parquet('{out}')").fetchone() or (0,)
    finally:
        con.close()
    print(f"wrote {n} rows to {args.output}")
    return 0


def cmd_candles(args: argparse.Namespace) -> int:
    import time as _time

    from etl.history import parse_time_ms, read_candles

    s = _settings(args)
    end = parse_time_ms(args.end, "--end") or int(_time.time() * 1000)
    start = parse_time_ms(args.start, "--start") or end - 3_600_000
    con = _read_only(s)
    try:
        frame = read_candles(con, args.coin, args.interval, start, end, fill=not args.no_fill)
    finally:
        con.close()
    _write_frame(frame.drop("t_first", "t_last"), args.format, args.output)
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    from etl.bench.run import main as bench

    return bench(args)


class CliError(Exception):
    """A command cannot run as asked; the message says why and what to do."""


def cmd_config(args: argparse.Namespace) -> int:
    try:
        s = _settings(args)
    except ConfigError as err:
        print(f"nodetap: {err}", file=sys.stderr)
        return 2
    if args.doc:
        for name, default, doc in settings_doc():
            print(f"{name} = {default}\n    {doc}")
        return 0
    for name, _, _ in settings_doc():
        print(f"{name} = {getattr(s, name)}")
    return 0


def _common(p: argparse.ArgumentParser, node: bool = True) -> None:
    p.add_argument("--config", help="TOML settings file (also NODETAP_CONFIG)")
    p.add_argument("--db", type=Path, help="DuckDB file (setting db)")
    if node:
        p.add_argument("--node-dir", dest="node_dir", type=Path, help="node data dir (node_dir)")
    p.add_argument("--log-level", dest="log_level")


def _tuning(p: argparse.ArgumentParser) -> None:
    p.add_argument("--batch-max-bytes", dest="batch_max_bytes", type=int)
    p.add_argument("--max-line-bytes", dest="max_line_bytes", type=int)


def _rebind(p: argparse.ArgumentParser) -> None:
    p.add_argument("--rebind-node-dir", dest="rebind_node_dir", action="store_true",
                   help="the node dir moved: bind the database to --node-dir (it refuses "
                        "another node dir otherwise)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="nodetap", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("ingest", help="tail a node dir into DuckDB until SIGINT/SIGTERM")
    _common(p)
    _tuning(p)
    p.add_argument("--from", dest="start_from", help="first run: end | start | YYYYMMDD[/H]")
    p.add_argument("--backlog", choices=["drop", "keep"])
    p.add_argument("--max-backlog-bytes", dest="max_backlog_bytes", type=int)
    p.add_argument("--debounce-ms", dest="debounce_ms", type=int)
    p.add_argument("--poll", action="store_true", help="poll instead of inotify")
    p.add_argument("--stream", dest="streams", action="append", help="only this stream dir")
    p.add_argument("--once", action="store_true",
                   help="drain what is there, seal complete hours, print status, exit")
    p.add_argument("--rules", dest="rules_file", type=Path, help="orders filter rules (rules_file)")
    p.add_argument("--keep-all", dest="keep_all", action="store_true",
                   help="keep every order-status row (keep_all)")
    p.add_argument("--lake", dest="lake_dir", type=Path, help="Parquet lake root (lake_dir)")
    _rebind(p)
    p.set_defaults(func=cmd_ingest)

    p = sub.add_parser("serve", help="run the pipeline and the HTTP/WebSocket API in one process")
    _common(p)
    _tuning(p)
    p.add_argument("--from", dest="start_from", help="first run: end | start | YYYYMMDD[/H]")
    p.add_argument("--backlog", choices=["drop", "keep"])
    p.add_argument("--poll", action="store_true", help="poll instead of inotify")
    p.add_argument("--rules", dest="rules_file", type=Path, help="orders filter rules (rules_file)")
    p.add_argument("--keep-all", dest="keep_all", action="store_true")
    p.add_argument("--lake", dest="lake_dir", type=Path, help="Parquet lake root (lake_dir)")
    p.add_argument("--host")
    p.add_argument("--port", type=int)
    _rebind(p)
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("demo", help="simulate a node into data/demo-node and serve it (dashboard)")
    _common(p)
    p.add_argument("--rate", type=float, default=2000.0, help="order-status lines per second")
    p.add_argument("--variant", choices=["plain", "by_block", "streaming"], default="plain")
    p.add_argument("--malformed", type=float, default=0.0, help="share of broken lines")
    p.add_argument("--host")
    p.add_argument("--port", type=int)
    p.set_defaults(func=cmd_demo, start_from="start")

    p = sub.add_parser("backfill", help="ingest existing hour files (plain or .lz4), then exit")
    p.add_argument("paths", nargs="+", help="hour files or directories holding them")
    _common(p, node=False)
    _tuning(p)
    p.add_argument("--stream", help="stream dir name, when the path does not say it")
    p.add_argument("--rules", dest="rules_file", type=Path, help="orders filter rules (rules_file)")
    p.add_argument("--keep-all", dest="keep_all", action="store_true",
                   help="keep every order-status row (keep_all)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_backfill)

    p = sub.add_parser("status", help="per stream: file, offset, lag, lines, drops, rejects")
    _common(p)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_status)

    p = sub.add_parser("simulate", help="write realistic node output (the project's test data)")
    p.add_argument("--out", required=True, help="node data dir to write into")
    p.add_argument("--rate", type=float, default=2000.0, help="order-status lines per second")
    p.add_argument(
        "--lines",
        type=int,
        help="write this many order-status lines at once, on a simulated clock, then exit",
    )
    p.add_argument("--duration", type=float, help="stop after this many seconds")
    p.add_argument("--start", help="with --lines: the simulated clock's start (ISO, UTC)")
    p.add_argument("--variant", choices=["plain", "by_block", "streaming"], default="plain")
    p.add_argument(
        "--streams",
        default="orders,fills",
        help="kinds to write: orders, fills, trades (node_trades, as nodes without fills output write)",
    )
    p.add_argument("--partial-writes", action="store_true",
                   help="cut the last line of each write, as a buffered node does")
    p.add_argument("--burst-every", type=float, help="every N seconds, a one-second burst")
    p.add_argument("--burst-factor", type=float, default=5.0, help="rate multiplier in a burst")
    p.add_argument("--malformed", type=float, default=0.0, help="share of broken lines")
    p.add_argument("--seed", type=int, default=7)
    p.set_defaults(func=cmd_simulate)

    p = sub.add_parser("sql", help="run a read-only SQL query on the database (and the lake)")
    p.add_argument("query")
    _common(p, node=False)
    p.add_argument("--format", choices=["table", "csv", "json", "parquet"], default="table")
    p.add_argument("-o", "--output", help="write to this file instead of standard output")
    p.set_defaults(func=cmd_sql)

    p = sub.add_parser("export", help="write rows of a table (DuckDB + lake) to a Parquet file")
    p.add_argument("table", choices=["orders", "fills", "trades", "candles"])
    _common(p, node=False)
    p.add_argument("--coin")
    p.add_argument("--interval", help="candles only")
    p.add_argument("--start", help="ISO time (UTC) or epoch ms, included")
    p.add_argument("--end", help="ISO time (UTC) or epoch ms, excluded")
    p.add_argument("-o", "--output", required=True)
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("candles", help="print OHLCV candles of a coin (gaps never forward-filled)")
    _common(p, node=False)
    p.add_argument("--coin", required=True)
    p.add_argument("--interval", default="1m")
    p.add_argument("--start", help="ISO time (UTC) or epoch ms (default: an hour before --end)")
    p.add_argument("--end", help="ISO time (UTC) or epoch ms (default: now)")
    p.add_argument("--no-fill", action="store_true", help="only candles with trades")
    p.add_argument("--format", choices=["table", "csv", "json", "parquet"], default="table")
    p.add_argument("-o", "--output")
    p.set_defaults(func=cmd_candles)

    p = sub.add_parser("bench", help="throughput, memory and latency against the replaced approach")
    from etl.bench.run import add_arguments

    add_arguments(p)
    p.set_defaults(func=cmd_bench)

    p = sub.add_parser("config", help="print the effective settings")
    _common(p)
    p.add_argument("--doc", action="store_true", help="every setting with its description")
    p.set_defaults(func=cmd_config)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    from etl.identity import IdentityError

    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except IdentityError as err:
        print(f"nodetap {args.command}: {err}", file=sys.stderr)
        return 2
    except ConfigError as err:
        print(f"nodetap: {err}", file=sys.stderr)
        return 2
    except CliError as err:
        print(f"nodetap {args.command}: {err}", file=sys.stderr)
        return 2
    except ValueError as err:  # HistoryError, RulesError: precise messages of bad input
        print(f"nodetap {args.command}: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
