"""The rule fields of order-status lines, read by DuckDB's JSON reader.

`etl/prefilter.py` needs a few fields of every line (the rules' and the required ones) to
decide which lines to decode whole. DuckDB's `json_transform` (yyjson) reads them in about
half the CPU time of Polars' NDJSON decoder on the same fields, and spreads the batch over
the cores (docs/benchmarks.md). The batch is handed over without a copy: an Arrow string
array whose offsets are the lines' starts in the read buffer.

The values must be what the full decoder (`etl.parse.parse`) would make of the same line,
because a line the rules drop here is never decoded again. Where DuckDB converts what Polars
refuses or renders otherwise, the line is marked `unsure` and the pre-filter decodes it
whole, whatever the rules say:

- any backslash in the line (an escape: the two decoders treat bad ones differently);
- `oid` not a JSON integer (DuckDB casts `"5"`, `5.0` and `3e11`; Polars refuses them);
- `isTrigger` not `true`, `false` or `null` (DuckDB casts `"true"` and `1`);
- a string field compared with the rules' strings (user, status, coin, side, orderType)
  holding a float, an object or an array (DuckDB writes `1e-07` and `{"a":1}` where Polars
  writes `0.0000001` and `{"a": 1}`; `time`, `limitPx` and `origSz` are parsed afterwards
  into the same timestamp or float from either);
- in block envelopes, `events` present but not a list, or a line that is not an object.

A batch DuckDB cannot read at all (a line that is not JSON, or not UTF-8) raises; the caller
then decodes it whole.
"""

from __future__ import annotations

import os
import threading

import duckdb
import numpy as np
import polars as pl
import pyarrow as pa

_STRINGS = ("time", "user", "status")
_ORDER_STRINGS = ("coin", "side", "limitPx", "origSz", "orderType")
# a float, an object or an array as DuckDB renders it into a VARCHAR
_NOT_A_STRING = r"^(?:[{\[]|-?[0-9]+[.e]|-?inf|nan)"


def _structure() -> str:
    event = ",".join(f'"{k}":"VARCHAR"' for k in _STRINGS)
    order = ",".join([f'"{k}":"VARCHAR"' for k in _ORDER_STRINGS] + ['"oid":"JSON"', '"isTrigger":"JSON"'])
    return "{" + event + ',"order":{' + order + "}}"


_EVENT = _structure()
_ORDER_STRUCT = ", ".join(f'"{k}" := e."order"."{k}"' for k in _ORDER_STRINGS)
_OID = "CAST(e.\"order\".oid AS VARCHAR)"
_TRIGGER = "CAST(e.\"order\".\"isTrigger\" AS VARCHAR)"
_SELECT = f"""
    e.time, e.user, e.status,
    struct_pack({_ORDER_STRUCT}, oid := TRY_CAST({_OID} AS BIGINT),
                "isTrigger" := CASE {_TRIGGER} WHEN 'true' THEN true WHEN 'false' THEN false END) AS "order",
    ({_OID} <> 'null' AND CAST(TRY_CAST({_OID} AS BIGINT) AS VARCHAR) IS DISTINCT FROM {_OID})
        OR {_TRIGGER} NOT IN ('null', 'true', 'false') AS odd"""
PLAIN_SQL = f"""
SELECT i AS _line, {_SELECT}, contains(line, '\\') AS escaped
FROM (SELECT i, line, json_transform(line, '{_EVENT}') AS e FROM lines)"""
BLOCK_SQL = f"""
WITH b AS (SELECT i, line, json_transform(line, '{{"events":[{_EVENT}]}}').events AS events FROM lines)
SELECT i AS _line, {_SELECT}, false AS escaped
FROM (SELECT i, unnest(events) AS e FROM b)"""
# lines of a block batch to decode whole: escapes, `events` not a list, not an object
BLOCK_ODD_SQL = """
SELECT i FROM (SELECT i, line, json_type(line, '$.events') AS t FROM lines)
WHERE contains(line, '\\')
   OR (t IS NOT NULL AND t NOT IN ('ARRAY', 'NULL'))
   OR (t IS NULL AND json_type(line) IS DISTINCT FROM 'OBJECT')"""


def cores() -> int:
    """CPUs this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


class _Scanner:
    """One in-memory DuckDB for the process; one cursor per thread (a cursor is not shared)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._db: duckdb.DuckDBPyConnection | None = None
        self._local = threading.local()

    def cursor(self) -> duckdb.DuckDBPyConnection:
        con: duckdb.DuckDBPyConnection | None = getattr(self._local, "con", None)
        if con is None:
            with self._lock:
                if self._db is None:
                    self._db = duckdb.connect(":memory:", config={"threads": cores()})
                con = self._db.cursor()
            self._local.con = con
        return con


_SCANNER = _Scanner()


def lines_table(buf: bytes, starts: np.ndarray, ends: np.ndarray, chunks: int) -> pa.Table:
    """The lines of `buf` (newline included) as a string column `line` beside their index `i`,
    without copying `buf`, in `chunks` record batches (DuckDB scans one batch per thread)."""
    n = len(starts)
    offsets = np.empty(n + 1, np.int64)
    offsets[:-1], offsets[-1] = starts, ends[-1] + 1
    line = pa.LargeStringArray.from_buffers(n, pa.py_buffer(offsets), pa.py_buffer(buf))
    table = pa.table({"i": pa.array(np.arange(n, dtype=np.uint32)), "line": line})
    return pa.Table.from_batches(table.to_batches(max_chunksize=max(1, -(-n // chunks))))


def scan_orders(variant: str, buf: bytes, starts: np.ndarray,
                ends: np.ndarray) -> tuple[pl.DataFrame, np.ndarray]:
    """Every order-status event of the batch as `_line`, `time`, `user`, `status` and an `order`
    struct (coin, side, limitPx, origSz, oid, isTrigger, orderType), as the full decoder's
    raw frame has them, and the sorted indexes of the lines to decode whole (see the module's
    docstring). Raises `duckdb.Error` or `UnicodeDecodeError` when the batch cannot be read."""
    if not buf.isascii():
        buf.decode()  # DuckDB takes the strings as they are: invalid UTF-8 raises here instead
    con = _SCANNER.cursor()
    con.register("lines", lines_table(buf, starts, ends, 4 * cores()))
    try:
        events = con.sql(PLAIN_SQL if variant == "plain" else BLOCK_SQL).pl()
        odd_lines = (con.sql(BLOCK_ODD_SQL).pl().get_column("i").to_numpy()
                     if variant != "plain" else np.empty(0, np.uint32))
    finally:
        con.unregister("lines")
    if not events.get_column("_line").is_sorted():
        events = events.sort("_line", maintain_order=True)
    order = pl.col("order").struct
    not_a_string = pl.any_horizontal(
        [pl.col(k).str.contains(_NOT_A_STRING) for k in ("user", "status")]
        + [order.field(k).str.contains(_NOT_A_STRING) for k in ("coin", "side", "orderType")])
    unsure = events.filter(pl.col("odd").fill_null(False) | pl.col("escaped") | not_a_string.fill_null(False))
    odd = np.union1d(unsure.get_column("_line").to_numpy(), odd_lines).astype(np.uint32)
    return events.drop("odd", "escaped"), odd
