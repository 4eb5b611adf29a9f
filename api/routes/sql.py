"""`POST /v1/sql`: read-only SQL over DuckDB and the lake, locked four ways.

1. read-only: the query runs in a read-only transaction on a DuckDB instance without external
   access or configuration changes (`api.readonly`), after `api.sqlguard` has accepted it as
   one SELECT / WITH / EXPLAIN statement that touches no file, URL, extension or setting;
2. bounded memory: DuckDB's `memory_limit` (`db_memory_limit`) for what it accounts for; a
   query that grows the server's resident memory by more than 1.5 x `db_memory_limit` anyway
   is interrupted (`api.sqllimits.MemoryWatch`); amplifying functions take literal sizes
   (`api.sqllimits`), and the result has a size cap (`sql_max_result_bytes`) -> 400;
3. a time limit (`sql_timeout_s`) -> 408: DuckDB is interrupted at the limit, and the answer
   goes out within a second of it even while DuckDB finishes the call it is in;
4. a row cap (`sql_max_rows`): one extra row is fetched to report `truncated`.

Results: JSON (`columns`, `types`, `rows`, `row_count`, `truncated`, `elapsed_ms`), or CSV,
NDJSON or Parquet with `X-Row-Count`, `X-Truncated` (always false) and `X-Elapsed-Ms`
headers: a file cannot say it was cut short, so a result over the row cap is a 400 there.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from typing import Any

import duckdb
import orjson
import pyarrow as pa
import pyarrow.compute  # noqa: F401 - pa.compute
from fastapi import APIRouter, Depends, Request, Response
from fastapi.responses import StreamingResponse

from api import sqlguard
from api.deps import State
from api.errors import BadRequest, SqlBusy, SqlError, SqlRefused, SqlTimeout, SqlTooLarge
from api.params import known_query_params
from api.reader import ANSWER_GRACE_S, Con, TimeLimit, in_thread, ingest_first, run_limited
from api.sqllimits import MemoryWatch, query_memory_budget
from api.state import AppState
from etl.config import Settings
from etl.formats import MEDIA_TYPES, encode, json_bytes

router = APIRouter(dependencies=[Depends(known_query_params)])
log = logging.getLogger("nodetap.sql")

SQL_FORMATS = ("json", *MEDIA_TYPES)


@dataclass
class Result:
    schema: pa.Schema
    types: list[str]
    batches: list[pa.RecordBatch]
    rows: int
    truncated: bool
    elapsed_ms: float


# the body is read as it comes (JSON, or the SQL itself); described here for /docs
SQL_BODY = {"required": True, "content": {
    "application/json": {
        "schema": {"type": "object", "required": ["sql"], "additionalProperties": False,
                   "properties": {"sql": {"type": "string"},
                                  "format": {"type": "string", "enum": list(SQL_FORMATS)}}},
        "example": {"sql": "SELECT coin, count(*) AS trades FROM trades GROUP BY coin ORDER BY trades DESC"}},
    "text/plain": {"schema": {"type": "string"},
                   "example": "SELECT * FROM candles WHERE coin = 'BTC' LIMIT 10"}}}


@router.post("/v1/sql", openapi_extra={"requestBody": SQL_BODY})
async def run_sql(state: State, request: Request, format: str | None = None) -> Response:
    """Run one read-only query. Body: `{"sql": "...", "format": "json|csv|ndjson|parquet"}`
    (read as JSON whatever the Content-Type), or the SQL as plain text; `?format=` overrides
    the body's format."""
    sql, body_format = await _read_body(request)
    fmt = format or body_format or "json"
    if fmt not in SQL_FORMATS:
        raise BadRequest(f"unknown format {fmt!r}; choose from {', '.join(SQL_FORMATS)}")
    result = await _run(state, sql)
    if fmt == "json":
        return Response(await asyncio.to_thread(_json, result), media_type="application/json")
    if result.truncated:  # a file has no place to say it is cut short: it holds the whole answer
        cap = state.settings.sql_max_rows
        raise SqlTooLarge(f"the result has more than {cap} rows (setting sql_max_rows), and a {fmt} "
                          f"file holds the whole result or nothing: add LIMIT {cap} for the first "
                          f"{cap}, aggregate, or export whole tables with GET /v1/export/{{table}}.{fmt}")
    headers = {
        "X-Row-Count": str(result.rows),
        "X-Truncated": "true" if result.truncated else "false",
        "X-Elapsed-Ms": f"{result.elapsed_ms:.1f}",
        "Content-Disposition": f'attachment; filename="query.{fmt}"',
    }
    return StreamingResponse(encode(result.batches, result.schema, fmt), media_type=MEDIA_TYPES[fmt],
                             headers=headers)


async def _read_body(request: Request) -> tuple[str, str | None]:
    """(sql, format) of the body. A body that is a JSON object is read as JSON whatever its
    Content-Type says (`curl -d '{"sql": ...}'` sends a form type; no SQL starts with `{`);
    any other body is the SQL itself, even one declared JSON, unless it is JSON (no SQL
    statement is)."""
    raw = (await request.body()).removeprefix(b"\xef\xbb\xbf")  # a UTF-8 BOM
    declared_json = "json" in request.headers.get("content-type", "application/json")
    if not raw.lstrip().startswith(b"{") and not (declared_json and _is_json(raw)):
        sql = raw.decode("utf-8", "replace")
        fmt = None
    else:
        try:
            body = orjson.loads(raw)
        except orjson.JSONDecodeError as err:
            example = '{"sql": "SELECT ...", "format": "json"}'
            raise BadRequest(f"the body must be JSON like {example}: {err}") from None
        if not isinstance(body, dict) or not isinstance(body.get("sql"), str):
            raise BadRequest('the body must be a JSON object with the query in "sql" (a string)')
        unknown = sorted(set(body) - {"sql", "format"})
        if unknown:
            raise BadRequest(f"unknown body key(s) {', '.join(unknown)}; valid keys: sql, format")
        sql, fmt = body["sql"], body.get("format")
        if fmt is not None and not isinstance(fmt, str):
            raise BadRequest(f"format must be a string, one of {', '.join(SQL_FORMATS)}")
    if not sql.strip():
        raise BadRequest("no SQL given")
    return sql, fmt


def _is_json(raw: bytes) -> bool:
    try:
        orjson.loads(raw)
    except orjson.JSONDecodeError:
        return False
    return True


ARROW_BATCH_ROWS = 256
_running: dict[int, int] = {}  # queries in flight per app state (event loop only)


def _timeout(limit_s: float) -> SqlTimeout:
    return SqlTimeout(f"query interrupted after {limit_s:g} s (setting sql_timeout_s)")


async def _run(state: AppState, sql: str) -> Result:
    """`execute` in a worker thread; answers 408 by the deadline even if DuckDB is still inside
    one call (its thread then finishes on its own and frees its slot)."""
    s = state.settings
    key = id(state)
    if _running.get(key, 0) >= s.sql_max_concurrent:
        raise SqlBusy(f"{s.sql_max_concurrent} SQL queries are running already; retry later "
                      "(setting sql_max_concurrent)")
    _running[key] = _running.get(key, 0) + 1
    started = time.monotonic()

    def release(done: asyncio.Future[Result]) -> None:
        _running[key] -= 1
        # read the outcome, so an abandoned query's error is not reported as never retrieved
        error = None if done.cancelled() else done.exception()
        elapsed = time.monotonic() - started
        if elapsed > s.sql_timeout_s + ANSWER_GRACE_S:
            log.warning("event=sql_overran_limit elapsed_s=%.1f timeout_s=%s error=%r",
                        elapsed, s.sql_timeout_s, str(error) if error else None)

    return await in_thread(lambda: run_limited(state, lambda con, limit: execute(con, limit, s, sql)),
                           s.sql_timeout_s, lambda: _timeout(s.sql_timeout_s), on_done=release)


def execute(con: Con, limit: TimeLimit, s: Settings, sql: str) -> Result:
    """Check and run `sql` on `con` (read-only, interrupted by `limit` after `sql_timeout_s`);
    at most `sql_max_rows` rows are kept (one more is fetched to tell whether there were more)."""
    cap = s.sql_max_rows
    watch = MemoryWatch(limit.interrupt, query_memory_budget(s.db_memory_limit),
                        stop_when=lambda: limit.relieved)
    t0 = time.perf_counter()
    try:
        big_values = sqlguard.check(con, sql)
        if limit.relieved:  # ingestion asked for the memory while the query was being checked
            raise ingest_first()
        watch.begin()
        rel = con.sql(sql)
        if rel is None:  # the guard only lets queries through; this is a belt to its braces
            raise SqlError("the statement returned no result")
        types = [str(t) for t in rel.types]
        # small batches: a row may hold a large value, and a batch is built whole before the
        # result's size is checked
        # a row at a time where a column may hold a value built from many rows
        reader = rel.to_arrow_reader(1 if big_values else max(1, min(cap + 1, ARROW_BATCH_ROWS)))
        schema = reader.schema
        batches: list[pa.RecordBatch] = []
        rows = nbytes = 0
        for batch in reader:
            batches.append(batch)
            rows += batch.num_rows
            nbytes += batch.nbytes
            if nbytes > s.sql_max_result_bytes:
                raise SqlTooLarge(f"the result is over {s.sql_max_result_bytes} bytes (setting "
                                  "sql_max_result_bytes); select fewer or smaller columns, or fewer rows")
            if rows > cap:
                break
        reader.close()
    except (duckdb.Error, pa.ArrowException, MemoryError, OSError) as err:  # Arrow: OSError too
        if limit.relieved:
            raise ingest_first() from None
        if watch.tripped:
            raise _memory_error(watch.budget, s.db_memory_limit) from None
        raise _error(err, limit.fired, s.sql_timeout_s, s.db_memory_limit) from None
    finally:
        watch.end()
    if watch.tripped:  # over the budget in its last step, and done before the interrupt landed
        raise _memory_error(watch.budget, s.db_memory_limit)
    truncated = rows > cap
    if truncated:
        batches = _head(batches, cap)
        rows = cap
    return Result(schema, types, batches, rows, truncated, round((time.perf_counter() - t0) * 1000, 1))


def _memory_error(budget: int, memory: str) -> SqlTooLarge:
    return SqlTooLarge(f"the query was stopped: it grew the server's memory by more than {budget >> 20} MiB "
                       f"(1.5 x db_memory_limit = {memory}); ask for less (setting db_memory_limit)")


def _error(err: Exception, fired: bool, timeout_s: float, memory: str) -> Exception:
    """The API error for what DuckDB (or Arrow, converting its result) raised."""
    if fired or isinstance(err, duckdb.InterruptException):
        return _timeout(timeout_s)
    if isinstance(err, duckdb.OutOfMemoryException | pa.ArrowCapacityError | MemoryError):
        return SqlTooLarge(f"the query needs more memory than the server allows ({memory}, setting "
                           f"db_memory_limit): {err}")
    if isinstance(err, duckdb.TransactionException) and "read-only" in str(err):
        return SqlRefused(f"the SQL endpoint is read-only: {err}")
    if isinstance(err, duckdb.PermissionException):
        return SqlRefused(f"file access is not allowed from SQL: {err}")
    if isinstance(err, pa.ArrowException):
        return SqlTooLarge(f"the result cannot be converted: {err}")
    return SqlError(str(err))


def _head(batches: list[pa.RecordBatch], n: int) -> list[pa.RecordBatch]:
    out = []
    for batch in batches:
        if n <= 0:
            break
        out.append(batch.slice(0, n))
        n -= min(n, batch.num_rows)
    return out


def _pylist(col: pa.Array) -> list[Any]:
    """A column's values for JSON; as text where Python cannot hold them (a timestamp of
    'infinity' or past year 9999)."""
    try:
        values: list[Any] = col.to_pylist()
    except (OverflowError, ValueError, pa.ArrowException):
        try:
            values = pa.compute.cast(col, pa.string()).to_pylist()
        except pa.ArrowException:
            values = [None if not v.is_valid else str(v) for v in col]
    return values


def _json(result: Result) -> bytes:
    rows: list[Any] = []
    for batch in result.batches:
        values = [_pylist(col) for col in batch.columns]
        rows.extend(list(r) for r in zip(*values, strict=True))
    return json_bytes({
        "columns": result.schema.names,
        "types": result.types,
        "rows": rows,
        "row_count": result.rows,
        "truncated": result.truncated,
        "elapsed_ms": result.elapsed_ms,
    })
