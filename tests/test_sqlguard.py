"""The SQL endpoint's layers one by one, on a real DuckDB file: the locked instance and its
read-only transactions (without the guard), and the guard's classification of DuckDB's
functions."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import duckdb
import pytest

from api import sqlguard, sqllimits
from api.errors import SqlRefused
from api.readonly import lock_instance, sql_cursor
from etl.store import Store


@pytest.fixture
def locked(tmp_path: Path) -> Iterator[tuple[Store, Path]]:
    """A store with two orders, a lake holding one Parquet file and a view over it, locked
    as `serve` locks it."""
    store = Store(tmp_path / "db" / "t.duckdb")
    lake = tmp_path / "lake"
    (lake / "orders").mkdir(parents=True)
    store.con.execute("INSERT INTO orders (coin, oid) VALUES ('BTC', 1), ('ETH', 2)")
    store.con.execute(f"COPY (SELECT * FROM orders) TO '{lake}/orders/part-0.parquet' (FORMAT parquet)")
    store.con.execute("CREATE SCHEMA history")
    store.con.execute(f"CREATE VIEW history.orders AS SELECT * FROM read_parquet('{lake}/orders/*.parquet')")
    (tmp_path / "outside.csv").write_text("a\n1\n")
    lock_instance(store.con, lake, "256MB")
    try:
        yield store, tmp_path
    finally:
        store.close()


# ------------------------------------------------------------------ the locked instance
WRITES = [
    "WITH x AS (UPDATE orders SET coin = 'PWNED' WHERE oid IN (SELECT oid FROM orders LIMIT 5) "
    "RETURNING oid) SELECT count(*) FROM x",
    "WITH x AS (DELETE FROM orders RETURNING oid) SELECT count(*) FROM x",
    "WITH x AS (INSERT INTO cursors (stream) VALUES ('evil') RETURNING stream) SELECT * FROM x",
    "EXPLAIN ANALYZE WITH x AS (DELETE FROM orders RETURNING oid) SELECT count(*) FROM x",
    "WITH x AS (COPY orders TO '{tmp}/copied.csv') SELECT 1",
    "COPY orders TO '{tmp}/copied.csv'",
    "INSERT INTO orders (coin) VALUES ('X')",
    "UPDATE orders SET coin = 'X'",
    "DELETE FROM orders",
    "DROP TABLE orders",
    "CREATE TABLE evil AS SELECT 1",
    "ATTACH '{tmp}/attached.duckdb' AS evil",
    "SELECT * FROM read_csv('{tmp}/outside.csv')",
    "SELECT * FROM '{tmp}/outside.csv'",
    "SELECT * FROM glob('{tmp}/*')",
    "INSTALL httpfs",
    "LOAD httpfs",
    "SET memory_limit = '100GB'",
    "SET enable_external_access = true",
    "SET allowed_directories = ['/']",
    "SET lock_configuration = false",
]


@pytest.mark.parametrize("statement", WRITES)
def test_the_sql_cursor_cannot_write_even_without_the_guard(locked: tuple[Store, Path],
                                                            statement: str) -> None:
    store, tmp = locked
    con = sql_cursor(store)
    try:
        with pytest.raises(duckdb.Error):
            con.execute(statement.format(tmp=tmp)).fetchall()
    finally:
        con.close()
    check = store.reader()
    assert check.execute("SELECT coin, oid FROM orders ORDER BY oid").fetchall() == [("BTC", 1), ("ETH", 2)]
    assert check.execute("SELECT count(*) FROM cursors").fetchall() == [(0,)]
    assert check.execute("SELECT current_setting('memory_limit')").fetchall() == [("244.1 MiB",)]
    check.close()
    assert sorted(p.name for p in tmp.iterdir()) == ["db", "lake", "outside.csv"]


def test_history_views_and_the_writer_keep_working_after_the_lock(locked: tuple[Store, Path]) -> None:
    store, tmp = locked
    con = sql_cursor(store)
    try:
        assert con.execute("SELECT coin FROM history.orders ORDER BY oid").fetchall() == [("BTC",), ("ETH",)]
    finally:
        con.close()
    # the writer still inserts and seals into the lake (the one allowed directory)
    store.con.execute("INSERT INTO orders (coin, oid) VALUES ('SOL', 3)")
    store.con.execute(f"COPY (SELECT * FROM orders) TO '{tmp}/lake/orders/part-0.parquet' (FORMAT parquet)")
    reader = store.reader()  # the store's readers still set their session settings
    assert reader.execute("SELECT count(*) FROM history.orders").fetchall() == [(3,)]
    reader.close()


# ------------------------------------------------------------------ the guard
def test_every_table_function_is_classified() -> None:
    """A DuckDB upgrade that brings a table function fails here until someone classifies it
    (allowed in sqlguard.TABLE_FUNCTIONS, or refused with a reason)."""
    con = duckdb.connect()
    names = sorted({name for (name,) in con.execute(
        "SELECT function_name FROM duckdb_functions() WHERE function_type IN ('table', 'table_macro')"
    ).fetchall()})
    assert len(names) > 50
    unclassified = [n for n in names
                    if n not in sqlguard.TABLE_FUNCTIONS and sqlguard.table_refusal(n) is None]
    both = [n for n in names if n in sqlguard.TABLE_FUNCTIONS and sqlguard.table_refusal(n) is not None]
    assert unclassified == []
    assert both == []
    stale = sorted(sqlguard.TABLE_FUNCTIONS - set(names))
    assert stale == []


WHY = sqllimits.WHY


ORDERS = ('CREATE TABLE orders (oid BIGINT, coin VARCHAR, "user" VARCHAR, hash VARCHAR, side VARCHAR, '
          'status VARCHAR, "time" TIMESTAMP, limit_px DOUBLE, sz DOUBLE)')


@pytest.mark.parametrize(("query", "message"), [
    ("SELECT repeat('x', 2000000000)", f"repeat: would build 2000000000 bytes ({WHY})"),
    ("SELECT repeat('ab', 5001)", "repeat: would build 10002 bytes"),
    ("SELECT repeat(coin, 3) FROM orders", "repeat: takes a literal string and a literal count here"),
    ("SELECT repeat('x', (SELECT 5))", "repeat: takes a literal string and a literal count here"),
    ("SELECT repeat(repeat('x', 100), 100)", "repeat: takes a literal string and a literal count here"),
    ("SELECT range(50000000)", "range: would build a list of 50000000 elements"),
    ("SELECT unnest(range(1000000000))", "range: would build a list of 1000000000 elements"),
    ("SELECT generate_series(0, 20000, 1)", "generate_series: would build a list of 20000 elements"),
    ("SELECT range(oid) FROM orders", "range: as a list takes literal numbers here"),
    ("SELECT lpad('a', 1000000, 'x')", "lpad: would build 1000000 characters or elements"),
    ("SELECT rpad('a', oid::INT, 'x') FROM orders", "rpad: takes a literal number as argument 2 here"),
    ("SELECT list_resize([1], 100000)", "list_resize: would build 100000 characters or elements"),
    ("SELECT bar(1, 0, 2, 1e9)", "bar: would build 1000000000 characters or elements"),
    ("SELECT printf('%2000000000d', 1)", "printf: a width or precision of 2000000000 in the format"),
    ("SELECT format(coin, 1) FROM orders", "format: takes a literal format string here"),
    ("SELECT list_transform([1, 2], x -> range(x))", "range: not allowed inside a lambda"),
    ("SELECT [repeat('x', 10) for x in [1, 2]]", "repeat: not allowed inside a lambda"),
    ("WITH x AS (UPDATE orders SET coin = 'P' RETURNING oid) SELECT * FROM x",
     "UPDATE inside the query: the SQL endpoint is read-only"),
    ("SELECT * FROM (WITH x AS (DELETE FROM orders RETURNING *) SELECT * FROM x) s",
     "DELETE inside the query: the SQL endpoint is read-only"),
    ("SELECT 1 UNION ALL (WITH x AS (INSERT INTO orders (oid) VALUES (1) RETURNING oid) SELECT * FROM x)",
     "INSERT inside the query: the SQL endpoint is read-only"),
    ("WITH x AS (COPY orders TO 'x.csv') SELECT 1", "COPY inside the query: file access is not allowed"),
    ("SELECT * FROM histogram(orders, oid)", "histogram: it runs SQL given as a string"),
    # growth: literal replacements, a bounded product, none over an aggregate's one value
    ("SELECT replace(coin, 'a', coin) FROM orders", "replace: takes a literal replacement here"),
    ("SELECT regexp_replace(coin, 'a', coin, 'g') FROM orders", "regexp_replace: takes a literal"),
    ("SELECT regexp_replace(regexp_replace(regexp_replace(coin, '.', 'xxxxxxxxxx', 'g'), '.', 'yyyyyyyyyy', "
     "'g'), '.', 'zzzzzzzzzz', 'g') FROM orders", "could make a value 100 times larger than the data"),
    ("WITH a AS (SELECT coin || coin AS s FROM orders), b AS (SELECT s || s AS s FROM a), "
     "c AS (SELECT s || s AS s FROM b), d AS (SELECT concat(s, s) AS s FROM c), "
     "e AS (SELECT list_concat([s], [s], [s], [s]) AS l FROM d), f AS (SELECT l || l AS l FROM e), "
     "g AS (SELECT l || l AS l FROM f), h AS (SELECT l || l AS l FROM g) SELECT len(l) FROM h",
     "could make a value 128 times larger"),
    ("WITH x AS (SELECT string_agg(coin, '') AS s FROM orders) SELECT replace(s, 'a', 'aa') FROM x",
     "replace: may not grow the result of string_agg(...)"),
    ("SELECT list_concat(list(oid), list(oid)) FROM orders", "may not grow the result of list(...)"),
    ("SELECT string_agg(coin, ',') OVER () || string_agg(coin, ';') OVER () FROM orders",
     "||: may not be applied to string_agg(...) OVER"),
    ("WITH RECURSIVE r(s) AS (SELECT 'x' UNION ALL SELECT s || s FROM r) SELECT 1",
     "||: may not grow a value inside a recursive CTE"),
    # found by review: widths from arguments, encoders, aggregates behind a wrapper or a CTE,
    # top-n aggregates, a separator repeated between literals
    ("SELECT length(format('{:>{}}', 'x', 2000000000))",
     "format: takes its widths and precisions in the format string here"),
    ("SELECT length(printf('%*s', 1000000000, 'x'))", "printf: takes its widths and precisions"),
    ("SELECT sum(length(bin(bin(hex(coin))))) FROM orders", "bin: could make a value 128 times larger"),
    ("SELECT length(string_agg((SELECT replace(string_agg(coin, ''), '0', 'yyyy') FROM orders), ''))",
     "replace: may not grow the result of string_agg(...)"),
    ("WITH x AS (SELECT string_agg(coin, '') s FROM orders) SELECT string_agg(replace(s, '0', 'yy'), '') "
     "FROM x", "replace: may not grow the result of string_agg(...)"),
    ("WITH x(t) AS (SELECT * FROM (SELECT array_to_string(list(coin), '') FROM orders) AS y(s)) "
     "SELECT t || t FROM x", "||: may not grow the result of list(...)"),
    ("SELECT length(replace(array_to_string(max(coin, 100000), ''), '0', 'yy')) FROM orders",
     "replace: may not grow the result of max(...)"),
    ("SELECT concat_ws(coin" + ", ''" * 300 + ") FROM orders", "concat_ws: could make a value 300 times"),
    ("SELECT array_to_string(list(coin), '" + "y" * 100 + "') FROM orders",
     "array_to_string: may not grow the result of list(...)"),
    ("SELECT array_to_string(list(coin), coin) FROM orders", "array_to_string: takes a literal separator"),
    ("SELECT bitstring_agg(oid) FROM orders", "bitstring_agg: it builds one bit per value"),
    # found by a third review: set operations' branches, fills and constructors, windows
    ("SELECT 0 UNION ALL SELECT length(replace(s, ',', '" + "x" * 100 + "')) FROM (SELECT "
     "string_agg(coin, ',') s FROM orders)", "replace: may not grow the result of string_agg(...)"),
    ("SELECT length(list_resize([''], 100, s)::VARCHAR) FROM (SELECT string_agg(coin, ',') s FROM orders)",
     "list_resize: may not grow the result of string_agg(...)"),
    ("SELECT length(flatten(list_resize([[1]], 1000, list_resize([1], 10000, 1))))",
     "list_resize: could make a value 10625 times larger"),
    ("SELECT length(row(s, s, s)::VARCHAR) FROM (SELECT string_agg(coin, ',') s FROM orders)",
     "row: may not grow the result of string_agg(...)"),
    ("SELECT sum(length(upper(substr(s, (oid % 5)::INT + 1)))) FROM (SELECT oid, string_agg(coin, ',') "
     "OVER () s FROM orders)", "substr: may not be applied to string_agg(...) OVER"),
    ("SELECT sum(length(upper(substr(s, i::INT)))) FROM (SELECT s, unnest(range(1, 101)) i FROM "
     "(SELECT string_agg(coin, ',') s FROM orders))", "string_agg: its one value, built from many rows, "
     "may not be used beside a join"),
    ("SELECT sum(length(upper(substr((SELECT string_agg(coin, ',') FROM orders), (oid % 5)::INT + 1)))) "
     "FROM orders", "substr: may not be applied to string_agg(...), one value built from many rows and "
     "repeated on every row"),
    ("SELECT sum(length(upper(substr(s, (oid % 5)::INT + 1)))) FROM (SELECT oid, (SELECT string_agg(coin, "
     "',') FROM orders) s FROM orders)", "substr: may not be applied to string_agg(...)"),
    ("SELECT length(upper(array_to_string(ARRAY(SELECT hash FROM orders), ','))) FROM range(100)",
     "array_to_string: may not be applied to array_agg(...)"),
    ("SELECT sum(length(upper(substr(x, i::INT)))) FROM (SELECT array_to_string(arg_max_nulls_last(coin, "
     "oid, 400000), ',') x FROM orders), range(1, 601) r(i)",
     "arg_max_nulls_last: its one value, built from many rows, may not be used beside a join"),
    ("SELECT s AS a, s AS b FROM (SELECT string_agg(hash, '') AS s FROM orders) t, range(1000)",
     "string_agg: its one value, built from many rows, may not be used beside a join"),
    ("WITH g AS (SELECT coin, list(oid) AS oids FROM orders GROUP BY coin) SELECT g.coin, "
     "length(array_to_string(oids, ',')) FROM g JOIN orders o ON o.coin = g.coin",
     "list: its one value, built from many rows, may not be used beside a join"),
    ("SELECT list_transform(list(coin), x -> x || '" + "x" * 120 + "') FROM orders",
     "||: may not grow the result of list(...)"),
    ("SELECT list_transform(['a', 'b'], x -> x || '" + "x" * 120 + "')",
     "||: may not grow a value inside a lambda"),
    ("SELECT array_to_string(string_split(string_agg(coin, ','), ''), '-') FROM orders",
     "string_split: may not grow the result of string_agg(...)"),
    # found by a second review: lambdas, long chains, names the check could not trace
    ("SELECT list_reduce(['a', 'b', 'c'], (a, b) -> a || a)", "||: may not grow a value inside a lambda"),
    ("SELECT " + " || ".join(["hash"] * 100) + " FROM orders", "||: could make a value 100 times larger"),
    ("WITH t AS (SELECT string_agg(hash, '') AS s FROM orders) SELECT regexp_replace(#1, '.', 'xx', 'g') "
     "FROM t", "regexp_replace: may not grow the result of string_agg(...)"),
    ("SELECT regexp_replace(st.a, '.', 'xx', 'g') FROM (SELECT {'a': string_agg(hash, '')} AS st "
     "FROM orders)",
     "regexp_replace: may not grow the result of string_agg(...)"),
    ("SELECT regexp_replace(COLUMNS(*), '.', 'xx', 'g') FROM (SELECT string_agg(hash, '') AS s "
     "FROM orders) t",
     "regexp_replace: may not grow the result of string_agg(...)"),
    ("SELECT regexp_replace(u, '.', 'xx', 'g') FROM (SELECT string_agg(hash, '') AS s FROM orders) t, "
     "unnest([s]) AS x(u)", "string_agg: its one value, built from many rows, may not be used beside a join"),
    ("SELECT regexp_replace(\"string_agg(hash, '')\", '.', 'xx', 'g') FROM (SELECT string_agg(hash, '') "
     "FROM orders) t", "regexp_replace: may not grow the result of string_agg(...)"),
    ("SELECT regexp_replace(array_to_string(max(coin, 1000000), ','), '', 'abcdefghij', 'g') FROM orders",
     "regexp_replace: may not grow the result of max(...)"),
    ("SELECT * FROM seq_scan()", "seq_scan: it is DuckDB's internal table scan"),
])
def test_guard_refusals(query: str, message: str) -> None:
    con = duckdb.connect()
    con.execute(ORDERS)
    with pytest.raises(SqlRefused) as refused:
        sqlguard.check(con, query)
    assert message in refused.value.message


@pytest.mark.parametrize("query", [
    "SELECT repeat('-', 40), repeat('ab', 5000)",
    "SELECT range(10), range(1, 10001), generate_series(0, 100, 5), [x * 2 for x in range(5)]",
    "SELECT lpad(coin, 10, ' '), rpad(coin, 10), bar(oid, 0, 10), bar(oid, 0, 10, 20) FROM orders",
    "SELECT printf('%05d|%.3f', 1, 2.5), format('{:>10}', 'x'), to_base(255, 16, 8)",
    "SELECT list_resize([1, 2], 10, 0), histogram(oid) FROM orders GROUP BY ALL",
    "SELECT count(*) FROM range(1000000000), repeat(1, 3), generate_series(1, 5)",
    "SELECT list_transform([1, 2], x -> x + 1)",
    "SELECT coin || '-' || coin, replace(coin, '/', '-'), regexp_replace(coin, '[^A-Z]', '', 'g'), "
    "concat(coin, ':', oid), regexp_replace(coin, '(a)', '\\1\\1') FROM orders",
    "SELECT coin || oid || coin || oid || coin || oid || coin || oid || coin || oid || coin || oid || coin "
    "|| oid || coin || oid || coin || oid || coin || oid FROM orders",
    "SELECT string_agg(coin || ':' || oid, ','), 'coins: ' || string_agg(DISTINCT coin, ','), "
    "list(replace(coin, 'a', 'aa')) FROM orders",
    "WITH RECURSIVE r(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM r WHERE n < 5) SELECT 'n' || n FROM r",
    # refused by a first version of the growth check (found by review)
    "SELECT coin || '-' || user AS k, count(*), list(oid) FROM orders GROUP BY k",
    "SELECT coin, list(oid) FROM orders WHERE user || coin <> '' GROUP BY coin",
    "SELECT regexp_replace(coin, '-', '_', 'g') c, array_agg(oid) FROM orders GROUP BY c",
    "SELECT concat(coin, ':', user) k, string_agg(hash, ',') FROM orders GROUP BY k",
    "SELECT " + ", ".join(f"coin || user AS c{i}" for i in range(12)) + " FROM orders",
    "WITH RECURSIVE t(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM t WHERE n < 3) "
    "SELECT n, coin || ':' || user FROM t, (SELECT coin, user FROM orders LIMIT 1)",
    "SELECT to_json(struct_pack(c := coin, n := oid)), hex(coin), bin(oid) FROM orders",
    "SELECT coin, array_to_string(list(user), ', '), array_to_string(list(oid), '') FROM orders "
    "GROUP BY coin",
    # refused by the second version (found by review): single values of aggregates, short top-n lists
    "SELECT coin, quantile_cont(limit_px, 0.5) || ' / ' || quantile_cont(limit_px, 0.9) FROM orders "
    "GROUP BY coin",
    "SELECT coin, concat(mode(side), '-', mode(status)), printf('%s %.2f', mode(side), avg(sz)), "
    "hex(mode(hash)) FROM orders GROUP BY coin",
    "SELECT coin, list_concat(max(limit_px, 3), min(limit_px, 3)) FROM orders GROUP BY coin",
    "SELECT list_transform(list(coin), x -> upper(x) || '!') FROM orders",
    "WITH RECURSIVE n(i, label) AS (SELECT 1, 'L1' UNION ALL SELECT i + 1, 'L' || (i + 1) FROM n "
    "WHERE i < 10) SELECT * FROM n",
    "SELECT o.coin, list(o.oid), string_agg(DISTINCT p.coin, ',') FROM orders o "
    "JOIN orders p ON o.oid = p.oid GROUP BY o.coin",
    "WITH g AS (SELECT coin, list(oid) AS oids FROM orders GROUP BY coin) SELECT coin, len(oids), "
    "length(array_to_string(oids, ',')) FROM g",
])
def test_guard_accepts_bounded_uses(query: str) -> None:
    con = duckdb.connect()
    con.execute(ORDERS)
    sqlguard.check(con, query)
