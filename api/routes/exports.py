"""Exports: `GET /v1/export/<table>.<fmt>`, streamed from `history.<table>` in constant memory.

Rows come from DuckDB as Arrow record batches and each batch is encoded and sent as it
arrives (Parquet row groups through a small sink drained per batch), so neither the table
size nor the time range changes the server's memory. Rows are in storage order (sealed
lake hours, then the live store in arrival order): sorting would hold the whole slice.
The encoders here are also used by `POST /v1/sql`.
"""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import decimal
import io
import re
from collections.abc import Iterable, Iterator
from typing import Any

import duckdb
import orjson
import pyarrow as pa
import pyarrow.csv as pa_csv
import pyarrow.parquet as pq
from fastapi import APIRouter
from fastapi.responses import StreamingResponse

from api.deps import State
from api.errors import BadRequest, NotFound
from api.routes.snapshots import check_interval, parse_time
from api.state import AppState
from etl.history import slice_sql
from etl.lake import TABLES

router = APIRouter()

MEDIA_TYPES = {
    "parquet": "application/vnd.apache.parquet",
    "csv": "text/csv; charset=utf-8",
    "ndjson": "application/x-ndjson",
}
FORMATS = tuple(MEDIA_TYPES)
EXPORT_BATCH_ROWS = 65_536  # rows per Arrow batch, and per Parquet row group


@router.get("/v1/export/{table}.{fmt}")
async def export(
    table: str,
    fmt: str,
    state: State,
    coin: str | None = None,
    start: str | None = None,
    end: str | None = None,
    interval: str | None = None,
) -> StreamingResponse:
    """Rows of `history.<table>` (orders, fills, trades, candles) as Parquet (zstd), CSV or
    NDJSON. Filters: `coin`, `start` (inclusive) and `end` (exclusive), each epoch ms or ISO,
    on `time` (candles: on the open time `t`), and `interval` for candles."""
    if table not in TABLES:
        raise NotFound(f"unknown export table {table!r}; choose from {', '.join(TABLES)}")
    if fmt not in MEDIA_TYPES:
        raise NotFound(f"unknown export format {fmt!r}; choose from {', '.join(FORMATS)}")
    if interval and table != "candles":
        raise BadRequest(f"interval applies to candles only, not to {table}")
    if interval:
        check_interval(interval, state.settings)
    start_ms, end_ms = parse_time(start, "start"), parse_time(end, "end")
    if start_ms is not None and end_ms is not None and end_ms < start_ms:
        raise BadRequest(f"end ({end}) is before start ({start})")
    sql, params = slice_sql(table, coin or None, start_ms, end_ms, interval or None,
                            ordered=False, protocol_names=True)
    con, reader = await asyncio.to_thread(_open, state, sql, params)
    name = "-".join(p for p in (table, safe_name(coin) if coin else "", interval or "") if p)
    return StreamingResponse(
        _stream(con, reader, fmt),
        media_type=MEDIA_TYPES[fmt],
        headers={"Content-Disposition": f'attachment; filename="{name}.{fmt}"'},
    )


def safe_name(text: str) -> str:
    """A file-name-safe form of a coin (`PURR/USDC` -> `PURR_USDC`, `@107` -> `107`)."""
    return re.sub(r"[^A-Za-z0-9_-]+", "_", text).strip("_") or "coin"


def _open(state: AppState, sql: str, params: list[object]) -> tuple[duckdb.DuckDBPyConnection,
                                                                     pa.RecordBatchReader]:
    con = state.reader()
    try:
        return con, con.sql(sql, params=params or None).to_arrow_reader(EXPORT_BATCH_ROWS)
    except BaseException:
        con.close()
        raise


def _stream(con: duckdb.DuckDBPyConnection, reader: pa.RecordBatchReader, fmt: str) -> Iterator[bytes]:
    # a sync generator: Starlette runs each step in its thread pool, off the event loop
    try:
        yield from encode(reader, reader.schema, fmt)
    finally:
        reader.close()
        con.close()


# ------------------------------------------------------------------ encoders
class _Sink(io.RawIOBase):
    """A write-only stream that hands out what was written since the last `drain`."""

    def __init__(self) -> None:
        self._chunks: list[bytes] = []
        self._pos = 0

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        chunk = bytes(data)
        self._chunks.append(chunk)
        self._pos += len(chunk)
        return len(chunk)

    def tell(self) -> int:  # Parquet footers hold absolute offsets: count every byte ever written
        return self._pos

    def drain(self) -> bytes:
        out = b"".join(self._chunks)
        self._chunks.clear()
        return out


def encode(batches: Iterable[pa.RecordBatch], schema: pa.Schema, fmt: str) -> Iterator[bytes]:
    """The batches as one `fmt` document (parquet, csv or ndjson), a chunk per batch."""
    if fmt == "ndjson":
        for batch in batches:
            if batch.num_rows:
                yield b"".join(json_bytes(row) + b"\n" for row in batch.to_pylist())
        return
    sink = _Sink()
    if fmt == "parquet":
        writer: Any = pq.ParquetWriter(sink, schema, compression="zstd")
        convert = None
    elif fmt == "csv":
        convert = _csv_columns(schema)
        writer = pa_csv.CSVWriter(sink, _csv_schema(schema, convert))
    else:
        raise ValueError(f"unknown format {fmt!r}")
    try:
        for batch in batches:
            if batch.num_rows:
                writer.write_batch(_to_csv(batch, convert) if convert is not None else batch)
            chunk = sink.drain()
            if chunk:
                yield chunk
    finally:
        writer.close()
    yield sink.drain()


def _plain_csv_type(t: pa.DataType) -> bool:
    return bool(pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_boolean(t)
                or pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_timestamp(t)
                or pa.types.is_date(t) or pa.types.is_time(t) or pa.types.is_decimal(t)
                or pa.types.is_null(t))


def _csv_columns(schema: pa.Schema) -> set[int]:
    """Columns CSV cannot hold as they are (lists, structs, maps, blobs, intervals): sent as JSON."""
    return {i for i, f in enumerate(schema) if not _plain_csv_type(f.type)}


def _csv_schema(schema: pa.Schema, convert: set[int]) -> pa.Schema:
    return pa.schema([pa.field(f.name, pa.string()) if i in convert else f for i, f in enumerate(schema)])


def _to_csv(batch: pa.RecordBatch, convert: set[int]) -> pa.RecordBatch:
    if not convert:
        return batch
    cols = [
        pa.array([None if v is None else json_bytes(v).decode() for v in col.to_pylist()], pa.string())
        if i in convert else col
        for i, col in enumerate(batch.columns)
    ]
    return pa.RecordBatch.from_arrays(cols, schema=_csv_schema(batch.schema, convert))


def _default(value: Any) -> Any:
    if isinstance(value, decimal.Decimal):
        return float(value)
    if isinstance(value, bytes | bytearray | memoryview):
        return base64.b64encode(bytes(value)).decode()
    if isinstance(value, dt.timedelta):
        return value.total_seconds()
    return str(value)


def json_bytes(value: Any) -> bytes:
    """JSON for DuckDB values: decimals as numbers, blobs as base64, NaN as null."""
    return orjson.dumps(value, default=_default, option=orjson.OPT_NON_STR_KEYS)
