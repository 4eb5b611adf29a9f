"""The dashboard in a real browser: headless Chromium against a real server, over a node dir that a
thread keeps appending to, and over databases backfilled from archives (the real node lines of
../shared/samples, and a generated hour). Skips where /usr/bin/chromium or playwright is missing.
Screenshots go to test-artifacts/ (ignored by git)."""

from __future__ import annotations

import os
import re
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from api.routes import dashboard
from etl.simulate import generate, run_live
from tests.conftest import ROOT, ServerThread, run_cli

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
ARTIFACTS = ROOT / "test-artifacts"
CHART = "[data-testid=chart]"
# the real node lines, as hour files of a node dir: (stream dir, day, hour) <- sample file
# ("archive": another dir, as a node tails one variant per kind and this is a second fills variant)
SAMPLE_HOURS = {
    ("node_fills_streaming", "20260505", "17"): "node_fills_streaming.jsonl",
    ("node_order_statuses_streaming", "20260505", "17"): "node_order_statuses_streaming.jsonl",
    ("archive/node_fills_by_block", "20260315", "0"): "node_fills_by_block.jsonl",
}


@pytest.fixture(scope="module")
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


def hover_newest_candle(page: Any) -> int:
    """Point at the chart's newest candle; its open time, as the crosshair reports it."""
    box = page.locator(CHART).bounding_box()
    assert box is not None
    for _ in range(20):
        x = page.evaluate("(() => { const L = nodetap.chart.layout; "
                          "return L.xt(L.vis[L.vis.length - 1].t); })()")
        page.mouse.move(box["x"] + x, box["y"] + box["height"] * 0.4)
        # the crosshair is drawn on the next animation frame
        page.evaluate("new Promise((r) => requestAnimationFrame(() => requestAnimationFrame(r)))")
        if t := chart_attr(page, "hoverT"):
            return int(t)
    raise AssertionError("the crosshair found no candle under the pointer")


def chart_attr(page: Any, name: str) -> str:
    """The chart canvas's `dataset[name]` ("" where unset)."""
    return str(page.evaluate(f"document.querySelector('{CHART}').dataset[{name!r}] ?? ''"))


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


def screenshot(page: Any, name: str) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    path = ARTIFACTS / name
    page.screenshot(path=str(path))
    print(f"screenshot: {path}")


def column(page: Any, testid: str, index: int) -> list[str]:
    """The text of cell `index` of every row with that data-testid, top to bottom."""
    return [str(t) for t in page.eval_on_selector_all(
        f"[data-testid={testid}]", f"rows => rows.map(r => r.cells[{index}].textContent)")]


def chart_geometry(page: Any) -> dict[str, Any]:
    """Where the chart drew its candles: plot width, bar width, centre of the first and last
    candle, and the colours of the pixels down the first candle's centre line."""
    return dict(page.evaluate("""() => {
        const c = nodetap.chart, L = c.layout;
        if (!L) return {};
        const dpr = window.devicePixelRatio || 1, n = L.vis.length, k = L.vis[0];
        const x0 = Math.round(L.x(0)), top = Math.floor(L.y(k.h)) - 1, bot = Math.ceil(L.y(k.l)) + 1;
        const px = c.ctx.getImageData(x0 * dpr, top * dpr, 1, (bot - top) * dpr).data;
        const colours = new Set();
        for (let i = 0; i < px.length; i += 4) colours.add(`${px[i]},${px[i + 1]},${px[i + 2]}`);
        return { plotW: L.plotW, barW: c.barW, first: L.x(0), last: L.x(n - 1), n, colours: [...colours],
                 candle: k };
    }"""))


def label_of(ms: int) -> str:
    """The time label of a first candle: "Jan 05 10:01"."""
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%b %d %H:%M")


CANDLE_COLOURS = {"38,166,154", "239,83,80"}  # up, down (chart.js C.up, C.down)


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


@contextmanager
def open_dashboard(browser: Any, server: ServerThread, fragment: str = "",
                   width: int = 1440) -> Iterator[Session]:
    page = browser.new_page(viewport={"width": width, "height": 900})
    s = Session(page, server)
    page.on("console", lambda m: s.problems.append(f"console.{m.type}: {m.text}")
            if m.type == "error" else None)
    page.on("pageerror", lambda e: s.problems.append(f"page error: {e}"))
    page.on("request", lambda r: None if r.url.startswith((server.url, server.ws_url, "data:"))
            else s.foreign.append(r.url))
    page.goto(f"{server.url}/{fragment}")
    try:
        yield s
    finally:
        page.close()


@pytest.fixture
def session(browser: Any, live_node: Path, serve: Callable[..., ServerThread]) -> Iterator[Session]:
    with with_dashboard(serve(live_node, keep_all=True, rules_file="")) as server:
        # the page opens on BTC when the coin list names it; before any trade is stored it takes
        # the first coin a feed reveals
        with httpx.Client(base_url=server.url) as http:
            wait_until(lambda: any(c["coin"] == "BTC" for c in http.get("/v1/coins").json()), 30,
                       "BTC among the stored coins")
        with open_dashboard(browser, server) as s:
            yield s


@pytest.mark.timeout(180)
def test_dashboard_draws_live_data(session: Session) -> None:
    page, hub = session.page, session.server.state.hub
    assert page.title().endswith("nodetap")

    # candles from the history, then from the live feed: candle messages arrive and the last
    # candle becomes the current minute
    wait_chart(page, "BTC", "1m")
    wait_js(page, f"Number({dataset('chart')}.updates) > 0 && Date.now() - {dataset('chart')}.lastT < 120000")
    assert page.get_attribute("[data-testid=ws-state]", "data-state") == "open"

    # the trades tape and the orders feed fill, newest first, capped, coloured by side: once more
    # than the cap has arrived and been drawn, exactly the cap is shown
    wait_js(page, "nodetap.orders.recent.length > 60 && !nodetap.orders.scheduled")
    assert page.locator("[data-testid=order-row]").count() == 50
    page.wait_for_selector("[data-testid=trade-row]", timeout=20_000)
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
    assert chart_attr(page, "timeLabels") != ""

    # the crosshair: the readout shows the candle under the pointer (the newest one: a minute
    # without an ETH trade is a slot without a candle, and a new minute moves them all left)
    hover_newest_candle(page)
    # the readout names the candle the crosshair is on (the one drawn last, should a minute
    # have begun since)
    wait_js(page, f"(() => {{ const t = Number({dataset('chart')}.hoverT); return t > 0 && "
                  "document.querySelector('[data-testid=ohlc-readout]').textContent"
                  ".startsWith(new Date(t).toISOString().slice(0, 16).replace('T', ' ')); })()")
    assert page.inner_text("[data-testid=ohlc-readout]").count(" O ") == 1
    screenshot(page, "dashboard-live.png")
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


# ------------------------------------------------------------------ archives (backfilled, not live)
def row_last_times(rows: list[dict[str, list[str]]], stream: str) -> str:
    """The "last event" cell of a stream's status row."""
    return next(r["last_time"][0] for r in rows if r["stream"][0] == stream)


@pytest.fixture
def archive_server(tmp_path: Path, serve: Callable[..., ServerThread]) -> Callable[..., ServerThread]:
    """archive_server(node, *more) -> a server over a DB `nodetap backfill` filled from those dirs,
    run as a user would: backfill, then serve from the end of the node's files."""

    def make(node: Path, *more: Path) -> ServerThread:
        db = tmp_path / "archive.duckdb"
        run_cli("backfill", str(node), *map(str, more), "--db", str(db), "--quiet", "--keep-all")
        return with_dashboard(serve(node, db=db, keep_all=True, rules_file="", start_from="end"))

    return make


@pytest.fixture
def sample_node(samples: Path, tmp_path: Path) -> Path:
    """A node dir of sample hours (tmp/samples/node), and tmp/samples/archive beside it; each
    file last written at the end of its hour, as in an archive."""
    for (stream, day, hour), name in SAMPLE_HOURS.items():
        f = tmp_path / "samples" / (stream if "/" in stream else f"node/{stream}") / "hourly" / day / hour
        f.parent.mkdir(parents=True, exist_ok=True)
        f.write_bytes((samples / name).read_bytes())
        written = datetime.strptime(f"{day} {hour}", "%Y%m%d %H").replace(tzinfo=UTC) + timedelta(hours=1)
        os.utime(f, (written.timestamp(), written.timestamp()))
    return tmp_path / "samples" / "node"


def expected_size(x: float, decimals: int) -> str:
    return f"{x:,.{decimals}f}"


def assert_chips_whole(page: Any) -> None:
    """Every chip of the pipeline panel's head is shown whole: inside the panel, text not cut."""
    cut = page.evaluate("""() => {
        const head = document.querySelector('.status-panel .panel-head').getBoundingClientRect();
        return [...document.querySelectorAll('[data-testid=status-chip]')].filter((c) => {
            const r = c.getBoundingClientRect();
            return c.scrollWidth > c.clientWidth || r.right > head.right + 0.5
                || r.bottom > head.bottom + 0.5;
        }).map((c) => c.textContent);
    }""")
    assert cut == []
    assert page.locator("[data-testid=status-chip]").count() >= 5


@pytest.mark.timeout(120)
def test_dashboard_shows_a_backfilled_archive_of_real_node_lines(
        browser: Any, sample_node: Path, archive_server: Callable[..., ServerThread]) -> None:
    """The real lines of ../shared/samples, months old: candles, time labels, the tape and the
    orders come from the stored data (no live batch will come), sizes keep their decimals."""
    archive = archive_server(sample_node, sample_node.parent / "archive")
    with archive as server, httpx.Client(base_url=server.url) as http:
        trades = http.get("/v1/trades", params={"coin": "BTC", "limit": 50}).json()
        orders = http.get("/v1/orders", params={"limit": 50}).json()
        universe = http.post("/info", json={"type": "meta"}).json()["universe"]
        meta = {a["name"]: a["szDecimals"] for a in universe}
        assert (len(trades), len(orders), meta["BTC"]) == (11, 50, 5)
        with open_dashboard(browser, server) as session:
            page = session.page
            # the window ends at BTC's last trade (2026-05-05 17:39), not at the browser's clock
            wait_chart(page, "BTC", "1m")
            assert chart_attr(page, "candles") == "1"
            geo = chart_geometry(page)
            assert CANDLE_COLOURS & set(geo["colours"]), geo  # the candle is painted where it is said to be
            assert geo["plotW"] * 0.3 < geo["first"] < geo["plotW"] * 0.7  # one candle: in the middle
            assert chart_attr(page, "timeLabels") == "May 05 17:39"

            # the tape and the orders: loaded over REST, in the server's order, sizes in BTC's
            # 5 size decimals (0.00013 BTC is not "0")
            wait_js(page, "document.querySelectorAll('[data-testid=trade-row]').length === 11")
            assert column(page, "trade-row", 2) == [expected_size(t["sz"], 5) for t in trades]
            assert column(page, "trade-row", 1) == [f"{t['px']:,.0f}" for t in trades]
            wait_js(page, "document.querySelectorAll('[data-testid=order-row]').length === 50")
            assert column(page, "order-row", 4) == [
                expected_size(o["sz"], 5) if o["sz"] == o["orig_sz"]
                else f"{expected_size(o['sz'], 5)}/{expected_size(o['orig_sz'], 5)}" for o in orders]
            assert "0" not in column(page, "trade-row", 2) + column(page, "order-row", 4)

            # the status: the last event with its date; an archive is not shown as lag
            wait_js(page, f"Number({dataset('status')}.polls) > 0")
            # the rows and the /v1/status answer they were drawn from, read at once
            shown = page.evaluate("""() => ({ body: nodetap.status, rows: [...document.querySelectorAll(
                '[data-testid=status-row]')].map(r => Object.fromEntries([...r.cells].map(
                c => [c.dataset.col, [c.textContent, c.className]])))})""")
            status = {s["stream"]: s for s in shown["body"]["streams"]}
            rows = shown["rows"]
            # the node's streams, and what `backfill` stored (archives, with their event times)
            assert sorted(r["stream"][0] for r in rows) == sorted(status) == [
                "backfill:node_fills_by_block", "backfill:node_fills_streaming",
                "backfill:node_order_statuses_streaming", "node_fills_streaming",
                "node_order_statuses_streaming"]
            assert {status[n]["mode"] for n in status if n.startswith("backfill:")} == {"archive"}
            assert row_last_times(rows, "backfill:node_fills_streaming") == "2026-05-05 17:39:16"
            for row in rows:
                s = status[row["stream"][0]]
                assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d|–", row["last_time"][0]), row
                if s.get("last_time"):
                    assert row["last_time"][0] == s["last_time"].replace("T", " ")[:19]
                mode = {"live": "live", "catching_up": "catching up", "archive": "archive"}
                assert row["mode"][0] == mode.get(s.get("mode"), "–")
                if s.get("mode") == "archive":
                    assert row["lag_seconds"][0] == "–" and "down" not in row["lag_seconds"][1], row
                for key in ("arrival_lines_per_s", "capacity_lines_per_s"):
                    assert (row[key][0] == "–") == (s.get(key) is None), (key, row, s)
            assert_chips_whole(page)
            screenshot(page, "dashboard-samples-btc.png")

            # a coin that traded on another day: its own last trade ends its window
            page.wait_for_selector("[data-testid=coin-select] option[value=AAVE]", state="attached")
            page.select_option("[data-testid=coin-select]", "AAVE")
            wait_chart(page, "AAVE", "1m")
            wait_js(page, f"{dataset('chart')}.history !== ''")
            assert (chart_attr(page, "candles"), chart_attr(page, "timeLabels")) == ("1", "Mar 15 00:00")
            wait_js(page, "document.querySelectorAll('[data-testid=trade-row]').length === 2")
            screenshot(page, "dashboard-samples-aave.png")
            session.assert_clean()


@pytest.mark.timeout(120)
def test_dashboard_spreads_an_hour_of_candles_with_time_labels(
        browser: Any, tmp_path: Path, archive_server: Callable[..., ServerThread]) -> None:
    """An hour and more of generated trades, backfilled long after: every candle of the window is
    drawn across the chart's width, labelled from the first candle on, every 5 minutes after."""
    node = tmp_path / "generated"
    generate(node, lines=6000, start=datetime(2026, 1, 5, 10, 0, tzinfo=UTC), events_per_block=0.2)
    with archive_server(node) as server, open_dashboard(browser, server, "#coin=ETH&interval=1m") as session:
        page = session.page
        wait_chart(page, "ETH", "1m")
        wait_js(page, f"{dataset('chart')}.history !== ''")
        n = int(chart_attr(page, "candles"))
        assert n == int(chart_attr(page, "history")) > 60
        geo = chart_geometry(page)
        assert geo["n"] == n
        assert CANDLE_COLOURS & set(geo["colours"]), str(geo)
        # not squeezed against the right edge: the candles span the plot but for a slot each side
        assert geo["first"] - geo["barW"] / 2 < geo["barW"] * 1.5
        assert geo["last"] + geo["barW"] / 2 > geo["plotW"] - geo["barW"] * 1.5
        labels = chart_attr(page, "timeLabels").split("|")
        assert labels[0] == label_of(geo["candle"]["t"]) == "Jan 05 10:01"  # the first candle's
        assert len(labels) >= 6
        assert all(re.fullmatch(r"1[01]:[0-5][05]", t) for t in labels[1:]), labels
        screenshot(page, "dashboard-generated-1m.png")

        # two candles at 1h: wide, in the middle, both labelled as the first is
        page.click("[data-testid=interval] button[data-interval='1h']")
        wait_chart(page, "ETH", "1h")
        wait_js(page, f"{dataset('chart')}.history !== ''")
        geo = chart_geometry(page)
        assert (geo["n"], geo["barW"]) == (2, 40)
        assert geo["first"] < geo["plotW"] / 2 < geo["last"]
        assert chart_attr(page, "timeLabels").split("|")[0] == label_of(geo["candle"]["t"]) == "Jan 05 10:00"
        screenshot(page, "dashboard-generated-1h.png")

        # sizes below 1e-4 keep their digits whatever decimals the coin is said to have
        # (a float's shortest form is "4e-05"); volumes use the coin's decimals
        sizes = page.evaluate("""async () => {
            const f = await import("./static/format.js");
            return [f.fmtSz("0.00004", 5), f.fmtSz(0.00004, 0), f.fmtSz(0.00004), f.fmtSz("0.0003", 5),
                    f.fmtSz(12345.5, 1), f.fmtSz(null, 5), f.fmtSize(0.00004, 5), f.fmtSize(0.00004),
                    f.fmtSize(44.75031, 4), f.fmtSize(12345.6, 2)];
        }""")
        assert sizes == ["0.00004", "0.00004", "0.00004", "0.00030", "12,345.5", "–", "0.00004", "0.00004",
                         "44.7503", "12.3k"]
        session.assert_clean()


@pytest.fixture
def gap_node(tmp_path: Path) -> Path:
    """Two stretches of generated trades with 16 minutes of nothing between them (a node stopped
    and started again): ETH has 1m candles up to 10:23 and again from 10:40, none between."""
    node = tmp_path / "gap"
    generate(node, lines=2000, start=datetime(2026, 1, 5, 10, 0, tzinfo=UTC), events_per_block=0.2)
    generate(node, lines=2000, start=datetime(2026, 1, 5, 10, 40, tzinfo=UTC), events_per_block=0.2, seed=8)
    return node


@pytest.mark.timeout(120)
def test_dashboard_draws_candles_at_their_time_so_a_gap_shows(
        browser: Any, gap_node: Path, archive_server: Callable[..., ServerThread]) -> None:
    """The x axis is time: the candles either side of a stretch with none are as far apart as the
    time between them, the empty slots say they have no candle, and HIP-3 sizes keep their
    coin's size decimals (meta asked per perp dex)."""
    with archive_server(gap_node) as server, httpx.Client(base_url=server.url) as http, \
            open_dashboard(browser, server, "#coin=ETH&interval=1m") as session:
        candles = http.post("/info", json={"type": "candleSnapshot", "req": {
            "coin": "ETH", "interval": "1m", "startTime": 0, "endTime": 2**53}}).json()
        times = [c["t"] for c in candles]
        before, after = next((a, b) for a, b in zip(times, times[1:], strict=False) if b - a > 60_000)
        assert (label_of(before), label_of(after)) == ("Jan 05 10:23", "Jan 05 10:40")
        page = session.page
        wait_chart(page, "ETH", "1m")
        wait_js(page, f"{dataset('chart')}.history !== ''")
        xs = page.evaluate("""([a, b]) => {
            const L = nodetap.chart.layout, i = (t) => L.vis.findIndex((k) => k.t === t);
            return { a: L.x(i(a)), b: L.x(i(b)), barW: nodetap.chart.barW, n: L.vis.length };
        }""", [before, after])
        assert xs["n"] == len(candles)
        assert xs["b"] - xs["a"] == pytest.approx((after - before) / 60_000 * xs["barW"])  # 17 slots
        labels = chart_attr(page, "timeLabels").split("|")
        assert "10:30" in labels  # the axis goes on through the gap
        screenshot(page, "dashboard-gap-1m.png")

        # the crosshair in the gap: no candle there, and the readout says so
        box = page.locator(CHART).bounding_box()
        assert box is not None
        page.mouse.move(box["x"] + (xs["a"] + xs["b"]) / 2, box["y"] + box["height"] * 0.4)
        readout = "document.querySelector('[data-testid=ohlc-readout]').textContent"
        wait_js(page, f"{readout}.includes('no candle')")
        assert chart_attr(page, "hoverT") == ""

        # km:USTECH's sizes in the tape: its 3 size decimals, from meta of dex "km"
        km = http.post("/info", json={"type": "meta", "dex": "km"}).json()["universe"]
        assert [(a["name"], a["szDecimals"]) for a in km] == [("km:USTECH", 3)]
        trades = http.get("/v1/trades", params={"coin": "km:USTECH", "limit": 50}).json()
        wait_js(page, "nodetap.state.szDecimals.get('km:USTECH') === 3")
        page.select_option("[data-testid=coin-select]", "km:USTECH")
        wait_chart(page, "km:USTECH", "1m")
        wait_js(page, f"document.querySelectorAll('[data-testid=trade-row]').length === {len(trades)}")
        assert column(page, "trade-row", 2) == [expected_size(t["sz"], 3) for t in trades]
        session.assert_clean()


@pytest.mark.timeout(120)
def test_dashboard_says_an_unknown_coin_and_interval(
        browser: Any, tmp_path: Path, archive_server: Callable[..., ServerThread]) -> None:
    """#coin=btc&interval=2m: the chart area says no trades or candles of btc are stored and
    offers BTC; the interval is said to be unknown, not silently replaced."""
    node = tmp_path / "generated"
    generate(node, lines=1000, start=datetime(2026, 1, 5, 10, 0, tzinfo=UTC), events_per_block=0.2)
    with archive_server(node) as server, open_dashboard(browser, server, "#coin=btc&interval=2m") as session:
        page = session.page
        note = page.wait_for_selector("[data-testid=chart-note]:not([hidden])", timeout=20_000)
        assert note is not None
        wait_js(page, "document.querySelector('[data-testid=chart-note-coin]') !== null")
        assert note.inner_text().split("\n") == ["unknown coin btc: no trades or candles of it are stored",
                                                  "show BTC"]
        assert any('unknown interval "2m"' in t and "showing 1m" in t
                   for t in page.locator("[data-testid=notice]").all_inner_texts())
        assert chart_attr(page, "interval") == "1m"
        screenshot(page, "dashboard-unknown-coin.png")
        page.click("[data-testid=chart-note-coin]")
        wait_chart(page, "BTC", "1m")
        assert page.is_hidden("[data-testid=chart-note]")
        assert page.input_value("[data-testid=coin-select]") == "BTC"


@pytest.mark.timeout(120)
def test_dashboard_fits_a_narrow_viewport(
        browser: Any, tmp_path: Path, archive_server: Callable[..., ServerThread]) -> None:
    """At 420 px: the OHLC readout is shown whole (it wraps) and the orders table scrolls
    sideways rather than being clipped."""
    node = tmp_path / "generated"
    generate(node, lines=1000, start=datetime(2026, 1, 5, 10, 0, tzinfo=UTC), events_per_block=0.2)
    with archive_server(node) as server, \
            open_dashboard(browser, server, "#coin=ETH&interval=1m", width=420) as session:
        page = session.page
        wait_chart(page, "ETH", "1m")
        wait_js(page, "document.querySelectorAll('[data-testid=order-row]').length > 0")
        wait_js(page, "document.querySelector('[data-testid=ohlc-readout]').textContent.includes(' n ')")
        fit = page.evaluate("""() => {
            const r = document.querySelector('[data-testid=ohlc-readout]');
            const head = r.parentElement.getBoundingClientRect(), box = r.getBoundingClientRect();
            const s = document.querySelector('.orders-panel .scroll');
            s.scrollLeft = s.scrollWidth;
            return { cut: r.scrollWidth > r.clientWidth + 1, inside: box.right <= head.right + 0.5,
                     wider: s.scrollWidth > s.clientWidth, scrolled: s.scrollLeft > 0 };
        }""")
        assert fit == {"cut": False, "inside": True, "wider": True, "scrolled": True}
        screenshot(page, "dashboard-narrow.png")
        session.assert_clean()


@pytest.mark.timeout(120)
def test_api_docs_page_works_offline_and_can_send_bodies(browser: Any, make_node_dir: Callable[..., Path],
                                                         serve: Callable[..., ServerThread],
                                                         tmp_path: Path) -> None:
    """/docs renders from this server alone (no CDN: a node host may have no internet), and the
    endpoints that take a body have one to fill in."""
    with serve(make_node_dir(lines=200)) as server:
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        foreign: list[str] = []
        page.on("request", lambda r: None if r.url.startswith((server.url, "data:"))
                else foreign.append(r.url))
        op = "#operations-default-run_sql_v1_sql_post"  # POST /v1/sql
        try:
            page.goto(f"{server.url}/docs")
            page.wait_for_selector(op, timeout=30_000)
            page.click(f"{op} .opblock-summary")
            page.click(f"{op} button.try-out__btn")
            body = page.wait_for_selector(f"{op} textarea.body-param__text")
            assert body is not None and "SELECT coin, count(*) AS trades" in body.input_value()
            page.click(f"{op} button.execute")
            page.wait_for_selector(f"{op} .live-responses-table .response-col_status")
            status = page.inner_text(f"{op} .live-responses-table .response .response-col_status")
            page.screenshot(path=str(tmp_path / "docs.png"), full_page=False)
        finally:
            page.close()
    assert foreign == []
    assert status.strip().startswith("200")
