"""The TypeScript SDK `@nktkas/hyperliquid`, unchanged, against a real nodetap server: its
InfoClient over HTTP and over its WebSocket transport (`post` requests), and its
SubscriptionClient. Needs Node.js (Debian's `nodejs`, which .ci/run installs) and npm; the
package, pinned, is installed into a cache dir (NODETAP_NPM_CACHE, default
~/.cache/nodetap-npm). Skips only where Node.js or the package cannot be had.

Shapes: @nktkas/hyperliquid src/api/info/_methods (CandleSnapshotResponse, UserFill) and
src/api/subscription/_methods (UserFillsEvent with isSnapshot, AllMidsEvent `{mids}`).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import pytest

from tests.conftest import ROOT, ServerThread, wait_for

NKTKAS_VERSION = "0.33.3"
CANDLE_KEYS = ["t", "T", "s", "i", "o", "c", "h", "l", "v", "n"]
FILL_KEYS = ["coin", "px", "sz", "side", "time", "startPosition", "dir", "closedPnl", "hash", "oid",
             "crossed", "fee", "tid", "feeToken", "twapId"]


def nktkas() -> tuple[list[str], Path]:
    """The node command line (with the flags this Node needs) and the cache dir holding the package."""
    node, npm = shutil.which("node"), shutil.which("npm")
    if node is None or npm is None:
        pytest.skip("Node.js and npm are not installed (.ci/run installs Debian's nodejs and npm)")
    version = subprocess.run([node, "--version"], capture_output=True, text=True, check=True).stdout
    major = int(re.match(r"v(\d+)", version).group(1))  # type: ignore[union-attr]
    if major < 20:
        pytest.skip(f"Node.js {version.strip()} has no WebSocket; 20.10 or later is needed")
    cache = Path(os.environ.get("NODETAP_NPM_CACHE", Path.home() / ".cache" / "nodetap-npm"))
    installed = cache / "node_modules" / "@nktkas" / "hyperliquid" / "package.json"
    if not installed.exists() or orjson.loads(installed.read_bytes())["version"] != NKTKAS_VERSION:
        cache.mkdir(parents=True, exist_ok=True)
        proc = subprocess.run([npm, "install", "--prefix", str(cache), "--no-audit", "--no-fund",
                               "--loglevel=error", f"@nktkas/hyperliquid@{NKTKAS_VERSION}"],
                              capture_output=True, text=True, timeout=300)
        if proc.returncode != 0:
            pytest.skip(f"npm could not install @nktkas/hyperliquid@{NKTKAS_VERSION}: {proc.stderr[-500:]}")
    shutil.copy(ROOT / "tests" / "node" / "nktkas_client.mjs", cache / "nktkas_client.mjs")
    flags = ["--experimental-websocket"] if major < 22 else []  # a global WebSocket from Node 22 on
    return [node, *flags, str(cache / "nktkas_client.mjs")], cache


def test_typescript_sdk_over_http_and_websocket(serve: Callable[..., ServerThread], tmp_path: Path) -> None:
    from tests.test_live import busiest_user, live_server

    command, cache = nktkas()
    with live_server(serve, tmp_path, rate=3000, keep_all=True) as server:
        wait_for(lambda: busiest_user(server) is not None)
        proc = subprocess.run([*command, server.url, str(busiest_user(server))], capture_output=True,
                              text=True, timeout=90, cwd=cache)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out: dict[str, Any] = orjson.loads(proc.stdout)
    for via in ("http", "post"):
        got = out[via]
        assert got["candleSnapshot"] and all(list(c) == CANDLE_KEYS for c in got["candleSnapshot"])
        assert {c["s"] for c in got["candleSnapshot"]} == {"BTC"}
        assert "BTC" in got["allMids"] and all(isinstance(v, str) for v in got["allMids"].values())
        assert got["userFills"] and all(list(f) == FILL_KEYS for f in got["userFills"])
    assert out["post"]["meta"] == out["http"]["meta"]
    # an unservable subscription fails at once with the server's text, not at the client's timeout
    assert out["l2Book"]["message"] == (
        'Invalid subscription {"type":"l2Book","coin":"BTC","nSigFigs":null,"mantissa":null}')
    assert out["l2Book"]["ms"] < 5000
    assert all(n >= 2 for n in out["counts"].values()), out["counts"]
    assert out["events"]["userFills"][0]["isSnapshot"] is True
    assert all("isSnapshot" not in e for e in out["events"]["userFills"][1:])
    assert all(e["s"] == "BTC" and e["i"] == "1m" for e in out["events"]["candle"])
    assert all(t["coin"] == "BTC" for e in out["events"]["trades"] for t in e)
    assert "BTC" in out["events"]["allMids"][0]["mids"]
