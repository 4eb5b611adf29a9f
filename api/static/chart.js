// An OHLCV candle chart drawn on a <canvas>: candles with wicks, volume bars, price and time
// axes, last-price line and a crosshair. Wheel zooms, drag pans, double-click resets.

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
    this.barW = 10; // px per candle slot
    this.autoWidth = true; // fit few candles to the width until the user zooms
    this.rightOffset = 0; // candles scrolled off the right edge
    this.hover = null;
    this.drag = null;
    this.updates = 0;
    this.pending = false;
    this.layout = null;
    this.szDecimals = undefined; // the coin's size decimals, for volumes
    new ResizeObserver(() => this.requestDraw()).observe(canvas);
    this.bindPointer();
  }

  reset(coin, interval, szDecimals) {
    this.candles = [];
    this.rightOffset = 0;
    this.updates = 0;
    this.szDecimals = szDecimals;
    Object.assign(this.canvas.dataset, { coin, interval, candles: "0", lastT: "", updates: "0", history: "" });
    this.draw();
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
      if (this.rightOffset > 0) this.rightOffset += 1; // keep a panned view still
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
        this.rightOffset = Math.max(0, Math.min(this.candles.length - 1, this.drag.offset + moved));
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
    if (this.autoWidth) this.barW = Math.max(AUTO_MIN_BAR, Math.min(MAX_BAR, plotW / (this.candles.length + 2)));
    const slots = Math.max(1, Math.floor(plotW / this.barW) - 1);
    const end = this.candles.length - this.rightOffset;
    const vis = this.candles.slice(Math.max(0, end - slots), end);
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
      ctx.fillText(ds.coin ? `waiting for ${ds.coin} ${ds.interval} candles…` : "loading…", plotW / 2, plotH / 2);
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
    const rightPad = vis.length < slots ? Math.max(this.barW, (plotW - vis.length * this.barW) / 2) : this.barW;
    const x = (i) => plotW - rightPad - (vis.length - i - 0.5) * this.barW; // candle centre
    const volTop = plotH - volH;
    this.layout = { vis, x, y, lo, hi, plotW, plotH, priceTop, priceH };

    this.drawPriceGrid(lo, hi, y, plotW, w, priceH);
    this.drawTimeGrid(vis, x, plotW, plotH, h);

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
    const lastK = this.last();
    const ly = Math.round(y(lastK.c)) + 0.5;
    const lastUp = lastK.c >= lastK.o;
    if (ly > priceTop && ly < priceTop + priceH) {
      ctx.strokeStyle = lastUp ? C.up : C.down;
      ctx.setLineDash([3, 3]);
      ctx.beginPath(); ctx.moveTo(0, ly); ctx.lineTo(plotW, ly); ctx.stroke();
      ctx.setLineDash([]);
      this.tag(fmtPrice(lastK.c), plotW, ly, lastUp ? C.up : C.down, "#fff");
    }
    this.drawCrosshair();
  }

  drawPriceGrid(lo, hi, y, plotW, w, priceH) {
    const ctx = this.ctx;
    const step = niceStep(hi - lo, Math.max(2, Math.floor(priceH / 48)));
    const decimals = stepDecimals(step);
    ctx.textAlign = "left";
    for (let p = Math.ceil(lo / step) * step; p <= hi; p += step) {
      const py = Math.round(y(p)) + 0.5;
      ctx.strokeStyle = C.grid;
      ctx.beginPath(); ctx.moveTo(0, py); ctx.lineTo(plotW, py); ctx.stroke();
      ctx.fillStyle = C.axis;
      ctx.fillText(fmtFixed(p, decimals), plotW + 6, py);
    }
  }

  // Time labels: the first visible candle always (with its date), then candles on round times
  // (every `step`), the first candle after a gap in time, or any candle where none was labelled
  // for a while. Candles sit side by side whatever the time between them.
  drawTimeGrid(vis, x, plotW, plotH, h) {
    const ctx = this.ctx;
    const iv = INTERVAL_MS[this.canvas.dataset.interval] ?? 60_000;
    const step = TIME_STEPS.find((s) => s >= iv && (s / iv) * this.barW >= 90) ?? TIME_STEPS[TIME_STEPS.length - 1];
    const daily = iv >= 86_400_000;
    const stepPx = (step / iv) * this.barW;
    const labels = [];
    let last = null; // {px, w, day}
    vis.forEach((k, i) => {
      const px = Math.round(x(i)) + 0.5;
      const day = Math.floor(k.t / 86_400_000);
      let text;
      if (daily) text = last ? fmtDay(k.t) : `${fmtDay(k.t)} ${new Date(k.t).getUTCFullYear()}`;
      else if (last && day === last.day) text = fmtClock(k.t, false);
      else text = k.t % 86_400_000 === 0 && last ? fmtDay(k.t) : `${fmtDay(k.t)} ${fmtClock(k.t, false)}`;
      const w = ctx.measureText(text).width;
      if (last) {
        const room = px - last.px >= (last.w + w) / 2 + LABEL_GAP;
        const gapBefore = k.t - vis[i - 1].t > iv; // the first candle after a stretch with no trades
        if (!room || (k.t % step !== 0 && !gapBefore && px - last.px < Math.max(270, 1.5 * stepPx))) return;
      }
      last = { px, w, day };
      labels.push({ px, w, text });
    });
    ctx.textAlign = "center";
    for (const { px, w, text } of labels) {
      ctx.strokeStyle = C.grid;
      ctx.beginPath(); ctx.moveTo(px, 0); ctx.lineTo(px, plotH); ctx.stroke();
      ctx.fillStyle = C.axis;
      const cx = Math.max(w / 2 + 2, Math.min(plotW - w / 2 - 2, px)); // whole, inside the plot
      ctx.fillText(text, cx, plotH + (h - plotH) / 2);
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
    const n = L.vis.length;
    const i = Math.max(0, Math.min(n - 1, Math.round((hv.x - L.x(0)) / this.barW)));
    const k = L.vis[i];
    this.canvas.dataset.hoverT = String(k.t);
    const cx = Math.round(L.x(i)) + 0.5;
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
    const label = fmtStamp(k.t);
    ctx.font = FONT;
    const tw = ctx.measureText(label).width + 10;
    const tx = Math.max(0, Math.min(L.plotW - tw, cx - tw / 2));
    ctx.fillStyle = C.tag;
    ctx.fillRect(tx, L.plotH + 1, tw, AXIS_H - 2);
    ctx.fillStyle = C.text;
    ctx.textAlign = "center";
    ctx.fillText(label, tx + tw / 2, L.plotH + AXIS_H / 2);
    this.showReadout(k);
  }

  tag(text, plotW, py, bg, fg) {
    const ctx = this.ctx;
    ctx.fillStyle = bg;
    ctx.fillRect(plotW + 1, py - 9, AXIS_W - 1, 18);
    ctx.fillStyle = fg;
    ctx.textAlign = "left";
    ctx.fillText(text, plotW + 6, py);
  }

  showReadout(k) {
    const r = this.readout;
    if (!r) return;
    r.replaceChildren();
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
