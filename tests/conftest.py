"""Fixture factories: real node dirs on disk, real DuckDB files, the settings around them."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import duckdb
import pytest

from etl.config import Settings
from etl.simulate import generate

ROOT = Path(__file__).resolve().parent.parent
SAMPLES = ROOT.parent / "shared" / "samples"


@pytest.fixture(scope="session", autouse=True)
def compiled_scan(tmp_path_factory: pytest.TempPathFactory) -> None:
    """The byte scan compiled (or loaded from numba's cache) before any test starts a server,
    once for all xdist workers: on a fresh checkout it compiles for ~18 s on 2 cores, which
    would otherwise happen inside the first tests' servers, two workers at once, past their
    start-up deadlines on a busy machine (`etl.bytescan.warm`)."""
    import fcntl

    from etl.bytescan import warm

    lock = tmp_path_factory.getbasetemp().parent / "nodetap-numba.lock"  # shared by the workers
    with open(lock, "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)  # the second worker then loads what the first compiled
        warm()


@pytest.fixture
def samples() -> Path:
    """The real node lines in ../shared/samples; tests using them skip where it is absent."""
    if not SAMPLES.is_dir():
        pytest.skip("../shared/samples is not present")
    return SAMPLES


@pytest.fixture
def make_node_dir(tmp_path: Path) -> Callable[..., Path]:
    """make_node_dir(lines=2000, variant="plain", kinds=("orders", "fills"), seed=7, name=...)"""

    def make(lines: int = 2000, variant: str = "plain", kinds: tuple[str, ...] = ("orders", "fills"),
             seed: int = 7, name: str = "node", start: datetime | None = None,
             events_per_block: float = 20.0) -> Path:
        out = tmp_path / name
        generate(out, lines=lines, variant=variant, kinds=kinds, seed=seed,
                 start=start or datetime(2026, 1, 5, 10, 58, tzinfo=UTC),
                 events_per_block=events_per_block)
        return out

    return make


@pytest.fixture
def settings_for(tmp_path: Path) -> Callable[..., Settings]:
    def make(node_dir: Path, **kw: object) -> Settings:
        base: dict[str, object] = {"node_dir": node_dir, "db": tmp_path / "t.duckdb",
                                   "start_from": "start", "debounce_ms": 5, "poll_interval_ms": 50}
        base.update(kw)
        return Settings(**base)  # type: ignore[arg-type]

    return make


def query(db: Path, sql: str) -> list[tuple]:
    con = duckdb.connect(str(db), read_only=True)
    try:
        return con.execute(sql).fetchall()
    finally:
        con.close()


def hour_file(node: Path, stream: str, day: str, hour: int) -> Path:
    p = node / stream / "hourly" / day / str(hour)
    p.parent.mkdir(parents=True, exist_ok=True)
    return p


def run_cli(*args: str, env: dict[str, str] | None = None, timeout: float = 120,
            check: bool = True, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    """`nodetap ARGS` as a real subprocess, in `cwd` (the repository's root by default)."""
    full_env = {**os.environ, **(env or {})}
    proc = subprocess.run([sys.executable, "-m", "etl.cli", *args], capture_output=True,
                          text=True, timeout=timeout, env=full_env, cwd=cwd)
    if check and proc.returncode != 0:
        raise AssertionError(f"nodetap {' '.join(args)} exited {proc.returncode}:\n{proc.stderr}")
    return proc


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class ServerThread:
    """A real uvicorn server on a free port, in a thread (uvicorn's tests/utils.py::run_server)."""

    def __init__(self, settings: Settings) -> None:
        import uvicorn

        from api.app import create_app
        from etl.cli.run import server_config

        self.port = settings.port
        self.app = create_app(settings)
        self.server = uvicorn.Server(server_config(self.app, settings, "warning", graceful_s=5))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/ws"

    def __enter__(self) -> ServerThread:
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("server did not start")
            time.sleep(0.02)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(30)

    @property
    def state(self):  # type: ignore[no-untyped-def]
        """The app's AppState (pipeline, store, hub), for assertions."""
        return self.app.state.nodetap


@pytest.fixture
def serve(tmp_path: Path) -> Callable[..., ServerThread]:
    """serve(node_dir, **settings) -> a ServerThread context manager (not yet started)."""

    def make(node_dir: Path, **kw: object) -> ServerThread:
        base: dict[str, object] = {"node_dir": node_dir, "db": tmp_path / "api.duckdb",
                                   "start_from": "start", "debounce_ms": 5,
                                   "poll_interval_ms": 50, "port": free_port(),
                                   "seal_interval_s": 3600.0}
        base.update(kw)
        return ServerThread(Settings(**base))  # type: ignore[arg-type]

    return make


def wait_for(cond: Callable[[], bool], timeout: float = 60.0, step: float = 0.05) -> None:
    """Poll `cond` until it holds; fail the test after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(step)
