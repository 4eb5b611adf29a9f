"""The dashboard in a real browser: headless Chromium against a real server over a node dir that a
thread keeps appending to. Skips where /usr/bin/chromium or the playwright package is missing."""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from api.routes import dashboard
from etl.simulate import generate, run_live
from tests.conftest import ROOT, ServerThread

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
ARTIFACTS = ROOT / "test-artifacts"
CHART = "[data-testid=chart]"


@pytest.fixture
def browser() -> Iterator[Any]:
    if not CHROMIUM.exists():
        pytest.skip("needs /usr/bin/chromium (apt-get install chromium)")
    sync_api = pytest.importorskip("playwright.sync_api", reason="needs the playwright package")
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            browser.close()


@pytest.fixture
def live_node(tmp_path: Path) -> Iterator[Path]:
    """Twenty quiet minutes of history ending ~10 minutes ago, then 2000 lines/s on the wall clock."""
    node = tmp_path / "node"
    generate(node, lines=20_000, start=datetime.now(UTC) - timedelta(minutes=30), events_per_block=1.0)
    stop = threading.Event()
    writer = threading.Thread(target=run_live, args=(node,), kwargs={"rate": 2000, "stop": stop}, daemon=True)
    writer.start()
    yield node
    stop.set()
    writer.join(10)


def with_dashboard(server: ServerThread) -> ServerThread:
    """The dashboard router on the app, unless create_app already registers it."""
    if not any(getattr(route, "path", None) == "/" for route in server.app.routes):
        server.app.include_router(dashboard.router)
    return server


def dataset(testid: str) -> str:
    """JS for the data-* attributes of the element with that data-testid."""
    return f"document.querySelector('[data-testid={testid}]').dataset"


def wait_js(page: Any, condition: str, timeout_ms: int = 20_000) -> None:
    page.wait_for_function(f"() => {condition}", timeout=timeout_ms)


def chart_attr(page: Any, name: str) -> str:
    return str(page.get_attribute(CHART, f"data-{name}") or "")


def wait_chart(page: Any, coin: str, interval: str, timeout_ms: int = 20_000) -> None:
    """Until the chart shows `coin` at `interval` with at least one candle drawn."""
    page.wait_for_function(
        """([coin, interval]) => {
             const d = document.querySelector('[data-testid=chart]').dataset;
             return d.coin === coin && d.interval === interval && Number(d.candles) > 0;
           }""",
        arg=[coin, interval], timeout=timeout_ms)


def status_text(page: Any) -> list[str]:
    return [str(t) for t in page.locator("[data-testid=status-row]").all_inner_texts()]


def polls(page: Any) -> int:
    return int(page.get_attribute("[data-testid=status]", "data-polls") or 0)


def wait_until(check: Callable[[], bool], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")
        time.sleep(0.1)


def test_dashboard_files_are_served_with_their_types(make_node_dir: Callable[..., Path],
                                                    serve: Callable[..., ServerThread]) -> None:
    with with_dashboard(serve(make_node_dir(lines=200))) as server, httpx.Client(base_url=server.url) as http:
        page = http.get("/")
        assert page.status_code == 200
        assert page.headers["content-type"] == "text/html; charset=utf-8"
        assert "default-src 'self'" in page.headers["content-security-policy"]
        linked = re.findall(r'(?:src|href)="([^"]+)"', page.text)
        assert linked == ["data:,", "static/dashboard.css", "static/app.js"]
        types = {".js": "text/javascript; charset=utf-8", ".css": "text/css; charset=utf-8"}
        for f in sorted((ROOT / "api" / "static").iterdir()):
            if f.suffix in types:
                r = http.get(f"/static/{f.name}")
                assert (r.status_code, r.headers["content-type"]) == (200, types[f.suffix]), f.name
                assert r.content == f.read_bytes()
                # no CDN, no font or script from elsewhere: the only absolute URL is our own WebSocket
                assert re.findall(r"\b(?:https?|wss?)://", r.text) == [], f.name
        for name in ("nope.js", "..%2Fapp.py", ".hidden.js", "index.htm", "%2E%2E"):
            assert http.get(f"/static/{name}").status_code == 404, name


@dataclass
class Session:
    """A page open on the dashboard, with what went wrong in the browser so far."""

    page: Any
    server: ServerThread
    problems: list[str] = field(default_factory=list)  # console errors, uncaught exceptions
    foreign: list[str] = field(default_factory=list)  # requests to anywhere but our server

    def assert_clean(self) -> None:
        assert self.problems == []
        assert self.foreign == []


@pytest.fixture
def session(browser: Any, live_node: Path, serve: Callable[..., ServerThread]) -> Iterator[Session]:
    with with_dashboard(serve(live_node, keep_all=True, rules_file="")) as server:
        page = browser.new_page(viewport={"width": 1440, "height": 900})
        s = Session(page, server)
        page.on("console", lambda m: s.problems.append(f"console.{m.type}: {m.text}")
                if m.type == "error" else None)
        page.on("pageerror", lambda e: s.problems.append(f"page error: {e}"))
        page.on("request", lambda r: None if r.url.startswith((server.url, server.ws_url, "data:"))
                else s.foreign.append(r.url))
        page.goto(server.url + "/")
        try:
            yield s
        finally:
            page.close()


@pytest.mark.timeout(180)
def test_dashboard_draws_live_data(session: Session) -> None:
    page, hub = session.page, session.server.state.hub
    assert page.title().endswith("nodetap")

    # candles from the history, then from the live feed: candle messages arrive and the last
    # candle becomes the current minute
    wait_chart(page, "BTC", "1m")
    wait_js(page, f"Number({dataset('chart')}.updates) > 0 && Date.now() - {dataset('chart')}.lastT < 120000")
    assert page.get_attribute("[data-testid=ws-state]", "data-state") == "open"

    # the trades tape and the orders feed fill, newest first, capped, coloured by side
    page.wait_for_selector("[data-testid=trade-row]", timeout=20_000)
    page.wait_for_selector("[data-testid=order-row]", timeout=20_000)
    time.sleep(2)
    assert page.locator("[data-testid=order-row]").count() <= 50
    # one snapshot of the tape: rows keep arriving between separate reads
    tape = page.eval_on_selector_all("[data-testid=trade-row]", """rows => rows.map(r => [
        r.dataset.side, r.classList.contains(r.dataset.side === "B" ? "buy" : "sell"), +r.dataset.time])""")
    assert 0 < len(tape) <= 50
    assert {side for side, _, _ in tape} <= {"A", "B"}
    assert all(coloured for _, coloured, _ in tape)
    times = [t for _, _, t in tape]
    assert times == sorted(times, reverse=True)

    # the status panel: one row per stream, numbers that move between two polls
    wait_js(page, f"Number({dataset('status')}.polls) > 0")
    first = status_text(page)
    assert any(row.startswith("node_order_statuses") for row in first), first
    done = polls(page)
    wait_js(page, f"Number({dataset('status')}.polls) > {done}", 10_000)
    assert status_text(page) != first

    # switching coin, then interval: the old subscriptions go, candles come for the new choice
    page.wait_for_selector("[data-testid=coin-select] option[value=ETH]", state="attached")
    page.select_option("[data-testid=coin-select]", "ETH")
    wait_chart(page, "ETH", "1m")
    page.click("[data-testid=interval] button[data-interval='5m']")
    wait_chart(page, "ETH", "5m")
    assert page.input_value("[data-testid=coin-select]") == "ETH"
    # orders *, trades ETH, candle ETH 5m: the unsubscribes for BTC and ETH 1m reached the server
    wait_until(lambda: hub.stats()["subscriptions"] == 3, 10, "3 subscriptions on the hub")
    page.click("[data-testid=interval] button[data-interval='1m']")
    wait_chart(page, "ETH", "1m")
    wait_js(page, f"Number({dataset('chart')}.updates) > 0")

    time.sleep(1.5)
    box = page.locator(CHART).bounding_box()
    assert box is not None
    page.mouse.move(box["x"] + box["width"] * 0.6, box["y"] + box["height"] * 0.4)
    assert page.inner_text("[data-testid=ohlc-readout]").count(" O ") == 1
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "dashboard.png"))
    session.assert_clean()


@pytest.mark.timeout(180)
def test_dashboard_reconnects_and_shows_errors(session: Session) -> None:
    page, hub = session.page, session.server.state.hub
    wait_chart(page, "BTC", "1m")
    wait_until(lambda: hub.stats()["subscriptions"] == 3, 10, "orders *, trades BTC, candle BTC 1m")

    # a dropped connection: the page reconnects and subscribes again, and candles keep coming
    updates = int(chart_attr(page, "updates"))
    page.evaluate("nodetap.feed.ws.close()")
    wait_js(page, "nodetap.feed.opens === 2", 10_000)
    assert page.get_attribute("[data-testid=ws-state]", "data-state") == "open"
    wait_until(lambda: hub.stats()["subscriptions"] == 3, 10, "the 3 subscriptions again")
    wait_js(page, f"Number({dataset('chart')}.updates) > {updates}")

    # the server's error messages are shown
    page.evaluate("""nodetap.feed.send({method: "subscribe",
                                        subscription: {type: "candle", coin: "ETH", interval: "7m"}})""")
    page.wait_for_selector("[data-testid=error]", timeout=10_000)
    assert "7m" in page.inner_text("[data-testid=error]")
    session.assert_clean()
