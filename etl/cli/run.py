"""The commands that run the pipeline: ingest, serve, demo, backfill; and simulate."""

from __future__ import annotations

import argparse
import contextlib
import signal
import socket
import sys
import threading
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType
from typing import Any

from etl.cli.checks import (
    check_db,
    check_lake,
    check_node_dir,
    check_port,
    check_rules_file,
    check_start_from,
    database_error,
    named,
)
from etl.cli.common import CliError, install_signals, log, settings_from, setup_logging
from etl.cli.info import format_status
from etl.config import Settings


def bind_database(s: Settings, command: str, rebind: bool = False) -> None:
    """Check that the database is this node's and the lake this database's (the first run
    records both; this creates the database)."""
    import duckdb

    from etl.identity import bind_node, claim_lake, default_lake
    from etl.store import Store

    check_db(s)
    check_lake(s)
    try:
        store = Store(s.db)
    except duckdb.Error as err:
        raise database_error(s, err, command) from err
    try:
        bind_node(store.con, s.db, s.node_dir, rebind=rebind)
        lake = default_lake(store.con, s.db) if str(s.lake_dir) in ("", ".") else s.lake_dir
        try:
            claim_lake(store.con, s.db, lake)
        except OSError as err:
            where = f" ({err.filename})" if err.filename else ""
            raise CliError(f"cannot write the lake {lake}: {err.strerror or err}{where} "
                           f"({named(s, 'lake_dir')}): pass a directory this user can write to") from err
    finally:
        store.close()


def pipeline_settings(args: argparse.Namespace, *, must_exist: bool, port: bool = False) -> Settings:
    """Settings for `ingest`/`serve`, with logging set up, after every check that can fail
    fast: the port (serve), the node dir, the rules file, then the database's identity."""
    s = settings_from(args)
    setup_logging(s.log_level)
    if port:
        check_port(s.host, s.port)
    check_node_dir(s, must_exist=must_exist)
    check_rules_file(s)
    check_start_from(s)
    bind_database(s, args.command, rebind=getattr(args, "rebind_node_dir", False))
    return s


def cmd_ingest(args: argparse.Namespace) -> int:
    from etl.malloc import startup_frozen
    from etl.pipeline import Pipeline
    from etl.status import status_rows
    from etl.store import Store

    s = pipeline_settings(args, must_exist=args.once)
    store = Store.from_settings(s)
    pipe = Pipeline(s, store)
    install_signals(pipe.stop_event)
    try:
        pipe.open()
        with startup_frozen():
            if args.once:
                pipe.run_to_end()
                pipe.flush()
                # no line arrives later in this run: every hour the watermark has passed is
                # sealed (a late line a later run reads seals it again)
                pipe.lake().seal(grace_s=0.0)
                print(format_status(status_rows(pipe.snapshot())))
            else:
                pipe.run()
    finally:
        pipe.stop()
        store.close()
    return 0


def _serve_until_signal(app: Any, s: Settings, log_level: str,
                        ready: Callable[[], None] | None = None) -> None:
    """uvicorn until SIGINT/SIGTERM: the first stops it gracefully (the lifespan commits the
    batch in flight), a second forces it. Unlike `uvicorn.run`, the signal is not raised
    again afterwards, so a clean stop exits 0. `ready` is called once it listens (after the
    app's startup: the pipeline opens first, seconds on a first run)."""
    import uvicorn

    class Server(uvicorn.Server):
        async def startup(self, sockets: list[socket.socket] | None = None) -> None:
            await super().startup(sockets)
            if self.started and ready is not None:
                ready()

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

    Server(server_config(app, s, log_level)).run()


def server_config(app: Any, s: Settings, log_level: str, graceful_s: int = 10) -> Any:
    """uvicorn's settings for `serve` (the tests' servers use them too)."""
    import uvicorn

    return uvicorn.Config(app, host=s.host, port=s.port, log_level=log_level, ws_max_size=1 << 20,
                          ws=ws_protocol(), ws_per_message_deflate=s.ws_compression,
                          timeout_graceful_shutdown=graceful_s)


def ws_protocol() -> type:
    """uvicorn's WebSocket protocol (the sans-I/O one over `websockets`), whose shutdown does not
    raise for a connection whose close the client began: uvicorn 0.54 answers a client's close
    and closes the transport, and a shutdown before the transport is gone sent a close of its
    own on the closing connection (`InvalidState: connection is closing`), which ended `serve`
    with a traceback instead of exit status 0 (seen once in the suite on a busy machine)."""
    from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol
    from websockets.protocol import State

    class Protocol(WebSocketsSansIOProtocol):
        def shutdown(self) -> None:
            if self.handshake_complete and not self.close_sent and self.conn.state is not State.OPEN:
                self.stop_keepalive()  # the closing handshake is under way: only the transport is left
                self.transport.close()
                return
            super().shutdown()

    return Protocol


def cmd_serve(args: argparse.Namespace) -> int:
    from api.app import create_app

    s = pipeline_settings(args, must_exist=False, port=True)
    print(f"nodetap: starting on {s.host}:{s.port} (the pipeline opens first)", file=sys.stderr, flush=True)
    _serve_until_signal(create_app(s), s, s.log_level.lower(), ready=lambda: print(
        f"nodetap: serving http://{s.host}:{s.port}/ (dashboard), ws://{s.host}:{s.port}/ws",
        file=sys.stderr, flush=True))
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    """The simulator writing a node dir, and `serve` on it, until Ctrl-C."""
    from api.app import create_app
    from etl.simulate import run_live

    s = settings_from(args, start_from="start")
    setup_logging(s.log_level)
    check_port(s.host, s.port)
    check_rules_file(s)
    check_db(s)
    check_lake(s)
    if s.node_dir.exists() and not s.node_dir.is_dir():
        raise CliError(f"node dir {s.node_dir} is a file ({named(s, 'node_dir')}): pass a directory for "
                       "the simulated node (it is made if missing)")
    try:
        s.node_dir.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        where = f" ({err.filename})" if err.filename and err.filename != str(s.node_dir) else ""
        raise CliError(f"cannot make node dir {s.node_dir}: {err.strerror or err}{where} "
                       f"({named(s, 'node_dir')}): pass a directory this user can write to") from err
    bind_database(s, "demo")
    stop = threading.Event()
    sim = threading.Thread(
        target=run_live, name="nodetap-simulate", daemon=True,
        kwargs={"out": s.node_dir, "rate": args.rate, "variant": args.variant, "stop": stop,
                "malformed_share": args.malformed},
    )
    sim.start()
    print(f"nodetap demo: simulating a node at {args.rate:.0f} lines/s into {s.node_dir}; starting the "
          f"server on {s.host}:{s.port}", file=sys.stderr, flush=True)

    def ready() -> None:
        print(f"\nnodetap demo: ready\n"
              f"  dashboard  http://{s.host}:{s.port}/\n"
              f"  websocket  ws://{s.host}:{s.port}/ws\n"
              f"  API docs   http://{s.host}:{s.port}/docs\n"
              "  Ctrl-C stops both.\n", file=sys.stderr, flush=True)

    try:
        _serve_until_signal(create_app(s), s, "warning", ready=ready)
    finally:
        stop.set()
        sim.join(10)
    return 0


def cmd_backfill(args: argparse.Namespace) -> int:
    import duckdb

    from etl.backfill import BackfillError, backfill, check_stream
    from etl.config import lake_root
    from etl.lake import ensure_views
    from etl.pipeline import Shaping, rules_file_for
    from etl.store import Store

    s = settings_from(args)
    setup_logging(s.log_level)
    if args.stream:
        try:
            check_stream(args.stream)  # before the database is made
        except BackfillError as err:
            raise CliError(str(err)) from None
    for p in args.paths:  # before the database is made
        if not Path(p).exists():
            raise CliError(f"{p}: no such file or directory (give hour files, their .lz4 archives "
                           "or directories holding them)")
    check_rules_file(s)
    check_db(s)
    stop = threading.Event()
    install_signals(stop)
    try:
        store = Store.from_settings(s)
    except duckdb.Error as err:
        raise database_error(s, err, "backfill") from err
    try:
        ensure_views(store.con, lake_root(s))  # `sql`, `export`, `candles` read history.*
        report = backfill(
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
    print(" ".join(f"{k}={v}" for k, v in report.totals.items()))
    for line in report.unterminated:
        print(f"nodetap backfill: {line}", file=sys.stderr)
    if report.incomplete:
        print(f"nodetap backfill: {len(report.incomplete)} file(s) could not be read whole:", file=sys.stderr)
        for line in report.incomplete:
            print(f"  {line}", file=sys.stderr)
        return 1
    return 0


def simulate_out(out: Path) -> None:
    """Refuse an `--out` that cannot be a directory: a file, or under one."""
    for path in (out, *out.parents):
        if path.exists():
            if not path.is_dir():
                where = "" if path == out else f": {path} is a file"
                raise CliError(f"--out {out} is not a directory{where}; pass a directory to write the "
                               "node's hour files into (it is made if missing)")
            return


def cmd_simulate(args: argparse.Namespace) -> int:
    from etl.simulate import KINDS, generate, run_live

    kinds = tuple(k.strip() for k in args.streams.split(",") if k.strip())
    unknown = [k for k in kinds if k not in KINDS]
    if unknown or not kinds:
        raise CliError(f"--streams {args.streams!r}: name kinds from {', '.join(KINDS)}, comma-separated"
                       + (f" (unknown: {', '.join(unknown)})" if unknown else ""))
    # the simulated clock (--lines) and the wall clock (--rate) take flags of their own
    wall = [f for f, given in (("--duration", args.duration), ("--partial-writes", args.partial_writes),
                               ("--burst-every", args.burst_every), ("--burst-factor", args.burst_factor))
            if given]
    if args.lines and wall:
        verb = "goes" if len(wall) == 1 else "go"
        raise CliError(f"{', '.join(wall)} {verb} with --rate (writing on the wall clock), not --lines")
    if args.rate and args.start:
        raise CliError("--start sets the simulated clock of --lines; --rate writes at the wall clock's time")
    start = None
    if args.start:
        try:
            start = datetime.fromisoformat(args.start)
        except ValueError as err:
            raise CliError(f"--start: {args.start!r} is not an ISO time (e.g. 2026-01-05T10:59:50, UTC "
                           "when no zone)") from err
        start = start.replace(tzinfo=UTC) if start.tzinfo is None else start.astimezone(UTC)
    out = Path(args.out)
    simulate_out(out)
    setup_logging("INFO")
    try:
        if args.lines:
            n = generate(out, start=start, lines=args.lines, variant=args.variant, kinds=kinds,
                         seed=args.seed, malformed_share=args.malformed)
        else:
            stop = threading.Event()
            install_signals(stop)
            n = run_live(out, rate=args.rate, variant=args.variant, kinds=kinds, seed=args.seed,
                         malformed_share=args.malformed, stop=stop, duration_s=args.duration,
                         partial_writes=args.partial_writes, burst_every_s=args.burst_every,
                         burst_factor=args.burst_factor or 5.0)
    except OSError as err:
        where = f" ({err.filename})" if err.filename else ""
        raise CliError(f"cannot write under --out {out}: {err.strerror or err}{where}") from err
    print(f"wrote {n} lines under {out}")
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    from etl.bench.run import main as bench

    return bench(args)
