"""The REST API on a real server: snapshots, rules, exports, metrics, health and readiness,
checked against the node's source lines and the server's DuckDB database."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import orjson
import polars as pl
import pyarrow.parquet as pq
import pytest
from prometheus_client.parser import text_string_to_metric_families

from api.origin import same_origin
from api.routes import exports
from etl.filters import SHIPPED, Rules, load_rules, rules_to_dict
from etl.store import fetch_pl
from tests.conftest import ServerThread, wait_for
from tests.test_lake import Node, order_line

MIN = 60_000
T0 = 1767607200000  # 2026-01-05T10:00:00Z
EPOCH = datetime(1970, 1, 1)


# ------------------------------------------------------------------ helpers

def lines_in(node: Path) -> int:
    return sum(f.read_bytes().count(b"\n") for f in node.glob("*/hourly/*/*"))


def caught_up(client: httpx.Client, node: Path) -> None:
    """Wait until the server has committed every line of the node dir."""
    total = lines_in(node)
    wait_for(lambda: sum(s["lines"] for s in client.get("/v1/status").json()["streams"]) == total)


def ms_of_iso(text: str) -> int:
    return (datetime.fromisoformat(text[:26]) - EPOCH) // timedelta(milliseconds=1)


def source_orders(node: Path) -> list[dict[str, Any]]:
    """Order-status events in file order (one plain stream, one file per hour)."""
    out = []
    for f in sorted((node / "node_order_statuses" / "hourly").glob("*/*")):
        out += [orjson.loads(line) for line in f.read_bytes().splitlines() if line]
    return out


def source_trades(node: Path) -> list[dict[str, Any]]:
    """One trade per tid from the fill pairs: the taker's side, buyer and seller."""
    by_tid: dict[int, dict[str, Any]] = {}
    for f in sorted((node / "node_fills" / "hourly").glob("*/*")):
        for line in f.read_bytes().splitlines():
            user, fill = orjson.loads(line)
            t = by_tid.setdefault(fill["tid"], {})
            t["buyer" if fill["side"] == "B" else "seller"] = user
            if fill["crossed"]:
                t.update(time=fill["time"], coin=fill["coin"], side=fill["side"], px=float(fill["px"]),
                         sz=float(fill["sz"]), tid=fill["tid"], hash=fill["hash"])
    return list(by_tid.values())


def reader_frame(srv: ServerThread, sql: str, params: list[object] | None = None) -> pl.DataFrame:
    con = srv.state.reader()
    try:
        return fetch_pl(con, sql, params)
    finally:
        con.close()


def error(r: httpx.Response, status: int = 400) -> str:
    assert r.status_code == status, r.text
    return str(r.json()["error"])


# ------------------------------------------------------------------ snapshots
def test_trades_orders_coins_and_status_match_the_source(
        make_node_dir: Callable[..., Path], serve: Callable[..., ServerThread]) -> None:
    node = make_node_dir(lines=3000)
    orders, trades = source_orders(node), source_trades(node)
    with serve(node, keep_all=True) as srv, httpx.Client(base_url=srv.url, timeout=30) as client:
        caught_up(client, node)

        got = client.get("/v1/trades", params={"coin": "PURR/USDC", "limit": 5}).json()
        want = sorted((t for t in trades if t["coin"] == "PURR/USDC"), key=lambda t: (t["time"], t["tid"]),
                      reverse=True)[:5]
        assert len(want) == 5
        fields = ("time", "coin", "side", "px", "sz", "tid", "buyer", "seller", "hash")
        assert [{k: g[k] for k in fields} for g in got] == [{k: w[k] for k in fields} for w in want]
        newest = max(trades, key=lambda t: (t["time"], t["tid"]))
        assert [t["tid"] for t in client.get("/v1/trades", params={"limit": 1}).json()] == [newest["tid"]]

        got = client.get("/v1/orders", params={"coin": "@107", "status": "open", "limit": 7}).json()
        indexed = [(ms_of_iso(o["time"]), i, o) for i, o in enumerate(orders)
                   if o["order"]["coin"] == "@107" and o["status"] == "open"]
        want_orders = [o for _, _, o in sorted(indexed, key=lambda x: (x[0], x[1]), reverse=True)[:7]]
        assert [(g["oid"], g["time"], g["user"], g["status"], g["side"], g["limit_px"], g["orig_sz"])
                for g in got] == [
            (o["order"]["oid"], ms_of_iso(o["time"]), o["user"], o["status"], o["order"]["side"],
             float(o["order"]["limitPx"]), float(o["order"]["origSz"])) for o in want_orders]
        user = max({o["user"] for o in orders}, key=lambda u: sum(o["user"] == u for o in orders))
        got = client.get("/v1/orders", params={"user": user, "limit": 5000}).json()
        assert sorted(g["oid"] for g in got) == sorted(o["order"]["oid"] for o in orders if o["user"] == user)

        coins = {c["coin"]: c for c in client.get("/v1/coins").json()}
        assert set(coins) == {o["order"]["coin"] for o in orders}
        for coin, c in coins.items():
            mine = [t for t in trades if t["coin"] == coin]
            last = max(mine, key=lambda t: (t["time"], t["tid"]))
            assert (c["last_px"], c["last_time"], c["trades"]) == (last["px"], last["time"], len(mine))

        status = client.get("/v1/status").json()
        streams = {s["stream"]: s for s in status["streams"]}
        for name, st in streams.items():
            f = node / name / "hourly" / "20260105" / "10"
            assert (st["file"], st["offset"], st["lag_bytes"]) == ("20260105/10", f.stat().st_size, 0)
            assert st["lines"] == f.read_bytes().count(b"\n")
            assert (st["rejects"], st["gaps"], st["skipped_bytes"]) == (0, 0, 0)
            assert st["last_batch_age_s"] >= 0 and st["capacity_lines_per_s"] > 0
            # the files of an hour long gone, all read: an archive, whose events' age is not lag
            assert (st["mode"], st["lag_seconds"]) == ("archive", None)
        assert streams["node_order_statuses"]["rows"] == len(orders)
        assert streams["node_fills"]["rows"] == streams["node_fills"]["lines"] + len(trades)
        assert status["rules"]["stats"]["total"] == {"seen": len(orders), "kept": len(orders)}
        assert status["pipeline_alive"] is True

        assert "limit must be from 1 to 5000, not 0" in error(client.get("/v1/trades?limit=0"))
        assert "not 'x'" in error(client.get("/v1/orders?limit=x"))
        assert "not 6000" in error(client.get("/v1/orders?limit=6000"))
        # a filter that can match nothing says why: a typo'd coin or status, a malformed user
        stored = {o["status"] for o in orders}
        for params, code, said in [
                ({"coin": "purr/usdc"}, 404, "unknown coin 'purr/usdc'"),
                ({"coin": "purr/usdc"}, 404, "Did you mean PURR/USDC?"),
                ({"status": "Filled"}, 404, "Did you mean filled?"),
                ({"status": "opne"}, 404, "Did you mean open?"),
                ({"status": "bogus", "coin": "@107"}, 404, f"Statuses stored ({len(stored)}): "),
                ({"user": "0xzz"}, 400, "user must be a 0x-prefixed 40-hex-digit address, got '0xzz'")]:
            assert said in error(client.get("/v1/orders", params=params), code), params
        # known values that match no row together: an empty list
        assert client.get("/v1/orders", params={"user": "0x" + "0" * 40}).json() == []


def test_candles_equal_sql_over_trades(make_node_dir: Callable[..., Path],
                                       serve: Callable[..., ServerThread]) -> None:
    node = make_node_dir(lines=4000, events_per_block=1.0)  # about 4 minutes of trades
    with serve(node, keep_all=True) as srv, httpx.Client(base_url=srv.url, timeout=30) as client:
        caught_up(client, node)
        for coin, interval, width in (("BTC", "1m", MIN), ("PURR/USDC", "1m", MIN), ("@107", "5m", 5 * MIN)):
            want = reader_frame(srv, f"""
                SELECT t, t + {width - 1} AS "T", o, h, l, c, v, vq, n, vq / v AS vwap, false AS filled
                FROM (SELECT (epoch_ms(time) // {width}) * {width} AS t,
                             first(px ORDER BY time, rowid) AS o, max(px) AS h, min(px) AS l,
                             last(px ORDER BY time, rowid) AS c, sum(sz) AS v, sum(px * sz) AS vq,
                             count(*) AS n
                      FROM main.trades WHERE coin = $1 GROUP BY 1) ORDER BY t""", [coin]).to_dicts()
            assert len(want) >= 2
            got = client.get("/v1/candles", params={"coin": coin, "interval": interval, "fill": "false",
                                                    "start": 0, "end": want[-1]["t"]}).json()
            assert got == [pytest.approx(w) for w in want]
            # every interval between the first and last trade has a trade: filling adds nothing
            assert client.get("/v1/candles", params={"coin": coin, "interval": interval, "start": 0,
                                                     "end": want[-1]["t"]}).json() == got
            # without start and end: up to the trades' watermark; past this coin's last trade
            # that means filled candles at its last close (other coins traded later)
            full = client.get("/v1/candles", params={"coin": coin, "interval": interval}).json()
            assert full[: len(got)] == got
            last_c = got[-1]["c"]
            assert all(x["filled"] and x["o"] == x["h"] == x["l"] == x["c"] == last_c and x["n"] == 0
                       for x in full[len(got):])
            # ISO times; `start <= t <= end`
            iso = datetime.fromtimestamp(want[1]["t"] / 1000, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
            sliced = client.get("/v1/candles", params={"coin": coin, "interval": interval, "start": iso,
                                                       "end": want[1]["t"], "fill": "false"}).json()
            assert sliced == [got[1]]


def test_candles_fill_up_to_the_watermark_and_never_across_a_stall(
        tmp_path: Path, serve: Callable[..., ServerThread]) -> None:
    node = Node(tmp_path / "node")
    node.add_trade("2026-01-05T10:00:10", 1, coin="PURR/USDC", px="0.2", sz="10")
    node.add_trade("2026-01-05T10:00:40", 2, coin="PURR/USDC", px="0.22", sz="5")
    node.add_trade("2026-01-05T10:02:20", 3, coin="PURR/USDC", px="0.21", sz="10")
    with serve(node.root, keep_all=True, candle_intervals=("1m", "5m"), stall_after_s=100.0) as srv, \
            httpx.Client(base_url=srv.url, timeout=30) as client:
        caught_up(client, node.root)
        # 220 s of silence: a stall from 10:02:20 to 10:06:00, recorded by the next batch
        node.add_trade("2026-01-05T10:06:00", 4, coin="PURR/USDC", px="0.25", sz="4")
        node.add_trade("2026-01-05T10:06:30", 5, coin="BTC", px="100", sz="1")  # watermark 10:06:30
        caught_up(client, node.root)

        def candle(minute: int, o: float, h: float, lo: float, c: float, v: float, vq: float, n: int,
                   filled: bool = False) -> dict[str, Any]:
            t = T0 + minute * MIN
            return {"t": t, "T": t + MIN - 1, "o": o, "h": h, "l": lo, "c": c, "v": v, "vq": vq, "n": n,
                    "vwap": vq / v if v else None, "filled": filled}

        real = [
            candle(0, 0.2, 0.22, 0.2, 0.22, 15.0, 0.2 * 10 + 0.22 * 5, 2),
            candle(2, 0.21, 0.21, 0.21, 0.21, 10.0, 0.21 * 10, 1),
            candle(6, 0.25, 0.25, 0.25, 0.25, 4.0, 0.25 * 4, 1),
        ]
        flat = candle(1, 0.22, 0.22, 0.22, 0.22, 0.0, 0.0, 0, filled=True)
        params: dict[str, Any] = {"coin": "PURR/USDC", "interval": "1m", "start": T0, "end": T0 + 9 * MIN}
        got = client.get("/v1/candles", params=params).json()
        # 10:01 filled; 10:03-10:05 lie in the stall; 10:07 onwards is past the watermark
        assert got == [pytest.approx(c) for c in (real[0], flat, real[1], real[2])]
        assert client.get("/v1/candles", params={**params, "fill": "false"}).json() == [
            pytest.approx(c) for c in real]
        # a range starting on an empty interval takes the previous close from before it
        got = client.get("/v1/candles", params={**params, "start": "2026-01-05T10:01:00",
                                                "end": T0 + 2 * MIN}).json()
        assert got == [pytest.approx(flat), pytest.approx(real[1])]

        # an interval not stored is derived on read, as candleSnapshot derives it
        three = client.get("/v1/candles", params={**params, "interval": "3m", "fill": "false"}).json()
        snap = client.post("/info", json={"type": "candleSnapshot", "req": {
            "coin": "PURR/USDC", "interval": "3m", "startTime": T0, "endTime": T0 + 9 * MIN}}).json()
        assert [(c["t"], c["o"], c["c"], c["n"]) for c in three] == [
            (c["t"], float(c["o"]), float(c["c"]), c["n"]) for c in snap] != []

        for bad, message in [
            ({"coin": None}, "coin is required"),
            ({"interval": "7m"}, "unknown interval '7m'; valid intervals: 1s 5s 10s 1m 3m 5m 15m 30m 1h"),
            ({"start": "yesterday"}, "start: 'yesterday' is neither epoch milliseconds nor an ISO time"),
            ({"end": "2026-01-05T09:00:00"}, "end (2026-01-05T09:00:00) is before start"),
            ({"fill": "maybe"}, "fill must be true or false, not 'maybe'"),
        ]:
            query = {k: v for k, v in {**params, **bad}.items() if v is not None}
            assert message in error(client.get("/v1/candles", params=query))
        # a coin with no candle at all is a 404 that names the coins there are; a known coin's
        # range without trades is an empty list
        assert error(client.get("/v1/candles", params={**params, "coin": "purr/usdc"}), 404) == (
            "unknown coin 'purr/usdc': no candles of it are stored. Did you mean PURR/USDC? "
            "Known coins (2): PURR/USDC, BTC")
        assert "Known coins (2)" in error(client.get("/v1/candles", params={"coin": "NOPE"}), 404)
        assert client.get("/v1/candles", params={**params, "start": 0, "end": T0 - MIN}).json() == []
        # so are the recent trades of a coin never traded
        assert error(client.get("/v1/trades", params={"coin": "btc"}), 404) == (
            "unknown coin 'btc': no trades or candles of it are stored. Did you mean BTC? "
            "Known coins (2): PURR/USDC, BTC")
        assert client.get("/v1/trades", params={"coin": "BTC", "limit": 1}).json() != []


def test_trades_newest_first_keep_same_millisecond_trades_in_reverse_file_order_and_volumes_are_rounded(
        tmp_path: Path, serve: Callable[..., ServerThread]) -> None:
    node = Node(tmp_path / "node")
    # file order 30, 10, 20 within one millisecond: tids say nothing about the order
    for t, tid in [("10:00:00.250", 30), ("10:00:00.250", 10), ("10:00:00.250", 20),
                   ("10:00:01.000", 5), ("10:00:00.100", 40)]:
        node.add_trade(f"2026-01-05T{t}", tid)
    node.add_trade("2026-01-05T10:00:10", 50, coin="ETH", px="100.0", sz="0.1")
    node.add_trade("2026-01-05T10:00:20", 60, coin="ETH", px="100.0", sz="0.7")
    with serve(node.root, keep_all=True, candle_intervals=("1m",)) as srv, \
            httpx.Client(base_url=srv.url, timeout=30) as client:
        caught_up(client, node.root)

        def tids(**params: object) -> list[int]:
            return [t["tid"] for t in client.get("/v1/trades", params=params).json()]

        assert tids(coin="BTC") == [5, 20, 10, 30, 40]
        assert tids(coin="BTC", limit=3) == [5, 20, 10]
        assert tids(limit=6) == [60, 50, 5, 20, 10, 30]

        # 0.1 + 0.7 is 0.7999999999999999 in floats: stored so, sent as the live feed sends it
        stored = reader_frame(srv, "SELECT v FROM main.candles WHERE coin = 'ETH'")["v"].to_list()
        assert stored == [0.1 + 0.7] != [0.8]
        got = client.get("/v1/candles", params={"coin": "ETH", "interval": "1m", "start": T0,
                                                "end": T0, "fill": "false"}).json()
        assert [(c["v"], c["vq"], c["n"]) for c in got] == [(0.8, 80.0, 2)]


def test_end_is_inclusive_in_candles_and_candle_snapshot_and_exclusive_in_exports(
        tmp_path: Path, serve: Callable[..., ServerThread]) -> None:
    """As README and docs/api.md say: /v1/candles and candleSnapshot take the candle opening at
    `end`; /v1/export's range is `start <= time < end`, so start = end is empty."""
    node = Node(tmp_path / "node")
    node.add_trade("2026-01-05T10:00:00", 1)  # T0
    node.add_trade("2026-01-05T10:01:00", 2)  # T0 + MIN
    with serve(node.root, keep_all=True, candle_intervals=("1m",)) as srv, \
            httpx.Client(base_url=srv.url, timeout=30) as client:
        caught_up(client, node.root)

        def opens(path: str, **params: object) -> list[int]:
            r = client.get(path, params={"coin": "BTC", "interval": "1m", **params})
            assert r.status_code == 200, r.text
            return [orjson.loads(line)["t"] for line in r.text.splitlines()] if path.endswith(".ndjson") \
                else [c["t"] for c in r.json()]

        def exported_trades(start: int, end: int) -> int:
            r = client.get("/v1/export/trades.ndjson", params={"coin": "BTC", "start": start, "end": end})
            return len(r.text.splitlines())

        snapshot = client.post("/info", json={"type": "candleSnapshot", "req": {
            "coin": "BTC", "interval": "1m", "startTime": T0, "endTime": T0 + MIN}}).json()
        assert [c["t"] for c in snapshot] == [T0, T0 + MIN]
        assert opens("/v1/candles", start=T0, end=T0 + MIN) == [T0, T0 + MIN]
        assert opens("/v1/candles", start=T0 + MIN, end=T0 + MIN) == [T0 + MIN]
        assert opens("/v1/export/candles.ndjson", start=T0, end=T0 + MIN) == [T0]
        assert opens("/v1/export/candles.ndjson", start=T0 + MIN, end=T0 + MIN) == []
        assert (exported_trades(T0, T0 + MIN), exported_trades(T0 + MIN, T0 + MIN),
                exported_trades(T0 + MIN, T0 + MIN + 1)) == (1, 0, 1)


# ------------------------------------------------------------------ rules
def rules_and_node(tmp_path: Path) -> tuple[Path, Node]:
    """An empty rules file and a node dir of one BTC order status."""
    rules_path = tmp_path / "rules.toml"
    rules_path.write_text("[orders]\n")
    node = Node(tmp_path / "node")
    node.add_order("2026-01-05T10:00:01", 1, coin="BTC")
    return rules_path, node


def test_put_rules_applies_to_the_next_batch_and_bad_rules_change_nothing(
        tmp_path: Path, serve: Callable[..., ServerThread], caplog: pytest.LogCaptureFixture) -> None:
    rules_path, node = rules_and_node(tmp_path)
    with serve(node.root, rules_file=rules_path) as srv, httpx.Client(base_url=srv.url, timeout=30) as client:
        caught_up(client, node.root)
        assert client.get("/v1/rules").json() == rules_to_dict(Rules())

        new = {"orders": {"coins": ["ETH", "PURR/USDC"], "min_notional": 50}}
        r = client.put("/v1/rules", json=new)
        assert r.status_code == 200, r.text
        assert r.json() == rules_to_dict(Rules(coins=("ETH", "PURR/USDC"), min_notional=50.0))
        assert client.get("/v1/rules").json() == r.json()
        assert rules_to_dict(load_rules(rules_path)) == r.json()  # written to the rules file

        node.add_order("2026-01-05T10:00:02", 2, coin="BTC")  # coin not allowed
        node.add_order("2026-01-05T10:00:03", 3, coin="ETH")  # kept: notional 100
        node.add_order("2026-01-05T10:00:04", 4, coin="ETH", px="10.0")  # notional 10 < 50
        node.add_order("2026-01-05T10:00:05", 5, coin="PURR/USDC")
        caught_up(client, node.root)
        assert [o["oid"] for o in client.get("/v1/orders").json()] == [5, 3, 1]
        assert client.get("/v1/status").json()["rules"]["stats"]["coins"] == {"seen": 4, "kept": 3}
        assert "x-nodetap-unseen-coins" not in client.put("/v1/rules", json=new).headers

        # a coin the node never showed is applied all the same, and named in the answer and the log
        with caplog.at_level(logging.WARNING, logger="nodetap.api"):
            r = client.put("/v1/rules", json={"orders": {"coins": ["ETH", "btc", "PURR/USD"],
                                                         "min_notional_by_coin": {"SOLX": 5}}})
        assert r.status_code == 200 and r.json()["orders"]["coins"] == ["ETH", "btc", "PURR/USD"]
        assert json.loads(r.headers["x-nodetap-unseen-coins"]) == ["btc", "PURR/USD", "SOLX"]
        warned = [m.getMessage() for m in caplog.records if "event=rules_unseen_coins" in m.getMessage()][-1]
        assert ("coins='btc' (did you mean 'BTC'?), 'PURR/USD' (did you mean 'PURR/USDC'?), 'SOLX' "
                "(no trade") in warned
        client.put("/v1/rules", json=new)

        before = client.get("/v1/rules").json()
        for body, message in [
            ({"orders": {"sides": ["X"]}}, "<request>: orders.sides[0]: must be 'A' (ask/sell) or 'B'"),
            ({"orders": {"colour": "red"}}, "<request>: orders.colour: unknown key (valid keys: "),
            ({"orders": {"min_notional": -1}}, "minimum notional must not be negative"),
            ({"orders": {"watch_users": ["0x" + "ab" * 20, "abc"]}},
             "<request>: orders.watch_users[1]: expected an address, 0x and 40 hex digits, got 'abc'"),
            ([1, 2], "expected a table with an [orders] table"),
        ]:
            assert message in error(client.put("/v1/rules", json=body))
        assert "must be a JSON rules document" in error(client.put("/v1/rules", content=b"{oops"))
        assert client.get("/v1/rules").json() == before
        assert rules_to_dict(load_rules(rules_path)) == before


def test_put_rules_writes_a_missing_default_rules_file_and_says_when_nothing_is_saved(
        tmp_path: Path, serve: Callable[..., ServerThread], monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.chdir(tmp_path)  # where the default rules file, data/rules.toml, does not exist
    default = tmp_path / "data" / "rules.toml"
    node = Node(tmp_path / "node")
    node.add_order("2026-01-05T10:00:01", 1, coin="BTC")
    eth = {"orders": {"coins": ["ETH"]}}
    with serve(node.root) as srv, httpx.Client(base_url=srv.url, timeout=30) as client:
        caught_up(client, node.root)
        assert client.get("/v1/rules").json() == rules_to_dict(SHIPPED)  # missing: the bundled rules
        assert client.get("/v1/status").json()["rules"]["file"] == "data/rules.toml"
        r = client.put("/v1/rules", json=eth)
        assert (r.status_code, r.headers["x-nodetap-rules-saved"]) == (200, "true"), r.text
    assert load_rules(default) == Rules(coins=("ETH",))  # created, data/ included
    with serve(node.root) as srv, httpx.Client(base_url=srv.url, timeout=30) as client:
        assert client.get("/v1/rules").json() == rules_to_dict(Rules(coins=("ETH",)))  # kept across a restart

    # no rules file at all: applied, and the answer and the log say it is not saved
    with caplog.at_level(logging.INFO, logger="nodetap.filters"), \
            serve(node.root, rules_file="") as srv, httpx.Client(base_url=srv.url, timeout=30) as client:
        r = client.put("/v1/rules", json={"orders": {"coins": ["SOL"]}})
        assert (r.status_code, r.headers["x-nodetap-rules-saved"]) == (200, "false"), r.text
        assert client.get("/v1/rules").json() == rules_to_dict(Rules(coins=("SOL",)))
        assert client.get("/v1/status").json()["rules"]["file"] is None
    assert load_rules(default) == Rules(coins=("ETH",))  # untouched
    logged = [r.getMessage() for r in caplog.records if "event=rules_replace" in r.getMessage()]
    assert logged == ["event=rules_replace saved=false (no rules file: setting rules_file is empty; the new "
                      "rules last until nodetap stops)"]


def test_no_web_page_on_another_origin_can_put_rules(
        tmp_path: Path, serve: Callable[..., ServerThread]) -> None:
    rules_path, node = rules_and_node(tmp_path)
    evil = "http://evil.example"
    eth = {"orders": {"coins": ["ETH"]}}
    with serve(node.root, rules_file=rules_path) as srv, httpx.Client(base_url=srv.url, timeout=30) as client:
        def preflight(method: str, path: str) -> httpx.Response:
            return client.options(path, headers={"Origin": evil, "Access-Control-Request-Method": method,
                                                 "Access-Control-Request-Headers": "content-type"})

        # a browser asks first: reads are allowed from any origin, a PUT is not
        put_asked = preflight("PUT", "/v1/rules")
        assert put_asked.status_code == 400
        assert "PUT" not in put_asked.headers["access-control-allow-methods"]
        for method, path in (("GET", "/v1/rules"), ("POST", "/info"), ("POST", "/v1/sql")):
            read_asked = preflight(method, path)
            assert read_asked.status_code == 200, (method, path)
            assert read_asked.headers["access-control-allow-origin"] == "*"
        cross = client.get("/v1/rules", headers={"Origin": evil})
        assert (cross.status_code, cross.headers["access-control-allow-origin"]) == (200, "*")

        # a PUT sent anyway (a browser that does not ask, a page on another port): refused, nothing changes
        port = srv.port
        for origin in (evil, f"http://127.0.0.1:{port + 1}", f"https://127.0.0.1:{port}", "null"):
            r = client.put("/v1/rules", json=eth, headers={"Origin": origin})
            assert r.status_code == 403, (origin, r.text)
            body = r.json()
            assert (body["code"], body["msg"], body["data"]) == ("CrossOriginWrite", body["error"], None)
            assert body["error"] == (
                f"PUT /v1/rules refused from origin {origin}: nodetap's state is changed only from its "
                f"own origin (http://127.0.0.1:{port}), so that no web page on another site can change it "
                f"through your browser. curl, scripts and the CLI (which send no Origin header) and the "
                f"dashboard nodetap serves work")
        assert client.get("/v1/rules").json() == rules_to_dict(Rules())
        assert load_rules(rules_path) == Rules()

        # its own origin (the dashboard; the default port written or not) and no origin (curl) may write
        same = client.put("/v1/rules", json=eth, headers={"Origin": f"HTTP://127.0.0.1:{port}"})
        assert same.status_code == 200, same.text
        assert load_rules(rules_path) == Rules(coins=("ETH",))
        sol = client.put("/v1/rules", json={"orders": {"coins": ["SOL"]}})
        assert sol.status_code == 200, sol.text
        assert load_rules(rules_path) == Rules(coins=("SOL",))


def test_same_origin_compares_scheme_host_and_port_with_default_ports() -> None:
    assert same_origin("http://Example.com", "http", "example.com:80")
    assert same_origin("https://example.com:443", "https", "EXAMPLE.com")
    assert same_origin("http://[::1]:8000", "http", "[::1]:8000")
    assert not same_origin("https://example.com", "http", "example.com")
    assert not same_origin("http://example.com:8001", "http", "example.com:8000")
    assert not same_origin("http://example.com.evil.example", "http", "example.com")
    assert not same_origin("null", "http", "example.com")
    assert not same_origin("http://example.com", "http", "")


# ------------------------------------------------------------------ exports
def test_exports_stream_history_rows_in_every_format(
        make_node_dir: Callable[..., Path], serve: Callable[..., ServerThread], tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    # data across 11:00, with the complete 10:00 hour sealed: exports read the lake and DuckDB
    node = make_node_dir(lines=3000, start=datetime(2026, 1, 5, 10, 59, tzinfo=UTC), events_per_block=2.0)
    monkeypatch.setattr(exports, "EXPORT_BATCH_ROWS", 100)  # several batches, so several row groups
    with serve(node, keep_all=True, seal_grace_s=0.0, lake_dir=tmp_path / "lake") as srv, \
            httpx.Client(base_url=srv.url, timeout=30) as client:
        caught_up(client, node)
        lake = srv.state.pipeline.lake()
        assert lake.seal().sealed >= 3
        lake.con.close()

        for coin, fmt, filename in [("PURR/USDC", "parquet", "orders-PURR_USDC.parquet"),
                                    ("@107", "csv", "orders-107.csv"),
                                    ("km:USTECH", "ndjson", "orders-km_USTECH.ndjson")]:
            r = client.get(f"/v1/export/orders.{fmt}", params={"coin": coin})
            assert r.status_code == 200, r.text
            assert r.headers["content-disposition"] == f'attachment; filename="{filename}"'
            want = reader_frame(srv, "SELECT * FROM history.orders WHERE coin = $1", [coin])
            want = want.sort("time", "oid")
            assert want.height == sum(o["order"]["coin"] == coin for o in source_orders(node))
            if fmt == "parquet":
                got = pl.read_parquet(io.BytesIO(r.content))
                meta = pq.ParquetFile(io.BytesIO(r.content)).metadata
                assert meta.num_row_groups == -(-want.height // 100)
                assert meta.row_group(0).column(0).compression == "ZSTD"
                assert got.sort("time", "oid").equals(want)
            elif fmt == "csv":
                got = pl.read_csv(io.BytesIO(r.content), schema=want.schema)
                assert got.sort("time", "oid").equals(want)
            else:
                got = pl.read_ndjson(io.BytesIO(r.content)).with_columns(
                    pl.col("time", "order_time").str.to_datetime(time_unit="us"))
                cols = ["time", "oid", "user", "status", "limit_px", "orig_sz", "order_time", "children"]
                assert got.select(cols).sort("time", "oid").equals(want.select(cols))

        # a time range: start inclusive, end exclusive, epoch ms or ISO
        start, end = "2026-01-05T10:59:30", T0 + 60 * MIN + 10_000
        r = client.get("/v1/export/trades.parquet", params={"coin": "BTC", "start": start, "end": end})
        got = pl.read_parquet(io.BytesIO(r.content)).sort("tid")
        bounds: list[object] = [datetime(2026, 1, 5, 10, 59, 30), datetime(2026, 1, 5, 11, 0, 10)]
        want = reader_frame(srv, "SELECT * FROM history.trades WHERE coin = 'BTC' AND time >= $1 AND "
                                 "time < $2", bounds).sort("tid")
        assert want.height > 0 and got.equals(want)

        r = client.get("/v1/export/candles.parquet", params={"coin": "BTC", "interval": "1m"})
        assert r.headers["content-disposition"] == 'attachment; filename="candles-BTC-1m.parquet"'
        got = pl.read_parquet(io.BytesIO(r.content)).sort("t")
        want = reader_frame(srv, "SELECT * FROM history.candles WHERE coin = 'BTC' AND interval = '1m'")
        assert got.columns[:4] == ["coin", "interval", "t", "T"]
        assert got.equals(want.rename({"t_close": "T"}).sort("t")) and got.height >= 2

        assert "unknown export table 'nope'" in error(client.get("/v1/export/nope.parquet"), 404)
        assert "unknown export format 'xlsx'" in error(client.get("/v1/export/orders.xlsx"), 404)
        assert "interval applies to candles only" in error(client.get("/v1/export/orders.csv?interval=1m"))
        assert "unknown interval '2m'" in error(client.get("/v1/export/candles.csv?interval=2m"))
        assert "interval '3m' is not stored here (setting candle_intervals: " in error(
            client.get("/v1/export/candles.csv?interval=3m"))
        assert "GET /v1/candles?coin=...&interval=3m derives it on read" in error(
            client.get("/v1/export/candles.csv?interval=3m"))
        assert "start: 'noon'" in error(client.get("/v1/export/fills.csv?start=noon"))
        # a typo is a 404 naming the known coins (as `nodetap export` says it), not an empty file
        assert "unknown coin 'btc': no trades or candles of it are stored. Did you mean BTC? " in error(
            client.get("/v1/export/trades.csv?coin=btc"), 404)
        assert "unknown coin 'NOPE': no orders or candles of it are stored. Known coins" in error(
            client.get("/v1/export/orders.ndjson?coin=NOPE"), 404)


# ------------------------------------------------------------------ operations
def test_metrics_health_and_readiness(make_node_dir: Callable[..., Path],
                                      serve: Callable[..., ServerThread]) -> None:
    node = make_node_dir(lines=2000)
    orders_file = node / "node_order_statuses" / "hourly" / "20260105" / "10"
    with serve(node, keep_all=True, ready_max_lag_s=0.5) as srv, \
            httpx.Client(base_url=srv.url, timeout=30) as client:
        caught_up(client, node)
        assert client.get("/healthz").json() == {"status": "ok"}
        # every line is committed; the streams' last commits may still be settling on a busy machine
        wait_for(lambda: client.get("/readyz").status_code == 200, timeout=30)
        ready = client.get("/readyz")
        assert ready.status_code == 200 and ready.json()["status"] == "ready", ready.json()

        families = {f.name: f for f in text_string_to_metric_families(client.get("/metrics").text)}
        expected = {"nodetap_lines_read", "nodetap_bytes_read", "nodetap_rows", "nodetap_rejects",
                    "nodetap_gaps", "nodetap_skipped_bytes", "nodetap_lag_bytes", "nodetap_lag_seconds",
                    "nodetap_arrival_lines_per_second", "nodetap_capacity_lines_per_second",
                    "nodetap_stream_mode", "nodetap_batch_duration_seconds", "nodetap_pipeline_up",
                    "nodetap_sealer_up", "nodetap_rules_rows_seen", "nodetap_rules_rows_kept",
                    "nodetap_rules_file_valid"}
        assert expected <= set(families)
        # the live hub's numbers, each as its own family with its own help text
        hub_stats = srv.state.hub.stats()
        hub_counters = {"messages_sent", "messages_dropped", "lagged_disconnects", "aborted_disconnects",
                        "subscriptions_refused", "batches_published", "feed_errors"}
        hub_gauges = {"clients_connected", "subscriptions", "unsent_bytes"}
        assert {key.removesuffix("_total") for key in hub_stats} == hub_counters | hub_gauges
        for key, number in hub_stats.items():
            family = families[f"nodetap_ws_{key}".removesuffix("_total")]
            assert family.samples[0].value == number, key
            assert family.type == ("counter" if family.name.removeprefix("nodetap_ws_") in hub_counters
                                   else "gauge"), key
            assert family.documentation and not family.documentation.startswith("WebSocket hub: "), key
        assert families["nodetap_ws_feed_errors"].documentation == (
            "Live messages not built because building them failed (a subscription's filter or "
            "format); each kind of failure is logged once, and the batch's other messages still go out.")

        def value(family: str, sample: str, stream: str) -> float:
            return next(s.value for s in families[family].samples
                        if s.name == sample and s.labels.get("stream") == stream)

        for stream in ("node_order_statuses", "node_fills"):
            f = node / stream / "hourly" / "20260105" / "10"
            lines = f.read_bytes().count(b"\n")
            assert value("nodetap_lines_read", "nodetap_lines_read_total", stream) == lines
            assert value("nodetap_bytes_read", "nodetap_bytes_read_total", stream) == f.stat().st_size
            assert value("nodetap_rejects", "nodetap_rejects_total", stream) == 0
            assert value("nodetap_lag_bytes", "nodetap_lag_bytes", stream) == 0
        assert families["nodetap_pipeline_up"].samples[0].value == 1
        assert families["nodetap_sealer_up"].samples[0].value == 1

        # the node writes half a line and stops: unread bytes, no commit for longer than the bound
        line = order_line("2026-01-05T11:00:00", 42)
        with open(orders_file, "ab") as f:
            f.write(line[:50])
        # ready until the half line has waited longer than ready_max_lag_s
        wait_for(lambda: client.get("/readyz").status_code == 503)
        r = client.get("/readyz")
        assert r.status_code == 503
        (reason,) = r.json()["reasons"]
        assert reason.startswith("node_order_statuses: 50 unread bytes and last commit")
        assert reason.endswith("(over ready_max_lag_s = 0.5 s)")
        with open(orders_file, "ab") as f:
            f.write(line[50:] + b"\n")
        wait_for(lambda: client.get("/readyz").status_code == 200)

        families = {f.name: f for f in text_string_to_metric_families(client.get("/metrics").text)}
        assert value("nodetap_batch_duration_seconds", "nodetap_batch_duration_seconds_count",
                     "node_order_statuses") >= 1

        # the ingest thread stops: not alive, not ready
        assert srv.state.pipeline.stop() is True
        r = client.get("/healthz")
        assert r.status_code == 503
        assert r.json() == {"status": "down", "reason": "the pipeline thread has stopped"}
        r = client.get("/readyz")
        assert r.status_code == 503 and "the pipeline thread has stopped" in r.json()["reasons"]
        families = {f.name: f for f in text_string_to_metric_families(client.get("/metrics").text)}
        assert families["nodetap_pipeline_up"].samples[0].value == 0


def test_candle_snapshot_equals_v1_candles_after_retention_prunes(
        tmp_path: Path, serve: Callable[..., ServerThread]) -> None:
    node = Node(tmp_path / "node")
    for i, (minute, px) in enumerate([(0, "100"), (1, "101"), (3, "99"), (65, "120"), (70, "121"),
                                      (185, "130")]):
        hh, mm = divmod(minute, 60)
        node.add_trade(f"2026-01-05T{10 + hh:02d}:{mm:02d}:30", i + 1, px=px)
    with serve(node.root, keep_all=True, candle_intervals=("1m", "1h"), stall_after_s=7200.0,
               retain_hours=1.0, seal_grace_s=60.0) as srv, \
            httpx.Client(base_url=srv.url, timeout=30) as client:
        caught_up(client, node.root)
        # seal and prune: hour 10's candles now live only in the lake
        report = srv.state.pipeline.lake().seal()
        assert report.pruned_hours > 0
        for interval, end in (("1m", T0 + 190 * MIN), ("1h", T0 + 3 * 60 * MIN)):
            snap = client.post("/info", json={"type": "candleSnapshot", "req": {
                "coin": "BTC", "interval": interval, "startTime": T0, "endTime": end}}).json()
            v1 = client.get("/v1/candles", params={"coin": "BTC", "interval": interval,
                                                   "start": T0, "end": end}).json()
            assert len(snap) == len(v1) > 3
            assert [(s["t"], s["T"], float(s["o"]), float(s["h"]), float(s["l"]), float(s["c"]),
                     float(s["v"]), s["n"]) for s in snap] == [
                (c["t"], c["T"], c["o"], c["h"], c["l"], c["c"], c["v"], c["n"]) for c in v1]
            assert snap[0]["t"] == T0 and float(snap[0]["o"]) == 100.0


def test_coins_and_meta_keep_coins_whose_rows_retention_moved_to_the_lake(
        tmp_path: Path, serve: Callable[..., ServerThread]) -> None:
    node = Node(tmp_path / "node")
    node.add_trade("2026-01-05T10:00:30", 1, coin="OLD", px="5.0", sz="0.25")
    node.add_trade("2026-01-05T10:01:30", 2, coin="OLD", px="6.0", sz="0.5")
    node.add_order("2026-01-05T10:02:00", 7, coin="ORD")
    node.add_trade("2026-01-05T12:30:00", 3, coin="BTC", px="101.0")
    node.add_trade("2026-01-05T13:05:00", 4, coin="BTC", px="102.0")
    node.add_order("2026-01-05T13:05:00", 8, coin="BTC")
    with serve(node.root, keep_all=True, candle_intervals=("1m",), stall_after_s=36000.0,
               retain_hours=1.0, seal_grace_s=60.0, node_info_url="") as srv, \
            httpx.Client(base_url=srv.url, timeout=30) as client:
        caught_up(client, node.root)
        srv.state.pipeline.lake().seal()
        # hour 10 is sealed and pruned: its rows are in the lake only
        assert reader_frame(srv, """SELECT (SELECT count(*) FROM main.trades WHERE coin = 'OLD') AS trades,
                                           (SELECT count(*) FROM main.orders WHERE coin = 'ORD') AS orders,
                                           (SELECT count(*) FROM main.candles WHERE coin = 'OLD') AS candles
                                    """).row(0) == (0, 0, 0)
        assert reader_frame(srv, "SELECT tbl FROM lake_hours WHERE pruned ORDER BY tbl")["tbl"].to_list() == [
            "candles", "fills", "orders", "trades"]

        assert client.get("/v1/coins").json() == [
            {"coin": "BTC", "last_px": 102.0, "last_time": T0 + 185 * MIN, "trades": 2},
            {"coin": "OLD", "last_px": 6.0, "last_time": T0 + MIN + 30_000, "trades": 2},
            {"coin": "ORD", "last_px": None, "last_time": None, "trades": 0},
        ]
        assert client.post("/info", json={"type": "meta"}).json() == {"universe": [
            {"name": "BTC", "szDecimals": 0, "maxLeverage": 1},
            {"name": "OLD", "szDecimals": 2, "maxLeverage": 1},
        ]}
        snap = client.post("/info", json={"type": "candleSnapshot", "req": {
            "coin": "OLD", "interval": "1m", "startTime": T0, "endTime": T0 + MIN}}).json()
        assert [(c["t"], c["c"]) for c in snap] == [(T0, "5.0"), (T0 + MIN, "6.0")]
        # the latest state of a pruned coin still answers, from the lake
        recent = client.post("/info", json={"type": "recentTrades", "coin": "OLD"}).json()
        assert [(t["px"], t["sz"], t["time"]) for t in recent] == [
            ("5.0", "0.25", T0 + 30_000), ("6.0", "0.5", T0 + MIN + 30_000)]
        assert client.post("/info", json={"type": "allMids"}).json() == {"BTC": "102.0", "OLD": "6.0"}
        assert [(t["px"], t["time"]) for t in client.get("/v1/trades", params={"coin": "OLD"}).json()] == [
            (6.0, T0 + MIN + 30_000), (5.0, T0 + 30_000)]
        assert [o["coin"] for o in client.get("/v1/orders", params={"coin": "ORD"}).json()] == ["ORD"]
