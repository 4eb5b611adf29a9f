"""Info types and subscriptions served from a node's fills and order statuses, through the
official python SDK against a real server, checked against the node's source lines; the node's
own info server stood in for by a tiny real HTTP server; one subscriber's failure isolated.

Recorded real shapes (hyperliquid-dex/hyperliquid-python-sdk tests/cassettes/info_test/):
test_get_user_fills.yaml (fill keys closedPnl, coin, crossed, dir, fee, hash, oid, px, side,
startPosition, sz, time; @nktkas/hyperliquid's UserFill adds tid, feeToken, twapId),
test_historical_orders.yaml (`{"order": {coin, side, limitPx, sz, oid, timestamp, triggerCondition,
isTrigger, triggerPx, children, isPositionTpsl, reduceOnly, orderType, origSz, tif, cloid},
"status", "statusTimestamp"}`), test_get_all_mids.yaml (`{"APE":"1.96595",...}`),
test_user_twap_slice_fills.yaml, test_get_user_state.yaml (clearinghouseState). Subscription
messages: python SDK hyperliquid/utils/types.py (UserFillsMsg with isSnapshot, UserEventsMsg on
channel "user", AllMidsMsg `{"mids": {...}}`) and @nktkas/hyperliquid src/api/subscription/
_methods (orderUpdates: `[{order: OpenOrder, status, statusTimestamp}]`).
"""

from __future__ import annotations

import asyncio
import logging
import re
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import orjson
import polars as pl
import pytest

from api import infodata
from api.nodeinfo import NodeInfo, NodeInfoUnavailable
from api.userwire import aggregate_by_time
from api.wire import FEED_ERRORS, CandleSub, OrdersSub, TradesSub, build_messages
from etl.columns import FILLS_SCHEMA, ORDERS_SCHEMA, TRADES_SCHEMA
from etl.pipeline import Processed
from tests.conftest import ServerThread, free_port, wait_for
from tests.test_lake import order_line

Serve = Callable[..., ServerThread]
CASSETTE_FILL_KEYS = {"closedPnl", "coin", "crossed", "dir", "fee", "hash", "oid", "px", "side",
                      "startPosition", "sz", "time"}
FILL_KEYS = ["coin", "px", "sz", "side", "time", "startPosition", "dir", "closedPnl", "hash", "oid",
             "crossed", "fee", "tid", "feeToken", "twapId"]
ORDER_KEYS = ["coin", "side", "limitPx", "sz", "oid", "timestamp", "triggerCondition", "isTrigger",
              "triggerPx", "children", "isPositionTpsl", "reduceOnly", "orderType", "origSz", "tif", "cloid"]
NUMERIC = ("px", "sz", "startPosition", "closedPnl", "fee")


def source_fills(node: Path) -> list[tuple[str, dict[str, Any]]]:
    out = []
    for f in sorted((node / "node_fills" / "hourly").glob("*/*")):
        out += [tuple(orjson.loads(line)) for line in f.read_bytes().splitlines() if line]
    return out  # type: ignore[return-value]


def source_orders(node: Path) -> list[dict[str, Any]]:
    out = []
    for f in sorted((node / "node_order_statuses" / "hourly").glob("*/*")):
        out += [orjson.loads(line) for line in f.read_bytes().splitlines() if line]
    return out


def ms_of(text: str) -> int:
    return int(datetime.fromisoformat(text[:26]).replace(tzinfo=UTC).timestamp() * 1000)


def same_fill(got: dict[str, Any], src: dict[str, Any]) -> bool:
    return all(float(got[k]) == float(src[k]) if k in NUMERIC else got[k] == src[k] for k in FILL_KEYS)


def caught_up(server: ServerThread, node: Path) -> None:
    size = sum(p.stat().st_size for p in node.rglob("*") if p.is_file())
    wait_for(lambda: sum(int(r["bytes"]) for r in server.state.store.status()) == size)


# ------------------------------------------------------------------ info types
def test_info_types_from_the_files_through_the_official_sdk(
        make_node_dir: Callable[..., Path], serve: Serve, monkeypatch: pytest.MonkeyPatch) -> None:
    from hyperliquid.info import Info
    from hyperliquid.utils.error import ClientError

    node = make_node_dir(lines=16000)
    fills, orders = source_fills(node), source_orders(node)
    user = max({u for u, _ in fills}, key=lambda u: sum(x == u for x, _ in fills))
    mine = sorted((f for u, f in fills if u == user), key=lambda f: (f["time"], f["tid"]))
    assert len(mine) > 12
    monkeypatch.setattr(infodata, "USER_FILLS", 6)  # the public API's 2000 and 10000, scaled down
    monkeypatch.setattr(infodata, "USER_FILLS_WINDOW", 10)
    with serve(node, keep_all=True, node_info_url="") as server:
        caught_up(server, node)
        info = Info(base_url=server.url, skip_ws=True, perp_dexs=["", "km"])
        got_fills = info.user_fills(user.upper().replace("0X", "0x"))
        by_time = info.user_fills_by_time(user, mine[0]["time"], mine[-1]["time"])
        reversed_ = httpx.post(server.url + "/info", json={
            "type": "userFillsByTime", "user": user, "startTime": 0, "reversed": True}).json()
        history = info.historical_orders(user)
        mids = info.all_mids()
        km_mids = info.all_mids("km")
        dexs = info.perp_dexs()
        km_candles = info.candles_snapshot("km:USTECH", "1m", 0, 2_000_000_000_000)
        my_orders = [o for o in orders if o["user"] == user]
        last = my_orders[-1]
        status = info.query_order_by_oid(user, last["order"]["oid"])
        unknown = info.query_order_by_oid(user, 1)
        recent = httpx.post(server.url + "/info", json={"type": "recentTrades", "coin": "ETH"}).json()
        twaps = info.user_twap_slice_fills(user)
    with serve(node, node_info_url="", db=node.parent / "partial.duckdb") as partial:  # the default rules
        caught_up(partial, node)
        with pytest.raises(ClientError) as dropped:
            Info(base_url=partial.url, skip_ws=True).query_order_by_oid(user, 1)

    # userFills: the latest (capped) fills, newest first
    want = list(reversed(mine))[:6]
    assert len(got_fills) == 6 and all(same_fill(g, w) for g, w in zip(got_fills, want, strict=True))
    assert all(list(g) == FILL_KEYS and set(g) >= CASSETTE_FILL_KEYS for g in got_fills)
    # userFillsByTime: in the range, among the latest 10, oldest first, at most 6
    window = list(reversed(mine))[:10][::-1]
    assert all(same_fill(g, w) for g, w in zip(by_time, window[:6], strict=True)) and len(by_time) == 6
    assert all(same_fill(g, w) for g, w in zip(reversed_, list(reversed(window))[:6], strict=True))
    # historicalOrders: each order once, at its latest status, newest first
    latest: dict[int, dict[str, Any]] = {}
    for o in my_orders:
        latest[o["order"]["oid"]] = o
    assert [h["order"]["oid"] for h in history] == [
        o["order"]["oid"]
        for o in sorted(latest.values(), key=lambda o: (ms_of(o["time"]), o["order"]["oid"]), reverse=True)]
    assert all(list(h) == ["order", "status", "statusTimestamp"] and list(h["order"]) == ORDER_KEYS
               for h in history)
    assert {(h["order"]["oid"], h["status"]) for h in history} == {(o["order"]["oid"], o["status"])
                                                                  for o in latest.values()}
    assert status == {"status": "order", "order": next(h for h in history if h["order"]["oid"] ==
                                                       last["order"]["oid"])}
    assert unknown == {"status": "unknownOid"}
    assert dropped.value.status_code == 404 and "may have been dropped by them" in dropped.value.error_message
    # allMids: the last trade price of every coin (not the book's mid), per dex
    trades = sorted((f for _, f in fills if f["crossed"]), key=lambda f: (f["time"], f["tid"]))
    last_px = {f["coin"]: f["px"] for f in trades}
    assert {c: float(p) for c, p in mids.items()} == {c: float(p) for c, p in last_px.items() if ":" not in c}
    assert km_mids == {"km:USTECH": mids_str(last_px["km:USTECH"])}
    assert dexs[0] is None and [d["name"] for d in dexs[1:]] == ["km"]
    assert km_candles and {c["s"] for c in km_candles} == {"km:USTECH"}
    eth = [f for f in trades if f["coin"] == "ETH"][-100:]
    assert [r["tid"] for r in recent] == [f["tid"] for f in eth]
    assert list(recent[0]) == ["coin", "side", "px", "sz", "hash", "time", "tid", "users"]
    assert twaps == []


def mids_str(px: str) -> str:
    return repr(float(px))


def fill_line(user: str, t: str, tid: int, oid: int, px: str, sz: str, crossed: bool,
              twap_id: int | None = None) -> bytes:
    ms = int(datetime.fromisoformat(t + "+00:00").timestamp() * 1000)
    return orjson.dumps([user, {
        "coin": "BTC", "px": px, "sz": sz, "side": "B" if crossed else "A", "time": ms,
        "startPosition": "0.0", "dir": "Open Long", "closedPnl": "0.5", "hash": "0x02", "oid": oid,
        "crossed": crossed, "fee": "0.25", "tid": tid, "feeToken": "USDC", "twapId": twap_id}])


def test_aggregate_by_time_and_twap_slice_fills(tmp_path: Path, serve: Serve) -> None:
    from hyperliquid.info import Info

    taker, maker = "0x" + "1" * 40, "0x" + "2" * 40
    lines = [  # one crossing order filled by three resting orders, then a TWAP slice
        fill_line(taker, "2026-01-05T10:00:01", 1, 5, "100.0", "1.0", True),
        fill_line(maker, "2026-01-05T10:00:01", 1, 6, "100.0", "1.0", False),
        fill_line(taker, "2026-01-05T10:00:01", 2, 5, "101.0", "2.0", True),
        fill_line(maker, "2026-01-05T10:00:01", 2, 7, "101.0", "2.0", False),
        fill_line(taker, "2026-01-05T10:00:01", 3, 5, "102.0", "1.0", True),
        fill_line(maker, "2026-01-05T10:00:01", 3, 8, "102.0", "1.0", False),
        fill_line(taker, "2026-01-05T10:00:09", 4, 9, "103.0", "0.5", True, twap_id=77),
        fill_line(maker, "2026-01-05T10:00:09", 4, 10, "103.0", "0.5", False),
    ]
    path = tmp_path / "node" / "node_fills" / "hourly" / "20260105" / "10"
    path.parent.mkdir(parents=True)
    path.write_bytes(b"\n".join(lines) + b"\n")
    with serve(tmp_path / "node", node_info_url="") as server:
        caught_up(server, tmp_path / "node")
        info = Info(base_url=server.url, skip_ws=True)
        plain = info.user_fills(taker)
        merged = httpx.post(server.url + "/info", json={"type": "userFills", "user": taker,
                                                         "aggregateByTime": True}).json()
        maker_merged = httpx.post(server.url + "/info", json={"type": "userFills", "user": maker,
                                                               "aggregateByTime": True}).json()
        twaps = info.user_twap_slice_fills(taker)
    assert [f["tid"] for f in plain] == [4, 3, 2, 1]
    assert [(f["tid"], f["px"], f["sz"], f["fee"], f["closedPnl"]) for f in merged] == [
        (4, "103.0", "0.5", "0.25", "0.5"), (1, "101.0", "4.0", "0.75", "1.5")]
    assert [f["tid"] for f in maker_merged] == [4, 3, 2, 1]  # resting fills stay apart
    assert twaps == [{"fill": plain[0], "twapId": 77}]


# ------------------------------------------------------------------ subscriptions
def test_user_subscriptions_through_the_official_sdk(serve: Serve, tmp_path: Path) -> None:
    from hyperliquid.info import Info

    from tests.test_live import busiest_user, live_server

    with live_server(serve, tmp_path, rate=3000, keep_all=True) as server:
        wait_for(lambda: busiest_user(server) is not None)
        user = busiest_user(server)
        assert user is not None
        info = Info(base_url=server.url, skip_ws=False)
        got: dict[str, list[Any]] = {"userFills": [], "orderUpdates": [], "user": [], "allMids": []}
        try:
            info.subscribe({"type": "userFills", "user": user}, got["userFills"].append)
            info.subscribe({"type": "orderUpdates", "user": user}, got["orderUpdates"].append)
            info.subscribe({"type": "userEvents", "user": user}, got["user"].append)
            info.subscribe({"type": "allMids"}, got["allMids"].append)
            wait_for(lambda: all(len(v) >= 3 for v in got.values()))
        finally:
            info.disconnect_websocket()
    first, *later = got["userFills"]
    assert first["channel"] == "userFills" and list(first["data"]) == ["isSnapshot", "user", "fills"]
    assert first["data"]["isSnapshot"] is True and first["data"]["user"] == user and first["data"]["fills"]
    assert all(list(m["data"]) == ["user", "fills"] and m["data"]["fills"] for m in later)
    assert all(list(f) == FILL_KEYS for m in got["userFills"] for f in m["data"]["fills"])
    for m in got["orderUpdates"]:
        for item in m["data"]:
            assert list(item) == ["order", "status", "statusTimestamp"]
            keys = ["coin", "side", "limitPx", "sz", "oid", "timestamp", "origSz"]
            assert list(item["order"]) in (keys, [*keys, "cloid"])  # cloid only where the order has one
    assert all(list(m["data"]) == ["fills"] and m["data"]["fills"] for m in got["user"])
    coins = set(got["allMids"][0]["data"]["mids"])
    assert {"BTC", "ETH", "PURR/USDC"} <= coins and all(":" not in c for c in coins)
    assert all(set(m["data"]["mids"]) >= coins for m in got["allMids"])  # every message: every coin


# ------------------------------------------------------------------ isolation
def test_forty_thousand_orders_reach_a_star_subscriber_with_trades_and_candles(
        tmp_path: Path, serve: Serve) -> None:
    from tests.test_live import client, collect, of, send
    from tests.test_live import subscribe as ws_subscribe

    node = tmp_path / "node"
    first = node / "node_fills" / "hourly" / "20260105" / "10"
    first.parent.mkdir(parents=True)
    first.write_bytes(fill_line("0x" + "1" * 40, "2026-01-05T10:00:01", 1, 1, "100.0", "1.0", True) + b"\n")
    (node / "node_order_statuses" / "hourly" / "20260105").mkdir(parents=True)
    # what is tested is the delivery of a 40,000-row batch, not what a slow client loses: on a
    # busy machine this test's client may fall behind for longer than the default 10 s, and
    # while it reads the ~15 MB message the trade would pass `ws_max_lag_bytes` and be dropped
    with serve(node, keep_all=True, node_info_url="", ws_max_lag_s=120.0,
               ws_max_lag_bytes=1 << 30) as server, client(server) as ws:
        caught_up(server, node)
        ws_subscribe(ws, {"type": "orders", "coin": "*"})
        ws_subscribe(ws, {"type": "trades", "coin": "BTC"})
        ws_subscribe(ws, {"type": "candle", "coin": "BTC", "interval": "1m"})
        # one 40,000-row order-status file and a fill, each appearing whole (rename)
        staged = tmp_path / "staged"
        staged.write_bytes(b"\n".join(order_line(f"2026-01-05T10:00:{i % 50 + 2:02d}", 1000 + i)
                                      for i in range(40_000)) + b"\n")
        staged.rename(node / "node_order_statuses" / "hourly" / "20260105" / "10")
        with open(first, "ab") as f:
            f.write(fill_line("0x" + "1" * 40, "2026-01-05T10:00:30", 2, 2, "101.0", "1.0", True) + b"\n")
        # a fill without its maker's: its trade waits up to `hold_s` for it, then goes out
        got = collect(ws, lambda ms: sum(len(m["data"]) for m in of(ms, "orders")) >= 40_000
                      and 2 in [t["tid"] for m in of(ms, "trades") for t in m["data"]]
                      and bool(of(ms, "candle")), timeout=60)
        send(ws, {"method": "ping"})
        recent = httpx.post(server.url + "/info", json={"type": "recentTrades", "coin": "BTC"}).json()
    assert sum(len(m["data"]) for m in of(got, "orders")) == 40_000
    assert max(len(m["data"]) for m in of(got, "orders")) >= 16_384  # one batch past polars' old limit
    sent = [t for m in of(got, "trades") for t in m["data"]]
    assert sent[-1]["tid"] == 2
    # its seller never known: the zero address, never null (the Rust SDK's `users` is two strings)
    assert sent[-1]["users"] == recent[-1]["users"] == ["0x" + "1" * 40, "0x" + "0" * 40]
    assert of(got, "candle")[-1]["data"]["c"] == "101.0"


def empty(schema: dict[str, pl.DataType], n: int = 0) -> pl.DataFrame:
    return pl.DataFrame(schema=schema)


def test_one_subscriptions_failure_costs_no_one_else_a_message(caplog: pytest.LogCaptureFixture) -> None:
    ts = datetime(2026, 1, 5, 10)
    orders = pl.DataFrame([{**{k: None for k in ORDERS_SCHEMA}, "time": ts, "order_time": ts, "coin": "BTC",
                            "status": "open", "oid": 1, "user": "0xabc", "side": "B", "limit_px": 100.0,
                            "orig_sz": 1.0, "sz": 1.0}], schema=ORDERS_SCHEMA)
    trades = pl.DataFrame([{**{k: None for k in TRADES_SCHEMA}, "time": ts, "coin": "BTC", "side": "B",
                            "px": 100.0, "sz": 1.0, "tid": 1, "hash": "0x1"}], schema=TRADES_SCHEMA)
    # prices as text: `minNotional` cannot multiply them and that subscription fails; the
    # unfiltered one still formats them
    broken = orders.with_columns(pl.col("limit_px").cast(pl.String))
    bad, star = OrdersSub("*", min_notional=5.0), OrdersSub("*")
    subs = [bad, star, TradesSub("BTC"), CandleSub("BTC", "1m")]
    from etl.candles import candles as make_candles

    candles = make_candles(trades, "1m")
    before = FEED_ERRORS.count
    with caplog.at_level(logging.ERROR, logger="nodetap.wire"):
        for _ in range(2):
            processed = Processed(stream=None, frames={"orders": broken, "trades": trades,  # type: ignore[arg-type]
                                                       "fills": empty(FILLS_SCHEMA)},
                                  candles=candles, result=None, seconds=0.0)  # type: ignore[arg-type]
            messages = build_messages(processed, subs)
            assert [type(s).__name__ for s, _ in messages] == ["TradesSub", "CandleSub", "OrdersSub"]
            assert messages[2][0] is star
    assert FEED_ERRORS.count - before == 2
    logged = [r for r in caplog.records if "event=feed_build_error" in r.getMessage()]
    assert len(logged) <= 1  # once per kind of failure (an earlier test may have logged it already)


def test_aggregate_by_time_is_a_pure_function_of_the_fills() -> None:
    ts = datetime(2026, 1, 5, 10)
    rows = [{**{k: None for k in FILLS_SCHEMA}, "time": ts, "user": "0xa", "coin": "BTC", "oid": 5, "tid": i,
             "px": px, "sz": sz, "fee": 0.1, "closed_pnl": 0.0, "crossed": True}
            for i, (px, sz) in enumerate(((10.0, 1.0), (12.0, 3.0)))]
    out = aggregate_by_time(pl.DataFrame(rows, schema=FILLS_SCHEMA))
    assert out.select("tid", "px", "sz").rows() == [(0, 11.5, 4.0)]
    assert out["fee"][0] == pytest.approx(0.2)


# ------------------------------------------------------------------ the node's info server
RECORDED_META = b'{"universe":[{"maxLeverage":50,"name":"BTC","szDecimals":5},' \
                b'{"maxLeverage":50,"name":"ETH","szDecimals":4}]}'  # test_get_info.yaml, first entries
RECORDED_STATE = b'{"assetPositions":[],"crossMarginSummary":{"accountValue":"0.0","totalMarginUsed":"0.0",' \
                 b'"totalNtlPos":"0.0","totalRawUsd":"0.0"},"marginSummary":{"accountValue":"0.0",' \
                 b'"totalMarginUsed":"0.0","totalNtlPos":"0.0","totalRawUsd":"0.0"},"withdrawable":"0.0"}'


@contextmanager
def node_info_server() -> Iterator[tuple[str, list[dict[str, Any]]]]:
    """A real HTTP server on a free port standing in for `hl-node --serve-info`."""
    seen: list[dict[str, Any]] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 (http.server's name)
            body = orjson.loads(self.rfile.read(int(self.headers["Content-Length"])))
            seen.append(body)
            # vaultSummaries: a type nodetap does not list, which the node answers
            answers = {"meta": RECORDED_META, "clearinghouseState": RECORDED_STATE, "vaultSummaries": b"[]"}
            data = answers.get(body.get("type"))
            self.send_response(200 if data else 422)
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            self.wfile.write(data or b"Failed to deserialize the JSON body into the target type")

        def log_message(self, *args: object) -> None:
            pass

    port = free_port()
    httpd = ThreadingHTTPServer(("127.0.0.1", port), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{port}/info", seen
    finally:
        httpd.shutdown()
        httpd.server_close()


def test_the_node_info_client_fetches_http_and_https_only() -> None:
    with pytest.raises(ValueError, match=re.escape(
            "node_info_url must be an http:// or https:// URL, not 'file:///etc/passwd'")):
        NodeInfo("file:///etc/passwd")
    targets = ["file:///etc/passwd", f"ftp://127.0.0.1:{free_port()}/info", "data:,{}"]

    class Redirect(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 (http.server's name)
            self.rfile.read(int(self.headers["Content-Length"]))
            self.send_response(302)
            self.send_header("Location", targets[int(self.path.rsplit("/", 1)[1])])
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", free_port()), Redirect)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        for i, target in enumerate(targets):
            url = f"http://127.0.0.1:{httpd.server_address[1]}/info/{i}"
            with pytest.raises(NodeInfoUnavailable) as err:
                asyncio.run(NodeInfo(url).ask({"type": "meta"}))
            assert str(err.value) == (f"the node's info server at {url} did not answer: it redirected to "
                                      f"{target}: only http and https are fetched")
    finally:
        httpd.shutdown()
        httpd.server_close()


def test_node_info_server_answers_what_the_files_cannot(
        make_node_dir: Callable[..., Path], serve: Serve, caplog: pytest.LogCaptureFixture) -> None:
    node = make_node_dir(lines=500)
    user = "0x" + "5e" * 20
    with node_info_server() as (url, seen), serve(node, node_info_url=url) as server:
        caught_up(server, node)
        meta = httpx.post(server.url + "/info", json={"type": "meta"})
        state = httpx.post(server.url + "/info", json={"type": "clearinghouseState", "user": user})
        refused = httpx.post(server.url + "/info", json={"type": "fundingHistory", "coin": "BTC"})
        typo = httpx.post(server.url + "/info", json={"type": "candlesnapshot", "req": {"coin": "BTC"}})
    # a type spelled as one answered here but in another case is a typo, not asked of the node
    assert (typo.status_code, typo.json()["msg"]) == (
        400, 'unknown info type "candlesnapshot": did you mean "candleSnapshot"?')
    assert [body["type"] for body in seen] == ["meta", "clearinghouseState", "fundingHistory"]
    assert meta.content == RECORDED_META and state.content == RECORDED_STATE  # passed on as they are
    assert seen[:2] == [{"type": "meta"}, {"type": "clearinghouseState", "user": user}]
    assert refused.status_code == 502 and refused.json()["msg"] == (
        "fundingHistory: the node's info server answered 422: Failed to deserialize the JSON body into the "
        "target type")
    # the node's info server is gone: meta is derived, per-user state refused, each logged once
    with caplog.at_level(logging.WARNING, logger="nodetap.nodeinfo"), \
            serve(node, node_info_url=url, db=node.parent / "gone.duckdb") as server:
        caught_up(server, node)
        metas = [httpx.post(server.url + "/info", json={"type": "meta"}) for _ in range(2)]
        states = [httpx.post(server.url + "/info", json={"type": "clearinghouseState", "user": user})
                  for _ in range(2)]
    assert [m.status_code for m in metas] == [200, 200]
    assert [u["name"] for u in metas[0].json()["universe"]] == ["BTC", "ETH", "HYPE", "SOL"]
    assert all(s.status_code == 400 and s.json()["code"] == "Unavailable" for s in states)
    assert f"the node's info server at {url} did not answer" in states[0].json()["msg"]
    logged = [r.getMessage() for r in caplog.records if "event=node_info_unavailable" in r.getMessage()]
    assert len(logged) == 2 and "type=meta" in logged[0] and "type=clearinghouseState" in logged[1]


def test_unknown_info_types_are_passed_on_hinted_and_logged_within_bounds(
        make_node_dir: Callable[..., Path], serve: Serve, caplog: pytest.LogCaptureFixture,
        monkeypatch: pytest.MonkeyPatch) -> None:
    import api.nodeinfo

    # the 104 requests below within one window however slow the machine (the window itself:
    # test_node_info_logs_each_known_type_once_and_unknown_ones_once_a_minute, on a fake clock)
    monkeypatch.setattr(api.nodeinfo, "UNKNOWN_LOG_S", 3600.0)
    node = make_node_dir(lines=200)
    with node_info_server() as (url, seen), serve(node, node_info_url=url) as server:
        listed_not = httpx.post(server.url + "/info", json={"type": "vaultSummaries"})
        typo = httpx.post(server.url + "/info", json={"type": "recentTrade", "coin": "BTC"})
    # a type nodetap does not list is still the node's to answer; a typo is asked too, then hinted at
    assert [body["type"] for body in seen] == ["vaultSummaries", "recentTrade"]
    assert (listed_not.status_code, listed_not.content) == (200, b"[]")
    assert (typo.status_code, typo.json()["msg"]) == (
        502, "\"recentTrade\": the node's info server answered 422: Failed to deserialize the JSON body "
             "into the target type (did you mean \"recentTrades\"?)")

    served = ("Answered from the files: candleSnapshot, recentTrades, userFills, userFillsByTime, "
              "userTwapSliceFills, orderStatus, historicalOrders, allMids; from the node, else derived: "
              "meta, spotMeta, perpDexs; every other type is passed to the node's info server (setting "
              "node_info_url; docs/api.md).")
    unavailable = "the node's info server could not answer it (no node info server is configured (setting " \
                  "node_info_url))"
    huge = "x" * 500_000
    with caplog.at_level(logging.WARNING, logger="nodetap.nodeinfo"), \
            serve(node, node_info_url="", db=node.parent / "none.duckdb") as server, \
            httpx.Client(base_url=server.url, timeout=30) as client:
        big = client.post("/info", json={"type": huge})
        flood = [client.post("/info", json={"type": f"zz{i}"}) for i in range(100)]
        typo = client.post("/info", json={"type": "recentTrade", "coin": "BTC"})
        known = [client.post("/info", json={"type": "l2Book", "coin": "BTC"}) for _ in range(2)]
    assert {(r.status_code, r.json()["code"]) for r in [*flood, typo, big, *known]} == {(400, "Unavailable")}
    assert flood[7].json()["msg"] == f'info type "zz7" is not one nodetap knows, and {unavailable}. {served}'
    assert typo.json()["msg"] == (
        'info type "recentTrade" is not one nodetap knows (did you mean "recentTrades"?), '
        f"and {unavailable}. {served}")
    assert big.json()["msg"] == (  # the type is echoed once, cut at 64 characters
        f'info type "{"x" * 64}"... (500000 characters) is not one nodetap knows, '
        f"and {unavailable}. {served}")
    assert known[1].json()["msg"].startswith('info type "l2Book" is not answered here')
    # one line for the 102 unknown types (the next would come a window later), one for l2Book
    logged = [r.getMessage() for r in caplog.records if "event=node_info_unavailable" in r.getMessage()]
    assert len(logged) == 2, logged
    assert logged[0].startswith(f'event=node_info_unavailable type="{"x" * 64}"... type_chars=500000 reason=')
    assert "unknown_type=true not_logged_since=0" in logged[0] and len(logged[0]) < 400
    assert logged[1].startswith("event=node_info_unavailable type=l2Book reason=")


def test_node_info_logs_each_known_type_once_and_unknown_ones_once_a_minute(
        caplog: pytest.LogCaptureFixture) -> None:
    from api.nodeinfo import NodeInfo

    now = [1000.0]
    info = NodeInfo("", clock=lambda: now[0])
    with caplog.at_level(logging.WARNING, logger="nodetap.nodeinfo"):
        for t, kind, known in [(0, "meta", True), (1, "meta", True), (2, "a", False), (30, "b", False),
                               (61, "c", False), (62, "d\nevent=forged", False), (63, "e", False),
                               (122, "f", False), (123, "l2Book", True)]:
            now[0] = 1000.0 + t
            info.log_unavailable(kind, "down", "refused", known=known)
    logged = [" ".join(w for w in r.getMessage().split() if w.startswith(("type=", "not_logged_since=")))
              for r in caplog.records]
    # "b" came 28 s after "a", "c" 1 s before the minute was up: both left out, and counted
    # a client's type is quoted: its newline cannot start a line of its own
    assert logged == ["type=meta", 'type="a" not_logged_since=0',
                      'type="d\\nevent=forged" not_logged_since=2', 'type="f" not_logged_since=1',
                      "type=l2Book"]


def test_docs_name_every_info_type_nodetap_knows() -> None:
    from api.infoapi import KNOWN_TYPES

    doc = (Path(__file__).resolve().parent.parent / "docs" / "api.md").read_text()
    table = doc[doc.index("## Info types"):doc.index("## WebSocket")]
    assert sorted(t for t in KNOWN_TYPES if f"`{t}`" not in table) == []
