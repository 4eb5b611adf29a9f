"""The live hub: each committed batch becomes per-channel messages, fanned out to WebSocket clients.

The pipeline thread builds and serialises every message once per batch (`publish`), only
for the subscriptions that exist at that moment; the event loop then just moves references
into per-client queues (`_deliver`).

A client's lag is what it has not taken yet: its queue (at most `ws_queue_messages`) and the
bytes below it, in the transport's write buffer and the kernel's send queue (which alone can
absorb megabytes). While the queue is full or those bytes are over `ws_max_lag_bytes`, the
oldest queued messages go (or the new one, if the queue is empty), and the client is told how
many it lost (`lagged`) before its next message, or, when none follows, once it has taken
every byte sent to it (checked every second: `_reap`). A client lagging for `ws_max_lag_s` is
disconnected: its close frame gets `CLOSE_TIMEOUT_S` to go out, then the connection is aborted.

Every frame to a client is written by that client's writer task: replies (acks, pong,
errors) first, then data, then the close frame. The route's task only reads.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import struct
import termios
import threading
import time
from collections import Counter, deque
from typing import Any

import orjson
from fastapi import WebSocket
from starlette.websockets import WebSocketDisconnect, WebSocketDisconnected

from api.livecandles import LiveCandles
from api.wire import CandleSub, FeedErrors, Message, Sub, build_messages, lagged_notice
from etl.config import Settings
from etl.pipeline import Processed

log = logging.getLogger("nodetap.hub")

# Batches built but not yet fanned out (the loop is behind): past this many bytes the oldest
# batch is dropped, and its subscribers are told through their `lagged` count. The newest batch
# stays whatever its size (a lane that is behind publishes units of up to `batch_max_bytes` of
# node lines, whose messages can be larger than this).
INBOX_MAX_BYTES = 64 << 20
# Replies a client may have waiting before we stop reading its requests (TCP pushes back).
CONTROL_MAX = 64
CLOSE_TIMEOUT_S = 2.0
TRANSPORT_KEY = "nodetap.transport"  # where api.limits.TransportTap puts the connection's transport


def _kernel_unsent(sock: Any) -> int:
    """Bytes in the socket's send queue not yet acknowledged by the peer (Linux SIOCOUTQ)."""
    try:
        buf = fcntl.ioctl(sock.fileno(), termios.TIOCOUTQ, b"\0\0\0\0")
    except (OSError, ValueError, AttributeError):
        return 0
    return int(struct.unpack("i", buf)[0])


def _closed_error(err: RuntimeError) -> bool:
    """The ASGI server refusing a send because the connection closed under the writer."""
    text = str(err)
    return "websocket.close" in text or "close message has been sent" in text or "not connected" in text


# ------------------------------------------------------------------ clients
class Client:
    """One WebSocket connection: its subscriptions, bounded queues and writer task."""

    def __init__(self, ws: WebSocket, max_queue: int) -> None:
        self.ws = ws
        self.max_queue = max(1, max_queue)
        self.subs: set[Sub] = set()
        self.data: deque[Message] = deque()
        self.queued_bytes = 0  # of `data`
        self.control: deque[str] = deque()
        self.dropped = 0  # lost since the last `lagged` notice
        self.full_since: float | None = None  # monotonic time the client was first found lagging
        self.transport: Any = ws.scope.get(TRANSPORT_KEY)
        self.sock: Any = self.transport.get_extra_info("socket") if self.transport is not None else None
        self.closing: tuple[int, str] | None = None
        self.gone = False  # the writer has stopped: nothing more will be sent
        self.wake = asyncio.Event()
        self.room = asyncio.Event()
        self.writer: asyncio.Task[None] | None = None

    def unsent_bytes(self) -> int:
        """Bytes written for this client that it has not taken: transport buffer + kernel queue."""
        transport = self.transport
        if transport is None:
            return 0
        return int(transport.get_write_buffer_size()) + _kernel_unsent(self.sock)

    def pop(self) -> Message:
        message = self.data.popleft()
        self.queued_bytes -= len(message[1])
        return message


class Hub:
    """Live messages from the pipeline thread to WebSocket clients on the event loop."""

    def __init__(self, loop: asyncio.AbstractEventLoop, settings: Settings) -> None:
        self.loop = loop
        self.settings = settings
        self.clients: set[Client] = set()
        self._index: dict[Sub, set[Client]] = {}
        self._active: frozenset[Sub] = frozenset()  # read by the pipeline thread
        self._lock = threading.Lock()
        self._inbox: deque[tuple[list[Message], int]] = deque()
        self._inbox_bytes = 0
        self._inbox_dropped: Counter[Sub] = Counter()
        self._scheduled = False
        self._closed = False
        self._reaper: asyncio.Task[None] | None = None
        self._writers: set[asyncio.Task[None]] = set()  # also those of clients being closed
        self.messages_sent = 0
        self.messages_dropped = 0
        self.lagged_disconnects = 0
        self.aborted_disconnects = 0  # connections cut because the close frame could not go out
        self.subscriptions_refused = 0
        self.batches_published = 0
        self.candles = LiveCandles(settings.candle_intervals)  # candle intervals not stored
        self.feed_errors = FeedErrors()

    # -------------------------------------------------------- pipeline thread
    def publish(self, processed: Processed) -> None:
        """Build this batch's messages for the current subscriptions and hand them to the loop.

        Called on the pipeline thread after each commit; never blocks on clients, never raises:
        a failure is counted in `feed_errors` (and logged once per kind)."""
        if self._closed:
            return
        try:
            derived = self.candles.update(processed)  # also while its first subscribers open it
        except Exception as err:  # a failure costs that feed its message, not the batch
            self.feed_errors.record("candle", err)
            derived = None
        subs = self._active
        if not subs:
            return
        try:
            messages = build_messages(processed, subs, derived, self.feed_errors)
            if messages:
                self._enqueue(messages)
        except Exception as err:
            self.feed_errors.record("publish", err)

    def _enqueue(self, messages: list[Message]) -> None:
        size = sum(len(m) for _, m in messages)
        with self._lock:
            self._inbox.append((messages, size))
            self._inbox_bytes += size
            while self._inbox_bytes > INBOX_MAX_BYTES and len(self._inbox) > 1:
                old, old_size = self._inbox.popleft()
                self._inbox_bytes -= old_size
                self._inbox_dropped.update(sub for sub, _ in old)
            self.batches_published += 1
            schedule = not self._scheduled
            self._scheduled = True
        if schedule:
            with contextlib.suppress(RuntimeError):  # RuntimeError: the loop has closed (shutdown)
                self.loop.call_soon_threadsafe(self._deliver)

    # ------------------------------------------------------------ event loop
    def _deliver(self) -> None:
        with self._lock:
            batches, self._inbox = self._inbox, deque()
            dropped, self._inbox_dropped = self._inbox_dropped, Counter()
            self._inbox_bytes = 0
            self._scheduled = False
        if self._closed:
            return
        now = time.monotonic()
        for sub, n in dropped.items():
            for client in tuple(self._index.get(sub, ())):
                client.dropped += n
                self.messages_dropped += n
        unsent: dict[Client, int] = {}  # asked once per client per delivery (a system call)
        for messages, _ in batches:
            for sub, text in messages:
                for client in tuple(self._index.get(sub, ())):
                    if client not in unsent:
                        unsent[client] = client.unsent_bytes()
                    self._put(client, sub, text, now, unsent[client])

    def _put(self, client: Client, sub: Sub, text: str, now: float, unsent: int) -> None:
        limit = self.settings.ws_max_lag_bytes
        lagging = False
        while client.data and (len(client.data) >= client.max_queue
                               or unsent + client.queued_bytes + len(text) > limit):
            client.pop()  # the oldest goes first
            client.dropped += 1
            self.messages_dropped += 1
            lagging = True
        if unsent + len(text) > limit and unsent > 0:
            client.dropped += 1  # what is below us already is over the limit: this one goes too
            self.messages_dropped += 1
            lagging = True
        else:
            client.data.append((sub, text))
            client.queued_bytes += len(text)
            client.wake.set()
        if lagging or len(client.data) >= client.max_queue:
            if client.full_since is None:
                client.full_since = now
            elif now - client.full_since >= self.settings.ws_max_lag_s:
                self._kick_lagged(client)

    def _lagging(self, client: Client) -> bool:
        # dropped messages are reported (and `dropped` reset) only once the client takes data again
        return (client.dropped > 0 or len(client.data) >= client.max_queue
                or client.unsent_bytes() + client.queued_bytes > self.settings.ws_max_lag_bytes)

    @staticmethod
    def _took_all(client: Client) -> bool:
        """The client has taken every byte sent to it, and nothing waits in its queue."""
        return not client.data and client.unsent_bytes() == 0

    def _kick_lagged(self, client: Client) -> None:
        self.lagged_disconnects += 1
        lag = self.settings.ws_max_lag_s
        log.warning("event=ws_lagged_disconnect dropped=%d unsent_bytes=%d queued=%d max_lag_s=%s",
                    client.dropped, client.unsent_bytes(), len(client.data), lag)
        self._kick(client, 1008, f"too slow: queue full for {lag:g} s (setting ws_max_lag_s)")
        # a client that takes nothing never lets the close frame out: cut it after a grace
        self.loop.call_later(CLOSE_TIMEOUT_S, self._abort, client)

    def _abort(self, client: Client) -> None:
        # a graceful close (ours or the server's) waits for the buffers to drain: forever here
        unsent = client.unsent_bytes()
        if client.transport is None or unsent == 0:
            return
        self.aborted_disconnects += 1
        log.info("event=ws_abort reason=close_frame_not_taken unsent_bytes=%d", unsent)
        client.transport.abort()

    def _kick(self, client: Client, code: int, reason: str) -> None:
        """Stop feeding a client and have its writer close the connection."""
        if client.closing is not None:
            return
        client.closing = (code, reason)
        for sub in list(client.subs):
            self._drop_sub(client, sub)
        client.data.clear()
        client.queued_bytes = 0
        client.dropped = 0
        client.full_since = None
        self.clients.discard(client)
        client.wake.set()

    async def _reap(self) -> None:
        """Follow every client's lag, also when no new message arrives: start or stop its lag
        clock, and disconnect it once lagging for `ws_max_lag_s`."""
        period = min(1.0, max(0.05, self.settings.ws_max_lag_s / 4))
        while not self._closed:
            await asyncio.sleep(period)
            now = time.monotonic()
            for client in list(self.clients):
                if client.dropped and self._took_all(client):
                    client.wake.set()  # no message came after the lost ones: its writer says so now
                if not self._lagging(client):
                    client.full_since = None
                elif client.full_since is None:
                    client.full_since = now
                elif now - client.full_since >= self.settings.ws_max_lag_s:
                    self._kick_lagged(client)

    async def _write(self, client: Client) -> None:
        ws = client.ws
        try:
            while True:
                if client.control:
                    text = client.control.popleft()
                    client.room.set()
                    await ws.send_text(text)
                elif client.closing is not None:
                    code, reason = client.closing
                    await ws.close(code, reason)
                    return
                elif client.data:
                    _, text = client.pop()
                    if client.dropped:
                        dropped, client.dropped = client.dropped, 0
                        await ws.send_text(lagged_notice(dropped))
                    await ws.send_text(text)
                    self.messages_sent += 1
                elif client.dropped and self._took_all(client):  # lost, and nothing after them yet
                    dropped, client.dropped = client.dropped, 0
                    await ws.send_text(lagged_notice(dropped))
                else:
                    client.wake.clear()
                    await client.wake.wait()
        except (WebSocketDisconnect, WebSocketDisconnected, OSError):
            pass  # the peer went away, or the server closed the connection under us
        except RuntimeError as err:
            if not _closed_error(err):
                log.exception("event=ws_writer_error")
            # else: an ordinary disconnect raced our send
        except Exception:  # a writer must not die silently, nor take the hub with it
            log.exception("event=ws_writer_error")
        finally:
            client.gone = True
            client.room.set()
            if client.closing is None:
                self._kick(client, 1000, "")

    # ------------------------------------------------------------ route API
    def connect(self, ws: WebSocket) -> Client:
        """Register an accepted WebSocket and start its writer."""
        client = Client(ws, self.settings.ws_queue_messages)
        self.clients.add(client)
        client.writer = asyncio.create_task(self._write(client), name="nodetap-ws-writer")
        self._writers.add(client.writer)
        client.writer.add_done_callback(self._writers.discard)
        if self._reaper is None and not self._closed:
            self._reaper = asyncio.create_task(self._reap(), name="nodetap-ws-reaper")
        return client

    async def disconnect(self, client: Client) -> None:
        """Forget a client whose connection has ended."""
        if client.closing is None:
            self._kick(client, 1000, "")
        self.clients.discard(client)
        if client.writer is not None and not client.writer.done():
            client.writer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await client.writer

    async def reply(self, client: Client, payload: object) -> None:
        """Queue a reply ahead of data; waits (so stops reading requests) while too many are queued."""
        if client.gone:
            return
        client.control.append(payload if isinstance(payload, str) else orjson.dumps(payload).decode())
        client.wake.set()
        while len(client.control) > CONTROL_MAX and not client.gone:
            client.room.clear()
            await client.room.wait()

    def refusal(self, client: Client, sub: Sub) -> str | None:
        """Why `subscribe(client, sub)` would not add it (the error text for the client), or None."""
        if sub in client.subs:
            return None  # the route answers "Already subscribed"
        limit = self.settings.ws_max_subscriptions
        if len(client.subs) >= limit:
            return (f"Too many subscriptions: at most {limit} per connection "
                    "(setting ws_max_subscriptions)")
        return None

    def subscribe(self, client: Client, sub: Sub) -> bool:
        """Add a subscription; False if the client has it already, is closing, or holds
        `ws_max_subscriptions` already (`refusal` says so in words)."""
        if sub in client.subs or client.closing is not None:
            return False
        if self.refusal(client, sub) is not None:
            self.subscriptions_refused += 1
            return False
        client.subs.add(sub)
        self._index.setdefault(sub, set()).add(client)
        self._active = frozenset(self._index)
        return True

    def unsubscribe(self, client: Client, sub: Sub) -> bool:
        """Remove a subscription and its queued messages; False if the client did not have it."""
        if sub not in client.subs:
            return False
        self._drop_sub(client, sub)
        if any(s == sub for s, _ in client.data):
            client.data = deque(m for m in client.data if m[0] != sub)
            client.queued_bytes = sum(len(text) for _, text in client.data)
        return True

    def _drop_sub(self, client: Client, sub: Sub) -> None:
        if sub in client.subs and isinstance(sub, CandleSub):
            self.candles.release(sub)  # the subscription's hold on its feed (interval not stored)
        client.subs.discard(sub)
        holders = self._index.get(sub)
        if holders is not None:
            holders.discard(client)
            if not holders:
                del self._index[sub]
        self._active = frozenset(self._index)

    async def close(self) -> None:
        """Disconnect everyone (1001, going away); writers get CLOSE_TIMEOUT_S to finish."""
        self._closed = True
        if self._reaper is not None:
            self._reaper.cancel()
        for client in list(self.clients):
            self._kick(client, 1001, "server shutting down")
        if self._writers:
            _, pending = await asyncio.wait(set(self._writers), timeout=CLOSE_TIMEOUT_S)
            for task in pending:
                task.cancel()

    def stats(self) -> dict[str, int]:
        """Counters for /metrics and /v1/status; read from other threads, so clients are copied."""
        clients = tuple(self.clients)  # one C call under the GIL, unlike iterating the set
        return {
            "clients_connected": len(clients),
            "subscriptions": sum(len(c.subs) for c in clients),
            "messages_sent": self.messages_sent,
            "messages_dropped": self.messages_dropped,
            "lagged_disconnects": self.lagged_disconnects,
            "aborted_disconnects": self.aborted_disconnects,
            "subscriptions_refused_total": self.subscriptions_refused,
            "unsent_bytes": sum(c.unsent_bytes() + c.queued_bytes for c in clients),
            "batches_published": self.batches_published,
            "feed_errors_total": self.feed_errors.count,
        }
