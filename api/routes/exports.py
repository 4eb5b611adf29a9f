"""Exports: `GET /v1/export/<table>.<fmt>`, streamed from `history.<table>` in constant memory.

Rows come from DuckDB as Arrow record batches (`api.reader.Batches`: read-only, each batch
within `sql_timeout_s`) and each batch is encoded and sent as it arrives (`etl.formats`:
Parquet row groups through a small sink drained per batch), so neither the table size nor the
time range changes the server's memory. Rows are in storage order (sealed lake hours, then the
live store in arrival order): sorting would hold the whole slice.
"""

from __future__ import annotations

import re
from collections.abc import Iterator

from fastapi import APIRouter, Depends
from fastapi.responses import StreamingResponse

from api.deps import Read, State
from api.errors import BadRequest, NotFound
from api.params import known_query_params, parse_range
from api.reader import Batches, Con
from etl.formats import FORMATS, MEDIA_TYPES, encode
from etl.history import EXPORT_BATCH_ROWS, HistoryError, check_coin, check_export, slice_sql
from etl.schema import TABLES

router = APIRouter(dependencies=[Depends(known_query_params)])



@router.get("/v1/export/{table}.{fmt}")
async def export(
    table: str,
    fmt: str,
    state: State,
    read: Read,
    coin: str | None = None,
    start: str | None = None,
    end: str | None = None,
    interval: str | None = None,
) -> StreamingResponse:
    """Rows of `history.<table>` (orders, fills, trades, candles) as Parquet (zstd), CSV or
    NDJSON. Filters: `coin`, `start` (inclusive) and `end` (exclusive), each epoch ms or ISO,
    on `time` (candles: on the open time `t`), and `interval` for candles. A coin with no row in
    the table and no candle is a 404 naming the known coins."""
    if table not in TABLES:
        raise NotFound(f"unknown export table {table!r}; choose from {', '.join(TABLES)}")
    if fmt not in MEDIA_TYPES:
        raise NotFound(f"unknown export format {fmt!r}; choose from {', '.join(FORMATS)}")
    try:  # the checks `nodetap export` makes too
        check_export(table, interval or None, state.settings.candle_intervals)
    except HistoryError as err:
        raise BadRequest(str(err)) from None
    start_ms, end_ms = parse_range(start, end)
    if coin:  # a typo (`btc`) is a 404 naming the known coins, not an empty file
        await read(lambda con: _known_coin(con, table, coin))
    sql, params = slice_sql(table, coin or None, start_ms, end_ms, interval or None,
                            ordered=False, protocol_names=True)
    batches = await read.batches(sql, params, EXPORT_BATCH_ROWS)
    name = "-".join(p for p in (table, safe_name(coin) if coin else "", interval or "") if p)
    return StreamingResponse(
        _stream(batches, fmt),
        media_type=MEDIA_TYPES[fmt],
        headers={"Content-Disposition": f'attachment; filename="{name}.{fmt}"'},
    )


def _known_coin(con: Con, table: str, coin: str) -> None:
    try:
        check_coin(con, coin, table=table)
    except HistoryError as err:
        raise NotFound(str(err)) from None


def safe_name(text: str) -> str:
    """A file-name-safe form of a coin (`PURR/USDC` -> `PURR_USDC`, `@107` -> `107`)."""
    return re.sub(r"[^A-Za-z0-9_-]+", "_", text).strip("_") or "coin"


def _stream(batches: Batches, fmt: str) -> Iterator[bytes]:
    # a sync generator: Starlette runs each step in its thread pool, off the event loop
    try:
        yield from encode(batches, batches.schema, fmt)
    finally:
        batches.close()
