// Number and time formatting shared by the chart and the tables. All times are UTC.

// The intervals the chart draws: the server's fixed-width ones from a minute up (etl/candles.py);
// the buttons offer six, the URL (#interval=30m) takes any of them.
export const INTERVAL_MS = {
  "1m": 60_000, "3m": 180_000, "5m": 300_000, "15m": 900_000, "30m": 1_800_000, "1h": 3_600_000,
  "2h": 7_200_000, "4h": 14_400_000, "8h": 28_800_000, "12h": 43_200_000, "1d": 86_400_000,
  "3d": 259_200_000, "1w": 604_800_000,
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

// Decimal places written in `x` (a decimal string such as "0.00004", or a number), at most 8.
export function ownDecimals(x) {
  if (typeof x === "string" && /^-?\d+(\.\d+)?$/.test(x)) return Math.min(8, (x.split(".")[1] ?? "").length);
  const v = Math.abs(Number(x));
  if (!Number.isFinite(v)) return 0;
  for (let d = 0; d < 8; d += 1) {
    const scaled = v * 10 ** d;
    if (Math.abs(scaled - Math.round(scaled)) < 1e-9 * Math.max(1, scaled)) return d;
  }
  return 8;
}

// A trade or order size: the coin's size decimals (szDecimals) where known, more where the
// value itself has more (a size is never cut to "0"), thousands separated.
export function fmtSz(x, szDecimals) {
  const v = Number(x);
  if (x === null || x === undefined || x === "" || !Number.isFinite(v)) return "–";
  const own = ownDecimals(x);
  const min = Number.isInteger(szDecimals) ? Math.min(8, szDecimals) : 0;
  return v.toLocaleString("en-US", { minimumFractionDigits: min, maximumFractionDigits: Math.max(min, own) });
}

// Volumes (sums of sizes): compact above ten thousand, otherwise the coin's size decimals
// (four significant figures for small volumes of a coin whose decimals are not known).
export function fmtSize(v, szDecimals) {
  if (!Number.isFinite(v)) return "–";
  const a = Math.abs(v);
  if (a >= 1e9) return (v / 1e9).toFixed(2) + "B";
  if (a >= 1e6) return (v / 1e6).toFixed(2) + "M";
  if (a >= 1e4) return (v / 1e3).toFixed(1) + "k";
  if (Number.isInteger(szDecimals)) return fmtFixed(v, Math.min(8, szDecimals));
  if (a === 0) return "0";
  const d = Math.min(8, Math.max(a >= 100 ? 1 : 2, 3 - Math.floor(Math.log10(a))));
  return v.toLocaleString("en-US", { maximumFractionDigits: d });
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

// "2026-05-05 17:39" (minutes) or "2026-05-05 17:39:16" (seconds), UTC
export function fmtStamp(ms, seconds = false) {
  if (!Number.isFinite(ms)) return "–";
  return new Date(ms).toISOString().slice(0, seconds ? 19 : 16).replace("T", " ");
}

// A duration in the largest units that matter: "0.3 s", "42 s", "3 m 05 s", "5 h 02 m", "260 d 4 h"
export function fmtDuration(s) {
  if (!Number.isFinite(s)) return "–";
  const t = Math.max(0, Math.round(s));
  const pad = (n) => String(n).padStart(2, "0");
  if (s < 10) return `${Math.max(0, s).toFixed(1)} s`;
  if (t < 60) return `${t} s`;
  if (t < 3600) return `${Math.floor(t / 60)} m ${pad(t % 60)} s`;
  if (t < 86_400) return `${Math.floor(t / 3600)} h ${pad(Math.floor(t / 60) % 60)} m`;
  return `${Math.floor(t / 86_400)} d ${Math.floor(t / 3600) % 24} h`;
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
