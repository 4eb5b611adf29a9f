// Number and time formatting shared by the chart and the tables. All times are UTC.

export const INTERVAL_MS = {
  "1m": 60_000, "5m": 300_000, "15m": 900_000, "1h": 3_600_000, "4h": 14_400_000, "1d": 86_400_000,
};

const MONTHS = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"];

// Hyperliquid prices carry at most 5 significant figures: 97012, 3401.5, 0.20012.
export function priceDecimals(p) {
  if (!Number.isFinite(p) || p === 0) return 2;
  const digits = Math.floor(Math.log10(Math.abs(p))) + 1;
  return Math.min(6, Math.max(0, 5 - digits));
}

export function fmtFixed(x, decimals) {
  if (!Number.isFinite(x)) return "–";
  return x.toLocaleString("en-US", { minimumFractionDigits: decimals, maximumFractionDigits: decimals });
}

export function fmtPrice(p, decimals = priceDecimals(p)) {
  return fmtFixed(p, decimals);
}

// Sizes and volumes: compact above ten thousand, otherwise up to 4 decimals.
export function fmtSize(v) {
  if (!Number.isFinite(v)) return "–";
  const a = Math.abs(v);
  if (a >= 1e9) return (v / 1e9).toFixed(2) + "B";
  if (a >= 1e6) return (v / 1e6).toFixed(2) + "M";
  if (a >= 1e4) return (v / 1e3).toFixed(1) + "k";
  return v.toLocaleString("en-US", { maximumFractionDigits: a >= 100 ? 1 : 4 });
}

export function fmtInt(n) {
  return Number.isFinite(n) ? Math.round(n).toLocaleString("en-US") : "–";
}

export function fmtBytes(n) {
  if (!Number.isFinite(n)) return "–";
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let i = 0;
  let x = n;
  while (Math.abs(x) >= 1024 && i < units.length - 1) { x /= 1024; i += 1; }
  return i === 0 ? `${x} B` : `${x.toFixed(1)} ${units[i]}`;
}

// Milliseconds from a number (ms) or an ISO string; NaN when neither.
export function toMs(x) {
  if (typeof x === "number") return x;
  if (typeof x === "string") {
    const iso = /[zZ]|[+-]\d\d:?\d\d$/.test(x) ? x : x + "Z"; // zone-less node times are UTC
    return Date.parse(iso);
  }
  return NaN;
}

export function fmtClock(ms, seconds = true) {
  if (!Number.isFinite(ms)) return "–";
  const s = new Date(ms).toISOString();
  return seconds ? s.slice(11, 19) : s.slice(11, 16);
}

export function fmtDay(ms) {
  const d = new Date(ms);
  return `${MONTHS[d.getUTCMonth()]} ${String(d.getUTCDate()).padStart(2, "0")}`;
}

export function fmtStamp(ms) {
  if (!Number.isFinite(ms)) return "–";
  return new Date(ms).toISOString().slice(0, 16).replace("T", " ");
}

export function shortAddr(a) {
  return typeof a === "string" && a.length > 12 ? `${a.slice(0, 6)}…${a.slice(-4)}` : String(a ?? "–");
}

// A 1, 2 or 5 times a power of ten, the nearest to range/target.
export function niceStep(range, target) {
  const raw = range / Math.max(1, target);
  const mag = 10 ** Math.floor(Math.log10(raw));
  const n = raw / mag;
  return (n < 1.5 ? 1 : n < 3 ? 2 : n < 7 ? 5 : 10) * mag;
}

export function stepDecimals(step) {
  return Math.max(0, -Math.floor(Math.log10(step) + 1e-9));
}

// Create an element with a class and text, the only way the tables build cells (no innerHTML).
export function el(tag, cls, text) {
  const e = document.createElement(tag);
  if (cls) e.className = cls;
  if (text !== undefined) e.textContent = text;
  return e;
}
