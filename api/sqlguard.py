"""The SQL endpoint's guard: one read-only query that touches nothing outside the database.

It is the second layer: the query also runs in a read-only transaction on a DuckDB instance
without external access (`api.readonly`). It checks the statement as DuckDB parses it,
never its text with patterns:

1. `duckdb.extract_statements`: exactly one statement, of type SELECT (which covers WITH,
   FROM-first, VALUES, DESCRIBE, SUMMARIZE, SHOW) or EXPLAIN of such a statement.
2. `json_serialize_sql`: the statement's syntax tree, walked for every function (scalar,
   aggregate, window, table), every type and every table reference. Refused: functions that
   read or write files or the network (`read_*`, `parquet_*`, `glob`, ...), run SQL from a
   string (`query`, `query_table`, ...), change state (`checkpoint`, logging, profiling,
   sequences), read secrets or scan Python objects; functions and types DuckDB does not know
   (using one would install and load an extension, over the network); table references that
   name a file or URL (`FROM 'x.csv'`: DuckDB's replacement scans) or anything that is
   neither a table or view of the database nor a CTE (Python variables are scanned too);
   query nodes other than SELECT, set operations and CTEs anywhere in the tree (DuckDB 2.0
   parses INSERT, UPDATE, DELETE and COPY as CTE bodies); table functions not listed in
   `TABLE_FUNCTIONS`; scalar functions that multiply their input beyond `api.sqllimits`.

Views are not expanded: `history.*` may read the lake's Parquet files, and that is the
point of them. Each refusal raises `SqlRefused` saying what was refused and why.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import duckdb

from api import sqlgrowth, sqllimits
from api.errors import SqlError, SqlRefused
from etl.history import explain_sql_error

ONLY = "only a single SELECT, WITH or EXPLAIN statement is accepted"
FILE = "file access is not allowed from SQL"
NETWORK = "network access is not allowed from SQL"
EXTENSION = "extensions cannot be installed or loaded from SQL"
SETTINGS = "settings cannot be changed from SQL"
PRAGMA = ("PRAGMA statements are refused (some change settings or the database's state); read "
          "the catalog with a SELECT: SHOW TABLES, DESCRIBE trades, SELECT * FROM duckdb_tables() or "
          "pragma_table_info('trades')")
STATE = "it changes the database's state, and the SQL endpoint is read-only"
EXEC = "it runs SQL given as a string, which would bypass these checks"
SECRET = "it reads secrets or the server's environment"
PYTHON = "it reads the server process's Python objects"
READ_ONLY = "the SQL endpoint is read-only"

_T = duckdb.StatementType
_STATEMENT_REASONS: dict[Any, str] = {
    _T.ATTACH: FILE,
    _T.DETACH: FILE,
    _T.COPY: FILE,
    _T.COPY_DATABASE: FILE,
    _T.EXPORT: FILE,
    _T.LOAD: EXTENSION,
    _T.EXTENSION: EXTENSION,
    _T.SET: SETTINGS,
    _T.VARIABLE_SET: SETTINGS,
    _T.PRAGMA: PRAGMA,
    _T.CALL: STATE,
    _T.VACUUM: STATE,
    _T.TRANSACTION: STATE,
    _T.MULTI: "it runs as several statements (write it as a SELECT)",
}
# a statement's first word when it says more than its type (IMPORT DATABASE parses as a PRAGMA)
_WORD_REASONS = {"IMPORT": FILE, "CHECKPOINT": STATE}

_FUNCTIONS: dict[str, str] = {
    **dict.fromkeys(
        ("glob", "sniff_csv", "read_text", "read_blob", "read_duckdb", "csv_scan", "json_scan",
         "st_read", "st_readosm", "st_read_meta", "read_xlsx", "iceberg_scan", "delta_scan"),
        FILE,
    ),
    **dict.fromkeys(("query", "query_table", "json_execute_serialized_sql"), EXEC),
    "bitstring_agg": ("it builds one bit per value in its input's range (a range of order ids is "
                      "billions of bits), which can exhaust the server's memory"),
    **dict.fromkeys(
        ("checkpoint", "force_checkpoint", "enable_logging", "disable_logging", "truncate_duckdb_logs",
         "write_log", "enable_profiling", "disable_profiling", "enable_profile", "disable_profile",
         "enable_checkpoint_on_shutdown", "disable_checkpoint_on_shutdown", "nextval", "setval",
         "create_external_resource", "register_external_resource", "register_external_resource_type",
         "deregister_external_resource", "destroy_external_resource"),
        STATE,
    ),
    **dict.fromkeys(("duckdb_secrets", "which_secret", "getenv", "duckdb_secret_type_parameters"), SECRET),
    **dict.fromkeys(
        ("arrow_scan", "arrow_scan_dumb", "pandas_scan", "python_arrow_scan", "python_map_function"), PYTHON
    ),
    "seq_scan": "it is DuckDB's internal table scan",
}
# names refused as table functions only (`histogram` is also a plain aggregate)
_TABLE_REFUSALS = {
    # table macros that run a query on a table named by a string
    **dict.fromkeys(("histogram", "histogram_values"), EXEC),
}
# The table functions (and table macros) a query may call: they read the catalog, generate
# rows or unnest values. Any other is refused, so a DuckDB upgrade's new table function stays
# refused until it is classified here or in _FUNCTIONS (tests/test_sqlguard.py checks both
# lists cover every table function DuckDB has).
TABLE_FUNCTIONS = frozenset({
    "range", "generate_series", "repeat", "repeat_row", "unnest", "json_each", "json_tree",
    "summary", "test_all_types", "test_vector_types", "pg_timezone_names", "icu_calendar_names",
    "pragma_collations", "pragma_database_size", "pragma_metadata_info", "pragma_platform",
    "pragma_show", "pragma_storage_info", "pragma_table_info", "pragma_user_agent", "pragma_version",
    "duckdb_approx_database_count", "duckdb_available_metrics", "duckdb_columns",
    "duckdb_connection_count", "duckdb_constraints", "duckdb_coordinate_systems", "duckdb_databases",
    "duckdb_dependencies", "duckdb_dialects", "duckdb_eviction_queues", "duckdb_extension_repositories",
    "duckdb_extensions", "duckdb_external_file_cache", "duckdb_external_resource_types",
    "duckdb_external_resources", "duckdb_functions", "duckdb_grammar_extensions", "duckdb_indexes",
    "duckdb_keywords", "duckdb_log_contexts", "duckdb_logs", "duckdb_logs_parsed", "duckdb_memory",
    "duckdb_optimizers", "duckdb_prepared_statements", "duckdb_profiling_settings", "duckdb_schemas",
    "duckdb_secret_types", "duckdb_sequences", "duckdb_settings", "duckdb_table_sample",
    "duckdb_tables", "duckdb_temporary_files", "duckdb_triggers", "duckdb_types", "duckdb_variables",
    "duckdb_views",
})
# the query nodes a statement may contain; DuckDB 2.0 also parses INSERT, UPDATE, DELETE and
# COPY as the body of a CTE (`WITH x AS (DELETE FROM t RETURNING *) SELECT ...`)
QUERY_NODES = frozenset({"SELECT_NODE", "SET_OPERATION_NODE", "RECURSIVE_CTE_NODE", "CTE_NODE"})
# families of functions that read files (the formats' readers and their metadata functions)
_PREFIXES: tuple[tuple[str, str], ...] = (
    ("read_", FILE),
    ("parquet_", FILE),
    ("iceberg_", FILE),
    ("delta_", FILE),
    ("sqlite_", FILE),
    ("postgres_", NETWORK),
    ("mysql_", NETWORK),
    ("http_", NETWORK),
)
# the catalogs of DuckDB's own views (duckdb_tables, information_schema, ...), not listed as tables
_SYSTEM_DATABASES = frozenset({"system", "temp"})
# characters that make a table name a path, a glob or a URL for DuckDB's replacement scans
_FILE_CHARS = frozenset("./\\:*?~{}[]")
_URL_SCHEMES = ("http://", "https://", "s3://", "s3a://", "s3n://", "gs://", "gcs://", "r2://",
                "az://", "azure://", "abfss://", "hf://", "ftp://")


def check(con: duckdb.DuckDBPyConnection, sql: str) -> bool:
    """Raise `SqlRefused` unless `sql` is one read-only query that stays inside the database;
    `SqlError` when DuckDB cannot parse it. `con` is only used to ask DuckDB (parser, catalog).
    Returns whether a result column may hold a value built from many rows (api/sqlgrowth.py)."""
    query = _single_query(sql)
    tree = _syntax_tree(con, query)
    functions = _names(con, "SELECT DISTINCT function_name FROM duckdb_functions()")
    types = _names(con, "SELECT DISTINCT type_name FROM duckdb_types()")
    relations = _relation_names(con)
    ctes = {name.lower() for name in _cte_names(tree)}
    table_calls = {id(node["function"]) for node in _nodes(tree)
                   if node.get("type") == "TABLE_FUNCTION" and isinstance(node.get("function"), dict)}
    columns = _names(con, "SELECT DISTINCT column_name FROM duckdb_columns()")
    big_result = sqlgrowth.check_growth(tree, columns)
    for node in _nodes(tree):
        kind = node.get("type")
        if isinstance(kind, str) and kind.endswith("_NODE") and kind not in QUERY_NODES:
            _refuse_query_node(kind)
        if "function_name" in node:
            _check_function(node, functions)
            if id(node) in table_calls:
                _check_table_function(str(node["function_name"]).lower())
            else:
                sqllimits.check_call(node)
        if node.get("class") == "LAMBDA":
            sqllimits.check_lambda(_nodes(node.get("expr")))
        if node.get("class") == "TYPE" and node.get("type_name"):
            _check_type(str(node["type_name"]), types)
        # SHOW_SPECIAL: SHOW TABLES / SHOW DATABASES / DESCRIBE, which list the catalog
        if (node.get("type") in ("BASE_TABLE", "SHOW_REF") and node.get("table_name")
                and node.get("show_type") != "SHOW_SPECIAL"):
            _check_table(node, relations, ctes)
    return big_result


def _single_query(sql: str) -> str:
    """The one SELECT the statement is (the query under EXPLAIN for an EXPLAIN)."""
    statements = _parse(sql)
    if not statements:
        raise SqlRefused(f"no SQL statement given: {ONLY}")
    if len(statements) > 1:
        raise SqlRefused(f"{len(statements)} statements given: {ONLY}")
    stmt = statements[0]
    if stmt.type == _T.EXPLAIN:
        inner = _after_explain(stmt.query)
        inner_statements = _parse(inner)
        if len(inner_statements) != 1 or inner_statements[0].type != _T.SELECT:
            word = _first_words(inner)
            why = _reason(inner_statements[0] if inner_statements else None, word)
            raise SqlRefused(f"EXPLAIN {word}: {why} ({ONLY})")
        return inner
    if stmt.type != _T.SELECT:
        word = _first_words(stmt.query)
        raise SqlRefused(f"{word}: {_reason(stmt, word)} ({ONLY})")
    return str(stmt.query)


def _parse(sql: str) -> list[Any]:
    try:
        return list(duckdb.extract_statements(sql))
    except duckdb.Error as err:
        raise SqlError(explain_sql_error(sql, str(err))) from None


def _reason(stmt: Any, word: str) -> str:
    first = word.split(" ", 1)[0]
    if first in _WORD_REASONS:
        return _WORD_REASONS[first]
    return _STATEMENT_REASONS.get(getattr(stmt, "type", None), READ_ONLY)


def _tokens(sql: str) -> list[tuple[str, Any]]:
    """(text, token type) of each token, comments left out."""
    marks = duckdb.tokenize(sql)
    out = []
    for i, (start, kind) in enumerate(marks):
        end = marks[i + 1][0] if i + 1 < len(marks) else len(sql)
        if kind != duckdb.token_type.comment:
            out.append((sql[start:end].strip(), kind))
    return out


def _first_words(sql: str) -> str:
    """The statement's leading keywords, for messages: `COPY`, `EXPORT DATABASE`, `FORCE INSTALL`."""
    words = []
    for text, kind in _tokens(sql)[:2]:
        if kind != duckdb.token_type.keyword:
            break
        words.append(text.upper())
    if len(words) == 2 and words[0] not in ("EXPORT", "IMPORT", "FORCE", "CREATE", "DROP", "ALTER"):
        words = words[:1]
    return " ".join(words)


def _after_explain(sql: str) -> str:
    """The statement under `EXPLAIN [ANALYZE] [(options)]`."""
    marks = [(start, kind) for start, kind in duckdb.tokenize(sql) if kind != duckdb.token_type.comment]
    texts = _tokens(sql)
    i = 1  # marks[0] is EXPLAIN
    if i < len(texts) and texts[i][0].upper() in ("ANALYZE", "ANALYSE"):
        i += 1
    if i < len(texts) and texts[i][0].startswith("("):
        depth = 0
        while i < len(texts):
            depth += texts[i][0].count("(") - texts[i][0].count(")")
            i += 1
            if depth <= 0:
                break
    return sql[marks[i][0]:] if i < len(marks) else ""


def _syntax_tree(con: duckdb.DuckDBPyConnection, query: str) -> dict[str, Any]:
    rows = con.execute("SELECT json_serialize_sql(?)", [query]).fetchall()
    tree = json.loads(rows[0][0]) if rows else {"error": True, "error_message": "no result"}
    if tree.get("error"):
        message = tree.get("error_message", "unknown error")
        if tree.get("error_type") == "parser":
            raise SqlError(explain_sql_error(query, f"Parser Error: {message}"))
        raise SqlRefused(f"the query cannot be checked for file access ({message}); "
                         "rewrite it with plain SELECT syntax (PIVOT/UNPIVOT are not supported here)")
    return tree


def _nodes(node: Any) -> Iterator[dict[str, Any]]:
    """Every object of the syntax tree, depth first."""
    stack = [node]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            yield item
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)


def _cte_names(tree: dict[str, Any]) -> Iterator[str]:
    for node in _nodes(tree):
        cte_map = node.get("cte_map")
        if isinstance(cte_map, dict):
            for entry in cte_map.get("map", []):
                yield str(entry.get("key", ""))


def _names(con: duckdb.DuckDBPyConnection, sql: str) -> set[str]:
    return {str(name).lower() for (name,) in con.execute(sql).fetchall()}


def _relation_names(con: duckdb.DuckDBPyConnection) -> set[tuple[str, str, str]]:
    """(database, schema, name) of every table and view, lowercase."""
    rows = con.execute(
        "SELECT database_name, schema_name, table_name FROM duckdb_tables() "
        "UNION ALL SELECT database_name, schema_name, view_name FROM duckdb_views()").fetchall()
    return {(d.lower(), s.lower(), n.lower()) for d, s, n in rows}


def _refuse_query_node(kind: str) -> None:
    word = kind.removesuffix("_NODE").removesuffix("_QUERY")
    why = FILE if word == "COPY" else READ_ONLY
    raise SqlRefused(f"{word} inside the query: {why}; a WITH clause or subquery may hold only "
                     f"queries ({ONLY})")


def refusal(name: str) -> str | None:
    """Why calling function `name` is refused, or None."""
    name = name.lower()
    reason = _FUNCTIONS.get(name)
    if reason is None:
        reason = next((why for prefix, why in _PREFIXES if name.startswith(prefix)), None)
    return reason


def table_refusal(name: str) -> str | None:
    """Why calling `name` as a table function (in FROM) is refused, or None."""
    return refusal(name) or _TABLE_REFUSALS.get(name.lower())


def _check_table_function(name: str) -> None:
    reason = _TABLE_REFUSALS.get(name)
    if reason is not None:
        raise SqlRefused(f"{name}: {reason}")
    if name not in TABLE_FUNCTIONS:  # the other refused ones were caught by _check_function
        raise SqlRefused(f"{name}: not a table function this endpoint allows (it may read files or "
                         "change state); the catalog's duckdb_*() functions, range, generate_series, "
                         "unnest and json_each are")


def _check_function(node: dict[str, Any], known: set[str]) -> None:
    name = str(node["function_name"]).lower()
    reason = refusal(name)
    if reason is not None:
        raise SqlRefused(f"{name}: {reason}")
    if name not in known:
        raise SqlRefused(
            f"{name}: no such function in this database ({EXTENSION}, so functions of extensions "
            "that are not loaded cannot be used)")


def _check_type(name: str, known: set[str]) -> None:
    if name.lower() not in known:  # a type of an extension not loaded: using it would install it
        raise SqlRefused(f"{name}: no such type in this database ({EXTENSION})")


def _check_table(node: dict[str, Any], relations: set[tuple[str, str, str]], ctes: set[str]) -> None:
    name = str(node["table_name"])
    schema = str(node.get("schema_name") or "").lower()
    catalog = str(node.get("catalog_name") or "").lower()
    lowered = name.lower()
    if lowered.startswith(_URL_SCHEMES) or "://" in lowered:
        raise SqlRefused(f"{name!r}: {NETWORK} (a URL in FROM reads it over the network)")
    if any(ch in _FILE_CHARS for ch in name):
        raise SqlRefused(f"{name!r}: {FILE} (a file name in FROM reads the file)")
    if not schema and not catalog and lowered in ctes:
        return
    for database, sch, rel in relations:
        if rel == lowered and (not schema or sch == schema) and (not catalog or database == catalog):
            return
    qualified = ".".join(p for p in (catalog, schema, name) if p)
    tables = ", ".join(sorted({rel for database, sch, rel in relations
                               if sch == "main" and database not in _SYSTEM_DATABASES}))
    views = ", ".join(sorted({f"history.{rel}" for _, sch, rel in relations if sch == "history"}))
    raise SqlRefused(
        f"{qualified!r}: no such table or view (tables: {tables}; "
        f"history views over DuckDB and the lake: {views})")
