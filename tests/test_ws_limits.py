"""The live hub under hostile clients, on a real server: raw sockets that never read are cut
by nodetap itself (their untaken bytes count as lag, kernel send queue included), readers keep
up meanwhile, subscriptions per connection are capped, an ordinary disconnect is no error, and
a subscription whose messages fail to build costs no one else a message."""

from __future__ import annotations

import base64
import logging
import os
import socket
import struct
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path

import httpx
import orjson
import polars as pl
import pytest
from prometheus_client.parser import text_string_to_metric_families

from api.hub import CLOSE_TIMEOUT_S
from api.wire import TradesSub
from etl.parse import ORDERS_SCHEMA
from etl.pipeline import Processed
from tests.conftest import ServerThread
from tests.test_live import (
    HEAVY,
    HEAVY_SETTINGS,
    abort,
    client,
    collect,
    live_server,
    of,
    send,
    subscribe,
    wait_for,
)

Serve = Callable[..., ServerThread]


def frame(text: str) -> bytes:
    """One masked text frame, as a client sends it."""
    payload = text.encode()
    mask = os.urandom(4)
    n = len(payload)
    head = bytes([0x81]) + (bytes([0x80 | n]) if n < 126 else bytes([0x80 | 126]) + struct.pack("!H", n))
    return head + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


def raw_client(port: int, subscriptions: list[dict[str, object]]) -> socket.socket:
    """A WebSocket client on a plain socket with default buffers that subscribes, then never reads."""
    sock = socket.create_connection(("127.0.0.1", port))
    key = base64.b64encode(os.urandom(16)).decode()
    sock.sendall((f"GET /ws HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
                  f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
                  "Sec-WebSocket-Version: 13\r\n\r\n").encode())
    head = b""
    while b"\r\n\r\n" not in head:
        head += sock.recv(1)  # the 101 response only, not the frames after it
    assert head.startswith(b"HTTP/1.1 101"), head
    for sub in subscriptions:
        sock.sendall(frame(orjson.dumps({"method": "subscribe", "subscription": sub}).decode()))
    return sock


def cut(sock: socket.socket) -> bool:
    """Read what the kernel holds; True when the server has closed or reset the connection."""
    sock.settimeout(10)
    try:
        while sock.recv(1 << 20):
            pass
    except ConnectionResetError:
        return True
    except TimeoutError:
        return False
    return True


def test_raw_sockets_that_never_read_are_cut_while_readers_keep_up(serve: Serve, tmp_path: Path) -> None:
    lag_s = 1.0
    settings = {**HEAVY_SETTINGS, "ws_max_lag_s": lag_s, "ws_max_lag_bytes": 1 << 20}
    with live_server(serve, tmp_path, rate=3000, **settings) as server, client(server) as healthy:
        hub = server.state.hub
        subscribe(healthy, {"type": "trades", "coin": "BTC"})
        t0 = time.monotonic()
        stalled = [raw_client(server.port, HEAVY) for _ in range(4)]
        try:
            wait_for(lambda: hub.stats()["aborted_disconnects"] == 4, timeout=30,
                     what=lambda: f"the cuts ({hub.stats()} {server.state.store.status()})")
            elapsed = time.monotonic() - t0
            stats = hub.stats()
            assert stats["lagged_disconnects"] == 4 and stats["clients_connected"] == 1
            assert stats["messages_dropped"] > 0
            # filling the kernel's buffers takes about a second at this rate; then the lag
            # clock runs ws_max_lag_s, and the close frame gets CLOSE_TIMEOUT_S
            assert elapsed < 3 + lag_s + CLOSE_TIMEOUT_S + 5
            assert all(cut(sock) for sock in stalled)
            # no connection lingers on the server (CLOSE-WAIT with megabytes unsent)
            wait_for(lambda: len(server.server.server_state.connections) == 1, timeout=10,
                     what="uvicorn to forget the cut connections")
        finally:
            for sock in stalled:
                sock.close()
        # the reader was served throughout, without a loss
        got = collect(healthy, lambda ms: len(of(ms, "trades")) >= 3)
        assert of(got, "lagged") == [] and hub.stats()["clients_connected"] == 1


def test_subscriptions_per_connection_are_capped(serve: Serve, tmp_path: Path) -> None:
    with live_server(serve, tmp_path, ws_max_subscriptions=3) as server, client(server) as ws:
        hub = server.state.hub
        for coin in ("BTC", "ETH", "SOL", "HYPE"):
            send(ws, {"method": "subscribe", "subscription": {"type": "trades", "coin": coin}})
        wait_for(lambda: hub.stats()["subscriptions_refused_total"] == 1, what="the refusal")
        got = collect(ws, lambda ms: len(of(ms, "error")) == 1)
        assert of(got, "error")[0]["data"] == (
            "Too many subscriptions: at most 3 per connection (setting ws_max_subscriptions)")
        assert len(of(got, "subscriptionResponse")) == 3
        assert hub.stats()["subscriptions"] == 3
        (conn,) = hub.clients
        assert hub.refusal(conn, TradesSub("PURR/USDC")) == (
            "Too many subscriptions: at most 3 per connection (setting ws_max_subscriptions)")
        assert hub.refusal(conn, TradesSub("BTC")) is None  # held already: "Already subscribed"
        assert hub.subscribe(conn, TradesSub("PURR/USDC")) is False


def test_ordinary_disconnects_log_no_error(serve: Serve, tmp_path: Path,
                                           caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    with live_server(serve, tmp_path, rate=3000, **HEAVY_SETTINGS) as server:
        hub = server.state.hub
        for i in range(12):
            with client(server) as ws:
                for sub in HEAVY:
                    send(ws, {"method": "subscribe", "subscription": sub})
                collect(ws, lambda ms: len(of(ms, "orders")) >= 3)
                if i % 3 == 2:
                    abort(ws)  # a crash: no close frame
            # else: an ordinary close, in the middle of the feed
        for _ in range(3):  # a protocol error: the server closes while our writer is mid-feed
            sock = raw_client(server.port, HEAVY)
            wait_for(lambda: hub.stats()["messages_sent"] > 0, what="the feed")
            sock.sendall(bytes([0x83, 0x80]) + os.urandom(4))  # a reserved opcode
            assert cut(sock)
            sock.close()
        wait_for(lambda: hub.stats()["clients_connected"] == 0, what="every client gone")
        assert hub.stats()["messages_sent"] > 0
    # the server's loggers (the test's own client library may log its aborted connection)
    errors = [r.getMessage() for r in caplog.records
              if r.levelno >= logging.ERROR and r.name.startswith(("nodetap", "uvicorn"))]
    assert errors == []


@pytest.mark.parametrize(("message", "closed"), [
    # uvicorn's, when the server closed the connection (protocol error, ping timeout) under a send
    ("Unexpected ASGI message 'websocket.send', after sending 'websocket.close'.", True),
    # Starlette's, after a close message went out
    ('Cannot call "send" once a close message has been sent.', True),
    ('WebSocket is not connected. Need to call "accept" first.', True),
    ("dictionary changed size during iteration", False),  # a bug: still logged with its traceback
])
def test_which_writer_errors_are_an_ordinary_disconnect(message: str, closed: bool) -> None:
    from api.hub import _closed_error

    assert _closed_error(RuntimeError(message)) is closed


def test_a_subscription_that_fails_to_build_is_counted_in_metrics_and_logged_once(
        serve: Serve, make_node_dir: Callable[..., Path], caplog: pytest.LogCaptureFixture) -> None:
    node = make_node_dir(lines=500)
    ts = datetime(2026, 1, 5, 10)
    row = {**{k: None for k in ORDERS_SCHEMA}, "time": ts, "order_time": ts, "coin": "BTC", "status": "open",
           "oid": 1, "user": "0xabc", "side": "B", "limit_px": 100.0, "orig_sz": 1.0, "sz": 1.0}
    # prices as text: `minNotional` cannot multiply them, so that subscription's filter fails;
    # the unfiltered one still formats them
    broken = pl.DataFrame([row], schema=ORDERS_SCHEMA).with_columns(pl.col("limit_px").cast(pl.String))
    processed = Processed(stream=None, frames={"orders": broken}, candles=None,  # type: ignore[arg-type]
                          result=None, seconds=0.0)
    size = sum(p.stat().st_size for p in node.rglob("*") if p.is_file())
    with serve(node, node_info_url="") as server, client(server) as ws, \
            caplog.at_level(logging.ERROR, logger="nodetap.wire"):
        wait_for(lambda: sum(int(r["bytes"]) for r in server.state.store.status()) == size,  # type: ignore[call-overload]
                 what="the pipeline to catch up")
        subscribe(ws, {"type": "orders", "coin": "*", "minNotional": 5})
        subscribe(ws, {"type": "orders", "coin": "*"})
        hub = server.state.hub
        for _ in range(2):
            hub.publish(processed)  # as the pipeline thread does after a commit
        got = collect(ws, lambda ms: len(of(ms, "orders")) >= 2)
        metrics = httpx.get(server.url + "/metrics").text
    assert [m["data"][0]["order"]["limitPx"] for m in of(got, "orders")] == ["100.0", "100.0"]
    families = {f.name: f for f in text_string_to_metric_families(metrics)}
    errors = families["nodetap_ws_feed_errors"]
    assert errors.type == "counter" and [s.value for s in errors.samples] == [2.0]
    assert errors.documentation.startswith("Live messages not built because building them failed")
    logged = [r.getMessage() for r in caplog.records if "event=feed_build_error" in r.getMessage()]
    assert len(logged) == 1 and logged[0].startswith("event=feed_build_error channel=orders error=")


@pytest.mark.parametrize("compression", [False, True])
def test_messages_are_compressed_only_when_the_setting_is_on(serve: Serve, tmp_path: Path,
                                                             compression: bool) -> None:
    """permessage-deflate costs the server CPU per client: off unless `ws_compression`, even
    for a client that asks for it (the websockets client does by default)."""
    with live_server(serve, tmp_path, ws_compression=compression) as server, client(server) as ws:
        extensions = ws.response.headers.get("Sec-WebSocket-Extensions") or ""
        assert ("permessage-deflate" in extensions) is compression
        send(ws, {"method": "subscribe", "subscription": {"type": "trades", "coin": "BTC"}})
        got = collect(ws, lambda ms: len(of(ms, "trades")) >= 1)
        assert of(got, "trades")[0]["data"][0]["coin"] == "BTC"
