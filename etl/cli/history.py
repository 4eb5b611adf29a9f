"""The commands that read history back: sql, export, candles (the database and the lake,
read-only)."""

from __future__ import annotations

import argparse
import time

import duckdb
import polars as pl

from etl.cli.common import CliError, settings_from
from etl.cli.output import check_output, write_frame
from etl.config import Settings
from etl.history import (
    check_coin,
    explain_sql_error,
    parse_time_ms,
    read_candles,
    slice_sql,
    watermark_and_holes,
)

HOUR_MS = 3_600_000


def read_only(s: Settings) -> duckdb.DuckDBPyConnection:
    if not s.db.exists():
        raise CliError(f"database {s.db} does not exist (--db, setting db)")
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


def cmd_sql(args: argparse.Namespace) -> int:
    s = settings_from(args)
    if args.output:
        check_output(args.output)
    con = read_only(s)
    try:
        result = con.sql(args.query)
        if result is None:  # DuckDB found no statement in it
            raise CliError(f"no SQL statement in {args.query!r} (only blanks, comments or semicolons): "
                           'pass a query, e.g. nodetap sql "SELECT count(*) FROM history.trades"')
        frame = pl.from_arrow(result.to_arrow_table())
    except duckdb.Error as err:
        raise CliError(f"SQL error: {explain_sql_error(args.query, str(err))}") from err
    finally:
        con.close()
    assert isinstance(frame, pl.DataFrame)
    write_frame(frame, args.format, args.output)
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    s = settings_from(args)
    sql, params = slice_sql(args.table, args.coin, parse_time_ms(args.start, "--start"),
                            parse_time_ms(args.end, "--end"), args.interval)
    con = read_only(s)
    try:
        out = args.output.replace("'", "''")
        con.execute(f"COPY ({sql}) TO '{out}' (FORMAT parquet, COMPRESSION zstd)", params)
        (n,) = con.execute(f"SELECT count(*) FROM read_parquet('{out}')").fetchone() or (0,)
    finally:
        con.close()
    print(f"wrote {n} rows to {args.output}")
    return 0


def data_end(con: duckdb.DuckDBPyConnection) -> int:
    """The data's last instant (ms): the trades' watermark, else the last stored trade, else
    the wall clock (an empty database)."""
    wm, _ = watermark_and_holes(con)
    if wm is not None:
        return wm
    row = con.execute("SELECT epoch_ms(max(time)) FROM history.trades").fetchone()
    return int(row[0]) if row and row[0] is not None else int(time.time() * 1000)


def cmd_candles(args: argparse.Namespace) -> int:
    s = settings_from(args)
    con = read_only(s)
    try:
        end = parse_time_ms(args.end, "--end")
        end = data_end(con) if end is None else end
        start = parse_time_ms(args.start, "--start")
        start = end - HOUR_MS if start is None else start
        # intervals not stored are derived on read, as `/v1/candles` does
        frame = read_candles(con, args.coin, args.interval, start, end, fill=not args.no_fill,
                             stored=s.candle_intervals)
        if frame.is_empty():
            check_coin(con, args.coin, "--coin")
    finally:
        con.close()
    frame = frame.drop("t_first", "t_last")
    if args.format == "table":  # times as ISO, not epoch ms
        frame = frame.with_columns(pl.from_epoch(pl.col(c), time_unit="ms") for c in ("t", "T"))
    write_frame(frame, args.format, args.output)
    return 0
