"""`POST /v1/sql`: read-only SQL over DuckDB and the lake, locked four ways.

1. read-only: one SELECT / WITH / EXPLAIN statement, as DuckDB's parser sees it;
2. nothing outside the database: no file, URL, extension, setting or state change
   (`api.sqlguard` walks the statement's syntax tree);
3. a time limit that interrupts the running query (`sql_timeout_s`) -> 408;
4. a row cap (`sql_max_rows`): one extra row is fetched to report `truncated`.

Results: JSON (`columns`, `types`, `rows`, `row_count`, `truncated`, `elapsed_ms`), or CSV,
NDJSON or Parquet with `X-Row-Count`, `X-Truncated` and `X-Elapsed-Ms` headers.
"""

from __future__ import annotations

import asyncio
import threading
import time
from dataclasses import dataclass
from typing import Any

import duckdb
import orjson
import pyarrow as pa
from fastapi import APIRouter, Request, Response
from fastapi.responses import StreamingResponse

from api import sqlguard
from api.deps import State
from api.errors import BadRequest, SqlError, SqlTimeout
from api.routes.exports import MEDIA_TYPES, encode, json_bytes
from api.state import AppState

router = APIRouter()

SQL_FORMATS = ("json", *MEDIA_TYPES)


@dataclass
class Result:
    schema: pa.Schema
    types: list[str]
    batches: list[pa.RecordBatch]
    rows: int
    truncated: bool
    elapsed_ms: float


@router.post("/v1/sql")
async def run_sql(state: State, request: Request, format: str | None = None) -> Response:
    """Run one read-only query. Body: `{"sql": "...", "format": "json|csv|ndjson|parquet"}`
    (or the SQL as plain text); `?format=` overrides the body's format."""
    sql, body_format = await _read_body(request)
    fmt = format or body_format or "json"
    if fmt not in SQL_FORMATS:
        raise BadRequest(f"unknown format {fmt!r}; choose from {', '.join(SQL_FORMATS)}")
    result = await asyncio.to_thread(execute, state, sql)
    if fmt == "json":
        return Response(await asyncio.to_thread(_json, result), media_type="application/json")
    headers = {
        "X-Row-Count": str(result.rows),
        "X-Truncated": "true" if result.truncated else "false",
        "X-Elapsed-Ms": f"{result.elapsed_ms:.1f}",
        "Content-Disposition": f'attachment; filename="query.{fmt}"',
    }
    return StreamingResponse(encode(result.batches, result.schema, fmt), media_type=MEDIA_TYPES[fmt],
                             headers=headers)


async def _read_body(request: Request) -> tuple[str, str | None]:
    raw = await request.body()
    if "json" not in request.headers.get("content-type", "application/json"):
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


def execute(state: AppState, sql: str) -> Result:
    """Check and run `sql` on a fresh reader, interrupting it after `sql_timeout_s`; at most
    `sql_max_rows` rows are kept (one more is fetched to tell whether there were more)."""
    s = state.settings
    cap = s.sql_max_rows
    con = state.reader()
    lock = threading.Lock()
    finished = False
    fired = False

    def interrupt() -> None:
        nonlocal fired
        with lock:
            if not finished:
                fired = True
                con.interrupt()

    timer = threading.Timer(s.sql_timeout_s, interrupt)
    timer.daemon = True
    t0 = time.perf_counter()
    try:
        sqlguard.check(con, sql)
        timer.start()
        rel = con.sql(sql)
        if rel is None:  # the guard only lets queries through; this is a belt to its braces
            raise SqlError("the statement returned no result")
        types = [str(t) for t in rel.types]
        reader = rel.to_arrow_reader(max(1, min(cap + 1, 65_536)))
        schema = reader.schema
        batches: list[pa.RecordBatch] = []
        rows = 0
        for batch in reader:
            batches.append(batch)
            rows += batch.num_rows
            if rows > cap:
                break
        reader.close()
    except duckdb.Error as err:
        if fired:
            raise SqlTimeout(
                f"query interrupted after {s.sql_timeout_s:g} s (setting sql_timeout_s)") from None
        raise SqlError(str(err)) from None
    finally:
        with lock:
            finished = True
        timer.cancel()
        con.close()
    truncated = rows > cap
    if truncated:
        batches = _head(batches, cap)
        rows = cap
    return Result(schema, types, batches, rows, truncated, round((time.perf_counter() - t0) * 1000, 1))


def _head(batches: list[pa.RecordBatch], n: int) -> list[pa.RecordBatch]:
    out = []
    for batch in batches:
        if n <= 0:
            break
        out.append(batch.slice(0, n))
        n -= min(n, batch.num_rows)
    return out


def _json(result: Result) -> bytes:
    rows: list[Any] = []
    for batch in result.batches:
        values = [col.to_pylist() for col in batch.columns]
        rows.extend(list(r) for r in zip(*values, strict=True))
    return json_bytes({
        "columns": result.schema.names,
        "types": result.types,
        "rows": rows,
        "row_count": result.rows,
        "truncated": result.truncated,
        "elapsed_ms": result.elapsed_ms,
    })
