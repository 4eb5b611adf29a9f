"""Reading history back: candles with the fill rules, and table slices for exports."""

from __future__ import annotations

from datetime import UTC, datetime

import duckdb
import polars as pl

from etl.candles import (
    CANDLE_SCHEMA,
    INTERVALS,
    MONTH,
    candles,
    close_time_ms,
    fill_forward,
    fixed_width_ms,
    open_time_ms,
)
from etl.lake import ARRIVAL, history_sql, views_root
from etl.schema import CANDLE_DB_NAMES_BACK, CANDLE_DB_SCHEMA, SOURCES, TABLES
from etl.store import fetch_pl, gap_times, watermark

TRADE_SOURCES = SOURCES["candles"]  # stream kinds whose watermark and gaps bound candles
# candles one read may return with empty intervals filled (a year of 1m candles is 525,600): each
# is a row in memory and ~150 bytes of JSON, and a filled stretch has no rows to bound it
MAX_CANDLES = 1_000_000


class HistoryError(ValueError):
    """A bad table, interval, coin or time in a history request."""


SECONDS_LOOK = (1_000_000_000, 100_000_000_000)  # epoch values read as seconds, not milliseconds
# the times Python's datetime can hold (years 1 to 9999), in epoch ms: anything beyond is a typo
MIN_TIME_MS = -62_135_596_800_000
MAX_TIME_MS = 253_402_300_799_999


def parse_time_ms(value: str | int | None, name: str) -> int | None:
    """Milliseconds since the epoch from an int (ms) or an ISO time (UTC when no zone)."""
    if value is None or value == "":
        return None
    if isinstance(value, int):
        return _not_seconds(value, name)
    text = str(value).strip()
    if text.lstrip("-").isdigit():
        return _not_seconds(int(text), name)
    try:
        ts = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError as err:
        raise HistoryError(f"{name}: {value!r} is neither epoch milliseconds nor an ISO time") from err
    if ts.tzinfo is None:
        ts = ts.replace(tzinfo=UTC)
    return int(ts.timestamp() * 1000)


def time_arg_ms(raw: str | None, name: str) -> int | None:
    """A time a user typed (`name` as they typed it: `start`, `--start`) as epoch ms, None if
    absent; a time outside the years 1 to 9999 is refused. Every message shows a valid one."""
    example = f"e.g. {name}=1767610680000 or {name}=2026-01-05T10:58:00Z"
    try:
        value = parse_time_ms(raw, name)
    except HistoryError as err:
        raise HistoryError(f"{err} ({example})") from None
    except (OverflowError, ValueError):
        raise HistoryError(f"{name}: {raw!r} is not a time between the years 1 and 9999 "
                           f"({example})") from None
    if value is not None and not MIN_TIME_MS <= value <= MAX_TIME_MS:
        raise HistoryError(f"{name}: {raw} is out of range: epoch milliseconds from {MIN_TIME_MS} to "
                           f"{MAX_TIME_MS} (years 1 to 9999; {example})")
    return value


def time_range_ms(start: str | None, end: str | None,
                  names: tuple[str, str] = ("start", "end")) -> tuple[int | None, int | None]:
    """`start` and `end` as epoch ms (`time_arg_ms`); an `end` before `start` is refused.
    `names`: how the user typed them (`--start`, `--end` on the command line)."""
    start_ms, end_ms = time_arg_ms(start, names[0]), time_arg_ms(end, names[1])
    if start_ms is not None and end_ms is not None and end_ms < start_ms:
        raise HistoryError(f"{names[1]} ({end}) is before {names[0]} ({start})")
    return start_ms, end_ms


def _not_seconds(ms: int, name: str) -> int:
    """`ms`, unless it looks like epoch seconds: 10 or 11 digits are 2001-5138 in seconds and
    1970-01-12 to 1973-03-03 in milliseconds, a range no node has data in."""
    if SECONDS_LOOK[0] <= ms < SECONDS_LOOK[1]:
        when = datetime.fromtimestamp(ms, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        raise HistoryError(f"{name}: {ms} looks like epoch seconds ({when}); times are epoch "
                           f"milliseconds ({ms * 1000}) or ISO times")
    return ms


def watermark_and_holes(con: duckdb.DuckDBPyConnection) -> tuple[int | None, list[tuple[int, int]]]:
    """The trades sources' watermark (ms) and the time ranges they are missing (gaps, stalls)."""
    wm = watermark(con, TRADE_SOURCES)
    wm_ms = int(wm.replace(tzinfo=UTC).timestamp() * 1000) if wm is not None else None
    holes = []
    for t_from, t_to in gap_times(con, TRADE_SOURCES):
        lo = int(t_from.replace(tzinfo=UTC).timestamp() * 1000) if t_from else 0
        hi = int(t_to.replace(tzinfo=UTC).timestamp() * 1000) if t_to else (wm_ms or lo)
        holes.append((lo, hi))
    return wm_ms, holes


def open_time_of(ms: int, interval: str) -> int:
    """The open time `t` of the `interval` candle holding the instant `ms`."""
    at = pl.from_epoch(pl.lit(ms, dtype=pl.Int64), time_unit="ms")
    return int(pl.select(open_time_ms(at, interval)).item())


def close_time_of(t_ms: int, interval: str) -> int:
    """The close time `T` of the `interval` candle opening at `t_ms`."""
    return int(pl.select(close_time_ms(pl.lit(t_ms, dtype=pl.Int64), interval)).item())


def source_interval(target: str, stored: tuple[str, ...]) -> str | None:
    """The coarsest stored interval whose candles tile `target`'s candles exactly (every
    interval is aligned to the epoch, months to the calendar), or None."""
    def width(label: str) -> int:  # of a fixed interval; a month is whole days
        return fixed_width_ms("1d" if label == MONTH else label) or 0

    def tiles(src: str) -> bool:
        if src == MONTH:
            return target == MONTH
        return width(target) % width(src) == 0

    fits = [s for s in stored if s != target and s in INTERVALS and tiles(s)]
    return max(fits, key=lambda s: width(s) if s != MONTH else 0, default=None)


def roll_up(src: pl.DataFrame, interval: str) -> pl.DataFrame:
    """Candles of a finer interval (CANDLE_SCHEMA, real ones) combined into `interval` candles:
    o of the first, c of the last, h max, l min, v/vq/n summed."""
    if src.is_empty():
        return pl.DataFrame(schema=CANDLE_SCHEMA)
    t = open_time_ms(pl.from_epoch(pl.col("t"), time_unit="ms"), interval)
    out = src.sort("t").with_columns(t.alias("_slot")).group_by("coin", "_slot", maintain_order=True).agg(
        pl.col("o").first(), pl.col("h").max(), pl.col("l").min(), pl.col("c").last(),
        pl.col("v").sum(), pl.col("vq").sum(), pl.col("n").sum(),
        pl.col("t_first").min(), pl.col("t_last").max(),
    ).rename({"_slot": "t"})
    return out.with_columns(
        pl.lit(interval).alias("interval"),
        close_time_ms(pl.col("t"), interval).alias("T"),
        pl.when(pl.col("v") > 0).then(pl.col("vq") / pl.col("v")).alias("vwap"),
        pl.lit(False).alias("filled"),
    ).select(pl.col(name).cast(dtype) for name, dtype in CANDLE_SCHEMA.items())


def _naive(ms: int) -> datetime:
    return datetime.fromtimestamp(ms / 1000, UTC).replace(tzinfo=None)


# trades of one time in the order they arrived (`arrived`): the trades of one block share a
# millisecond, and as the stored candles take them, the first opens a candle, the last closes it
ARRIVAL_ORDER = ", ".join(ARRIVAL)
ARRIVAL_DESC = ", ".join(f"{c} DESC" for c in ARRIVAL)  # after `time DESC`: the last to arrive first


def arrived(con: duckdb.DuckDBPyConnection, table: str = "trades", main: bool = False) -> str:
    """A query of `history.<table>`'s rows with the columns that `ORDER BY time, ARRIVAL_ORDER`
    (or `time DESC, ARRIVAL_DESC`) sorts in the order the node wrote them; `main.<table>`'s
    alone with `main`, or where the database has no `history.*` views."""
    root = None if main else views_root(con)
    if root is None:
        return f"SELECT *, 1 AS _src, 0 AS _part, rowid AS _row FROM main.{table}"
    return history_sql(con, root, table, arrival=True)


def _derived(con: duckdb.DuckDBPyConnection, coin: str, interval: str, start_ms: int, end_ms: int,
             stored: tuple[str, ...]) -> pl.DataFrame:
    """Real `interval` candles from `start_ms`'s candle to `end_ms`'s, plus the last one before
    them (it seeds the fill), computed on read: rolled up from the coarsest stored interval
    that tiles them, else from the trades."""
    first = open_time_of(start_ms, interval)
    last_close = close_time_of(open_time_of(end_ms, interval), interval)
    src = source_interval(interval, stored)
    if src is not None:
        rows = fetch_pl(
            con,
            """SELECT * FROM history.candles WHERE coin = $1 AND interval = $2 AND t <= $4
               AND NOT coalesce(filled, false)
               AND t >= coalesce((SELECT max(t) FROM history.candles WHERE coin = $1 AND interval = $2
                                  AND t < $3 AND NOT coalesce(filled, false)), $3)""",
            [coin, src, first, last_close],
        ).rename({"t_close": "T"})
        return roll_up(rows, interval)
    trades = fetch_pl(
        con,
        f"""SELECT time, coin, px, sz FROM ({arrived(con)}) WHERE coin = $1 AND time < $3
           AND time >= coalesce((SELECT max(time) FROM history.trades WHERE coin = $1 AND time < $2), $2)
           ORDER BY time, {ARRIVAL_ORDER}""",
        [coin, _naive(first), _naive(last_close + 1)],
    )
    return candles(trades, interval)


def read_candles(con: duckdb.DuckDBPyConnection, coin: str, interval: str, start_ms: int,
                 end_ms: int, fill: bool = True, stored: tuple[str, ...] | None = None) -> pl.DataFrame:
    """Candles of one coin and interval with `start_ms <= t <= end_ms`, sorted by `t`, with
    empty intervals forward-filled up to the watermark and never across a gap or stall.

    `stored`: the intervals the store computes (setting candle_intervals); any other interval
    is derived on read, equal to candles computed from the trades. None: `interval` is stored."""
    if interval not in INTERVALS:
        raise HistoryError(f"unknown interval {interval!r}; valid: {' '.join(INTERVALS)}")
    if end_ms < start_ms:
        raise HistoryError("endTime is before startTime")
    if stored is not None and interval not in stored:
        real = _derived(con, coin, interval, start_ms, end_ms, stored)
    else:
        # the last real candle before the range seeds the previous close of a fill
        real = fetch_pl(
            con,
            """SELECT * FROM history.candles WHERE coin = $1 AND interval = $2 AND t <= $4
               AND t >= coalesce((SELECT max(t) FROM history.candles
                                  WHERE coin = $1 AND interval = $2 AND t < $3), $3)
               ORDER BY t""",
            [coin, interval, start_ms, end_ms],
        ).rename({"t_close": "T"})
    if not fill:
        return real.filter(pl.col("t").is_between(start_ms, end_ms)).sort("t")
    wm, holes = watermark_and_holes(con)
    if wm is not None and real.height:
        # filled candles run from the first real one to the watermark: bound them before making them
        first, last = max(start_ms, int(real["t"].min())), min(end_ms, wm)  # type: ignore[arg-type]
        slots = (last - first) // (fixed_width_ms(interval) or 28 * 86_400_000) + 1
        if slots > MAX_CANDLES:
            raise HistoryError(
                f"{slots:,} {interval} candles from {iso_ms(first)} to {iso_ms(last)} (the first candle "
                f"of {coin} in the range to the last trade): at most {MAX_CANDLES:,} a request. Ask a "
                "shorter range (startTime, endTime) or a longer interval")
    return fill_forward(real, interval, start_ms, end_ms, wm, holes)


EXPORT_BATCH_ROWS = 65_536  # rows per Arrow batch, and per Parquet row group, of an export


def iso_ms(ms: int) -> str:
    """Epoch ms as ISO UTC to the second, as messages write a time."""
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def slice_sql(table: str, coin: str | None, start_ms: int | None, end_ms: int | None,
              interval: str | None = None, *, ordered: bool = True,
              protocol_names: bool = False) -> tuple[str, list[object]]:
    """SQL (and parameters) for rows of `history.<table>` with `coin`, `start_ms <= time <
    end_ms` (candles: on the open time `t`) and, for candles, `interval`. `ordered=False`
    streams in storage order (constant memory); `protocol_names` presents the candles' close
    time as `T`, as the API does."""
    if table not in TABLES:
        raise HistoryError(f"unknown table {table!r}; valid: {', '.join(TABLES)}")
    where: list[str] = []
    params: list[object] = []
    if coin:
        params.append(coin)
        where.append(f"coin = ${len(params)}")
    cols = "*"
    if table == "candles":
        time_col, order = "t", "coin, interval, t"
        if interval:
            if interval not in INTERVALS:
                raise HistoryError(f"unknown interval {interval!r}; valid: {' '.join(INTERVALS)}")
            params.append(interval)
            where.append(f"interval = ${len(params)}")
        if protocol_names:
            cols = ", ".join(
                f'"{c}" AS "{CANDLE_DB_NAMES_BACK[c]}"' if c in CANDLE_DB_NAMES_BACK else f'"{c}"'
                for c in CANDLE_DB_SCHEMA
            )
    else:
        time_col, order = "time", "time"
    for bound, op in ((start_ms, ">="), (end_ms, "<")):
        if bound is not None:
            params.append(bound if table == "candles"
                          else datetime.fromtimestamp(bound / 1000, UTC).replace(tzinfo=None))
            where.append(f"{time_col} {op} ${len(params)}")
    sql = f"SELECT {cols} FROM history.{table}"
    if where:
        sql += " WHERE " + " AND ".join(where)
    return (sql + f" ORDER BY {order}" if ordered else sql), params


def check_export(table: str, interval: str | None, stored: tuple[str, ...], *, cli: bool = False) -> None:
    """Refuse an export that would not be what was asked (HistoryError): an unknown table, an
    interval for a table other than candles, or one the store does not compute (setting
    candle_intervals: the others are derived on read, never stored, so their export would be
    empty). `cli`: the message names the command line's flags and the command that derives an
    interval, not the HTTP parameter and route."""
    if table not in TABLES:
        raise HistoryError(f"unknown table {table!r}; valid: {', '.join(TABLES)}")
    if not interval:
        return
    flag = " (--interval)" if cli else ""
    if table != "candles":
        raise HistoryError(f"interval{flag} applies to candles only, not to {table}")
    if interval not in INTERVALS:
        raise HistoryError(f"unknown interval {interval!r}{flag}; valid intervals: {' '.join(INTERVALS)}")
    if interval not in stored:
        derive = (f"`nodetap candles --coin C --interval {interval} --start T --end T --format parquet "
                  "-o FILE` derives them on read" if cli else
                  f"GET /v1/candles?coin=...&interval={interval} derives it on read, as POST /info "
                  "candleSnapshot does")
        raise HistoryError(f"interval {interval!r}{flag} is not stored here (setting candle_intervals: "
                           f"{' '.join(stored)}): {derive}")


KNOWN_COINS_SHOWN = 8


def check_coin(con: duckdb.DuckDBPyConnection, coin: str, flag: str | None = None,
               table: str = "candles") -> None:
    """Refuse a coin with no stored candle (HistoryError), naming a few that have some;
    `flag` is how the caller's user gave the coin (`--coin`), named in the message. With
    another `table` (an export of orders, fills or trades), a coin with rows in it is known
    too, even with no candle (a coin with orders but no trade yet)."""
    tables = ("candles",) if table == "candles" else (table, "candles")
    for name in tables:
        # all rows fetched: a result left unfinished blocks the connection
        if con.execute(f"SELECT 1 FROM history.{name} WHERE coin = $1 LIMIT 1", [coin]).fetchall():
            return
    label = f" ({flag})" if flag else ""
    what = " or ".join(tables)
    union = " UNION ALL ".join(f"SELECT coin FROM history.{name}" for name in tables)
    known = [c for (c,) in con.execute(
        f"SELECT coin FROM ({union}) GROUP BY coin ORDER BY count(*) DESC, coin").fetchall()]
    if not known:
        where = " (--db, setting db)" if flag else ""
        raise HistoryError(f"unknown coin {coin!r}{label}: no {what} are stored in this database yet{where}")
    same = [c for c in known if c.lower() == coin.lower()]
    hint = f" Did you mean {same[0]}?" if same else ""
    shown = ", ".join(known[:KNOWN_COINS_SHOWN]) + (", ..." if len(known) > KNOWN_COINS_SHOWN else "")
    raise HistoryError(f"unknown coin {coin!r}{label}: no {what} of it are stored.{hint} "
                       f"Known coins ({len(known)}): {shown}")


def explain_sql_error(sql: str, message: str) -> str:
    """DuckDB's error `message` for `sql`, with what to do about a syntax error that a column
    named like an SQL keyword causes: `offset` (`cursors`, `file_cursors`, `rejects`) must be
    written in double quotes. Said only where quoting it makes the statement parse. The hint
    ends the message's first line (DuckDB points at the error below it)."""
    if "syntax error" not in message.lower() or not _parses_with_offset_quoted(sql):
        return message
    first, sep, rest = message.partition("\n")
    return (f'{first} (the column offset shares its name with an SQL keyword: write it "offset", '
            f"in double quotes){sep}{rest}")


def _parses_with_offset_quoted(sql: str) -> bool:
    """Whether `sql` parses once its keyword `offset`s are quoted: all of them, or all but
    those of an `OFFSET n` clause."""
    try:
        tokens = duckdb.tokenize(sql)
    except duckdb.Error:
        return False
    found = [i for i, (start, kind) in enumerate(tokens)
             if kind == duckdb.token_type.keyword and sql[start:start + 6].lower() == "offset"
             and not sql[start + 6:start + 7].isalnum()]
    clause = {i for i in found if i + 1 < len(tokens) and tokens[i + 1][1] == duckdb.token_type.numeric_const}
    for quoted in ({*found}, {*found} - clause):
        if not quoted:
            continue
        text, last = [], 0
        for i in sorted(quoted):
            start = tokens[i][0]
            text += [sql[last:start], '"offset"']
            last = start + 6
        try:
            duckdb.extract_statements("".join(text) + sql[last:])
        except duckdb.Error:
            continue
        return True
    return False
