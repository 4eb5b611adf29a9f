"""Order-status lines read by DuckDB's JSON reader.

DuckDB's `json_transform` (yyjson) reads the fields of a batch's lines in about half the CPU
time of Polars' NDJSON decoder (100 against 200 ms for the pre-filter's ten fields of a 64 MiB
batch, 160 against 350 ms for every field), and spreads the batch over the cores
(docs/benchmarks.md). The batch is handed over without a copy: an Arrow string array whose
offsets are the lines' starts in the read buffer.

The pipeline reads `FULL`, every field of a row, with it from block envelopes (etl/parse.py,
batches of 8,192 lines or more): the compiled byte scan (etl/bytescan.py) reads plain lines, in
under half the CPU (100 against 253 ms a 64 MiB batch decoded whole), and the pre-filter's light
read of every variant (fewer fields, at most `LIGHT`); `python -m etl.bench.stages` still times
DuckDB reading the light fields, for comparison. The byte scan does not read an envelope's block
number and time, which a row decoded whole carries. The values must be what
Polars' decoder (`etl.parse.parse`) makes of the same line, because rows are stored or
dropped on them. Where DuckDB converts what Polars refuses or renders otherwise, the line is
returned as `unsure`, and the caller decodes it with Polars:

- any backslash in the line (an escape: the two decoders treat bad ones differently);
- an integer field (`oid`, `timestamp`, `block_number`) not a JSON integer (DuckDB casts
  `"5"`, `5.0` and `3e11`; Polars refuses them);
- a boolean field not `true`, `false` or `null` (DuckDB casts `"true"` and `1`);
- a text field (not `time`, nor the decimals, which are parsed afterwards into the same
  timestamp or float from either) holding a float, an object or an array: DuckDB writes
  `1e-07` and `{"a":1}` where Polars writes `0.0000001` and `{"a": 1}`;
- a text field or a decimal (limitPx, sz, ...) that may be a number out of a double's range:
  DuckDB keeps such a number's own text (`1E400`, `1e309`, 400 digits) where Polars refuses
  the line. Matched loosely: an exponent of three digits, or 300 digits in a row;
- `children` that is not `[]` or `null` (Polars keeps it as its own rendering of the JSON);
- in block envelopes, a line that is not an object, without an `events` list, with a block
  number that is not an integer or has 19 digits or more, or a `block_time` that is not a
  string (checked once per line, so an empty block's envelope too);
- anywhere in the line, what DuckDB's reader takes and Polars' refuses: NaN or Infinity
  literals, trailing commas.

Two differences are left, both in a field nodetap does not read (a key the node does not
write; with the pre-filter's `LIGHT` fields, any field the rules do not read): a number out of
a double's range (`1e400`) and nesting deeper than 1,024. Polars refuses such a line; DuckDB
reads the fields nodetap uses, so the line becomes a row. Finding these would cost a scan of
every number in the batch (44 ms a 64 MiB batch, a quarter of the read), for input no node
writes.

A batch DuckDB cannot read at all (a line that is not JSON, or not UTF-8) raises; the caller
then decodes it with Polars.
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass
from functools import cache

import duckdb
import numpy as np
import polars as pl
import pyarrow as pa

# A query costs ~5 ms whatever its size (the pre-filter ~10 ms in all), and Polars decodes a
# line whole in ~2.5 us: below this many lines, Polars alone is cheaper
MIN_LINES = 8192
# a number out of a double's range as DuckDB renders it into a VARCHAR: its own text (loosely:
# a number with a three-digit exponent, or of 300 digits)
_HUGE = r"^-?[0-9.]+[eE][-+]?[0-9]{3}|^-?[0-9]{300}"
# a float, an object or an array as DuckDB renders it into a VARCHAR, or a huge number
_NOT_A_STRING = r"^(?:[{\[]|-?[0-9]+[.eE]|-?inf|nan)|" + _HUGE
# a decimal DuckDB read from a number out of a double's range, or NaN
_NOT_FINITE = r"^-?(?:inf|nan)|" + _HUGE
# a block number of 19 digits or more, which may not fit a BIGINT (block envelopes)
_BIG_BLOCK = r'"block_number"\s*:\s*-?[0-9]{19}'
# what DuckDB's reader (yyjson, with ALLOW_INF_AND_NAN and ALLOW_TRAILING_COMMAS) takes and
# Polars' refuses, anywhere in a line: NaN or Infinity (any case), a trailing comma. Matched
# loosely (inside strings too: such a line is only decoded by Polars), as literals the regex
# engine finds fast; a comma before whitespace, which the node's compact JSON never has, stands
# for the trailing comma before whitespace. Two searches (5 + 4 ms a 64 MiB batch) cost less
# than one of either (15 ms: commas are everywhere, and too many literals for a fast search).
_LAX = (r"(?i:nan|inf)", r",[ \t\r\n\]}]")


@dataclass(frozen=True)
class Fields:
    """The fields read from an order-status event, by the JSON type the node writes."""

    strings: tuple[str, ...]  # the event's
    order_strings: tuple[str, ...]
    order_ints: tuple[str, ...]
    order_bools: tuple[str, ...]
    texts: tuple[str, ...]  # strings kept as text (`order.` for the order's): checked for floats
    decimals: tuple[str, ...]  # strings parsed as floats: checked for overflow
    children: bool = False
    # strings only checked to be strings (required, compared by no rule): the byte scan makes no
    # value of them (an empty string in the frame; etl/bytescan.py), DuckDB's reader reads them
    checked: tuple[str, ...] = ()


LIGHT = Fields(("time", "user", "status"), ("coin", "side", "limitPx", "origSz", "orderType"),
               ("oid",), ("isTrigger",), ("user", "status", "order.coin", "order.side", "order.orderType"),
               ("order.limitPx", "order.origSz"))
FULL = Fields(("time", "user", "hash", "builder", "status"),
              ("coin", "side", "limitPx", "sz", "triggerCondition", "triggerPx", "orderType", "origSz", "tif",
               "cloid"),
              ("oid", "timestamp"), ("isTrigger", "isPositionTpsl", "reduceOnly"),
              ("user", "hash", "builder", "status", "order.coin", "order.side", "order.triggerCondition",
               "order.orderType", "order.tif", "order.cloid"),
              ("order.limitPx", "order.sz", "order.triggerPx", "order.origSz"),
              children=True)


def _q(name: str) -> str:
    return '"' + name + '"'


def _int(raw: str) -> tuple[str, str]:
    """The value of a JSON-typed leaf as BIGINT, and when it is not a plain JSON integer."""
    text = f"CAST({raw} AS VARCHAR)"
    return (f"TRY_CAST({text} AS BIGINT)",
            f"({text} <> 'null' AND CAST(TRY_CAST({text} AS BIGINT) AS VARCHAR) IS DISTINCT FROM {text})")


def _bool(raw: str) -> tuple[str, str]:
    text = f"CAST({raw} AS VARCHAR)"
    return (f"CASE {text} WHEN 'true' THEN true WHEN 'false' THEN false END",
            f"{text} NOT IN ('null', 'true', 'false')")


def _structure(f: Fields) -> str:
    raw = f.order_ints + f.order_bools + (("children",) if f.children else ())
    order = [f'"{k}":"VARCHAR"' for k in f.order_strings] + [f'"{k}":"JSON"' for k in raw]
    return "{" + ",".join(f'"{k}":"VARCHAR"' for k in f.strings) + ',"order":{' + ",".join(order) + "}}"


def _select(f: Fields, *also_odd: str) -> str:
    """The event's columns as `etl.parse` names them in its raw frame, and `odd` (`also_odd`,
    or a value DuckDB could read otherwise than Polars)."""
    o = 'e."order".'
    members = [f"{_q(k)} := {o}{_q(k)}" for k in f.order_strings]
    odd = list(also_odd)
    for k in f.order_ints:
        value, bad = _int(o + _q(k))
        members.append(f"{_q(k)} := {value}")
        odd.append(bad)
    for k in f.order_bools:
        value, bad = _bool(o + _q(k))
        members.append(f"{_q(k)} := {value}")
        odd.append(bad)
    if f.children:
        text = f'CAST({o}"children" AS VARCHAR)'
        members.append(f'"children" := CASE WHEN {text} = \'[]\' THEN \'[]\' END')
        odd.append(f"{text} NOT IN ('[]', 'null')")
    cols = [f"e.{_q(k)}" for k in f.strings] + [f'struct_pack({", ".join(members)}) AS "order"']
    return ", ".join(cols) + ", " + " OR ".join(odd) + " AS odd"


@cache
def _sql(f: Fields, plain: bool) -> tuple[str, str | None]:
    """The query of every event of the batch, and (block envelopes) that of the odd lines."""
    if plain:
        return (f"SELECT i AS _line, {_select(f)}, contains(line, '\\') AS escaped "
                f"FROM (SELECT i, line, json_transform(line, '{_structure(f)}') AS e FROM lines)"), None
    envelope = f'{{"block_time":"VARCHAR","block_number":"JSON","events":[{_structure(f)}]}}'
    number, bad_number = _int("b.block_number")
    events = (f"WITH b AS (SELECT i, json_transform(line, '{envelope}') AS b FROM lines) "
              f"SELECT i AS _line, b.block_time AS block_time, {number} AS block_number, "
              f"{bad_number} AS odd_block, unnest(b.events) AS e FROM b")
    query = (f"SELECT _line, block_time, block_number, {_select(f, 'odd_block')}, false AS escaped "
             f"FROM ({events})")
    # a line that is not an object, without an `events` list, whose block number is not an
    # integer or whose block time is not a string (checked here, not per event: an empty block
    # has none). A block number over BIGINT's range (19 digits) is found by `_BIG_BLOCK`
    odd_lines = ("SELECT i FROM (SELECT i, line, json_type(line, ['$.events', '$.block_number', "
                 "'$.block_time']) AS t FROM lines) WHERE contains(line, '\\') OR t[1] IS DISTINCT FROM "
                 "'ARRAY' OR t[2] NOT IN ('UBIGINT', 'BIGINT', 'NULL') OR t[3] NOT IN ('VARCHAR', 'NULL')")
    return query, odd_lines


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


LINES = pa.large_string()


def line_array(buf: bytes, starts: np.ndarray, ends: np.ndarray, kind: pa.DataType = LINES) -> pa.Array:
    """The lines of `buf` (each with its newline) as one Arrow array over `buf`, without a copy."""
    offsets = np.empty(len(starts) + 1, np.int64)
    offsets[:-1] = starts
    offsets[-1] = ends[-1] + 1 if len(ends) else 0
    return pa.Array.from_buffers(kind, len(starts), [None, pa.py_buffer(offsets), pa.py_buffer(buf)])


def lines_table(buf: bytes, starts: np.ndarray, ends: np.ndarray, chunks: int) -> pa.Table:
    """The lines of `buf` (newline included) as a string column `line` beside their index `i`,
    without copying `buf`, in `chunks` record batches (DuckDB scans one batch per thread)."""
    n = len(starts)
    line = line_array(buf, starts, ends)
    table = pa.table({"i": pa.array(np.arange(n, dtype=np.uint32)), "line": line})
    return pa.Table.from_batches(table.to_batches(max_chunksize=max(1, -(-n // chunks))))


def scan_orders(variant: str, buf: bytes, starts: np.ndarray, ends: np.ndarray,
                fields: Fields = LIGHT) -> tuple[pl.DataFrame, np.ndarray]:
    """Every order-status event of the batch with `fields`, shaped as `etl.parse`'s raw frame
    (`_line`, the event's fields, an `order` struct, and for block envelopes `block_time` and
    `block_number`), and the sorted indexes of the lines to decode with Polars (the module's
    docstring). Raises `duckdb.Error` or `UnicodeDecodeError` when the batch cannot be read."""
    if not buf.isascii():
        buf.decode()  # DuckDB takes the strings as they are: invalid UTF-8 raises here instead
    query, odd_query = _sql(fields, variant == "plain")
    con = _SCANNER.cursor()
    lines = lines_table(buf, starts, ends, 4 * cores())
    text = pl.Series(lines.column("line")).str
    lax_mask = text.contains(_LAX[0]) | text.contains(_LAX[1])
    if variant != "plain":
        lax_mask |= text.contains(_BIG_BLOCK)
    lax = lax_mask.arg_true().to_numpy()
    con.register("lines", lines)
    try:
        events = con.sql(query).pl()
        odd_lines = (con.sql(odd_query).pl().get_column("i").to_numpy() if odd_query is not None
                     else np.empty(0, np.uint32))
    finally:
        con.unregister("lines")
    if not events.get_column("_line").is_sorted():
        events = events.sort("_line", maintain_order=True)
    order = pl.col("order").struct

    def col(name: str) -> pl.Expr:
        return order.field(name[6:]) if name.startswith("order.") else pl.col(name)

    other = pl.any_horizontal([col(k).str.contains(_NOT_A_STRING) for k in fields.texts]
                              + [col(k).str.contains(_NOT_FINITE) for k in fields.decimals])
    unsure = events.filter(pl.col("odd").fill_null(False) | pl.col("escaped") | other.fill_null(False))
    odd = np.union1d(np.union1d(unsure.get_column("_line").to_numpy(), odd_lines), lax).astype(np.uint32)
    return events.drop("odd", "escaped"), odd
