"""The live API end to end: a real server over a node dir a thread keeps writing, real
WebSocket clients (and the official Hyperliquid SDK), real DuckDB."""

from __future__ import annotations

import asyncio
import socket
import struct
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import orjson
import polars as pl
import pytest
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import ClientConnection, connect

from api.hub import INBOX_MAX_BYTES
from api.wire import candle_wire
from etl.candles import candles
from etl.simulate import Simulator, generate, run_live
from etl.store import CANDLE_DB_NAMES_BACK, fetch_pl
from tests.conftest import ServerThread
from tests.conftest import wait_for as wait_until

TRADE_KEYS = ["coin", "side", "px", "sz", "hash", "time", "tid", "users"]
CANDLE_KEYS = ["t", "T", "s", "i", "o", "c", "h", "l", "v", "n"]
ORDER_KEYS = ["coin", "side", "limitPx", "sz", "oid", "timestamp", "triggerCondition", "isTrigger",
              "triggerPx", "children", "isPositionTpsl", "reduceOnly", "orderType", "origSz", "tif", "cloid"]
MINUTE = 60_000

Serve = Callable[..., ServerThread]


# ------------------------------------------------------------------ helpers
@contextmanager
def node_writer(node: Path, rate: float) -> Iterator[Callable[[], None]]:
    """A thread appending order statuses and fills at `rate` lines/s (wall clock) until exit,
    or until the function it yields is called."""
    node.mkdir(parents=True, exist_ok=True)
    event = threading.Event()
    thread = threading.Thread(target=run_live, args=(node,), kwargs={"rate": rate, "stop": event},
                              daemon=True)
    thread.start()

    def stop() -> None:
        event.set()
        thread.join(10)

    try:
        yield stop
    finally:
        stop()


def busiest_user(server: ServerThread, least: int = 5) -> str | None:
    """The user with the most stored fills, once one has at least `least`."""
    con = server.state.reader()
    try:
        row = con.execute('SELECT "user", count(*) n FROM fills GROUP BY 1 ORDER BY n DESC LIMIT 1'
                          ).fetchone()
    finally:
        con.close()
    return str(row[0]) if row and row[1] >= least else None


@contextmanager
def live_server(serve: Serve, tmp_path: Path, rate: float = 2000, **settings: Any) -> Iterator[ServerThread]:
    settings.setdefault("rules_file", "")  # the built-in rules, whatever data/rules.toml says
    settings.setdefault("node_info_url", "")
    with node_writer(tmp_path / "node", rate), serve(tmp_path / "node", **settings) as server:
        # a subscription to a coin never seen is refused, as the real server refuses unknown coins
        wait_for(lambda: coins_seen(server) >= {"BTC", "ETH"}, what="BTC and ETH trades")
        yield server


def coins_seen(server: ServerThread) -> set[str]:
    con = server.state.reader()
    try:
        return {r[0] for r in con.execute("SELECT DISTINCT coin FROM trades").fetchall()}
    finally:
        con.close()


def send(ws: ClientConnection, request: object) -> None:
    ws.send(request if isinstance(request, str) else orjson.dumps(request).decode())


def recv(ws: ClientConnection, timeout: float = 10) -> dict[str, Any]:
    return orjson.loads(ws.recv(timeout=timeout))  # type: ignore[no-any-return]


def collect(ws: ClientConnection, done: Callable[[list[dict[str, Any]]], bool], timeout: float = 20,
            seen: list[dict[str, Any]] | None = None) -> list[dict[str, Any]]:
    """Messages until `done(messages)` holds, after those already `seen`; fails after `timeout`
    seconds."""
    seen = list(seen or [])
    end = time.monotonic() + timeout
    while not done(seen):
        left = end - time.monotonic()
        if left <= 0:
            channels = sorted({m["channel"] for m in seen})
            raise AssertionError(f"gave up after {timeout} s; got {len(seen)} messages of {channels}")
        try:
            seen.append(recv(ws, timeout=left))
        except TimeoutError:
            continue
    return seen


def of(messages: list[dict[str, Any]], channel: str) -> list[dict[str, Any]]:
    return [m for m in messages if m["channel"] == channel]


def subscribe(ws: ClientConnection, subscription: dict[str, Any]) -> list[dict[str, Any]]:
    """Subscribe and wait for the acknowledgement; returns the messages of subscriptions made
    before that arrived ahead of it (on a live feed they may)."""
    send(ws, {"method": "subscribe", "subscription": subscription})
    early: list[dict[str, Any]] = []
    while (message := recv(ws))["channel"] not in ("subscriptionResponse", "error"):
        early.append(message)
    assert message == {"channel": "subscriptionResponse",
                       "data": {"method": "subscribe", "subscription": subscription}}
    return early


def is_decimal(text: object) -> bool:
    return isinstance(text, str) and "e" not in text.lower() and float(text) >= 0 and "." in text


def client(server: ServerThread) -> ClientConnection:
    """A client that buffers whatever arrives while the test looks elsewhere."""
    return connect(server.ws_url, max_queue=None, max_size=None, close_timeout=2)


def stalled_socket(port: int) -> socket.socket:
    """A client socket that buffers as little as the kernel allows, so a client that stops
    reading pushes back on the server within a second instead of after megabytes."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_MAXSEG, 536)
    sock.connect(("127.0.0.1", port))
    return sock


def stalled_client(server: ServerThread) -> ClientConnection:
    """A client whose library stops reading the socket after one buffered message."""
    return connect(server.ws_url, sock=stalled_socket(server.port), max_queue=1, max_size=None,
                   close_timeout=1, ping_interval=None)


def abort(ws: ClientConnection) -> None:
    """Drop the connection at once (RST), as a crashed client would."""
    ws.socket.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    ws.close_socket()


# the whole order feed (with keep_all) under distinct parameters: one serialisation each per
# batch, so a client subscribed to all of them gets ~10 MB/s from a modest simulated node
HEAVY_SETTINGS = {"keep_all": True, "ws_queue_messages": 16}
HEAVY = [{"type": "orders", "coin": "*", "minNotional": i / 1e9} for i in range(10)]


def wait_for(cond: Callable[[], bool], timeout: float = 20,
             what: str | Callable[[], str] = "condition") -> None:
    """conftest.wait_for, saying what it waited for (`what()`: as things stand at the timeout)."""
    try:
        wait_until(cond, timeout)
    except AssertionError:
        raise AssertionError(f"timed out waiting for {what if isinstance(what, str) else what()}") from None


# ------------------------------------------------------------------ protocol
def test_protocol_acks_pong_errors_and_unsubscribe(serve: Serve, tmp_path: Path) -> None:
    with live_server(serve, tmp_path) as server, client(server) as ws:
        send(ws, {"method": "ping"})
        assert recv(ws) == {"channel": "pong"}
        # the real server's texts (see api/protocol.py); the `{...}` they carry is JSON
        parse = "Error parsing JSON into valid websocket request: "
        errors = {
            "{nope": parse + "{nope",
            '{"method":"subcribe"}': parse + '{"method":"subcribe"}',
            '{"method":"subscribe","subscription":{"type":"trades"}}':
                parse + '{"method":"subscribe","subscription":{"type":"trades"}}',
            '{"method":"subscribe","subscription":{"type":"trades","coin":"BTC","depth":3}}':
                parse + '{"method":"subscribe","subscription":{"type":"trades","coin":"BTC","depth":3}}',
            '{"method":"subscribe","subscription":{"type":"orders","coin":"*","minNotional":"5"}}': parse
                + '{"method":"subscribe","subscription":{"type":"orders","coin":"*","minNotional":"5"}}',
            '{"method":"subscribe","subscription":{"type":"orders","coin":"*","users":["bob"]}}':
                parse + '{"method":"subscribe","subscription":{"type":"orders","coin":"*","users":["bob"]}}',
            '{"method":"subscribe","subscription":{"type":"l2Book","coin":"BTC"}}':
                'Invalid subscription {"type":"l2Book","coin":"BTC"}',
            '{"method":"subscribe","subscription":{"type":"candle","coin":"BTC","interval":"7m"}}':
                'Invalid subscription {"type":"candle","coin":"BTC","interval":"7m"}',
            '{"method":"subscribe","subscription":{"type":"trades","coin":"NOPE"}}':
                'Invalid subscription {"type":"trades","coin":"NOPE"}',
            '{"method":"unsubscribe","subscription":{"type":"trades","coin":"BTC"}}':
                'Already unsubscribed: {"type":"trades","coin":"BTC"}',
        }
        for request, message in errors.items():
            send(ws, request)
            assert recv(ws) == {"channel": "error", "data": message}, request

        subscribe(ws, {"type": "trades", "coin": "BTC"})
        subscribe(ws, {"type": "candle", "coin": "BTC", "interval": "1m"})
        send(ws, {"method": "subscribe", "subscription": {"type": "trades", "coin": "BTC"}})
        got = collect(ws, lambda ms: bool(of(ms, "error")))
        assert of(got, "error") == [{"channel": "error",
                                     "data": 'Already subscribed: {"type":"trades","coin":"BTC"}'}]
        collect(ws, lambda ms: bool(of(ms, "trades")))

        send(ws, {"method": "unsubscribe", "subscription": {"type": "trades", "coin": "BTC"}})
        got = collect(ws, lambda ms: bool(of(ms, "subscriptionResponse")))
        assert of(got, "subscriptionResponse") == [{"channel": "subscriptionResponse", "data": {
            "method": "unsubscribe", "subscription": {"type": "trades", "coin": "BTC"}}}]
        # candles keep coming (the feed is live); trades never again
        after = collect(ws, lambda ms: len(of(ms, "candle")) >= 10)
        assert of(after, "trades") == []
        assert server.state.hub.stats()["subscriptions"] == 1


def test_trades_and_candles_wire_format(serve: Serve, tmp_path: Path) -> None:
    with live_server(serve, tmp_path) as server, client(server) as ws:
        early = subscribe(ws, {"type": "trades", "coin": "BTC"})
        early += subscribe(ws, {"type": "candle", "coin": "BTC", "interval": "1m"})
        early += subscribe(ws, {"type": "candle", "coin": "ETH", "interval": "5m"})
        got = collect(ws, lambda ms: len(of(ms, "trades")) >= 3 and len(of(ms, "candle")) >= 6, seen=early)

    assert {m["channel"] for m in got} == {"trades", "candle"}
    for message in of(got, "trades"):
        assert list(message) == ["channel", "data"] and message["data"]
        for trade in message["data"]:
            assert list(trade) == TRADE_KEYS
            assert trade["coin"] == "BTC" and trade["side"] in ("A", "B")
            assert is_decimal(trade["px"]) and is_decimal(trade["sz"]) and float(trade["sz"]) > 0
            assert type(trade["time"]) is int and type(trade["tid"]) is int
            assert trade["hash"].startswith("0x") and len(trade["hash"]) == 66
            assert len(trade["users"]) == 2 and all(u.startswith("0x") for u in trade["users"])
            assert abs(trade["time"] / 1000 - time.time()) < 60
    for message in of(got, "candle"):
        candle = message["data"]
        assert list(candle) == CANDLE_KEYS
        assert (candle["s"], candle["i"]) in (("BTC", "1m"), ("ETH", "5m"))
        width = MINUTE if candle["i"] == "1m" else 5 * MINUTE
        assert type(candle["t"]) is int and candle["t"] % width == 0
        assert candle["T"] == candle["t"] + width - 1
        assert all(is_decimal(candle[k]) for k in "ochlv") and type(candle["n"]) is int and candle["n"] > 0
        assert float(candle["l"]) <= min(float(candle["o"]), float(candle["c"])) <= float(candle["h"])
    # a candle's trade count only grows as batches come in
    btc = [m["data"] for m in of(got, "candle") if m["data"]["s"] == "BTC"]
    for a, b in zip(btc, btc[1:], strict=False):
        if a["t"] == b["t"]:
            assert b["n"] >= a["n"] and float(b["v"]) >= float(a["v"])


def test_orders_channel_narrows_the_feed(serve: Serve, tmp_path: Path) -> None:
    users = Simulator(seed=7).users[:40]  # run_live's default seed: the writer's own users
    narrow = {"type": "orders", "coin": "ETH", "minNotional": 300, "statuses": ["canceled", "open"]}
    by_user = {"type": "orders", "coin": "*", "users": [u.upper().replace("0X", "0x") for u in users]}
    with live_server(serve, tmp_path, rate=3000) as server, \
            client(server) as ws1, client(server) as ws2:
        subscribe(ws1, narrow)
        subscribe(ws2, by_user)
        got1 = collect(ws1, lambda ms: sum(len(m["data"]) for m in ms) >= 20)
        got2 = collect(ws2, lambda ms: sum(len(m["data"]) for m in ms) >= 20)

    for messages in (got1, got2):
        assert {m["channel"] for m in messages} == {"orders"}
        for item in (i for m in messages for i in m["data"]):
            assert list(item) == ["order", "status", "statusTimestamp", "user"]
            order = item["order"]
            assert list(order) == ORDER_KEYS
            assert all(is_decimal(order[k]) for k in ("limitPx", "sz", "triggerPx", "origSz"))
            assert type(order["oid"]) is int and type(order["timestamp"]) is int
            assert type(item["statusTimestamp"]) is int and order["children"] == []
            assert isinstance(order["isTrigger"], bool) and isinstance(order["reduceOnly"], bool)
    for item in (i for m in got1 for i in m["data"]):
        assert item["order"]["coin"] == "ETH" and item["status"] in ("open", "canceled")
        assert float(item["order"]["limitPx"]) * float(item["order"]["origSz"]) >= 300
    items2 = [i for m in got2 for i in m["data"]]
    assert {i["user"] for i in items2} <= set(users)
    # the global rules still apply underneath: their default statuses only
    assert {i["status"] for i in items2} <= {"open", "filled", "canceled", "triggered"}
    assert len({i["order"]["coin"] for i in items2}) > 1


# ------------------------------------------------------------------ slow clients
def test_lagged_notice_counts_the_dropped_messages(serve: Serve, tmp_path: Path) -> None:
    with live_server(serve, tmp_path, rate=3000, ws_max_lag_s=60, **HEAVY_SETTINGS) as server, \
            stalled_client(server) as ws:
        for sub in HEAVY:
            send(ws, {"method": "subscribe", "subscription": sub})
        hub = server.state.hub
        wait_for(lambda: hub.stats()["messages_dropped"] >= 50, what="drops")  # ws is not reading
        got = collect(ws, lambda ms: bool(of(ms, "lagged")), timeout=30)
        lagged = of(got, "lagged")[0]
        assert list(lagged) == ["channel", "data"] and list(lagged["data"]) == ["dropped"]
        assert lagged["data"]["dropped"] > 0
        assert len(of(got, "subscriptionResponse")) == len(HEAVY)  # replies are never dropped
        for sub in HEAVY[1:]:  # a lighter load: the client catches up
            send(ws, {"method": "unsubscribe", "subscription": sub})

        def caught_up(ms: list[dict[str, Any]]) -> bool:
            notices = of(got + ms, "lagged")
            return (len(of(ms, "subscriptionResponse")) == len(HEAVY) - 1 and len(of(ms, "orders")) >= 5
                    and sum(n["data"]["dropped"] for n in notices) == hub.stats()["messages_dropped"])

        collect(ws, caught_up, timeout=30)  # every dropped message was reported
        assert hub.stats()["lagged_disconnects"] == 0 and hub.stats()["clients_connected"] == 1


def test_a_client_is_told_of_its_lost_messages_when_none_follow(serve: Serve, tmp_path: Path) -> None:
    """A message dropped with nothing after it: the `lagged` notice goes out once the client
    has taken what was sent, not with a next message that may never come."""
    from tests.test_lake import fill_lines, order_line

    node = tmp_path / "node"
    fills = node / "node_fills" / "hourly" / "20260105" / "10"
    fills.parent.mkdir(parents=True)
    fills.write_bytes(fill_lines("2026-01-05T10:00:01", 1) + b"\n")
    orders = node / "node_order_statuses" / "hourly" / "20260105"
    orders.mkdir(parents=True)
    limit = 16 << 10
    with serve(node, keep_all=True, node_info_url="", ws_max_lag_s=120.0, ws_max_lag_bytes=limit) as server, \
            stalled_client(server) as ws:
        hub = server.state.hub
        wait_for(lambda: "BTC" in coins_seen(server), what="the first trade")
        subscribe(ws, {"type": "orders", "coin": "*"})
        subscribe(ws, {"type": "trades", "coin": "BTC"})
        # two orders, one message each: the client library holds them and stops reading
        for n in (1, 2):
            with open(orders / "10", "ab") as f:
                f.write(order_line("2026-01-05T10:00:01", 990 + n) + b"\n")
            wait_for(lambda: hub.stats()["messages_sent"] == n, what=f"orders message {n}")  # noqa: B023
        # then ~130 KB of orders, appearing whole (rename): one message the client does not take
        staged = tmp_path / "staged"
        staged.write_bytes(b"".join(order_line("2026-01-05T11:00:02", 1000 + i) + b"\n" for i in range(400)))
        staged.rename(orders / "11")
        wait_for(lambda: hub.stats()["unsent_bytes"] > limit, what="the orders message under way")
        with open(fills, "ab") as f:  # its trade comes while the client is over the limit
            f.write(fill_lines("2026-01-05T10:00:30", 2) + b"\n")
        wait_for(lambda: hub.stats()["messages_dropped"] == 1, what="the trade dropped")
        got = collect(ws, lambda ms: bool(of(ms, "lagged")), timeout=30)
        assert hub.stats()["lagged_disconnects"] == 0
    assert [m["channel"] for m in got] == ["orders", "orders", "orders", "lagged"]
    assert [len(m["data"]) for m in got[:3]] == [1, 1, 400]
    assert got[3] == {"channel": "lagged", "data": {"dropped": 1}}


def test_a_coin_is_known_from_its_first_commit_and_an_unknown_one_from_memory(
        serve: Serve, tmp_path: Path) -> None:
    """A coin the pipeline commits is known at once; one found unknown is answered from memory
    for a second (clock faked), then the store is asked again: a client asking again and again
    for a coin not seen yet costs one store query a second."""
    from api.infoapi import UNKNOWN_FOR_S, known_coin
    from tests.test_lake import fill_lines

    fills = tmp_path / "node" / "node_fills" / "hourly" / "20260105" / "10"
    fills.parent.mkdir(parents=True)
    fills.write_bytes(fill_lines("2026-01-05T10:00:01", 1) + b"\n")
    with serve(tmp_path / "node", node_info_url="") as server, client(server) as ws:
        wait_for(lambda: "BTC" in coins_seen(server), what="the first trade")
        state = server.state

        def known(coin: str, at: float) -> bool:
            return asyncio.run_coroutine_threadsafe(known_coin(state, coin, lambda: at),
                                                    state.hub.loop).result(10)

        # ETH: unknown, then committed by the pipeline: known at once
        assert known("ETH", 100.0) is False
        assert state.coins_unknown == {"ETH": 100.0}
        with open(fills, "ab") as f:
            f.write(fill_lines("2026-01-05T10:00:02", 2, coin="ETH") + b"\n")
        wait_for(lambda: "ETH" in coins_seen(server), what="ETH's trade")
        assert known("ETH", 100.0) is True
        assert state.coins_unknown == {}
        subscribe(ws, {"type": "trades", "coin": "ETH"})  # as a client sees it
        # SOL: unknown, then stored by another writer (as `nodetap backfill` would): from memory
        # until a second has passed, then asked again
        assert known("SOL", 200.0) is False
        other = state.store.for_thread().con
        other.execute("INSERT INTO trades SELECT * REPLACE ('SOL' AS coin) FROM trades WHERE coin = 'BTC'")
        assert known("SOL", 200.0 + UNKNOWN_FOR_S / 2) is False
        assert known("SOL", 200.0 + UNKNOWN_FOR_S) is True
        assert state.coins_unknown == {}


def test_client_that_stays_full_is_disconnected(serve: Serve, tmp_path: Path) -> None:
    with live_server(serve, tmp_path, rate=3000, ws_max_lag_s=1.0, **HEAVY_SETTINGS) as server, \
            stalled_client(server) as ws, client(server) as healthy:
        subscribe(healthy, {"type": "trades", "coin": "BTC"})
        for sub in HEAVY:
            send(ws, {"method": "subscribe", "subscription": sub})
        hub = server.state.hub
        wait_for(lambda: hub.stats()["lagged_disconnects"] == 1, what="the lagged disconnect")
        assert hub.stats()["clients_connected"] == 1
        with pytest.raises(ConnectionClosed) as closed:  # what was sent before the close, then the close
            collect(ws, lambda ms: False, timeout=30)
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 1008
        assert closed.value.rcvd.reason == "too slow: queue full for 1 s (setting ws_max_lag_s)"
        # the other client is served as before
        collect(healthy, lambda ms: len(of(ms, "trades")) >= 2)


@dataclass
class Held:
    """What the hub holds for its clients at one instant, read on the server's event loop."""

    longest_queue: int  # messages in the longest client queue
    most_queued: int  # bytes in the fullest client queue
    buffered: int  # bytes in every client's transport write buffer (user space)
    distinct: int  # bytes of the distinct messages queued (a message is shared by its subscribers)
    messages: int  # how many distinct messages that is
    inbox: int  # bytes of batches built and not yet fanned out
    inbox_batches: int  # how many batches that is


def held(server: ServerThread) -> Held:
    hub = server.state.hub

    async def look() -> Held:
        texts = {id(text): len(text) for c in hub.clients for _, text in c.data}
        return Held(max((len(c.data) for c in hub.clients), default=0),
                    max((c.queued_bytes for c in hub.clients), default=0),
                    sum(c.transport.get_write_buffer_size() for c in hub.clients),
                    sum(texts.values()), len(texts), hub._inbox_bytes, len(hub._inbox))

    return asyncio.run_coroutine_threadsafe(look(), hub.loop).result(10)


def test_memory_stays_flat_with_100_clients_that_never_read(serve: Serve, tmp_path: Path) -> None:
    """What the hub holds is bounded by its settings whatever the volume: checked throughout a
    long run of drops. (The process's RSS is not: the pipeline's own allocations move it by
    ~100 MiB on a busy machine; `nodetap bench` measures memory.)"""
    stalled: list[ClientConnection] = []
    queue, lag_bytes = 64, 4 << 20
    settings = {"keep_all": True, "ws_queue_messages": queue, "ws_max_lag_bytes": lag_bytes,
                "ws_max_lag_s": 600}
    with live_server(serve, tmp_path, rate=3000, **settings) as server, ExitStack() as clients:
        hub = server.state.hub
        try:
            for _ in range(100):
                stalled.append(clients.enter_context(stalled_client(server)))
                for sub in HEAVY:
                    send(stalled[-1], {"method": "subscribe", "subscription": sub})
            # the waits are long: on a busy 2-core machine, this process (the server, the writer's
            # reader and 100 clients) may get a fraction of a core
            wait_for(lambda: hub.stats()["subscriptions"] == 100 * len(HEAVY), timeout=120,
                     what="the subscriptions")
            # every client stalled: socket buffers full, queue full, dropping the oldest
            wait_for(lambda: all(c.full_since is not None for c in tuple(hub.clients)),  # a copy: see stats
                     timeout=120, what="every queue full")
            # warm-up: the allocators reach their working size while batches go on
            batches = hub.stats()["batches_published"]
            wait_for(lambda: hub.stats()["batches_published"] - batches >= 10, timeout=120,
                     what="10 warm-up batches")
            stats = hub.stats()
            batches, dropped = stats["batches_published"], stats["messages_dropped"]
            samples: list[Held] = []

            def volume_passed() -> bool:
                samples.append(held(server))
                # 40 batches went to every client: several times what a queue holds
                return hub.stats()["batches_published"] - batches >= 40

            wait_for(volume_passed, timeout=120, what="40 batches")
            stats = hub.stats()
            assert stats["clients_connected"] == 100 and stats["lagged_disconnects"] == 0
            # the hub's own buffers stayed within their settings at every look
            assert max(h.longest_queue for h in samples) <= queue
            assert max(h.most_queued for h in samples) <= lag_bytes
            # the newest batch stays whatever its size (a lane behind under load commits big ones)
            assert all(h.inbox <= INBOX_MAX_BYTES or h.inbox_batches == 1 for h in samples)
            # the feed kept running and every client kept dropping: most of each batch went
            assert stats["messages_dropped"] - dropped > 100 * len(HEAVY) * 30
            # all queues share at most ~`queue` messages of each subscription: far below what
            # went past; unbounded queues would hold every message of the run
            mean_size = sum(h.distinct for h in samples) / max(1, sum(h.messages for h in samples))
            passed = (stats["messages_dropped"] - dropped) / 100 * mean_size  # bytes past each client
            assert max(h.distinct for h in samples) < passed / 2, (max(h.distinct for h in samples), passed)
            assert max(h.buffered for h in samples) < 100 * (1 << 20)
        finally:
            for ws in stalled:
                abort(ws)
        wait_for(lambda: hub.stats()["clients_connected"] == 0, what="the server to see them go")


# ------------------------------------------------------------------ /info
@pytest.fixture
def sparse_history(make_node_dir: Callable[..., Path]) -> Path:
    """About four hours of rare trades: many 1m candles without a trade, and silences."""
    return make_node_dir(lines=8000, events_per_block=0.15, start=datetime(2026, 1, 5, 10, 0, tzinfo=UTC))


def stored(server: ServerThread, coin: str, interval: str) -> list[dict[str, Any]]:
    con = server.state.reader()
    try:
        frame = fetch_pl(con, "SELECT * FROM candles WHERE coin = ? AND interval = ? ORDER BY t",
                         [coin, interval])
    finally:
        con.close()
    return frame.rename(CANDLE_DB_NAMES_BACK).to_dicts()


def wait_idle(server: ServerThread, node: Path) -> None:
    """Until every byte of the (no longer growing) node dir has been committed."""
    size = sum(p.stat().st_size for p in node.rglob("*") if p.is_file())
    wait_for(lambda: sum(int(r["bytes"]) for r in server.state.store.status()) == size,  # type: ignore[call-overload]
             what="the pipeline to catch up")


def test_candle_snapshot_is_the_table_plus_fill(serve: Serve, sparse_history: Path) -> None:
    with serve(sparse_history, candle_intervals=("1s", "1m"), node_info_url="") as server:
        wait_idle(server, sparse_history)
        real = stored(server, "BTC", "1m")
        start, end = real[0]["t"] - 5 * MINUTE, real[-1]["t"] + 5 * MINUTE
        req = {"coin": "BTC", "interval": "1m", "startTime": start, "endTime": end}
        r = httpx.post(server.url + "/info", json={"type": "candleSnapshot", "req": req})
        assert r.status_code == 200 and r.headers["content-type"] == "application/json"
        got = r.json()

        second = httpx.post(server.url + "/info", json={"type": "candleSnapshot", "req": {
            "coin": "BTC", "interval": "1s", "startTime": 0, "endTime": end}}).json()
        bad = httpx.post(server.url + "/info", json={"type": "l2Book", "coin": "BTC"})
        bad_interval = httpx.post(server.url + "/info", json={"type": "candleSnapshot", "req": {
            "coin": "BTC", "interval": "2m", "startTime": 0, "endTime": 1}})
        con = server.state.reader()
        watermark = con.execute("SELECT epoch_ms(max(last_time)) FROM cursors").fetchone()[0]
        # the fills stream fell silent for over a minute (stall_after_s) now and then
        holes = con.execute("SELECT epoch_ms(time_from), epoch_ms(time_to) FROM gaps").fetchall()
        con.close()

    # expected: every stored candle; and each empty minute after one (up to the watermark)
    # with the previous close and no volume, unless a hole lies between that close and it
    expected, by_t, prev, blocked = [], {c["t"]: c for c in real}, None, 0
    for t in range(real[0]["t"], min(end, watermark) + 1, MINUTE):
        c = by_t.get(t)
        if c is not None:
            prev = c
            expected.append({"t": t, "T": t + MINUTE - 1, "s": "BTC", "i": "1m", "o": c["o"], "c": c["c"],
                             "h": c["h"], "l": c["l"], "v": round(c["v"], 8), "n": c["n"]})
        elif prev is not None and any(a <= t + MINUTE - 1 and b >= prev["T"] for a, b in holes):
            blocked += 1
        else:
            assert prev is not None
            expected.append({"t": t, "T": t + MINUTE - 1, "s": "BTC", "i": "1m", "o": prev["c"],
                             "c": prev["c"], "h": prev["c"], "l": prev["c"], "v": 0.0, "n": 0})
    assert holes and blocked > 5
    assert [list(c) for c in got] == [CANDLE_KEYS] * len(got)
    assert all(is_decimal(c[k]) for c in got for k in "ochlv")
    numeric = [{k: float(v) if k in "ochlv" else v for k, v in c.items()} for c in got]
    assert numeric == expected
    assert sum(c["n"] == 0 for c in got) > 10  # the fill did happen
    assert len(second) > 5000  # no 5000-candle cap
    assert [c["t"] for c in second] == sorted({c["t"] for c in second})
    assert bad.status_code == 400 and bad.json()["code"] == "Unavailable"
    assert bad.json()["msg"].startswith(
        'info type "l2Book" is not answered here: a node\'s files hold fills, trades and order statuses, '
        "not l2Book, and the node's info server could not answer it (no node info server is configured")
    assert bad_interval.status_code == 400
    assert bad_interval.json()["error"] == (
        'candleSnapshot: interval "2m" is not one of 1s 5s 10s 1m 3m 5m 15m 30m 1h 2h 4h 8h 12h 1d 3d 1w 1M')


def test_meta_and_spot_meta_name_the_coins_seen(serve: Serve, sparse_history: Path) -> None:
    with serve(sparse_history) as server:
        wait_idle(server, sparse_history)
        meta = httpx.post(server.url + "/info", json={"type": "meta", "dex": ""}).json()
        spot = httpx.post(server.url + "/info", json={"type": "spotMeta"}).json()
        hip3 = httpx.post(server.url + "/info", json={"type": "meta", "dex": "km"}).json()
    assert [u["name"] for u in meta["universe"]] == ["BTC", "ETH", "HYPE", "SOL"]
    assert meta["universe"][0] == {"name": "BTC", "szDecimals": 5, "maxLeverage": 1}
    assert hip3 == {"universe": [{"name": "km:USTECH", "szDecimals": 3, "maxLeverage": 1}]}
    pairs = {u["name"]: u for u in spot["universe"]}
    assert pairs["PURR/USDC"]["isCanonical"] is True and pairs["@107"] == {
        "name": "@107", "tokens": [pairs["@107"]["tokens"][0], 0], "index": 107, "isCanonical": False}
    tokens = {t["index"]: t for t in spot["tokens"]}
    assert tokens[0]["name"] == "USDC"
    assert [tokens[i]["name"] for i in pairs["PURR/USDC"]["tokens"]] == ["PURR", "USDC"]
    assert set(tokens[0]) == {"name", "szDecimals", "weiDecimals", "index", "tokenId", "isCanonical"}


def trades_of(server: ServerThread, coin: str) -> pl.DataFrame:
    con = server.state.reader()
    try:
        return fetch_pl(con, "SELECT time, coin, px, sz FROM trades WHERE coin = ? ORDER BY time, tid",
                        [coin])
    finally:
        con.close()


@pytest.mark.parametrize("stored_intervals", [("1m",), ("5m",)], ids=["from-1m", "from-trades-and-5m"])
def test_candle_feed_of_an_interval_not_stored_equals_candles_of_the_trades(
        serve: Serve, tmp_path: Path, stored_intervals: tuple[str, ...]) -> None:
    """3m and 1d are not stored: rolled up from the stored 1m (or 5m) candles, or computed from
    the trades (3m when only 5m is stored), and pushed through the official SDK as a stored
    interval is, each candle whole, its earlier trades included."""
    from hyperliquid.info import Info

    node = tmp_path / "node"
    # two minutes of history first: today's candle has trades of earlier minutes (whose 1m
    # candles are closed), which only the feed's seed from the store can bring
    generate(node, lines=2000, seed=11, events_per_block=1.0,
             start=datetime.now(UTC) - timedelta(seconds=150))
    with node_writer(node, rate=2000) as stop, \
            serve(node, rules_file="", node_info_url="", candle_intervals=stored_intervals) as server:

        def published_in_current_candle() -> bool:
            # trades of the current 3m candle stored and published (a trade waits at most 0.5 s
            # for its maker) well before the subscription: only the seed can bring them
            now = time.time() * 1000
            times = trades_of(server, "BTC")["time"].dt.epoch("ms")
            return int(((times >= now // (3 * MINUTE) * 3 * MINUTE) & (times < now - 1500)).sum()) >= 10

        wait_for(published_in_current_candle, what="10 BTC trades of the current candle")
        info = Info(base_url=server.url, skip_ws=False)
        pushed: dict[str, list[Any]] = {"3m": [], "1d": []}
        try:
            for interval, into in pushed.items():
                info.subscribe({"type": "candle", "coin": "BTC", "interval": interval}, into.append)
            wait_for(lambda: min(len(m) for m in pushed.values()) >= 10, what="10 candle messages of each")
            stop()  # the node goes quiet: every candle pushed has its last state pushed too
            wait_idle(server, node)
            trades = trades_of(server, "BTC")

            def last_pushed(interval: str) -> bool:
                candle = pushed[interval][-1]["data"]
                return int(candle["n"]) == trades.filter(pl.col("time").dt.epoch("ms") >= candle["t"]).height

            wait_for(lambda: all(last_pushed(i) for i in pushed), timeout=10, what="the last trade's candles")
            now = int(time.time() * 1000)
            snapshots = {i: info.candles_snapshot("BTC", i, now - 2 * 86_400_000, now) for i in pushed}
        finally:
            info.disconnect_websocket()
    for interval, messages in pushed.items():
        assert {m["channel"] for m in messages} == {"candle"}
        assert list(messages[0]["data"]) == CANDLE_KEYS
        last = {m["data"]["t"]: m["data"] for m in messages}  # the latest state of each candle pushed
        expected = {c["t"]: c for c in candle_wire(candles(trades, interval)).to_dicts()}
        assert last == {t: expected[t] for t in last}, interval
        assert max(last) == max(expected)  # the current candle is among them
        assert [c for c in snapshots[interval] if c["t"] in last] == list(last.values())
    assert server.state.hub.candles._feeds == {}  # the feeds went with their subscriber


# ------------------------------------------------------------------ the official SDK
def test_official_sdk_works_unchanged(serve: Serve, tmp_path: Path) -> None:
    from hyperliquid.info import Info

    node = tmp_path / "node"
    with node_writer(node, rate=2000) as stop, serve(node, rules_file="") as server:
        for coin in ("BTC", "ETH", "PURR/USDC"):
            wait_for(lambda c=coin: len(stored(server, c, "1m")) > 0, what=f"a {coin} candle")
        info = Info(base_url=server.url, skip_ws=False)
        try:
            assert info.name_to_coin["BTC"] == "BTC" and info.name_to_coin["ETH"] == "ETH"
            assert info.name_to_coin["PURR/USDC"] == "PURR/USDC"
            trades: list[Any] = []
            candles: list[Any] = []
            info.subscribe({"type": "trades", "coin": "BTC"}, trades.append)
            info.subscribe({"type": "candle", "coin": "BTC", "interval": "1m"}, candles.append)
            wait_for(lambda: len(trades) >= 2 and len(candles) >= 2, what="SDK callbacks")
            stop()  # the node goes quiet: both answers below see the same table
            wait_idle(server, node)
            now = int(time.time() * 1000)
            start, end = now - 10 * MINUTE, now + MINUTE
            snapshot = info.candles_snapshot("BTC", "1m", start, end)
            direct = httpx.post(server.url + "/info", json={"type": "candleSnapshot", "req": {
                "coin": "BTC", "interval": "1m", "startTime": start, "endTime": end}}).json()
            # the last candle pushed is the stored one
            wait_for(lambda: candles[-1]["data"] in snapshot, timeout=5, what="the last candle pushed")
            # our 4xx answers are the SDK's own ClientError, with our message
            from hyperliquid.utils.error import ClientError

            with pytest.raises(ClientError) as caught:
                info.candles_snapshot("BTC", "7m", start, end)
            assert caught.value.status_code == 400 and "7m" in str(caught.value.error_message)
            # an action is refused as such, not with FastAPI's bare 404 (a KeyError in the SDK)
            import eth_account
            from hyperliquid.exchange import Exchange

            exchange = Exchange(eth_account.Account.create(), base_url=server.url)
            with pytest.raises(ClientError) as refused:
                exchange.order("BTC", True, 0.001, 90000, {"limit": {"tif": "Gtc"}})
            assert (refused.value.status_code, refused.value.error_code) == (403, "ReadOnly")
            assert "takes no actions" in str(refused.value.error_message)
        finally:
            info.disconnect_websocket()
    assert trades[0]["channel"] == "trades" and list(trades[0]["data"][0]) == TRADE_KEYS
    assert trades[0]["data"][0]["coin"] == "BTC" and candles[0]["data"]["s"] == "BTC"
    assert snapshot and snapshot == direct and list(snapshot[0]) == CANDLE_KEYS
