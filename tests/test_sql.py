"""POST /v1/sql on a real server: read-only, no file/extension/network access, a time limit
that interrupts, a row cap with `truncated`, and JSON / CSV / NDJSON / Parquet results."""

from __future__ import annotations

import asyncio
import io
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import duckdb
import httpx
import polars as pl
import pytest

from api.errors import ReadTimeout
from api.reader import read
from etl.simulate import generate
from tests.conftest import ROOT, ServerThread, free_port, wait_for

CAP = 50
TIMEOUT_S = 1.0



@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerThread]:
    """One server for the module: generated node data across 11:00 UTC, every row kept, and the
    complete 10:00 hour sealed into the lake, so `history.*` reads Parquet files too."""
    from etl.config import Settings

    tmp = tmp_path_factory.mktemp("sql")
    written = generate(tmp / "node", lines=3000, start=datetime(2026, 1, 5, 10, 59, tzinfo=UTC),
                       events_per_block=2.0)
    settings = Settings(node_dir=tmp / "node", db=tmp / "api.duckdb", start_from="start", debounce_ms=5,
                        poll_interval_ms=50, port=free_port(), seal_interval_s=3600.0, keep_all=True,
                        seal_grace_s=0.0, lake_dir=tmp / "lake", sql_timeout_s=TIMEOUT_S, sql_max_rows=CAP,
                        db_memory_limit="512MB", sql_max_result_bytes=1 << 20)
    with ServerThread(settings) as srv, httpx.Client(base_url=srv.url, timeout=30) as client:
        wait_for(lambda: sum(s["lines"] for s in client.get("/v1/status").json()["streams"]) == written)
        lake = srv.state.pipeline.lake()
        assert lake.seal().sealed >= 3  # orders, fills, trades (and candles) of 10:00
        lake.con.close()
        yield srv


@pytest.fixture
def client(server: ServerThread) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, timeout=30) as c:
        yield c


def sql(client: httpx.Client, query: str, **kw: object) -> httpx.Response:
    return client.post("/v1/sql", json={"sql": query, **kw})


def direct(server: ServerThread, query: str) -> list[tuple]:
    """The same query straight on DuckDB (a reader of the server's own database)."""
    con = server.state.reader()
    try:
        return con.execute(query).fetchall()
    finally:
        con.close()


# ------------------------------------------------------------------ results
def test_select_over_history_reads_duckdb_and_the_lake(server: ServerThread, client: httpx.Client) -> None:
    assert list((Path(server.state.settings.lake_dir) / "orders").glob("date=*/hour=*/part-*.parquet"))
    r = sql(client, "SELECT coin, count(*) AS n FROM history.orders GROUP BY coin ORDER BY coin")
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["columns"] == ["coin", "n"]
    assert body["types"] == ["VARCHAR", "BIGINT"]
    expected = direct(server, "SELECT coin, count(*) FROM main.orders GROUP BY coin ORDER BY coin")
    assert [tuple(row) for row in body["rows"]] == expected
    assert body["row_count"] == len(expected) and body["truncated"] is False
    assert body["elapsed_ms"] >= 0
    # the sealed 10:00 hour is read from its Parquet file (the view skips its DuckDB rows)
    (sealed,) = direct(server, "SELECT rows FROM lake_hours WHERE tbl = 'orders' AND NOT dirty")
    r = sql(client, "SELECT count(*) FROM history.orders WHERE time < '2026-01-05 11:00'")
    assert r.json()["rows"] == [[sealed[0]]] and sealed[0] > 0


@pytest.mark.parametrize("query", [
    "WITH c AS (SELECT coin FROM trades) SELECT count(*) FROM c",
    "FROM history.trades SELECT count(*)",
    "EXPLAIN SELECT * FROM history.orders",
    "EXPLAIN ANALYZE SELECT count(*) FROM trades",
    "EXPLAIN (FORMAT json) SELECT 1",
    "DESCRIBE history.candles",
    "SHOW TABLES",
    "SUMMARIZE trades",
    "VALUES (1, 'a')",
    "SELECT list_transform([1, 2], lambda x: x + 1) AS l, current_setting('TimeZone') AS tz",
    "SELECT 1::DECIMAL(10, 2), NULL::STRUCT(a INT, b VARCHAR[]), NULL::MAP(VARCHAR, INT), '[1]'::JSON",
    "SELECT * FROM range(3) r, unnest([1, 2]) u",
    "SELECT table_name FROM duckdb_tables() ORDER BY 1",
    "SELECT name FROM pragma_table_info('orders')",
    "/* a comment */ SELECT 1;",
])
def test_read_only_queries_are_accepted(client: httpx.Client, query: str) -> None:
    r = sql(client, query)
    assert r.status_code == 200, r.text
    assert r.json()["row_count"] >= 1


FILE = "file access is not allowed from SQL"
ONLY = "only a single SELECT, WITH or EXPLAIN statement is accepted"


@pytest.mark.parametrize(("query", "message"), [
    # table functions that read files
    ("SELECT * FROM read_csv('x.csv')", f"read_csv: {FILE}"),
    ("SELECT * FROM read_csv_auto('x.csv')", f"read_csv_auto: {FILE}"),
    ("SELECT * FROM read_parquet('lake/orders/*/*/*.parquet')", f"read_parquet: {FILE}"),
    ("SELECT * FROM read_json('x.json')", f"read_json: {FILE}"),
    ("SELECT * FROM read_json_auto('x.json')", f"read_json_auto: {FILE}"),
    ("SELECT * FROM read_ndjson_objects('x.json')", f"read_ndjson_objects: {FILE}"),
    ("SELECT * FROM parquet_scan('x.parquet')", f"parquet_scan: {FILE}"),
    ("SELECT * FROM parquet_metadata('x.parquet')", f"parquet_metadata: {FILE}"),
    ("SELECT * FROM glob('/etc/*')", f"glob: {FILE}"),
    ("SELECT * FROM read_text('/etc/passwd')", f"read_text: {FILE}"),
    ("SELECT content FROM read_blob('/etc/hostname')", f"read_blob: {FILE}"),
    ("SELECT * FROM sniff_csv('x.csv')", f"sniff_csv: {FILE}"),
    ("SELECT * FROM read_duckdb('other.duckdb')", f"read_duckdb: {FILE}"),
    ("SELECT '/etc/passwd'.read_text()", f"read_text: {FILE}"),
    # ... anywhere in the statement
    ("WITH a AS (SELECT * FROM read_csv('x.csv')) SELECT * FROM a", f"read_csv: {FILE}"),
    ("SELECT * FROM orders WHERE coin IN (SELECT a FROM read_csv('x.csv'))", f"read_csv: {FILE}"),
    ("EXPLAIN SELECT * FROM read_csv('x.csv')", f"read_csv: {FILE}"),
    ("DESCRIBE SELECT * FROM read_parquet('x.parquet')", f"read_parquet: {FILE}"),
    # replacement scans: a file name or URL where a table goes
    ("SELECT * FROM 'orders.csv'", f"'orders.csv': {FILE}"),
    ('SELECT * FROM "data.parquet"', f"'data.parquet': {FILE}"),
    ("FROM 'x.json'", f"'x.json': {FILE}"),
    ("SELECT * FROM (SELECT * FROM '/tmp/*.csv') s", f"'/tmp/*.csv': {FILE}"),
    ("EXPLAIN ANALYZE SELECT * FROM 'x.csv'", f"'x.csv': {FILE}"),
    ("SUMMARIZE 'x.csv'", f"'x.csv': {FILE}"),
    ("SELECT * FROM 'https://example.com/x.parquet'", "network access is not allowed from SQL"),
    ("SELECT * FROM df", "'df': no such table or view"),  # a Python variable scan
    # statements other than one query
    ("ATTACH 'other.duckdb' AS o", f"ATTACH: {FILE}"),
    ("DETACH o", f"DETACH: {FILE}"),
    ("COPY orders TO 'out.csv'", f"COPY: {FILE}"),
    ("COPY (SELECT 1) TO 'out.parquet' (FORMAT parquet)", f"COPY: {FILE}"),
    ("EXPORT DATABASE 'dump'", f"EXPORT DATABASE: {FILE}"),
    ("IMPORT DATABASE 'dump'", f"IMPORT DATABASE: {FILE}"),
    ("EXPLAIN COPY orders TO 'x.csv'", f"EXPLAIN COPY: {FILE}"),
    ("/* hi */ EXPLAIN ANALYZE INSERT INTO orders SELECT * FROM orders", "EXPLAIN INSERT: the SQL endpoint"),
    ("INSTALL httpfs", "INSTALL: extensions cannot be installed or loaded from SQL"),
    ("FORCE INSTALL httpfs", "FORCE INSTALL: extensions cannot be installed or loaded from SQL"),
    ("LOAD httpfs", "LOAD: extensions cannot be installed or loaded from SQL"),
    ("SELECT st_point(1, 2)", "st_point: no such function in this database"),
    ("SELECT '127.0.0.1'::INET", "INET: no such type in this database"),
    ("SELECT NULL::STRUCT(a INET)[]", "INET: no such type in this database"),
    ("SET threads = 8", "SET: settings cannot be changed from SQL"),
    ("SET GLOBAL enable_external_access = true", "SET: settings cannot be changed from SQL"),
    ("RESET threads", "RESET: settings cannot be changed from SQL"),
    ("PRAGMA threads = 4", "PRAGMA: settings cannot be changed from SQL"),
    ("PRAGMA show_tables", "PRAGMA: PRAGMA statements are refused (some change settings or the database's "
                           "state); read the catalog with a SELECT: SHOW TABLES"),
    ("SET VARIABLE x = 1", "SET: settings cannot be changed from SQL"),
    ("USE system", "USE: settings cannot be changed from SQL"),
    ("CALL pragma_version()", "CALL: it changes the database's state"),
    ("CHECKPOINT", "CHECKPOINT: it changes the database's state"),
    ("FORCE CHECKPOINT", "FORCE CHECKPOINT: it changes the database's state"),
    ("BEGIN TRANSACTION", "BEGIN: it changes the database's state"),
    ("INSERT INTO orders SELECT * FROM orders", f"INSERT: the SQL endpoint is read-only ({ONLY})"),
    ("DELETE FROM orders", "DELETE: the SQL endpoint is read-only"),
    ("UPDATE orders SET coin = 'x'", "UPDATE: the SQL endpoint is read-only"),
    ("CREATE TABLE x AS SELECT 1", "CREATE TABLE: the SQL endpoint is read-only"),
    ("DROP TABLE orders", "DROP TABLE: the SQL endpoint is read-only"),
    ("PIVOT orders ON coin USING count(*)", "PIVOT: it runs as several statements"),
    ("SELECT 1; SELECT 2", f"2 statements given: {ONLY}"),
    ("SELECT 1; DROP TABLE orders", f"2 statements given: {ONLY}"),
    ("-- nothing but a comment", "no SQL statement given"),
    # functions that change state, read secrets, or run SQL from a string
    ("SELECT * FROM checkpoint()", "checkpoint: it changes the database's state"),
    ("SELECT * FROM force_checkpoint()", "force_checkpoint: it changes the database's state"),
    ("SELECT * FROM enable_logging()", "enable_logging: it changes the database's state"),
    ("SELECT * FROM truncate_duckdb_logs()", "truncate_duckdb_logs: it changes the database's state"),
    ("SELECT * FROM duckdb_secrets()", "duckdb_secrets: it reads secrets"),
    ("SELECT * FROM query('SELECT * FROM read_csv(''x.csv'')')", "query: it runs SQL given as a string"),
    ("SELECT * FROM query_table('x.csv')", "query_table: it runs SQL given as a string"),
    ("SELECT * FROM json_execute_serialized_sql(json_serialize_sql('SELECT 1'))",
     "json_execute_serialized_sql: it runs SQL given as a string"),
])
def test_refusals_say_what_and_why(server: ServerThread, client: httpx.Client, query: str,
                                   message: str) -> None:
    r = sql(client, query)
    assert r.status_code == 400, r.text
    assert message in r.json()["error"]


def test_refused_statements_change_nothing(server: ServerThread, client: httpx.Client) -> None:
    (before,) = direct(server, "SELECT count(*) FROM orders")
    for query in ("DELETE FROM orders", "SELECT 1; DELETE FROM orders", "COPY orders TO 'out.csv'"):
        assert sql(client, query).status_code == 400
    assert direct(server, "SELECT count(*) FROM orders") == [before]
    assert not (Path.cwd() / "out.csv").exists()


@pytest.mark.parametrize(("query", "message"), [
    ("SELEC 1", "Parser Error"),
    ("SELECT stream, offset FROM cursors",
     'syntax error at or near "FROM" (the column offset shares its name with an SQL keyword: write it '
     '"offset", in double quotes)'),
    ("SELECT nope FROM orders", 'Referenced column "nope" not found'),
    ("SELECT 'a'::INTEGER", "Conversion Error"),
    ("SELECT * FROM nope", "'nope': no such table or view"),
])
def test_duckdb_errors_are_400_with_its_message(client: httpx.Client, query: str, message: str) -> None:
    r = sql(client, query)
    assert r.status_code == 400, r.text
    assert message in r.json()["error"]


def test_an_unknown_table_lists_every_table_and_view_the_catalog_has(client: httpx.Client) -> None:
    error = sql(client, "select * from tradez").json()["error"]
    assert error == (
        "'tradez': no such table or view (tables: candles, cursor_log, cursors, file_cursors, fills, "
        "gaps, lake_hours, meta, orders, rejects, trades; history views over DuckDB and the lake: "
        "history.candles, history.fills, history.orders, history.trades)")
    for table in ("file_cursors", "meta", "lake_hours", "cursor_log"):  # each listed one can be queried
        assert sql(client, f"SELECT count(*) FROM {table}").status_code == 200, table


def test_the_lake_is_read_through_the_history_views_only_as_the_readme_says(
        server: ServerThread, client: httpx.Client) -> None:
    lake = Path(server.state.settings.lake_dir)
    files = f"{lake}/trades/*/*/*.parquet"
    assert sql(client, "SELECT count(*) FROM history.trades").json()["rows"][0][0] > 0
    assert error_of(sql(client, f"SELECT count(*) FROM read_parquet('{files}')")) == f"read_parquet: {FILE}"
    assert error_of(sql(client, f"SELECT count(*) FROM '{files}'")).startswith(f"'{files}': {FILE}")
    readme = " ".join((ROOT / "README.md").read_text().split())
    assert ("the tables and the `history.*` views, which read the lake's Parquet files, are all it reads: "
            "file functions such as `read_parquet` and `glob`, and file names in `FROM`, are refused, "
            "the lake's own files too") in readme


def test_bad_bodies_and_formats(client: httpx.Client) -> None:
    assert "no SQL given" in client.post("/v1/sql", json={"sql": "  "}).json()["error"]
    r = client.post("/v1/sql", json={"query": "SELECT 1"})
    assert r.status_code == 400 and '"sql"' in r.json()["error"]
    r = client.post("/v1/sql", content=b"{not json", headers={"content-type": "application/json"})
    assert r.status_code == 400 and "must be JSON" in r.json()["error"]
    r = sql(client, "SELECT 1", format="xlsx")
    assert r.status_code == 400 and "json, parquet, csv, ndjson" in r.json()["error"]
    # plain text bodies are the query itself
    r = client.post("/v1/sql", content=b"SELECT 7 AS x", headers={"content-type": "text/plain"})
    assert r.status_code == 200 and r.json()["rows"] == [[7]]
    # a JSON object is JSON whatever the header says (`curl -d` sends a form type): no SQL starts with {
    form, text = {"content-type": "application/x-www-form-urlencoded"}, {"content-type": "text/plain"}
    for headers in (form, text, {}):
        r = client.post("/v1/sql", content=b' {"sql": "SELECT 8 AS x", "format": "csv"}', headers=headers)
        assert (r.status_code, r.text) == (200, "\"x\"\n8\n"), headers
    # the SQL itself, declared JSON (`curl -H 'content-type: application/json' -d 'SELECT ...'`)
    r = client.post("/v1/sql", content=b"SELECT 9 AS x", headers={"content-type": "application/json"})
    assert r.status_code == 200 and r.json()["rows"] == [[9]]
    for other_json in (b'["SELECT 1"]', b"null", b"5"):  # JSON, not an object: not SQL either
        r = client.post("/v1/sql", content=other_json, headers={"content-type": "application/json"})
        assert r.status_code == 400 and "with the query in \"sql\"" in r.json()["error"], other_json
    r = client.post("/v1/sql", content=b'\xef\xbb\xbf{"sql": "SELECT 10 AS x"}')  # a UTF-8 BOM first
    assert r.status_code == 200 and r.json()["rows"] == [[10]]
    r = client.post("/v1/sql", content=b'{"sql": "SELECT 1", "limit": 5}', headers=text)
    assert error_of(r) == "unknown body key(s) limit; valid keys: sql, format"


# data-modifying CTEs parse as SELECT in DuckDB 2.0: each was once answered 200
MODIFYING = [
    ("WITH x AS (UPDATE orders SET coin='PWNED' WHERE oid IN (SELECT oid FROM orders LIMIT 5) "
     "RETURNING oid) SELECT count(*) FROM x", "UPDATE inside the query: the SQL endpoint is read-only"),
    ("WITH x AS (DELETE FROM orders RETURNING oid) SELECT count(*) FROM x",
     "DELETE inside the query: the SQL endpoint is read-only"),
    ("WITH x AS (DELETE FROM cursors RETURNING stream) SELECT count(*) FROM x",
     "DELETE inside the query: the SQL endpoint is read-only"),
    ("WITH x AS (INSERT INTO orders SELECT * FROM orders LIMIT 5 RETURNING oid) SELECT count(*) FROM x",
     "INSERT inside the query: the SQL endpoint is read-only"),
    ("WITH x AS (INSERT INTO cursors (stream) VALUES ('evil') RETURNING stream) SELECT * FROM x",
     "INSERT inside the query: the SQL endpoint is read-only"),
    ("WITH x AS (COPY orders TO 'pwned.csv') SELECT 1", "COPY inside the query: file access is not allowed"),
    ("WITH x AS (COPY orders TO '{lake}/pwned.csv') SELECT 1", "COPY inside the query: file access"),
    ("EXPLAIN ANALYZE WITH x AS (DELETE FROM orders RETURNING oid) SELECT count(*) FROM x",
     "DELETE inside the query: the SQL endpoint is read-only"),
    ("SELECT (WITH x AS (UPDATE trades SET px = 0 RETURNING tid) SELECT count(*) FROM x)",
     "UPDATE inside the query: the SQL endpoint is read-only"),
]


def test_data_modifying_ctes_are_refused_and_change_nothing(server: ServerThread, client: httpx.Client,
                                                           tmp_path: Path) -> None:
    lake = Path(server.state.settings.lake_dir)
    tables = "SELECT (SELECT count(*) FROM orders), (SELECT count(*) FROM cursors), " \
             "(SELECT count(*) FROM orders WHERE coin = 'PWNED'), (SELECT sum(px) FROM trades)"
    before = direct(server, tables)
    lake_files = sorted(lake.rglob("*"))
    for query, message in MODIFYING:
        r = sql(client, query.format(lake=lake))
        assert r.status_code == 400, (query, r.text)
        assert message in r.json()["error"], query
    assert direct(server, tables) == before
    assert sorted(lake.rglob("*")) == lake_files
    assert not (Path.cwd() / "pwned.csv").exists() and not (tmp_path / "pwned.csv").exists()


# ------------------------------------------------------------------ limits
# each bomb is stopped by a limit (its message says which), far sooner than it would run, and the
# server is unharmed
BOMBS = [
    ("SELECT repeat('x', 2000000000)", 400, "repeat: would build 2000000000 bytes"),
    ("SELECT range(50000000)", 400, "range: would build a list of 50000000 elements"),
    ("SELECT unnest(range(1000000000))", 400, "range: would build a list of 1000000000 elements"),
    ("SELECT repeat('x', 1000000) FROM range(10000)", 400, "repeat: would build 1000000 bytes"),
    ("SELECT list(range) FROM range(1000000000)", 400,
     "the query needs more memory than the server allows (512MB, setting db_memory_limit)"),
    ("SELECT string_agg(repeat('x', 1000), ',') FROM range(10000000)", 400, "setting db_memory_limit"),
    ("WITH RECURSIVE r(s, i) AS (SELECT 'x', 0 UNION ALL SELECT s || s, i + 1 FROM r WHERE i < 40) "
     "SELECT max(length(s)) FROM r", 400, "||: may not grow a value inside a recursive CTE"),
    ("SELECT length(regexp_replace(regexp_replace(s, '.', 'xxxxxxxxxx', 'g'), '.', 'yyyyyyyyyy', 'g')) "
     "FROM (SELECT string_agg(user, '') AS s FROM orders)", 400,
     "regexp_replace: may not grow the result of string_agg(...)"),
    ("SELECT count(*) FROM range(1000000000) a CROSS JOIN range(1000000000) b", 408,
     "query interrupted after 1 s (setting sql_timeout_s)"),
    ("SELECT count(DISTINCT range) FROM range(3000000000)", 408, "setting sql_timeout_s"),
    ("SELECT histogram(range % 1000000) FROM range(1000000000)", 408, "setting sql_timeout_s"),
]


@pytest.mark.parametrize(("query", "status", "message"), BOMBS)
def test_bombs_fail_at_the_limits(server: ServerThread, client: httpx.Client, query: str,
                                  status: int, message: str) -> None:
    t0 = time.monotonic()
    r = sql(client, query)
    elapsed = time.monotonic() - t0
    if "db_memory_limit" in message and r.status_code == 408:
        # on two busy cores the time limit may come before the memory limit: a limit all the same
        status, message = 408, "query interrupted after 1 s (setting sql_timeout_s)"
    assert r.status_code == status, r.text
    assert message in r.json()["error"]
    # a net, not a measure (a quiet machine answers within a second of the time limit): each
    # bomb would run for minutes or take the machine's memory
    assert elapsed < TIMEOUT_S + 15
    assert sql(client, "SELECT 42 AS x").json()["rows"] == [[42]]
    assert server.state.pipeline.alive


def test_result_size_cap(client: httpx.Client) -> None:
    r = sql(client, "SELECT repeat('x', 10000) || repeat('y', 10000) || repeat('z', 10000) AS s "
                    "FROM range(60)")  # 51 rows fetched (the cap + 1) of 30 KB
    assert r.status_code == 400, r.text[:300]
    assert r.json()["error"] == ("the result is over 1048576 bytes (setting sql_max_result_bytes); "
                                 "select fewer or smaller columns, or fewer rows")
    assert sql(client, "SELECT repeat('x', 10000) AS s FROM range(60)").json()["row_count"] == CAP


def test_the_time_limit_interrupts_a_running_query(server: ServerThread, client: httpx.Client) -> None:
    t0 = time.monotonic()
    r = sql(client, "SELECT count(*) FROM range(1000000000) a CROSS JOIN range(1000000000) b")
    elapsed = time.monotonic() - t0
    assert r.status_code == 408, r.text
    assert r.json()["error"] == "query interrupted after 1 s (setting sql_timeout_s)"
    assert TIMEOUT_S * 0.9 <= elapsed < TIMEOUT_S + 3
    # the server, its readers and the ingest thread are unharmed
    assert sql(client, "SELECT 42 AS x").json()["rows"] == [[42]]
    assert server.state.pipeline.alive
    assert client.get("/v1/status").status_code == 200


@pytest.mark.parametrize(("n", "truncated"), [(CAP - 1, False), (CAP, False), (CAP + 1, True),
                                              (100_000, True)])
def test_row_cap_reports_truncated_at_the_boundary(client: httpx.Client, n: int, truncated: bool) -> None:
    body = sql(client, f"SELECT range AS i FROM range({n})").json()
    assert body["truncated"] is truncated
    assert body["row_count"] == min(n, CAP)
    assert body["rows"] == [[i] for i in range(min(n, CAP))]
    for fmt in ("csv", "ndjson", "parquet"):
        r = sql(client, f"SELECT range AS i FROM range({n})", format=fmt)
        if truncated:  # a file cannot say it is cut short: none, and what to do
            assert r.status_code == 400 and r.json()["error"] == (
                f"the result has more than {CAP} rows (setting sql_max_rows), and a {fmt} file holds "
                f"the whole result or nothing: add LIMIT {CAP} for the first {CAP}, aggregate, or "
                f"export whole tables with GET /v1/export/{{table}}.{fmt}")
            continue
        assert (r.status_code, r.headers["x-truncated"], r.headers["x-row-count"]) == (200, "false", str(n))
        if fmt == "csv":
            assert r.text.splitlines() == ['"i"', *(str(i) for i in range(n))]
    capped = sql(client, f"SELECT range AS i FROM range({n}) LIMIT {CAP}", format="csv")
    assert capped.text.splitlines() == ['"i"', *(str(i) for i in range(min(n, CAP)))]


# ------------------------------------------------------------------ formats
QUERY = ("SELECT tid, coin, side, px, sz, time, buyer, [tid, 1] AS pair FROM history.trades "
         f"ORDER BY tid LIMIT {CAP - 10}")


def test_csv_ndjson_parquet_read_back_equal_the_json_rows(server: ServerThread, client: httpx.Client) -> None:
    body = sql(client, QUERY).json()
    assert body["columns"] == ["tid", "coin", "side", "px", "sz", "time", "buyer", "pair"]
    assert body["types"][5] == "TIMESTAMP" and body["truncated"] is False
    rows = [tuple(r[:5]) + (datetime.fromisoformat(r[5]), r[6], r[7]) for r in body["rows"]]
    assert rows == [tuple(r) for r in direct(server, QUERY)]
    from_json = pl.DataFrame(rows, schema=body["columns"], orient="row")
    plain = ["tid", "coin", "side", "px", "sz", "time", "buyer"]

    parquet = client.post("/v1/sql?format=parquet", json={"sql": QUERY})
    assert parquet.headers["content-type"] == "application/vnd.apache.parquet"
    got = pl.read_parquet(io.BytesIO(parquet.content))
    assert got.equals(from_json.with_columns(pl.col("time").cast(got["time"].dtype)))

    csv = sql(client, QUERY, format="csv")
    assert csv.headers["content-type"].startswith("text/csv")
    got = pl.read_csv(io.BytesIO(csv.content), try_parse_dates=True)
    want = from_json.select(plain).with_columns(pl.col("time").cast(got["time"].dtype))
    assert got.select(plain).equals(want)
    assert got["pair"].to_list() == [f"[{r[0]},1]" for r in rows]  # nested values as JSON text

    nd = sql(client, QUERY, format="ndjson")
    assert nd.headers["content-type"] == "application/x-ndjson"
    got = pl.read_ndjson(io.BytesIO(nd.content)).with_columns(pl.col("time").str.to_datetime())
    assert got.equals(from_json.with_columns(pl.col("time").cast(got["time"].dtype)))
    # ?format= wins over the body's format
    r = client.post("/v1/sql?format=ndjson", json={"sql": "SELECT 1 AS a", "format": "csv"})
    assert r.text == '{"a":1}\n'


def error_of(r: httpx.Response, status: int = 400) -> str:
    assert r.status_code == status, r.text
    return str(r.json()["error"])


def test_every_route_reads_on_a_read_only_connection_within_the_time_limit(server: ServerThread) -> None:
    """The reader the REST, info, WebSocket and export routes share (api/reader.py)."""
    state = server.state
    t0 = time.monotonic()
    with pytest.raises(ReadTimeout) as caught:
        asyncio.run(read(state, lambda con: con.execute(
            "SELECT count(*) FROM range(1000000000) a CROSS JOIN range(1000000000) b").fetchall()))
    elapsed = time.monotonic() - t0
    assert caught.value.message == ("reading the database took over 1 s and was interrupted (setting "
                                    "sql_timeout_s); ask for a shorter time range or fewer rows")
    assert caught.value.status == 408
    assert TIMEOUT_S * 0.9 <= elapsed < TIMEOUT_S + 3
    before = direct(server, "SELECT count(*) FROM cursors")
    with pytest.raises(duckdb.Error, match="read-only"):
        asyncio.run(read(state, lambda con: con.execute("DELETE FROM cursors")))
    assert direct(server, "SELECT count(*) FROM cursors") == before != [(0,)]


def test_ingestion_short_of_memory_stops_running_reads_with_a_503(tmp_path: Path) -> None:
    """What a lane does when its commit runs out of DuckDB memory (`Store.relieve_memory`,
    etl/lanes.py): the API's running reads stop at once, each answered 503 with Retry-After,
    and the server goes on answering."""
    from concurrent.futures import ThreadPoolExecutor

    from etl.config import Settings

    written = generate(tmp_path / "node", lines=500, start=datetime(2026, 1, 5, 10, 59, tzinfo=UTC))
    settings = Settings(node_dir=tmp_path / "node", db=tmp_path / "api.duckdb", start_from="start",
                        debounce_ms=5, poll_interval_ms=50, port=free_port(), sql_timeout_s=60.0,
                        sql_max_concurrent=4)
    slow = "SELECT count(*) FROM range(1000000000) a CROSS JOIN range(1000000000) b"
    with ServerThread(settings) as srv, httpx.Client(base_url=srv.url, timeout=90) as client, \
            ThreadPoolExecutor(2) as pool:
        wait_for(lambda: sum(s["lines"] for s in client.get("/v1/status").json()["streams"]) == written)
        pending = [pool.submit(sql, client, slow) for _ in range(2)]
        wait_for(lambda: srv.state.reads.running() == 2, timeout=30)
        t0 = time.monotonic()
        assert srv.state.store.relieve_memory() == 2
        answers = [f.result(timeout=30) for f in pending]
        assert time.monotonic() - t0 < 10  # not the 60 s time limit
        for r in answers:
            assert r.status_code == 503, r.text
            assert r.headers["retry-after"] == "1"
            assert r.json()["error"] == ("the query was stopped: ingestion needed the server's database "
                                         "memory (setting db_memory_limit); retry in a moment")
        assert srv.state.reads.running() == 0
        assert sql(client, "SELECT 42 AS x").json()["rows"] == [[42]]
        assert srv.state.pipeline.alive


@pytest.mark.parametrize("query", [
    "SELECT 'infinity'::TIMESTAMP AS v",
    "SELECT '-infinity'::DATE AS v",
    "SELECT '294247-01-10 04:00:54.775806'::TIMESTAMP AS v",
])
def test_values_python_cannot_hold_come_back_as_text(client: httpx.Client, query: str) -> None:
    r = sql(client, query)  # a 500 before (found by review)
    assert r.status_code == 200, r.text
    (got,), = r.json()["rows"]
    assert got.startswith("<value out of range: ")  # Arrow's text for it
