// The dashboard: wires the chart, the WebSocket feed, the trades tape, the orders feed and the
// pipeline status poll together. Coin and interval live in the URL hash (#coin=BTC&interval=1m).

import { CandleChart } from "./chart.js";
import { Feed } from "./feed.js";
import {
  INTERVAL_MS, el, fmtBytes, fmtClock, fmtFixed, fmtInt, fmtPrice, fmtSize, shortAddr, toMs,
} from "./format.js";

const ROWS_CAP = 50;
const STATUS_POLL_MS = 2_000;
const HISTORY_CANDLES = 1_000;
const $ = (id) => document.getElementById(id);

const state = { coin: null, interval: "1m", gen: 0, coins: new Set(), messages: 0, trades: 0 };
const chart = new CandleChart($("chart"), $("readout"));

// ------------------------------------------------------------------ rows (tape, orders)
// Newest first, at most `cap` rows; rows are built once per animation frame, not per message.
class RowFeed {
  constructor(tbody, cap, render, filter = () => true) {
    Object.assign(this, { tbody, cap, render, filter, pending: [], recent: [], scheduled: false });
  }

  push(items) {
    for (const it of items) {
      this.recent.push(it);
      if (this.filter(it)) this.pending.push(it);
    }
    if (this.recent.length > 4 * this.cap) this.recent.splice(0, this.recent.length - 4 * this.cap);
    if (this.pending.length > this.cap) this.pending.splice(0, this.pending.length - this.cap);
    if (!this.scheduled) {
      this.scheduled = true;
      requestAnimationFrame(() => this.flush());
    }
  }

  flush() {
    this.scheduled = false;
    const frag = document.createDocumentFragment();
    for (let i = this.pending.length - 1; i >= 0; i -= 1) frag.append(this.render(this.pending[i]));
    this.pending = [];
    this.tbody.prepend(frag);
    while (this.tbody.rows.length > this.cap) this.tbody.lastElementChild.remove();
  }

  // Rebuild from what was received lately, e.g. after the filter changed.
  refilter() {
    this.clear(false);
    this.push(this.recent.splice(0));
  }

  clear(forget = true) {
    this.tbody.replaceChildren();
    this.pending = [];
    if (forget) this.recent = [];
  }
}

function sideCell(side) {
  const buy = side === "B";
  return el("td", buy ? "up" : "down", buy ? "buy" : "sell");
}

const tape = new RowFeed($("trades-body"), ROWS_CAP, (t) => {
  const tr = el("tr", t.side === "B" ? "fresh buy" : "fresh sell");
  tr.dataset.testid = "trade-row";
  tr.dataset.side = t.side;
  tr.dataset.time = String(toMs(t.time));
  tr.title = `tid ${t.tid}  ${t.hash ?? ""}`;
  const px = +t.px;
  tr.append(el("td", "muted", fmtClock(toMs(t.time))), el("td", `r ${t.side === "B" ? "up" : "down"}`, fmtPrice(px)),
    el("td", "r", fmtSize(+t.sz)), sideCell(t.side));
  return tr;
});

const STATUS_CLASS = { open: "accent", filled: "up", triggered: "warn" };
const orders = new RowFeed($("orders-body"), ROWS_CAP, (u) => {
  const o = u.order ?? {};
  const tr = el("tr", "fresh");
  tr.dataset.testid = "order-row";
  tr.dataset.coin = o.coin;
  tr.title = `oid ${o.oid}  user ${u.user}`;
  const sz = o.origSz && o.origSz !== o.sz ? `${fmtSize(+o.sz)}/${fmtSize(+o.origSz)}` : fmtSize(+o.sz);
  const status = String(u.status ?? "");
  const cls = STATUS_CLASS[status] ?? (/Rejected$/.test(status) ? "down" : "muted");
  tr.append(el("td", "muted", fmtClock(toMs(u.statusTimestamp ?? o.timestamp))), el("td", "", o.coin),
    sideCell(o.side), el("td", "r", fmtPrice(+o.limitPx)), el("td", "r", sz),
    el("td", "muted", [o.orderType, o.tif].filter(Boolean).join(" ")), el("td", cls, status),
    el("td", "muted", shortAddr(u.user)));
  return tr;
}, (u) => !$("orders-this-coin").checked || u.order?.coin === state.coin);

$("orders-this-coin").addEventListener("change", () => orders.refilter());

// GET or POST returning JSON; errors carry the server's own message ({"error": ...}) when it sent one.
async function fetchJson(url, init = {}) {
  const res = await fetch(url, { cache: "no-store", ...init });
  const body = await res.json().catch(() => null);
  if (!res.ok) throw new Error(`${init.method ?? "GET"} /${url}: ${body?.error ?? `HTTP ${res.status}`}`);
  return body;
}

// ------------------------------------------------------------------ notices
function notice(text, kind = "info", ttlMs = 10_000) {
  const box = $("notices");
  const n = el("div", `notice ${kind}`);
  n.dataset.testid = kind === "error" ? "error" : "notice";
  const close = el("button", "x", "×");
  close.type = "button";
  close.addEventListener("click", () => n.remove());
  n.append(el("span", "", text), close);
  box.append(n);
  while (box.children.length > 4) box.firstElementChild.remove();
  if (ttlMs) setTimeout(() => n.remove(), ttlMs);
}

// ------------------------------------------------------------------ coin and interval
function addCoin(coin) {
  if (typeof coin !== "string" || !coin || state.coins.has(coin)) return;
  state.coins.add(coin);
  const opt = el("option", "", coin);
  opt.value = coin;
  $("coin").append(opt);
  if (!state.coin) select(coin, state.interval);
}

async function loadCoins() {
  let next = 60_000;
  try {
    const body = await fetchJson("v1/coins");
    const list = Array.isArray(body) ? body : body.coins ?? [];
    const names = list.map((c) => (typeof c === "string" ? c : c?.coin)).filter(Boolean);
    if (!state.coin && names.includes("BTC")) select("BTC", state.interval);
    names.forEach(addCoin);
    if (!names.length) next = 3_000; // nothing ingested yet; the feeds also reveal coins
  } catch {
    next = 5_000;
  }
  setTimeout(loadCoins, next);
}

function candleSub(coin, interval) {
  return { type: "candle", coin, interval };
}

function select(coin, interval) {
  if (!(interval in INTERVAL_MS)) interval = "1m";
  if (coin === state.coin && interval === state.interval) return;
  if (state.coin) feed.unsubscribe(candleSub(state.coin, state.interval));
  if (coin !== state.coin) {
    if (state.coin) feed.unsubscribe({ type: "trades", coin: state.coin });
    tape.clear();
    feed.subscribe({ type: "trades", coin });
    if ($("orders-this-coin").checked) orders.refilter();
  }
  Object.assign(state, { coin, interval });
  state.gen += 1;
  addCoin(coin);
  $("coin").value = coin;
  markInterval(interval);
  $("trades-coin").textContent = coin;
  $("chart-title").textContent = `${coin} · ${interval}`;
  history.replaceState(null, "", `#${new URLSearchParams({ coin, interval })}`);
  chart.reset(coin, interval);
  showLast();
  feed.subscribe(candleSub(coin, interval));
  loadHistory();
}

async function loadHistory() {
  const { coin, interval, gen } = state;
  const ms = INTERVAL_MS[interval];
  const endTime = Date.now() + ms;
  const req = { coin, interval, startTime: endTime - ms * HISTORY_CANDLES, endTime };
  try {
    const list = await fetchJson("info", {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify({ type: "candleSnapshot", req }),
    });
    if (gen !== state.gen) return; // the user switched meanwhile
    chart.setHistory(Array.isArray(list) ? list : []);
    showLast();
  } catch (e) {
    if (gen === state.gen) notice(`candleSnapshot ${coin} ${interval}: ${e.message}`, "error");
  }
}

function markInterval(interval) {
  for (const b of $("intervals").querySelectorAll("button")) {
    b.classList.toggle("on", b.dataset.interval === interval);
  }
}

function showLast() {
  const k = chart.last();
  const out = $("last-price");
  out.className = `last num ${k ? (k.c >= k.o ? "up" : "down") : ""}`;
  out.textContent = k ? fmtPrice(k.c) : "–";
  document.title = k ? `${fmtPrice(k.c)} ${state.coin} · nodetap` : "nodetap";
}

$("coin").addEventListener("change", (e) => select(e.target.value, state.interval));
$("intervals").addEventListener("click", (e) => {
  const b = e.target.closest("button[data-interval]");
  if (b && state.coin) select(state.coin, b.dataset.interval);
  else if (b) markInterval(state.interval = b.dataset.interval);
});
window.addEventListener("hashchange", () => {
  const h = new URLSearchParams(location.hash.slice(1));
  if (h.get("coin")) select(h.get("coin"), h.get("interval") ?? state.interval);
});

// ------------------------------------------------------------------ WebSocket
function onMessage(msg) {
  state.messages += 1;
  const data = msg?.data;
  switch (msg?.channel) {
    case "candle":
      if (data && data.s === state.coin && data.i === state.interval) { chart.upsert(data); showLast(); }
      break;
    case "trades":
      if (!Array.isArray(data)) break;
      data.forEach((t) => addCoin(t.coin));
      tape.push(data.filter((t) => t.coin === state.coin));
      state.trades += data.length;
      $("trades-count").textContent = `${fmtInt(state.trades)} received`;
      break;
    case "orders":
      if (!Array.isArray(data)) break;
      data.forEach((u) => addCoin(u.order?.coin));
      orders.push(data);
      break;
    case "lagged":
      notice(`this connection fell behind: the server dropped ${data?.dropped ?? "some"} messages`, "warn");
      break;
    case "error":
      notice(`server: ${typeof data === "string" ? data : JSON.stringify(data)}`, "error");
      break;
    default: // subscriptionResponse, pong
  }
}

function onWsState(s, info) {
  const pill = $("ws-state");
  pill.dataset.state = s;
  let text = s;
  if (s === "closed") text = `closed, retry in ${(info.retryInMs / 1000).toFixed(1)} s`;
  if (s === "connecting" && info.attempt) text = `reconnecting (#${info.attempt})`;
  $("ws-state-text").textContent = text;
  if (s === "open" && info.reconnect && state.coin) loadHistory(); // fill the candles missed meanwhile
}

function wsUrl() {
  const u = new URL("ws", location.href);
  u.protocol = u.protocol === "https:" ? "wss:" : "ws:";
  u.hash = "";
  return u.href;
}

const feed = new Feed(wsUrl(), onMessage, onWsState);
feed.subscribe({ type: "orders", coin: "*" });
window.nodetap = { feed, chart, state }; // for the browser console and the tests

let lastCount = 0;
setInterval(() => {
  const rate = state.messages - lastCount;
  lastCount = state.messages;
  const rtt = feed.rttMs === null ? "" : ` · ping ${feed.rttMs.toFixed(0)} ms`;
  $("msg-rate").textContent = `${fmtInt(rate)} msg/s${rtt}`;
}, 1_000);

// ------------------------------------------------------------------ pipeline status
const STATUS_COLUMNS = [
  ["stream", (s) => s.stream, ""],
  ["file", (s) => shortPath(s.file), ""],
  ["offset", (s) => fmtInt(s.offset), "r"],
  ["lag_bytes", (s) => fmtBytes(s.lag_bytes), "r"],
  ["lag_seconds", (s) => (s.lag_seconds == null ? "–" : fmtFixed(s.lag_seconds, 1)), "r"],
  ["lines_per_s", (s) => fmtFixed(s.lines_per_s, 1), "r"],
  ["lines", (s) => fmtInt(s.lines), "r"],
  ["rows", (s) => fmtInt(s.rows), "r"],
  ["rejects", (s) => fmtInt(s.rejects), "r"],
  ["gaps", (s) => fmtInt(s.gaps), "r"],
  ["skipped_bytes", (s) => fmtBytes(s.skipped_bytes), "r"],
  ["last_time", (s) => (s.last_time ? fmtClock(toMs(s.last_time)) : "–"), ""],
];

function shortPath(p) {
  return typeof p === "string" ? p.split("/").slice(-3).join("/") : "–";
}

function lagClass(s) {
  if (s.lag_seconds > 30 || s.lag_bytes > 64 << 20) return "down";
  if (s.lag_seconds > 5 || s.lag_bytes > 1 << 20) return "warn";
  return "";
}

function renderStatus(body) {
  const streams = Array.isArray(body) ? body : body?.streams ?? [];
  const tbody = $("status-body");
  const seen = new Set();
  for (const s of streams) {
    const name = String(s.stream ?? "?");
    seen.add(name);
    let tr = [...tbody.rows].find((r) => r.dataset.stream === name);
    if (!tr) {
      tr = el("tr");
      tr.dataset.testid = "status-row";
      tr.dataset.stream = name;
      for (const [key, , cls] of STATUS_COLUMNS) { const td = el("td", cls); td.dataset.col = key; tr.append(td); }
      tbody.append(tr);
    }
    STATUS_COLUMNS.forEach(([key, fmt], i) => {
      const td = tr.cells[i];
      const text = fmt(s);
      if (td.textContent !== text) {
        td.textContent = text;
        td.classList.remove("changed");
        void td.offsetWidth; // restart the highlight animation
        td.classList.add("changed");
      }
      if (key === "file") td.title = s.file ?? "";
    });
    tr.cells[3].classList.toggle("warn", lagClass(s) === "warn");
    tr.cells[3].classList.toggle("down", lagClass(s) === "down");
    tr.cells[4].classList.toggle("warn", lagClass(s) === "warn");
    tr.cells[4].classList.toggle("down", lagClass(s) === "down");
  }
  for (const tr of [...tbody.rows]) if (!seen.has(tr.dataset.stream)) tr.remove();

  // any other scalar fields of the status object (uptime, clients, ...) as small chips
  const chips = $("status-extra");
  chips.replaceChildren();
  chips.title = "";
  if (body && !Array.isArray(body)) {
    const flat = [];
    for (const [k, v] of Object.entries(body)) {
      if (k === "streams") continue;
      if (v !== null && typeof v === "object" && !Array.isArray(v)) {
        for (const [k2, v2] of Object.entries(v)) flat.push([`${k}.${k2}`, v2]);
      } else flat.push([k, v]);
    }
    for (const [k, v] of flat.filter(([, v]) => v !== null && typeof v !== "object").slice(0, 10)) {
      const chip = el("span", "chip");
      chip.append(el("span", "muted", `${k} `), el("span", "", typeof v === "number" ? fmtNum(v) : String(v)));
      chips.append(chip);
      chips.title += `${k}: ${v}\n`;
    }
  }
}

function fmtNum(v) {
  return Number.isInteger(v) ? fmtInt(v) : fmtFixed(v, 2);
}

async function pollStatus() {
  const table = $("status");
  try {
    renderStatus(await fetchJson("v1/status"));
    table.dataset.polls = String(Number(table.dataset.polls) + 1);
    $("status-note").textContent = `updated ${fmtClock(Date.now())}`;
    $("status-note").classList.remove("down");
  } catch (e) {
    $("status-note").textContent = e.message;
    $("status-note").classList.add("down");
  } finally {
    setTimeout(pollStatus, STATUS_POLL_MS);
  }
}

// ------------------------------------------------------------------ start
const initial = new URLSearchParams(location.hash.slice(1));
if (initial.get("interval") in INTERVAL_MS) state.interval = initial.get("interval");
markInterval(state.interval);
feed.connect();
if (initial.get("coin")) select(initial.get("coin"), state.interval);
else chart.reset("", state.interval);
loadCoins();
pollStatus();
