// The dashboard: wires the chart, the WebSocket feed, the trades tape, the orders feed and the
// pipeline status poll together. Coin and interval live in the URL hash (#coin=BTC&interval=1m).

import { CandleChart } from "./chart.js";
import { Feed } from "./feed.js";
import { INTERVAL_MS, el, fmtClock, fmtInt, fmtPrice, fmtStamp, fmtSz, shortAddr, toMs } from "./format.js";
import { RowFeed } from "./rows.js";
import { renderStatus } from "./status.js";

const ROWS_CAP = 50;
const STATUS_POLL_MS = 2_000;
const HISTORY_CANDLES = 1_000;
const META_RETRY_MS = 30_000;
const $ = (id) => document.getElementById(id);

const state = {
  coin: null, interval: "1m", gen: 0, coins: new Set(), coinsListed: false, messages: 0, trades: 0,
  unknownCoin: false, // the server stores no trade or candle of the coin shown
  lastTime: new Map(), // coin -> time (ms) of its newest trade seen: where its candle window ends
  szDecimals: new Map(), // coin -> size decimals, from the meta and spotMeta info answers
};
const chart = new CandleChart($("chart"), $("readout"));
const szOf = (coin) => state.szDecimals.get(coin);

// ------------------------------------------------------------------ rows (tape, orders)
function sideCell(side) {
  const buy = side === "B";
  return el("td", buy ? "up" : "down", buy ? "buy" : "sell");
}

function timeCell(ms) {
  const td = el("td", "muted", fmtClock(ms));
  td.title = fmtStamp(ms, true);
  return td;
}

function noteTime(coin, ms) {
  if (Number.isFinite(ms) && !(state.lastTime.get(coin) >= ms)) state.lastTime.set(coin, ms);
}

const tape = new RowFeed($("trades-body"), ROWS_CAP, {
  key: (t) => `${t.coin}|${t.tid}`,
  time: (t) => toMs(t.time),
  render: (t) => {
    const tr = el("tr", t.side === "B" ? "fresh buy" : "fresh sell");
    tr.dataset.testid = "trade-row";
    tr.dataset.side = t.side;
    tr.dataset.time = String(toMs(t.time));
    tr.title = `tid ${t.tid}  ${t.hash ?? ""}`;
    tr.append(timeCell(toMs(t.time)), el("td", `r ${t.side === "B" ? "up" : "down"}`, fmtPrice(+t.px)),
      el("td", "r", fmtSz(t.sz, szOf(t.coin))), sideCell(t.side));
    return tr;
  },
});

// /v1/orders rows (the table's columns) in the shape of the live feed's items
function orderItem(r) {
  return {
    order: { coin: r.coin, side: r.side, limitPx: r.limit_px, sz: r.sz, origSz: r.orig_sz, oid: r.oid,
      timestamp: r.order_time, orderType: r.order_type, tif: r.tif },
    status: r.status, statusTimestamp: r.time, user: r.user,
  };
}

const STATUS_CLASS = { open: "accent", filled: "up", triggered: "warn" };
const orders = new RowFeed($("orders-body"), ROWS_CAP, {
  key: (u) => `${u.order?.oid}|${u.status}|${toMs(u.statusTimestamp)}`,
  time: (u) => toMs(u.statusTimestamp ?? u.order?.timestamp),
  filter: (u) => !$("orders-this-coin").checked || u.order?.coin === state.coin,
  render: (u) => {
    const o = u.order ?? {};
    const tr = el("tr", "fresh");
    tr.dataset.testid = "order-row";
    tr.dataset.coin = o.coin;
    tr.title = `oid ${o.oid}  user ${u.user}`;
    const d = szOf(o.coin);
    const sz = o.origSz != null && +o.origSz !== +o.sz ? `${fmtSz(o.sz, d)}/${fmtSz(o.origSz, d)}` : fmtSz(o.sz, d);
    const status = String(u.status ?? "");
    const cls = STATUS_CLASS[status] ?? (/Rejected$/.test(status) ? "down" : "muted");
    tr.append(timeCell(toMs(u.statusTimestamp ?? o.timestamp)), el("td", "", o.coin),
      sideCell(o.side), el("td", "r", fmtPrice(+o.limitPx)), el("td", "r", sz),
      el("td", "muted", [o.orderType, o.tif].filter(Boolean).join(" ")), el("td", cls, status),
      el("td", "muted", shortAddr(u.user)));
    return tr;
  },
});

$("orders-this-coin").addEventListener("change", () => orders.refilter());

// GET or POST returning JSON; errors carry the server's own message ({"error": ...}) when it sent one.
async function fetchJson(url, init = {}) {
  const res = await fetch(url, { cache: "no-store", ...init });
  const body = await res.json().catch(() => null);
  if (!res.ok) {
    throw Object.assign(new Error(`${init.method ?? "GET"} /${url}: ${body?.error ?? `HTTP ${res.status}`}`),
      { status: res.status });
  }
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
  // the first coin a feed reveals, but only once the coin list had its say (it prefers BTC)
  if (!state.coin && state.coinsListed) select(coin, state.interval);
}

async function loadCoins() {
  let next = 60_000;
  try {
    const body = await fetchJson("v1/coins");
    const list = Array.isArray(body) ? body : body.coins ?? [];
    const names = list.map((c) => (typeof c === "string" ? c : c?.coin)).filter(Boolean);
    for (const c of list) if (c && typeof c === "object") noteTime(c.coin, toMs(c.last_time));
    if (names.some((c) => !state.szDecimals.has(c))) loadMeta();
    if (!state.coin && names.length) select(names.includes("BTC") ? "BTC" : names[0], state.interval);
    names.forEach(addCoin);
    if (state.unknownCoin) showUnknownCoin(); // the coin list may name a close match now
    if (!names.length) next = 3_000; // nothing ingested yet; the feeds also reveal coins
  } catch {
    next = 5_000;
  }
  state.coinsListed = true;
  setTimeout(loadCoins, next);
}

function candleSub(coin, interval) {
  return { type: "candle", coin, interval };
}

// A known interval: `interval` itself, else the one shown now (or 1m), with a notice that says so.
function knownInterval(interval) {
  if (interval in INTERVAL_MS) return interval;
  const shown = state.interval in INTERVAL_MS ? state.interval : "1m";
  notice(`unknown interval ${JSON.stringify(interval)}: the chart draws ${Object.keys(INTERVAL_MS).join(" ")}; `
    + `showing ${shown}`, "warn", 0);
  return shown;
}

// The chart says the coin is unknown (no trades or candles of it are stored) and offers the
// coin of another case where there is one (btc -> BTC), as the server's error does.
function showUnknownCoin() {
  const { coin } = state;
  const match = [...state.coins].find((c) => c !== coin && c.toLowerCase() === coin.toLowerCase());
  const note = $("chart-note");
  const line = el("span", "");
  line.append("unknown coin ", el("span", "coin", coin), ": no trades or candles of it are stored");
  note.replaceChildren(line);
  if (match) {
    const b = el("button", "", `show ${match}`);
    b.type = "button";
    b.dataset.testid = "chart-note-coin";
    b.addEventListener("click", () => select(match, state.interval));
    note.append(b);
  } else {
    note.append(el("span", "", "pick a coin from the list"));
  }
  note.hidden = false;
  chart.setEmptyText("");
}

function select(coin, interval) {
  interval = knownInterval(interval);
  if (coin === state.coin && interval === state.interval) return;
  const newCoin = coin !== state.coin;
  if (newCoin) {
    state.unknownCoin = false;
    $("chart-note").hidden = true;
  }
  if (state.coin) feed.unsubscribe(candleSub(state.coin, state.interval));
  if (newCoin) {
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
  chart.reset(coin, interval, szOf(coin));
  if (state.unknownCoin) chart.setEmptyText(""); // the note says why there is no candle
  showLast();
  feed.subscribe(candleSub(coin, interval));
  if (newCoin) loadTrades().then(loadHistory);
  else loadHistory();
}

// The coin's newest trades over REST, so the tape is filled before the next live batch; their
// time also tells where the coin's data ends (an archive, or a node catching up, ends before now).
async function loadTrades() {
  const { coin } = state;
  try {
    const list = await fetchJson(`v1/trades?${new URLSearchParams({ coin, limit: String(ROWS_CAP) })}`);
    if (coin !== state.coin || !Array.isArray(list)) return;
    list.forEach((t) => noteTime(coin, toMs(t.time)));
    tape.seed(list.reverse());
  } catch (e) {
    if (coin !== state.coin) return;
    notice(`trades of ${coin}: ${e.message}`, "error");
    if (e.status === 404) { state.unknownCoin = true; showUnknownCoin(); }
  }
}

async function loadOrders() {
  try {
    const list = await fetchJson(`v1/orders?${new URLSearchParams({ limit: String(ROWS_CAP) })}`);
    if (Array.isArray(list)) orders.seed(list.reverse().map(orderItem));
  } catch (e) {
    notice(`orders: ${e.message}`, "error");
  }
}

// Size decimals per coin from `meta` (perps), asked once per perp dex that `perpDexs` names (the
// first dex without `dex`, then `{"dex": "km"}` for HIP-3 coins such as km:USTECH, as the public
// API takes it), and `spotMeta` (a pair's base token). Coins none names show their sizes with
// the decimals they come with.
let metaAt = -Infinity;
async function loadMeta() {
  if (performance.now() - metaAt < META_RETRY_MS) return;
  metaAt = performance.now();
  const ask = (body) => fetchJson("info", {
    method: "POST", headers: { "content-type": "application/json" }, body: JSON.stringify(body),
  }).catch(() => null);
  const [dexs, spot] = await Promise.all([ask({ type: "perpDexs" }), ask({ type: "spotMeta" })]);
  const names = (Array.isArray(dexs) ? dexs : [null]).map((d) => d?.name).filter((n) => typeof n === "string");
  const perps = await Promise.all([ask({ type: "meta" }), ...names.map((dex) => ask({ type: "meta", dex }))]);
  for (const perp of perps) {
    for (const a of perp?.universe ?? []) if (Number.isInteger(a?.szDecimals)) state.szDecimals.set(a.name, a.szDecimals);
  }
  const tokens = new Map((spot?.tokens ?? []).map((t) => [t.index, t.szDecimals]));
  for (const u of spot?.universe ?? []) {
    const d = tokens.get(u?.tokens?.[0]);
    if (Number.isInteger(d)) state.szDecimals.set(u.name, d);
  }
  chart.setSizeDecimals(szOf(state.coin));
  tape.refilter();
  orders.refilter();
}

async function loadHistory() {
  const { coin, interval, gen } = state;
  const ms = INTERVAL_MS[interval];
  // the window ends at the coin's newest trade, not at this browser's clock (an archive, or a
  // node catching up, ends before now); the live feed brings the candles after it
  const endTime = Math.max(state.lastTime.get(coin) ?? Date.now(), chart.last()?.t ?? 0);
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
      data.forEach((t) => { addCoin(t.coin); noteTime(t.coin, toMs(t.time)); });
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
  if (s === "open" && info.reconnect) { // fill what was missed meanwhile
    loadOrders();
    if (state.coin) loadTrades().then(loadHistory);
  }
}

function wsUrl() {
  const u = new URL("ws", location.href);
  u.protocol = u.protocol === "https:" ? "wss:" : "ws:";
  u.hash = "";
  return u.href;
}

const feed = new Feed(wsUrl(), onMessage, onWsState);
feed.subscribe({ type: "orders", coin: "*" });
window.nodetap = { feed, chart, state, tape, orders }; // for the browser console and the tests

let lastCount = 0;
setInterval(() => {
  const rate = state.messages - lastCount;
  lastCount = state.messages;
  const rtt = feed.rttMs === null ? "" : ` · ping ${feed.rttMs.toFixed(0)} ms`;
  $("msg-rate").textContent = `${fmtInt(rate)} msg/s${rtt}`;
}, 1_000);

// ------------------------------------------------------------------ pipeline status
async function pollStatus() {
  const table = $("status");
  try {
    const body = await fetchJson("v1/status");
    renderStatus(body, $("status-body"), $("status-extra"));
    window.nodetap.status = body; // what the panel shows, for the tests
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
if (initial.get("interval")) state.interval = knownInterval(initial.get("interval"));
markInterval(state.interval);
feed.connect();
if (initial.get("coin")) select(initial.get("coin"), state.interval);
else chart.reset("", state.interval);
loadCoins();
loadMeta();
loadOrders();
pollStatus();
