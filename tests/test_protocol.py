"""nodetap as the Hyperliquid API: candleSnapshot at every interval and its bounds, WS `post`,
the real server's error texts, CORS, and the field caps, through the official python SDK and
raw clients against a real server.

Recorded real shapes (hyperliquid-dex/hyperliquid-python-sdk tests/cassettes/info_test/):
test_get_candles_snapshot.yaml gives the candle object
`{"T":1684702799999,"c":"0.001604","h":"0.001616","i":"1h","l":"0.001601","n":709,"o":"0.001601",
"s":"kPEPE","t":1684699200000,"v":"520665683.0"}`; the `post` envelope is the public docs'
(for-developers/api/websocket/post-requests), as @nktkas/hyperliquid's tests/transport/websocket/
_mock.ts RESPONSES.info builds it; the error texts are those of @nktkas/hyperliquid's
tests/transport/websocket/_dispatcher.test.ts.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from websockets.sync.client import connect

from tests.conftest import ServerThread, wait_for
from tests.test_lake import fill_lines

Serve = Callable[..., ServerThread]
CANDLE_KEYS = ["t", "T", "s", "i", "o", "c", "h", "l", "v", "n"]  # the cassette's keys
PUBLIC_INTERVALS = ("1m", "3m", "5m", "15m", "30m", "1h", "2h", "4h", "8h", "12h", "1d", "3d", "1w", "1M")
WIDTH = {"1m": 60_000, "3m": 180_000, "5m": 300_000, "15m": 900_000, "30m": 1_800_000, "1h": 3_600_000,
         "2h": 7_200_000, "4h": 14_400_000, "8h": 28_800_000, "12h": 43_200_000, "1d": 86_400_000,
         "3d": 259_200_000, "1w": 604_800_000}


# ------------------------------------------------------------------ a node with months of trades
def month_open(ms: int) -> tuple[int, int]:
    """(open, close) of the calendar month holding `ms`, in ms."""
    d = datetime.fromtimestamp(ms / 1000, UTC)
    start = datetime(d.year, d.month, 1, tzinfo=UTC)
    nxt = datetime(d.year + d.month // 12, d.month % 12 + 1, 1, tzinfo=UTC)
    return int(start.timestamp() * 1000), int(nxt.timestamp() * 1000) - 1


def expected_candles(trades: list[dict[str, Any]], interval: str) -> list[dict[str, Any]]:
    """Candles computed straight from the trades (in time, then tid order), as floats."""
    out: dict[int, dict[str, Any]] = {}
    for tr in sorted(trades, key=lambda x: (x["ms"], x["tid"])):
        if interval == "1M":
            t, close = month_open(tr["ms"])
        else:
            t = tr["ms"] // WIDTH[interval] * WIDTH[interval]
            close = t + WIDTH[interval] - 1
        c = out.get(t)
        if c is None:
            out[t] = {"t": t, "T": close, "s": "BTC", "i": interval, "o": tr["px"], "c": tr["px"],
                      "h": tr["px"], "l": tr["px"], "v": tr["sz"], "n": 1}
        else:
            c.update(c=tr["px"], h=max(c["h"], tr["px"]), l=min(c["l"], tr["px"]), v=c["v"] + tr["sz"],
                     n=c["n"] + 1)
    return [out[t] for t in sorted(out)]


def numeric(candles: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{k: float(v) if k in "ochlv" else v for k, v in c.items()} for c in candles]


@pytest.fixture(scope="module")
def months_of_trades(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[dict[str, Any]]]:
    """BTC trades from late December 2025 to March 2026, silences from a second to days apart
    (each silence over a minute is a recorded stall: nothing is forward-filled)."""
    rng = random.Random(12)
    root = tmp_path_factory.mktemp("months") / "node"
    path = root / "node_fills" / "hourly" / "20260105" / "10"
    path.parent.mkdir(parents=True)
    ms = int(datetime(2025, 12, 28, 22, 59, 30, tzinfo=UTC).timestamp() * 1000)
    trades, lines = [], []
    for tid in range(1, 401):
        ms += rng.choice([1_000, 20_000, 45_000, 61_000, 600_000, 3_700_000, 40_000_000, 90_000_000])
        px, sz = 100 + rng.randrange(-40, 41) / 2, rng.randrange(1, 40) / 4  # exact in binary
        trades.append({"ms": ms, "tid": tid, "px": px, "sz": sz})
        t = datetime.fromtimestamp(ms / 1000, UTC).replace(tzinfo=None).isoformat(timespec="milliseconds")
        lines.append(fill_lines(t, tid, coin="BTC", px=repr(px), sz=repr(sz)))
    path.write_bytes(b"\n".join(lines) + b"\n")
    assert datetime.fromtimestamp(ms / 1000, UTC).month == 3
    return root, trades


def caught_up(server: ServerThread, node: Path) -> None:
    size = sum(p.stat().st_size for p in node.rglob("*") if p.is_file())
    wait_for(lambda: sum(int(r["bytes"]) for r in server.state.store.status()) == size)


@pytest.mark.parametrize("stored", [("1m", "5m", "15m", "1h", "4h", "1d"), ("1w",)],
                         ids=["default-intervals", "only-1w-stored"])
def test_candles_snapshot_at_every_interval_equals_candles_from_the_trades(
        serve: Serve, months_of_trades: tuple[Path, list[dict[str, Any]]], tmp_path: Path,
        stored: tuple[str, ...]) -> None:
    from hyperliquid.info import Info

    node, trades = months_of_trades
    end = trades[-1]["ms"] + 1
    with serve(node, candle_intervals=stored, node_info_url="", db=tmp_path / "m.duckdb") as server:
        caught_up(server, node)
        info = Info(base_url=server.url, skip_ws=True)
        got = {i: info.candles_snapshot("BTC", i, 0, end) for i in PUBLIC_INTERVALS}
    for interval in PUBLIC_INTERVALS:
        want = expected_candles(trades, interval)
        assert len(want) >= 3, interval
        assert [list(c) for c in got[interval]] == [CANDLE_KEYS] * len(want), interval
        assert numeric(got[interval]) == want, interval
    # months are calendar months: January's candle closes at the last ms of the 31st
    jan = next(c for c in got["1M"] if c["t"] == 1767225600000)
    assert jan["T"] == 1769903999999


def test_candle_snapshot_bounds(serve: Serve, months_of_trades: tuple[Path, list[dict[str, Any]]],
                                tmp_path: Path) -> None:
    from hyperliquid.info import Info
    from hyperliquid.utils.error import ClientError

    node, trades = months_of_trades
    t = trades[200]["ms"]
    with serve(node, node_info_url="", db=tmp_path / "b.duckdb") as server:
        caught_up(server, node)
        info = Info(base_url=server.url, skip_ws=True)

        def snap(req: dict[str, Any]) -> httpx.Response:
            return httpx.post(server.url + "/info", json={"type": "candleSnapshot", "req": req})

        # start = end inside a candle: that candle (every candle overlapping [start, end])
        hour = info.candles_snapshot("BTC", "1h", t, t)
        day = snap({"coin": "BTC", "interval": "1d", "startTime": t}).json()  # endTime absent
        day_null = snap({"coin": "BTC", "interval": "1d", "startTime": t, "endTime": None}).json()
        with pytest.raises(ClientError) as backwards:
            info.candles_snapshot("BTC", "1h", t, t - 1)
        negative = snap({"coin": "BTC", "interval": "1h", "startTime": -5, "endTime": t})
        huge = snap({"coin": "BTC", "interval": "1h", "startTime": 0, "endTime": 10**30})
        # 2^53 ms is past the year 9999: the calendar intervals once panicked on it (a 500)
        far = snap({"coin": "BTC", "interval": "1M", "startTime": 2**53, "endTime": 2**53})
        months = snap({"coin": "BTC", "interval": "1M", "startTime": 0, "endTime": 2**53})
    assert far.status_code == 200 and far.json() == []
    assert months.status_code == 200 and months.json()[-1]["t"] <= trades[-1]["ms"] and months.json()
    assert [c["t"] for c in hour] == [t // 3_600_000 * 3_600_000]
    assert day == day_null and day[0]["t"] == t // 86_400_000 * 86_400_000
    assert day[-1]["t"] == trades[-1]["ms"] // 86_400_000 * 86_400_000
    assert backwards.value.status_code == 400
    assert backwards.value.error_message == (
        f"candleSnapshot: req.endTime ({t - 1}) is before req.startTime ({t})")
    for r, name, value in ((negative, "req.startTime", "-5"), (huge, "req.endTime", "1e+30")):
        assert r.status_code == 400
        assert r.json()["msg"] == (f'candleSnapshot: "{name}" must be epoch milliseconds (an integer from 0 '
                                   f"to 2^53), got {value}")


# ------------------------------------------------------------------ WS post, errors, caps, CORS
def post_frame(req_id: int, data: Any, kind: str) -> dict[str, Any]:
    return {"channel": "post", "data": {"id": req_id, "response": {"type": "info",
                                                                    "payload": {"type": kind, "data": data}}}}


def test_ws_post_error_texts_caps_and_cors(serve: Serve, months_of_trades: tuple[Path, list[dict[str, Any]]],
                                           tmp_path: Path) -> None:
    node, trades = months_of_trades
    req = {"coin": "BTC", "interval": "1h", "startTime": trades[100]["ms"], "endTime": trades[120]["ms"]}
    with serve(node, node_info_url="", db=tmp_path / "p.duckdb") as server:
        caught_up(server, node)
        http = {kind: httpx.post(server.url + "/info", json=body).json() for kind, body in (
            ("candleSnapshot", {"type": "candleSnapshot", "req": req}), ("meta", {"type": "meta"}),
            ("allMids", {"type": "allMids"}))}
        with connect(server.ws_url) as ws:
            def ask(frame: object) -> dict[str, Any]:
                ws.send(frame if isinstance(frame, str) else orjson.dumps(frame).decode())
                return orjson.loads(ws.recv(timeout=10))  # type: ignore[no-any-return]

            asks = (("candleSnapshot", {"type": "candleSnapshot", "req": req}), ("meta", {"type": "meta"}),
                    ("allMids", {"type": "allMids"}))
            for i, (kind, payload) in enumerate(asks, 1):
                got = ask({"method": "post", "id": i, "request": {"type": "info", "payload": payload}})
                assert got == post_frame(i, http[kind], kind)
            l2 = ask({"method": "post", "id": 7, "request": {"type": "info", "payload": {"type": "l2Book"}}})
            action = ask({"method": "post", "id": 8, "request": {"type": "action", "payload": {}}})
            no_id = '{"method":"post","request":{"type":"info","payload":{"type":"meta"}}}'
            bad_post = ask(no_id)
            long_coin = {"method": "subscribe", "subscription": {"type": "trades", "coin": "X" * 65}}
            too_long = ask(long_coin)
            huge = ask('{"method":"subscribe","subscription":{"type":"trades","coin":"' + "X" * 70000 + '"}}')
            many = {"type": "orders", "coin": "*", "users": [f"0x{i:040x}" for i in range(1001)]}
            too_many = ask({"method": "subscribe", "subscription": many})
            subscribed = ask({"method": "subscribe", "subscription": {"type": "trades", "coin": "BTC"}})
            again = ask({"method": "subscribe", "subscription": {"type": "trades", "coin": "BTC"}})
        preflight = httpx.options(server.url + "/info", headers={
            "Origin": "https://app.example", "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "content-type"})
        cors = httpx.post(server.url + "/info", json={"type": "meta"}, headers={"Origin": "https://app.example"})
    assert http["candleSnapshot"] and http["meta"]["universe"][0]["name"] == "BTC"
    assert http["allMids"] == {"BTC": repr(trades[-1]["px"])}
    assert l2["data"]["id"] == 7 and l2["data"]["response"]["type"] == "error"
    assert l2["data"]["response"]["payload"].startswith('info type "l2Book" is not answered here')
    assert action == {"channel": "post", "data": {"id": 8, "response": {"type": "error", "payload": (
        "nodetap serves a node's data and takes no actions: send orders, cancels and transfers to the "
        "exchange API")}}}
    parse = "Error parsing JSON into valid websocket request: "
    assert bad_post == {"channel": "error", "data": parse + no_id}
    assert too_long == {"channel": "error", "data": parse + orjson.dumps(long_coin).decode()}
    assert huge == {"channel": "error",
                    "data": parse + "request of 70065 characters is over the limit of 65536"}
    assert too_many == {"channel": "error", "data": parse + orjson.dumps(
        {"method": "subscribe", "subscription": many}).decode()}
    assert subscribed["channel"] == "subscriptionResponse"
    assert again == {"channel": "error", "data": 'Already subscribed: {"type":"trades","coin":"BTC"}'}
    assert preflight.status_code == 200 and preflight.headers["access-control-allow-origin"] == "*"
    assert cors.status_code == 200 and cors.headers["access-control-allow-origin"] == "*"
