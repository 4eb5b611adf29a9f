// An OHLCV candle chart drawn on a <canvas>: candles with wicks, volume bars, price and time
// axes, last-price line and a crosshair. Wheel zooms, drag pans, double-click resets.
// The x axis is time: each candle sits at its open time, one slot (barW px) per interval, so
// intervals with no candle (a gap or a stall, docs/candles.md) show as empty space.

import {
  INTERVAL_MS, el, fmtClock, fmtDay, fmtFixed, fmtPrice, fmtSize, fmtStamp, niceStep, stepDecimals,
} from "./format.js";

const C = {
  bg: "#0f1318", grid: "#1c232c", axis: "#8b949e", text: "#c9d1d9", cross: "#6e7681",
  up: "#26a69a", down: "#ef5350", upVol: "rgba(38,166,154,0.35)", downVol: "rgba(239,83,80,0.35)",
  tag: "#30363d",
};
const FONT = '11px ui-monospace, "SF Mono", Menlo, Consolas, "DejaVu Sans Mono", monospace';
const AXIS_W = 76;
const AXIS_H = 22;
const MIN_BAR = 3;
const MAX_BAR = 40;
const AUTO_MIN_BAR = 6; // fitting the width: no thinner than this, the older candles scroll off
const LABEL_GAP = 14; // px between two time labels
const TAG_H = 18; // height of a price tag on the axis
// time-axis label steps, from one minute to a week
const TIME_STEPS = [1, 2, 5, 10, 15, 30, 60, 120, 240, 360, 720, 1440, 2880, 10080].map((m) => m * 60_000);

function parseCandle(d) {
  return { t: Number(d.t), T: Number(d.T), o: +d.o, h: +d.h, l: +d.l, c: +d.c, v: +d.v, n: Number(d.n ?? 0) };
}

export class CandleChart {
  constructor(canvas, readout) {
    this.canvas = canvas;
    this.ctx = canvas.getContext("2d");
    this.readout = readout;
    this.candles = [];
    this.barW = 10; // px per interval
    this.autoWidth = true; // fit few candles to the width until the user zooms
    this.rightOffset = 0; // intervals scrolled off the right edge
    this.hover = null;
    this.drag = null;
    this.updates = 0;
    this.pending = false;
    this.layout = null;
    this.szDecimals = undefined; // the coin's size decimals, for volumes
    this.emptyText = null; // what an empty chart says; null: that it waits for candles
    new ResizeObserver(() => this.requestDraw()).observe(canvas);
    this.bindPointer();
  }

  reset(coin, interval, szDecimals) {
    this.candles = [];
    this.rightOffset = 0;
    this.updates = 0;
    this.szDecimals = szDecimals;
    this.emptyText = null;
    Object.assign(this.canvas.dataset, { coin, interval, candles: "0", lastT: "", updates: "0", history: "" });
    this.draw();
  }

  // What the chart says while it has no candle ("" for nothing, when the page says it instead).
  setEmptyText(text) {
    this.emptyText = text;
    this.requestDraw();
  }

  setSizeDecimals(szDecimals) {
    if (szDecimals === this.szDecimals) return;
    this.szDecimals = szDecimals;
    this.requestDraw();
  }

  // History from candleSnapshot. Live candles already received win when they have seen as
  // many trades (n grows within a candle), so a snapshot older than the feed never rolls back.
  setHistory(list) {
    const byT = new Map();
    for (const d of list) { const k = parseCandle(d); if (Number.isFinite(k.t)) byT.set(k.t, k); }
    for (const k of this.candles) {
      const h = byT.get(k.t);
      if (!h || k.n >= h.n) byT.set(k.t, k);
    }
    this.candles = [...byT.values()].sort((a, b) => a.t - b.t);
    this.canvas.dataset.history = String(list.length);
    this.requestDraw();
  }

  // One live candle: replaces the candle with the same open time, or appends a new one.
  upsert(d) {
    const k = parseCandle(d);
    if (!Number.isFinite(k.t)) return;
    const list = this.candles;
    const last = list[list.length - 1];
    if (!last || k.t > last.t) {
      list.push(k);
      if (this.rightOffset > 0 && last) this.rightOffset += (k.t - last.t) / this.iv(); // keep a panned view still
    } else if (k.t === last.t) {
      list[list.length - 1] = k;
    } else {
      let lo = 0;
      let hi = list.length - 1;
      while (lo < hi) { const mid = (lo + hi) >> 1; if (list[mid].t < k.t) lo = mid + 1; else hi = mid; }
      if (list[lo].t === k.t) list[lo] = k; else list.splice(lo, 0, k);
    }
    this.updates += 1;
    this.canvas.dataset.updates = String(this.updates);
    this.requestDraw();
  }

  last() {
    return this.candles[this.candles.length - 1] ?? null;
  }

  iv() {
    return INTERVAL_MS[this.canvas.dataset.interval] ?? 60_000;
  }

  // Interval slots from the first candle's to the last candle's, both included.
  span() {
    const n = this.candles.length;
    return n ? Math.round((this.candles[n - 1].t - this.candles[0].t) / this.iv()) + 1 : 0;
  }

  requestDraw() {
    if (this.pending) return;
    this.pending = true;
    requestAnimationFrame(() => { this.pending = false; this.draw(); });
  }

  bindPointer() {
    const cv = this.canvas;
    cv.addEventListener("mousemove", (e) => {
      const r = cv.getBoundingClientRect();
      this.hover = { x: e.clientX - r.left, y: e.clientY - r.top };
      if (this.drag) {
        const moved = Math.round((e.clientX - this.drag.x) / this.barW);
        this.rightOffset = Math.max(0, Math.min(this.span() - 1, this.drag.offset + moved));
      }
      this.requestDraw();
    });
    cv.addEventListener("mouseleave", () => { this.hover = null; this.drag = null; this.requestDraw(); });
    cv.addEventListener("mousedown", (e) => { this.drag = { x: e.clientX, offset: this.rightOffset }; });
    window.addEventListener("mouseup", () => { this.drag = null; });
    cv.addEventListener("dblclick", () => { this.rightOffset = 0; this.autoWidth = true; this.requestDraw(); });
    cv.addEventListener("wheel", (e) => {
      e.preventDefault();
      const f = e.deltaY < 0 ? 1.15 : 1 / 1.15;
      this.autoWidth = false;
      this.barW = Math.max(MIN_BAR, Math.min(MAX_BAR, this.barW * f));
      this.requestDraw();
    }, { passive: false });
  }

  resize() {
    const dpr = window.devicePixelRatio || 1;
    const w = this.canvas.clientWidth;
    const h = this.canvas.clientHeight;
    if (this.canvas.width !== Math.round(w * dpr) || this.canvas.height !== Math.round(h * dpr)) {
      this.canvas.width = Math.round(w * dpr);
      this.canvas.height = Math.round(h * dpr);
    }
    this.ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
    return { w, h };
  }

  draw() {
    const { w, h } = this.resize();
    const ctx = this.ctx;
    ctx.fillStyle = C.bg;
    ctx.fillRect(0, 0, w, h);
    ctx.font = FONT;
    ctx.textBaseline = "middle";

    const plotW = Math.max(10, w - AXIS_W);
    const plotH = Math.max(10, h - AXIS_H);
    const volH = Math.round(plotH * 0.18);
    const priceTop = 8;
    const priceH = plotH - volH - priceTop - 6;
    const iv = this.iv();
    if (this.autoWidth) this.barW = Math.max(AUTO_MIN_BAR, Math.min(MAX_BAR, plotW / (this.span() + 2)));
    const slots = Math.max(1, Math.floor(plotW / this.barW) - 1);
    // the slot at the right edge (its open time), and the oldest slot that fits to its left
    const endT = this.candles.length ? this.last().t - this.rightOffset * iv : 0;
    const startT = endT - (slots - 1) * iv;
    const vis = this.candles.filter((k) => k.t >= startT && k.t <= endT);
    const ds = this.canvas.dataset;
    ds.candles = String(vis.length);
    ds.lastT = this.candles.length ? String(this.last().t) : "";
    ds.timeLabels = "";

    ctx.strokeStyle = C.grid;
    ctx.beginPath();
    ctx.moveTo(plotW + 0.5, 0); ctx.lineTo(plotW + 0.5, plotH);
    ctx.moveTo(0, plotH + 0.5); ctx.lineTo(w, plotH + 0.5);
    ctx.stroke();

    if (!vis.length) {
      ctx.fillStyle = C.axis;
      ctx.textAlign = "center";
      const text = this.emptyText ?? (ds.coin ? `waiting for ${ds.coin} ${ds.interval} candles…` : "loading…");
      ctx.fillText(text, plotW / 2, plotH / 2);
      this.layout = null;
      this.showReadout(null);
      return;
    }

    let lo = Infinity;
    let hi = -Infinity;
    let maxV = 0;
    for (const k of vis) { lo = Math.min(lo, k.l); hi = Math.max(hi, k.h); maxV = Math.max(maxV, k.v); }
    if (hi === lo) { hi += Math.abs(hi) * 0.001 || 1; lo -= Math.abs(lo) * 0.001 || 1; }
    const pad = (hi - lo) * 0.06;
    lo -= pad; hi += pad;
    const y = (p) => priceTop + ((hi - p) / (hi - lo)) * priceH;
    // one empty slot at the right; candles that do not fill the width sit in its middle
    const used = Math.round((endT - vis[0].t) / iv) + 1;
    const rightPad = used < slots ? Math.max(this.barW, (plotW - used * this.barW) / 2) : this.barW;
    const xt = (t) => plotW - rightPad - ((endT - t) / iv + 0.5) * this.barW; // centre of t's slot
    const x = (i) => xt(vis[i].t);
    const volTop = plotH - volH;
    this.layout = { vis, x, xt, endT, y, lo, hi, plotW, plotH, priceTop, priceH };

    const lastK = this.last();
    const ly = Math.round(y(lastK.c)) + 0.5;
    const tagShown = ly > priceTop && ly < priceTop + priceH;
    this.drawPriceGrid(lo, hi, y, plotW, w, priceH, tagShown ? ly : null);
    this.drawTimeGrid(vis, xt, plotW, plotH, h);

    // volume, then wicks and bodies
    const bodyW = Math.max(1, Math.floor(this.barW * 0.7));
    vis.forEach((k, i) => {
      const up = k.c >= k.o;
      const cx = Math.round(x(i));
      if (maxV > 0) {
        const vh = Math.max(1, (k.v / maxV) * (volH - 2));
        ctx.fillStyle = up ? C.upVol : C.downVol;
        ctx.fillRect(cx - bodyW / 2, plotH - vh, bodyW, vh);
      }
      ctx.strokeStyle = up ? C.up : C.down;
      ctx.fillStyle = up ? C.up : C.down;
      ctx.beginPath();
      ctx.moveTo(cx + 0.5, Math.round(y(k.h)));
      ctx.lineTo(cx + 0.5, Math.round(y(k.l)));
      ctx.stroke();
      const top = Math.round(y(Math.max(k.o, k.c)));
      const bot = Math.round(y(Math.min(k.o, k.c)));
      ctx.fillRect(cx - Math.floor(bodyW / 2) + 0.5, top, bodyW, Math.max(1, bot - top));
    });
    ctx.fillStyle = C.axis;
    ctx.textAlign = "left";
    ctx.fillText(`vol ${fmtSize(maxV, this.szDecimals)}`, 6, volTop + 8);

    // last price line and tag
    const lastUp = lastK.c >= lastK.o;
    if (tagShown) {
      ctx.strokeStyle = lastUp ? C.up : C.down;
      ctx.setLineDash([3, 3]);
      ctx.beginPath(); ctx.moveTo(0, ly); ctx.lineTo(plotW, ly); ctx.stroke();
      ctx.setLineDash([]);
      this.tag(fmtPrice(lastK.c), plotW, ly, lastUp ? C.up : C.down, "#fff");
    }
    this.drawCrosshair();
  }

  // Grid lines and price labels; no label where the last-price tag (at tagY) would cover it.
  drawPriceGrid(lo, hi, y, plotW, w, priceH, tagY) {
    const ctx = this.ctx;
    const step = niceStep(hi - lo, Math.max(2, Math.floor(priceH / 48)));
    const decimals = stepDecimals(step);
    ctx.textAlign = "left";
    for (let p = Math.ceil(lo / step) * step; p <= hi; p += step) {
      const py = Math.round(y(p)) + 0.5;
      ctx.strokeStyle = C.grid;
      ctx.beginPath(); ctx.moveTo(0, py); ctx.lineTo(plotW, py); ctx.stroke();
      if (tagY !== null && Math.abs(py - tagY) < TAG_H) continue;
      ctx.fillStyle = C.axis;
      ctx.fillText(fmtFixed(p, decimals), plotW + 6, py);
    }
  }

  // Time labels, placed by time: the first visible candle's always (with its date), then the
  // first candle after intervals with none (where data resumes after a gap or a stall), then
  // round times (every `step`) between the first and the last visible candle, gaps included,
  // wherever they leave room.
  drawTimeGrid(vis, xt, plotW, plotH, h) {
    const ctx = this.ctx;
    const iv = this.iv();
    const step = TIME_STEPS.find((s) => s >= iv && (s / iv) * this.barW >= 90) ?? TIME_STEPS[TIME_STEPS.length - 1];
    const daily = iv >= 86_400_000;
    const first = vis[0].t;
    const text = (t) => {
      if (daily) return t === first ? `${fmtDay(t)} ${new Date(t).getUTCFullYear()}` : fmtDay(t);
      if (t === first) return `${fmtDay(t)} ${fmtClock(t, false)}`;
      return t % 86_400_000 === 0 ? fmtDay(t) : fmtClock(t, false);
    };
    const wanted = [first];
    for (let i = 1; i < vis.length; i += 1) {
      if (vis[i].t - vis[i - 1].t > iv) wanted.push(vis[i].t);
    }
    for (let t = Math.ceil(first / step) * step; t <= vis[vis.length - 1].t; t += step) wanted.push(t);
    const labels = [];
    for (const t of wanted) {
      const label = text(t);
      const w = ctx.measureText(label).width;
      const px = Math.round(xt(t)) + 0.5;
      // where it is drawn: whole, inside the plot
      const cx = Math.max(w / 2 + 2, Math.min(plotW - w / 2 - 2, px));
      if (labels.some((l) => l.t === t || Math.abs(l.cx - cx) < (l.w + w) / 2 + LABEL_GAP)) continue;
      labels.push({ t, px, cx, w, text: label });
    }
    labels.sort((p, q) => p.t - q.t);
    ctx.textAlign = "center";
    for (const { px, cx, text: label } of labels) {
      ctx.strokeStyle = C.grid;
      ctx.beginPath(); ctx.moveTo(px, 0); ctx.lineTo(px, plotH); ctx.stroke();
      ctx.fillStyle = C.axis;
      ctx.fillText(label, cx, plotH + (h - plotH) / 2);
    }
    this.canvas.dataset.timeLabels = labels.map((l) => l.text).join("|");
  }

  drawCrosshair() {
    const L = this.layout;
    const hv = this.hover;
    if (!L || !hv || hv.x < 0 || hv.x > L.plotW || hv.y < 0 || hv.y > L.plotH) {
      this.canvas.dataset.hoverT = "";
      this.showReadout(this.last());
      return;
    }
    const ctx = this.ctx;
    const iv = this.iv();
    // the slot under the pointer, within the visible candles' span; it may hold no candle
    const slot = Math.round((hv.x - L.xt(L.endT)) / this.barW);
    const t = Math.max(L.vis[0].t, Math.min(L.vis[L.vis.length - 1].t, L.endT + slot * iv));
    const k = L.vis.find((c) => c.t === t) ?? null;
    this.canvas.dataset.hoverT = k ? String(k.t) : "";
    const cx = Math.round(L.xt(t)) + 0.5;
    const cy = Math.round(hv.y) + 0.5;
    ctx.strokeStyle = C.cross;
    ctx.setLineDash([4, 4]);
    ctx.beginPath();
    ctx.moveTo(cx, 0); ctx.lineTo(cx, L.plotH);
    ctx.moveTo(0, cy); ctx.lineTo(L.plotW, cy);
    ctx.stroke();
    ctx.setLineDash([]);
    if (hv.y >= L.priceTop && hv.y <= L.priceTop + L.priceH) {
      const p = L.hi - ((hv.y - L.priceTop) / L.priceH) * (L.hi - L.lo);
      this.tag(fmtPrice(p), L.plotW, cy, C.tag, C.text);
    }
    const label = fmtStamp(t);
    ctx.font = FONT;
    const tw = ctx.measureText(label).width + 10;
    const tx = Math.max(0, Math.min(L.plotW - tw, cx - tw / 2));
    ctx.fillStyle = C.tag;
    ctx.fillRect(tx, L.plotH + 1, tw, AXIS_H - 2);
    ctx.fillStyle = C.text;
    ctx.textAlign = "center";
    ctx.fillText(label, tx + tw / 2, L.plotH + AXIS_H / 2);
    this.showReadout(k, t);
  }

  tag(text, plotW, py, bg, fg) {
    const ctx = this.ctx;
    ctx.fillStyle = bg;
    ctx.fillRect(plotW + 1, py - TAG_H / 2, AXIS_W - 1, TAG_H);
    ctx.fillStyle = fg;
    ctx.textAlign = "left";
    ctx.fillText(text, plotW + 6, py);
  }

  // The OHLCV of candle k; of slot t when it has no candle, that it has none.
  showReadout(k, t) {
    const r = this.readout;
    if (!r) return;
    r.replaceChildren();
    if (!k && t !== undefined) r.append(el("span", "muted", `${fmtStamp(t)}  no candle: no data for this interval`));
    if (!k) return;
    const cls = k.c >= k.o ? "up" : "down";
    const chg = k.o ? ((k.c - k.o) / k.o) * 100 : 0;
    r.append(el("span", "muted", `${fmtStamp(k.t)} `));
    for (const [name, val] of [["O", k.o], ["H", k.h], ["L", k.l], ["C", k.c]]) {
      r.append(el("span", "muted", ` ${name} `), el("span", cls, fmtPrice(val)));
    }
    r.append(el("span", cls, ` ${chg >= 0 ? "+" : ""}${chg.toFixed(2)}%`));
    r.append(el("span", "muted", " V "), el("span", "", fmtSize(k.v, this.szDecimals)));
    r.append(el("span", "muted", " n "), el("span", "", String(k.n)));
  }
}
