"""The benchmark's output: the machine it ran on, Markdown tables, a JSON file."""

from __future__ import annotations

import os
import platform
import subprocess
from collections.abc import Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

import orjson


def _first(path: str, key: str) -> str:
    try:
        for line in Path(path).read_text().splitlines():
            if line.startswith(key):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return ""


def _version(package: str) -> str:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return ""


def _git_commit() -> str:
    try:
        out = subprocess.run(["git", "describe", "--always", "--dirty"], capture_output=True, text=True,
                             cwd=Path(__file__).resolve().parent, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return ""
    return out.stdout.strip() if out.returncode == 0 else ""


def machine() -> dict[str, Any]:
    mem_kb = _first("/proc/meminfo", "MemTotal").split()
    return {
        "cpu": _first("/proc/cpuinfo", "model name") or platform.processor(),
        "logical_cpus": os.cpu_count(),
        "memory_gib": round(int(mem_kb[0]) / 2**20, 1) if mem_kb else None,
        "os": platform.platform(),
        "python": platform.python_version(),
        "versions": {p: _version(p) for p in ("nodetap", "polars", "duckdb", "orjson", "pyarrow")},
        "commit": _git_commit(),
    }


def _k(x: float) -> str:
    if x >= 1e6:
        return f"{x / 1e6:.2f}M"
    return f"{x / 1e3:.0f}K" if x >= 1e4 or x == 0 else f"{x / 1e3:.1f}K"


def _row(cells: Sequence[object]) -> str:
    return "| " + " | ".join(str(c) for c in cells) + " |"


def _table(head: list[str], rows: list[list[object]]) -> list[str]:
    return [_row(head), _row(["---"] * len(head)), *(_row(r) for r in rows)]


def markdown(result: dict[str, Any]) -> str:
    m, d = result["machine"], result.get("data") or {}
    v = m["versions"]
    out = [f"nodetap bench, {result['date']}: {result['cores']} of {m['logical_cpus']} CPUs "
           f"({m['cpu']}), {m['memory_gib']} GiB, Python {m['python']}, polars {v['polars']}, "
           f"duckdb {v['duckdb']}, nodetap {v['nodetap']} {m['commit']}".rstrip(),
           f"command: {result['command']}"]
    if d:
        out.append(f"data: {d['order_lines']:,} order-status lines ({d['order_bytes'] / 1e6:,.1f} MB) "
                   f"+ {d['fill_lines']:,} fill lines ({d['fill_bytes'] / 1e6:,.1f} MB), plain, "
                   f"in the page cache; runs per measurement: {result['runs']} (median)")
    if result.get("throughput"):
        out += ["", *_table(
            ["order statuses", "lines/s", "MB/s", "seconds", "CPU s", "peak RSS MB", "rows kept",
             "vs replaced"],
            [[t["name"], _k(t["lines_per_s"]), f"{t['mb_per_s']:.0f}", f"{t['seconds']:.2f}",
              f"{t['cpu_s']:.2f}", f"{t['peak_rss_mb']:.0f}", f"{t['kept']:,}",
              f"{t['vs_replaced']:.2f}x" if t.get("vs_replaced") else "-"]
             for t in result["throughput"]])]
    if result.get("memory"):
        mm = result["memory"]
        out += ["", *_table(
            ["memory", "backlog MB", "limit MB", "batch MB", "skipped MB", "lines ingested", "seconds",
             "peak RSS MB"],
            [[mm["name"], f"{mm['backlog_bytes'] / 1e6:.0f}", f"{mm['max_backlog_bytes'] / 1e6:.1f}",
              f"{mm['batch_max_bytes'] / 1e6:.1f}",
              f"{mm['skipped_bytes'] / 1e6:.0f}", f"{mm['lines']:,}", f"{mm['seconds']:.2f}",
              f"{mm['peak_rss_mb']:.0f}"]])]
    if result.get("latency"):
        out += ["", *_table(
            ["latency, fill written → trade on /ws", "orders/s", "fills/s", "written lines/s",
             "trades counted/received/written", "p50 ms", "p99 ms", "max ms", "server CPU s",
             "server peak RSS MB"],
            [[x["name"], _k(x["order_rate"]), _k(x["fill_rate"]), _k(x["written_lines_per_s"]),
              f"{x['trades_counted']:,}/{x['trades_received']:,}/{x['trades_written']:,}",
              f"{x['p50_ms']:.0f}", f"{x['p99_ms']:.0f}", f"{x['max_ms']:.0f}",
              f"{x['server_cpu_s']:.1f}", f"{x['server_peak_rss_mb']:.0f}"]
             for x in result["latency"]])]
    return "\n".join(out) + "\n"


def write_json(path: Path, result: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(orjson.dumps(result, option=orjson.OPT_INDENT_2))
