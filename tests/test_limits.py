"""HTTP limits on a real server: request bodies over `http_max_body_bytes` get 413 before they
are read, bad parameters get a 4xx naming the parameter, and SQL queries past
`sql_max_concurrent` get 429."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import psutil
import pytest

from api.routes import sql as sql_route
from tests.conftest import ServerThread, wait_for

LIMIT = 64 << 10


@pytest.fixture
def server(make_node_dir: Callable[..., Path], serve: Callable[..., ServerThread]) -> Iterator[ServerThread]:
    node = make_node_dir(lines=500)
    with serve(node, http_max_body_bytes=LIMIT, sql_max_concurrent=1, sql_timeout_s=3.0) as srv:
        yield srv


def test_bodies_over_the_limit_get_413_unread(server: ServerThread) -> None:
    me = psutil.Process()
    message = f"request body larger than {LIMIT} bytes (setting http_max_body_bytes)"
    big = b"x" * (20 << 20)
    rss = me.memory_info().rss
    with httpx.Client(base_url=server.url, timeout=30) as client:
        for method, path in (("POST", "/v1/sql"), ("POST", "/info"), ("PUT", "/v1/rules")):
            r = client.request(method, path, content=big, headers={"content-type": "application/json"})
            assert r.status_code == 413, (path, r.status_code)
            assert r.json() == {"error": message, "code": "BodyTooLarge", "msg": message, "data": None}

        # chunked (no Content-Length): cut once the limit is passed
        def chunks() -> Iterator[bytes]:
            for _ in range(320):
                yield b"y" * (64 << 10)

        r = client.post("/v1/sql", content=chunks(), headers={"content-type": "text/plain"})
        assert r.status_code == 413 and r.json()["error"] == message
        # a body at the limit is read as usual
        query = b"SELECT 1 AS a --" + b"-" * (LIMIT - 16)
        assert len(query) == LIMIT
        r = client.post("/v1/sql", content=query, headers={"content-type": "text/plain"})
        assert r.status_code == 200 and r.json()["rows"] == [[1]]
    assert me.memory_info().rss - rss < 60 << 20  # three 20 MB bodies were never held


@pytest.mark.parametrize(("path", "message"), [
    ("/v1/candles?coin=BTC&start=-99999999999999999999",
     "start: -99999999999999999999 is out of range: epoch milliseconds from -62135596800000 to "
     "253402300799999 (years 1 to 9999; e.g. start=1767610680000 or start=2026-01-05T10:58:00Z)"),
    ("/v1/candles?coin=BTC&end=99999999999999999999", "end: 99999999999999999999 is out of range"),
    ("/v1/export/orders.csv?start=-99999999999999999999", "start: -99999999999999999999 is out of range"),
    ("/v1/export/trades.parquet?end=253402300800000", "end: 253402300800000 is out of range"),
    ("/v1/export/fills.ndjson?start=9999-12-31T23:59:59-05:00",
     "start: 9999-12-31T23:59:59-05:00 is out of range"),
    ("/v1/export/fills.ndjson?end=0001-01-01T00:00:00%2B05:00",
     "end: 0001-01-01T00:00:00+05:00 is out of range"),
    ("/v1/candles?coin=BTC&start=%C2%B2", "start: '²' is not a time between the years 1 and 9999"),
    ("/v1/candles?coin=BTC&start=0000-01-01",
     "start: '0000-01-01' is neither epoch milliseconds nor an ISO time"),
    ("/v1/trades?limit=99999999999999999999", "limit must be from 1 to 5000, not 99999999999999999999"),
    ("/v1/orders?limit=-1", "limit must be from 1 to 5000, not -1"),
    ("/v1/candles?coin=BTC&fill=maybe", "fill must be true or false, not 'maybe'"),
    ("/v1/candles?coin=BTC&interval=7m", "unknown interval '7m'"),
    ("/v1/candles?coin=BTC&start=1767610680&end=1767614280",
     "start: 1767610680 looks like epoch seconds (2026-01-05T10:58:00Z); times are epoch milliseconds "
     "(1767610680000) or ISO times"),
    ("/v1/export/trades.csv?end=1767614280", "end: 1767614280 looks like epoch seconds"),
    # a parameter the route does not take: a typo would otherwise answer for something else
    ("/v1/trades?coins=BTC",
     "unknown query parameter 'coins' (did you mean coin?); /v1/trades takes: coin, limit"),
    ("/v1/candles?coin=BTC&intervall=5m", "unknown query parameter 'intervall' (did you mean interval?)"),
    ("/v1/orders?foo=1", "unknown query parameter 'foo'; /v1/orders takes: coin, status, user, limit"),
    ("/v1/export/trades.csv?from=1", "unknown query parameter 'from'; /v1/export/{table}.{fmt} takes: "),
    ("/v1/status?verbose=1", "unknown query parameter 'verbose'; /v1/status takes: none"),
])
def test_bad_parameters_are_400_naming_them(server: ServerThread, path: str, message: str) -> None:
    r = httpx.get(server.url + path, timeout=30)
    assert r.status_code == 400, r.text
    assert message in r.json()["error"]


def test_sql_queries_past_the_concurrency_limit_get_429(server: ServerThread) -> None:
    results: list[httpx.Response] = []
    slow = "SELECT count(*) FROM range(1000000000) a CROSS JOIN range(1000000000) b"
    thread = threading.Thread(target=lambda: results.append(
        httpx.post(server.url + "/v1/sql", json={"sql": slow}, timeout=30)))
    thread.start()
    wait_for(lambda: sql_route._running.get(id(server.state), 0) == 1, timeout=10)
    r = httpx.post(server.url + "/v1/sql", json={"sql": "SELECT 1"}, timeout=30)
    assert r.status_code == 429
    assert r.json()["error"] == ("1 SQL queries are running already; retry later "
                                 "(setting sql_max_concurrent)")
    thread.join(30)
    assert results[0].status_code == 408
    wait_for(lambda: sql_route._running.get(id(server.state), 0) == 0, timeout=10)
    r = httpx.post(server.url + "/v1/sql", json={"sql": "SELECT 1 AS a"}, timeout=30)
    assert r.json()["rows"] == [[1]]


def test_unknown_paths_and_wrong_methods_answer_in_the_error_shape(server: ServerThread) -> None:
    def shape(code: str, message: str) -> dict[str, object]:
        return {"error": message, "code": code, "msg": message, "data": None}

    with httpx.Client(base_url=server.url, timeout=30) as client:
        missing = client.get("/v1/nope")
        long = client.get("/v2/" + "a" * 5000)
        rules = client.delete("/v1/rules")
        info = client.get("/info")
    assert missing.status_code == 404
    assert missing.json() == shape("NotFound", "no such endpoint: GET /v1/nope (every endpoint: GET /docs)")
    assert long.status_code == 404  # the path is echoed up to 200 characters
    assert long.json()["msg"] == f"no such endpoint: GET /v2/{'a' * 196}... (every endpoint: GET /docs)"
    assert (rules.status_code, rules.headers["allow"]) == (405, "GET, PUT")
    assert rules.json() == shape("MethodNotAllowed",
                                 "method not allowed: DELETE /v1/rules (allowed: GET, PUT)")
    assert (info.status_code, info.headers["allow"]) == (405, "POST")
    assert info.json() == shape("MethodNotAllowed", "method not allowed: GET /info (allowed: POST)")
