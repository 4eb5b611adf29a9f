"""The process around the pipeline: `serve` stopped by a signal, the demo simulator
restarted, and a disk that fills up."""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
import threading
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import pytest

from etl.config import memory_size
from etl.diskspace import fitting_threshold
from etl.pipeline import status_file
from etl.simulate import run_live
from tests.conftest import ROOT, free_port, query, wait_for


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_serve_exits_0_on_a_signal(make_node_dir: Callable[..., Path], tmp_path: Path,
                                   sig: signal.Signals) -> None:
    node = make_node_dir(lines=2000)
    db = tmp_path / "serve.duckdb"
    proc = subprocess.Popen(
        [sys.executable, "-m", "etl.cli", "serve", "--node-dir", str(node), "--db", str(db),
         "--from", "start", "--keep-all", "--port", str(free_port())],
        cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    total = sum(len(p.read_bytes().splitlines()) for p in node.rglob("*") if p.is_file())
    try:
        wait_for(lambda: status_file(db).exists() and sum(
            r.get("lines", 0) for r in orjson.loads(status_file(db).read_bytes())["streams"]) == total,
            timeout=60)
    finally:
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err.decode()[-2000:]
    assert query(db, "SELECT sum(lines) FROM cursors") == [(total,)]


def _events(out: Path) -> tuple[list[int], list[int], list[dict]]:
    tids, blocks, fills = [], [], []
    for p in sorted(out.rglob("*")):
        if not p.is_file():
            continue
        for line in p.read_bytes().splitlines():
            obj = orjson.loads(line)
            if "node_fills_by_block" in p.parts:
                for f in obj["events"]:
                    fills.append(f[1])
                    if f[1]["crossed"]:  # one taker fill per trade
                        tids.append(f[1]["tid"])
            if "node_order_statuses_by_block" in p.parts:
                blocks.append(obj["block_number"])
    return tids, blocks, fills


def test_the_demo_simulator_continues_its_node(tmp_path: Path) -> None:
    out = tmp_path / "demo-node"
    first = run_live(out, rate=3000, variant="by_block", duration_s=1.0)
    tids1, blocks1, fills1 = _events(out)
    last_px = {f["coin"]: float(f["px"]) for f in fills1}
    last_time = max(f["time"] for f in fills1)
    second = run_live(out, rate=3000, variant="by_block", duration_s=1.0)
    assert first > 0 and second > 0
    tids, blocks, fills = _events(out)
    new = fills[len(fills1):]
    assert len(set(tids)) == len(tids)  # no trade id twice
    assert min(tids[len(tids1):]) > max(tids1)
    assert blocks == sorted(blocks) and len(set(blocks)) == len(blocks)
    assert min(f["time"] for f in new) >= last_time
    # prices go on from where they were (a random walk of ~0.1% a minute, not a reset)
    for f in new:
        if f["coin"] in last_px:
            assert abs(float(f["px"]) / last_px[f["coin"]] - 1) < 0.01
            break
    else:
        raise AssertionError("no coin traded in both runs")


def test_wal_threshold_fits_the_free_space() -> None:
    assert memory_size("128MB") == 128_000_000 and memory_size("1.5GiB") == 3 << 29  # as DuckDB reads them
    assert memory_size("1TB") == 10**12 and memory_size("2 TiB") == 2 << 40
    assert fitting_threshold("128MB", 100 << 30) == 128_000_000
    assert fitting_threshold("128MB", 80 << 20) == 10 << 20
    assert fitting_threshold("128MB", 1000) == 1 << 20  # never below 1 MiB


@pytest.fixture
def small_volume(tmp_path: Path) -> Iterator[Path]:
    """A 24 MiB tmpfs mounted for the test (skips where mounting is not allowed)."""
    vol = tmp_path / f"vol-{uuid.uuid4().hex[:6]}"
    vol.mkdir()
    if shutil.which("mount") is None:
        pytest.skip("no mount command")
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=24m", "tmpfs", str(vol)],
                          capture_output=True, text=True)
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {proc.stderr.strip()}")
    try:
        yield vol
    finally:
        subprocess.run(["umount", "-l", str(vol)], check=False)


def test_a_full_disk_pauses_ingestion_and_loses_nothing(
        make_node_dir: Callable[..., Path], tmp_path: Path, small_volume: Path) -> None:
    node = make_node_dir(lines=40_000, start=datetime(2026, 1, 5, 10, 30, tzinfo=UTC))
    db = small_volume / "d.duckdb"
    filler = small_volume / "filler"
    filler.write_bytes(b"\0" * (21 << 20))  # ~3 MiB left for the database
    proc = subprocess.Popen(
        [sys.executable, "-m", "etl.cli", "ingest", "--node-dir", str(node), "--db", str(db),
         "--from", "start", "--keep-all", "--debounce-ms", "5", "--batch-max-bytes", "1000000",
         "--lake", str(tmp_path / "lake")],
        cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(proc.stderr or []), daemon=True)
    reader.start()
    try:
        wait_for(lambda: any("event=disk_full" in x for x in lines), timeout=60)
        assert proc.poll() is None  # paused, not dead
        filler.unlink()
        wait_for(lambda: any("event=disk_space_back" in x for x in lines), timeout=60)
        total = sum(len(p.read_bytes().splitlines()) for p in node.rglob("*") if p.is_file())
        wait_for(lambda: status_file(db).exists() and sum(
            r.get("lines", 0) for r in orjson.loads(status_file(db).read_bytes())["streams"]) == total,
            timeout=90)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)
        reader.join(10)
        if proc.stderr is not None:
            proc.stderr.close()
    assert proc.returncode == 0, "".join(lines)[-3000:]
    full = [x for x in lines if "event=disk_full" in x]
    assert len(full) == 1  # one clear error, not one per retry
    assert f"volume={small_volume}" in full[0] and "checkpoint_threshold" in full[0]
    assert "event=wal_threshold" in "".join(lines)
    orders = sum(len(p.read_bytes().splitlines()) for p in (node / "node_order_statuses").rglob("*")
                 if p.is_file())
    assert query(db, "SELECT count(*), count(DISTINCT oid) FROM orders") == [(orders, orders)]
    assert query(db, "SELECT count(*) - count(DISTINCT tid) FROM trades") == [(0,)]


def test_a_shutdown_while_a_client_closes_its_websocket_does_not_raise() -> None:
    """The server shuts down at the instant it has answered a client's close and closed the
    transport, before the connection is gone (the moment is forced: `handle_close` calls
    `shutdown` at once). uvicorn 0.54's protocol raised `InvalidState` there, which ended
    `serve` with a traceback; `etl.cli.run.ws_protocol`'s does not."""
    import asyncio
    import base64
    import os
    import struct

    import uvicorn
    from uvicorn.server import ServerState

    from etl.cli.run import ws_protocol

    async def app(scope: Any, receive: Any, send: Any) -> None:
        await receive()
        await send({"type": "websocket.accept"})
        while (await receive())["type"] != "websocket.disconnect":
            pass

    errors: list[BaseException] = []

    class ShutdownOnClose(ws_protocol()):  # type: ignore[misc]  # a class made at run time
        def handle_close(self, event: object) -> None:
            super().handle_close(event)
            try:
                self.shutdown()
            except BaseException as err:  # noqa: BLE001 - what the server's shutdown would raise
                errors.append(err)

    async def scenario() -> None:
        config = uvicorn.Config(app, ws=ShutdownOnClose, log_level="critical")
        config.load()
        state = ServerState()
        server = await asyncio.get_running_loop().create_server(
            lambda: config.ws_protocol_class(config=config, server_state=state, app_state={}), "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        key = base64.b64encode(os.urandom(16)).decode()
        writer.write(f"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                     f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n".encode())
        assert b" 101 " in await reader.readuntil(b"\r\n\r\n")
        mask, code = os.urandom(4), struct.pack("!H", 1000)
        masked = bytes(b ^ mask[i % 4] for i, b in enumerate(code))
        writer.write(bytes([0x88, 0x80 | len(code)]) + mask + masked)
        assert (await reader.read(2))[0] == 0x88  # the server's answering close frame
        await reader.read()  # and the end of the connection
        writer.close()
        server.close()
        await server.wait_closed()

    asyncio.run(asyncio.wait_for(scenario(), 30))
    assert errors == []
