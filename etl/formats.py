"""Arrow record batches as one Parquet, CSV or NDJSON document, a chunk per batch: how rows
leave nodetap as files, from `nodetap sql`/`nodetap export` and from `POST /v1/sql` and
`/v1/export` alike.
"""

from __future__ import annotations

import base64
import datetime as dt
import decimal
import io
from collections.abc import Iterable, Iterator
from typing import Any

import orjson
import pyarrow as pa
import pyarrow.csv as pa_csv
import pyarrow.parquet as pq

MEDIA_TYPES = {
    "parquet": "application/vnd.apache.parquet",
    "csv": "text/csv; charset=utf-8",
    "ndjson": "application/x-ndjson",
}
FORMATS = tuple(MEDIA_TYPES)

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
