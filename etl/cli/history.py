"""The commands that read history back: sql, export, candles (the database and the lake,
read-only)."""

from __future__ import annotations

import argparse
import time
from collections.abc import Iterator
from pathlib import Path

import duckdb
import polars as pl
import pyarrow as pa

from etl.candles import round_volume
from etl.cli.checks import check_db, database_error, named
from etl.cli.common import CliError, settings_from
from etl.cli.output import check_output, output_file, output_format, write_frame
from etl.config import Settings
from etl.history import (
    EXPORT_BATCH_ROWS,
    check_coin,
    check_export,
    explain_sql_error,
    iso_ms,
    read_candles,
    slice_sql,
    time_range_ms,
    watermark_and_holes,
)
from etl.schema import HOUR_MS


def read_only(s: Settings, command: str) -> duckdb.DuckDBPyConnection:
    """The database, read-only, for `command` (sql, export, candles)."""
    check_db(s)
    if not s.db.exists():
        raise CliError(f"database {s.db} does not exist ({named(s, 'db')})")
    try:
        con = duckdb.connect(str(s.db), read_only=True)
    except duckdb.Error as err:
        raise database_error(s, err, command) from err
    con.execute("SET TimeZone = 'UTC'")
    con.execute("SET enable_progress_bar = false")
    try:
        check_views(con, s)
    except CliError:
        con.close()
        raise
    return con


def check_views(con: duckdb.DuckDBPyConnection, s: Settings) -> None:
    """Refuse to read history through views that read a lake not this database's at this path
    (it moved or was copied since the views were made): they would miss the hours sealed there."""
    from etl.identity import reads_own_lake
    from etl.lake import views_root

    have = views_root(con)
    if have is None or reads_own_lake(con, s.db, have):
        return
    (sealed,), = con.execute("SELECT count(*) FROM lake_hours WHERE sealed_at IS NOT NULL").fetchall()
    if sealed:
        raise CliError(
            f"the history views of {s.db} read the lake at {have}, which is not this database's "
            "(no nodetap-lake.json there names it at this path: the database moved or was copied "
            "since they were made, or the lake was emptied by hand): run `nodetap ingest --once` "
            "on it once, with its lake beside it (<db>.lake) or at --lake, to make them again")


def cmd_sql(args: argparse.Namespace) -> int:
    s = settings_from(args)
    fmt = output_format(args.format, args.output)
    if args.output:
        check_output(args.output)
    con = read_only(s, args.command)
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
    write_frame(frame, fmt, args.output)
    return 0


def export_format(out: str) -> str:
    """The format an export's file name asks for: its extension, as in GET /v1/export/{table}.{fmt}."""
    from etl.formats import FORMATS

    fmt = Path(out).suffix.lower().lstrip(".")
    if fmt not in FORMATS:
        ends = f"ends in .{fmt}" if fmt else "has no extension"
        names = [f".{f}" for f in FORMATS]
        raise CliError(f"-o {out}: the file name {ends}; name a {', '.join(names[:-1])} or {names[-1]} "
                       "file: the extension says the format")
    return fmt


def cmd_export(args: argparse.Namespace) -> int:
    from etl.formats import encode

    s = settings_from(args)
    fmt = export_format(args.output)
    check_export(args.table, args.interval, s.candle_intervals, cli=True)  # as GET /v1/export does
    start, end = time_range_ms(args.start, args.end, ("--start", "--end"))
    check_output(args.output)
    sql, params = slice_sql(args.table, args.coin or None, start, end, args.interval or None)
    con = read_only(s, args.command)
    rows = 0

    def counted(batches: pa.RecordBatchReader) -> Iterator[pa.RecordBatch]:
        nonlocal rows
        for batch in batches:
            rows += batch.num_rows
            yield batch

    try:
        if args.coin:
            check_coin(con, args.coin, "--coin", table=args.table)
        batches = con.sql(sql, params=params or None).to_arrow_reader(EXPORT_BATCH_ROWS)
        with output_file(args.output) as f:
            for chunk in encode(counted(batches), batches.schema, fmt):
                f.write(chunk)
    except duckdb.Error as err:
        raise CliError(f"export failed: {str(err).splitlines()[0]}") from err
    finally:
        con.close()
    print(f"wrote {rows} rows to {args.output}")
    return 0


def data_end(con: duckdb.DuckDBPyConnection) -> int:
    """The data's last instant (ms): the trades' watermark, else the last stored trade, else
    the wall clock (an empty database)."""
    wm, _ = watermark_and_holes(con)
    if wm is not None:
        return wm
    # every row fetched: a result left unfinished blocks the connection
    ((last,),) = con.execute("SELECT epoch_ms(max(time)) FROM history.trades").fetchall()
    return int(last) if last is not None else int(time.time() * 1000)


VWAP_FIGURES = 8  # in the table (a mean of prices of 5 significant figures); files keep every digit


def cmd_candles(args: argparse.Namespace) -> int:
    s = settings_from(args)
    start, end = time_range_ms(args.start, args.end, ("--start", "--end"))
    fmt = output_format(args.format, args.output)
    if args.output:
        check_output(args.output)
    con = read_only(s, args.command)
    try:
        if end is None:
            end = data_end(con)
            if start is not None and start > end:
                raise CliError(f"--start {iso_ms(start)} is after the data's end ({iso_ms(end)}, the trades' "
                               "watermark): pass an earlier --start, or --end too")
        start = end - HOUR_MS if start is None else start
        # intervals not stored are derived on read, as `/v1/candles` does
        frame = read_candles(con, args.coin, args.interval, start, end, fill=not args.no_fill,
                             stored=s.candle_intervals)
        if frame.is_empty():
            check_coin(con, args.coin, "--coin")
    finally:
        con.close()
    frame = frame.drop("t_first", "t_last").with_columns(round_volume(frame["v"]), round_volume(frame["vq"]))
    if fmt == "table":  # times as ISO, not epoch ms; the volume-weighted price to 8 figures
        frame = frame.with_columns(*(pl.from_epoch(pl.col(c), time_unit="ms") for c in ("t", "T")),
                                   pl.col("vwap").round_sig_figs(VWAP_FIGURES))
    write_frame(frame, fmt, args.output)
    return 0
