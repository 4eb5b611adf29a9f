// The pipeline status panel: one row per stream from /v1/status, and the other scalar fields of
// the answer (uptime, hub counters, ...) as chips. Fields a server does not send show "–".

import { el, fmtBytes, fmtDuration, fmtFixed, fmtInt, fmtStamp, toMs } from "./format.js";

const MODES = {
  live: ["live", "up", "caught up with the node's files, or nearly"],
  catching_up: ["catching up", "warn", "behind the node's files while the node is still writing"],
  archive: ["archive", "muted", "everything is read and the node's newest file has not grown for over an hour "
    + "(a backfilled or stopped node): not lag"],
  stopped: ["stopped", "down", "nothing reads this stream: its lane stopped on an error; restart nodetap"],
};

const rate = (x) => (typeof x !== "number" ? "–" : x < 100 ? fmtFixed(x, 1) : fmtInt(x));
const archived = (s) => s.mode === "archive";

// [field, format, class]; the header cells in index.html are in the same order
export const STATUS_COLUMNS = [
  ["stream", (s) => String(s.stream ?? "?"), ""],
  ["mode", (s) => (MODES[s.mode]?.[0] ?? (s.mode ? String(s.mode) : "–")), ""],
  ["file", (s) => shortPath(s.file), ""],
  ["offset", (s) => fmtInt(s.offset), "r"],
  ["lag_bytes", (s) => fmtBytes(s.lag_bytes), "r"],
  ["lag_seconds", (s) => (typeof s.lag_seconds !== "number" ? "–" : fmtDuration(s.lag_seconds)), "r"],
  ["arrival_lines_per_s", (s) => rate(s.arrival_lines_per_s), "r"],
  ["capacity_lines_per_s", (s) => rate(s.capacity_lines_per_s), "r"],
  ["lines", (s) => fmtInt(s.lines), "r"],
  ["rows", (s) => fmtInt(s.rows), "r"],
  ["rejects", (s) => fmtInt(s.rejects), "r"],
  ["gaps", (s) => fmtInt(s.gaps), "r"],
  ["skipped_bytes", (s) => fmtBytes(s.skipped_bytes), "r"],
  ["last_time", (s) => (s.last_time ? fmtStamp(toMs(s.last_time), true) : "–"), ""],
];

function shortPath(p) {
  return typeof p === "string" ? p.split("/").slice(-3).join("/") : "–";
}

// An archive is not behind: its lag is never coloured.
function lagClass(s) {
  if (archived(s)) return "";
  if (s.lag_seconds > 30 || s.lag_bytes > 64 << 20) return "down";
  if (s.lag_seconds > 5 || s.lag_bytes > 1 << 20) return "warn";
  return "";
}

function setText(td, text) {
  if (td.textContent === text) return;
  td.textContent = text;
  td.classList.remove("changed");
  void td.offsetWidth; // restart the highlight animation
  td.classList.add("changed");
}

function renderRow(tr, s) {
  STATUS_COLUMNS.forEach(([, fmt], i) => setText(tr.cells[i], fmt(s)));
  const cell = (key) => tr.cells[STATUS_COLUMNS.findIndex(([k]) => k === key)];
  cell("file").title = s.file ?? "";
  const mode = MODES[s.mode];
  const modeCell = cell("mode");
  for (const [, cls] of Object.values(MODES)) modeCell.classList.toggle(cls, mode?.[1] === cls);
  modeCell.classList.toggle("muted", !mode || mode[1] === "muted");
  modeCell.title = s.stopped_reason ?? (mode ? mode[2] : "");
  tr.dataset.mode = s.mode ?? "";
  const lag = lagClass(s);
  for (const key of ["lag_bytes", "lag_seconds"]) {
    const td = cell(key);
    td.classList.toggle("warn", lag === "warn");
    td.classList.toggle("down", lag === "down");
    td.classList.toggle("muted", archived(s));
  }
  cell("lag_seconds").title = archived(s) ? "archive: the node is not writing, so there is no lag" : "";
}

function renderChips(chips, body) {
  chips.replaceChildren();
  if (!body || Array.isArray(body)) return;
  const flat = [];
  for (const [k, v] of Object.entries(body)) {
    if (k === "streams") continue;
    if (v !== null && typeof v === "object" && !Array.isArray(v)) {
      for (const [k2, v2] of Object.entries(v)) flat.push([`${k}.${k2}`, v2]);
    } else flat.push([k, v]);
  }
  for (const [k, v] of flat.filter(([, x]) => x !== null && typeof x !== "object")) {
    const chip = el("span", "chip");
    chip.dataset.testid = "status-chip";
    const name = k === "uptime_s" ? "uptime" : k;
    const value = k === "uptime_s" ? fmtDuration(v)
      : typeof v === "number" ? (Number.isInteger(v) ? fmtInt(v) : fmtFixed(v, 2)) : String(v);
    chip.append(el("span", "muted", `${name} `), el("span", v === false ? "down" : "", value));
    chips.append(chip);
  }
}

export function renderStatus(body, tbody, chips) {
  const streams = Array.isArray(body) ? body : body?.streams ?? [];
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
    renderRow(tr, s);
  }
  for (const tr of [...tbody.rows]) if (!seen.has(tr.dataset.stream)) tr.remove();
  renderChips(chips, body);
}
