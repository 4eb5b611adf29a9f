"""`nodetap bench`: throughput, memory and latency, in one run, on the same data.

The command pins its CPUs first, then checks every flag, then writes files: the data set
(`data`), the throughput rows (each in a process of its own, `measure`), the memory row
(`memory`) and the latency rows (`latency`), and finally the report (`report`).
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

PARTS = ("throughput", "memory", "latency")
DEFAULT_RULES = Path("data/rules.toml")


class BenchError(ValueError):
    """`nodetap bench` cannot run as asked; the message names the flag."""


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--mb", type=int, default=1000, help="size of the simulated node dir (MB)")
    p.add_argument("--dir", type=Path, default=Path(tempfile.gettempdir()) / "nodetap-bench",
                   help="where the data is generated once and reused, and runs write their files")
    p.add_argument("--runs", type=int, default=1, help="runs per throughput measurement (median)")
    p.add_argument("--cores", type=int, help="pin the benchmark and its processes to N CPUs")
    p.add_argument("--only", default=",".join(PARTS), help="comma-separated: " + ", ".join(PARTS))
    p.add_argument("--rates", default="20000,100000,315000",
                   help="latency: lines/s of order statuses plus fills (the simulator's mix)")
    p.add_argument("--fills-under-load", default="20000:300000", metavar="FILLS:ORDERS",
                   help="latency: fill lines/s alone, then beside ORDERS order-status lines/s; "
                        "'none' to skip")
    p.add_argument("--seconds", type=float, default=10.0, help="latency: measured seconds per rate")
    p.add_argument("--warmup", type=float, default=3.0, help="latency: seconds written before measuring")
    p.add_argument("--burst-ms", type=float, default=70.0, help="latency: ms of blocks written at once")
    p.add_argument("--quiet", type=float, default=5.0,
                   help="latency: the feed is done when no trade came for this many seconds after the "
                        "writer stopped (trades written before a coin's subscription never come)")
    p.add_argument("--rules", type=Path,
                   help="orders rules for nodetap and the replaced approach (default: data/rules.toml "
                        "when present, else the built-in rules; '' for the built-in rules)")
    p.add_argument("--json", type=Path, help="write every number here (default: DIR/bench.json)")


def pin(cores: int | None) -> list[int]:
    """Restrict this process (and so every process it starts) to `cores` CPUs; the CPUs used."""
    available = sorted(os.sched_getaffinity(0))
    if cores is None:
        return available
    if not 1 <= cores <= len(available):
        raise BenchError(f"--cores {cores}: this process may use {len(available)} CPUs "
                         f"({','.join(map(str, available))})")
    os.sched_setaffinity(0, available[:cores])
    return available[:cores]


def _parts(only: str) -> set[str]:
    parts = {x.strip() for x in only.split(",") if x.strip()}
    unknown = parts - set(PARTS)
    if unknown or not parts:
        raise BenchError(f"--only {only!r}: choose from {', '.join(PARTS)}")
    return parts


def _rates(text: str, flag: str) -> list[float]:
    try:
        rates = [float(x) for x in text.split(",") if x.strip()]
    except ValueError as err:
        raise BenchError(f"{flag} {text!r}: expected numbers of lines/s, comma-separated") from err
    if any(r <= 0 for r in rates):
        raise BenchError(f"{flag} {text!r}: rates must be positive")
    return rates


def _rules(flag: Path | None) -> Path | None:
    """The rules file to use, None for the built-in rules."""
    if flag is None:
        return DEFAULT_RULES.resolve() if DEFAULT_RULES.exists() else None
    if str(flag) in ("", "."):
        return None
    if not flag.is_file():
        raise BenchError(f"--rules {flag}: no such file")
    from etl.filters import load_rules

    load_rules(flag)  # a bad file fails here, with the key at fault, not in a measurement
    return flag.resolve()


def _rules_name(rules: Path | None) -> str:
    if rules is None:
        return "built-in rules"
    try:
        return str(rules.relative_to(Path.cwd()))
    except ValueError:
        return str(rules)


def _log(msg: str) -> None:
    print(f"bench: {msg}", file=sys.stderr, flush=True)


def throughput(data: Any, work: Path, runs: int, cpus: list[int],
               rules: Path | None) -> list[dict[str, Any]]:
    from etl.bench.measure import run_child
    from etl.simulate import ORDER_STREAM

    files = [str(f) for f in data.order_files]
    rules_arg = str(rules) if rules else ""
    rules_name = _rules_name(rules)
    workers = min(32, len(cpus) + 4)  # ThreadPoolExecutor's own default for this many CPUs
    plans: list[tuple[str, str, dict[str, Any]]] = [
        (f"nodetap, {rules_name}", "nodetap", {"keep_all": False}),
        ("nodetap, keep-all", "nodetap", {"keep_all": True}),
        (f"replaced: orjson per line, {workers} threads, {rules_name} in Python", "replaced",
         {"files": files, "rules": rules_arg, "workers": workers}),
        ("DuckDB read_json into a typed table", "duckdb", {"files": files, "threads": len(cpus)}),
    ]
    results: dict[str, list[dict[str, Any]]] = {name: [] for name, _, _ in plans}
    for i in range(runs):  # interleaved, so that a noisy minute hits every measurement alike
        for name, kind, params in plans:
            run_dir = work / "runs" / f"{kind}-{len(results[name])}"
            shutil.rmtree(run_dir, ignore_errors=True)
            run_dir.mkdir(parents=True)
            p = {"node": str(data.node), "db": str(run_dir / "bench.duckdb"), "backlog": "keep",
                 "rules": rules_arg, "streams": [ORDER_STREAM], **params}
            try:
                r = run_child(kind, p)
            finally:
                shutil.rmtree(run_dir, ignore_errors=True)
            results[name].append(r)
            _log(f"{name}, run {i + 1}/{runs}: {data.order_lines / r['seconds'] / 1e3:,.0f}K lines/s, "
                 f"{r['cpu_s']:.1f} CPU s, peak RSS {r['peak_rss_mb']:.0f} MB")
    out = []
    for name, kind, params in plans:
        rates = [data.order_lines / r["seconds"] for r in results[name]]
        pick = results[name][rates.index(statistics.median_low(rates))]
        if pick["lines"] != data.order_lines:
            _log(f"warning: {name} counted {pick['lines']} lines, the files hold {data.order_lines}")
        out.append({
            "name": name, "kind": kind, "keep_all": params.get("keep_all"), **pick,
            "lines_per_s": data.order_lines / pick["seconds"],
            "mb_per_s": data.order_bytes / pick["seconds"] / 1e6, "runs_lines_per_s": rates,
        })
    base = next(t for t in out if t["kind"] == "replaced")
    for t in out:
        t["vs_replaced"] = t["lines_per_s"] / base["lines_per_s"]
    if out[0]["kept"] != base["kept"]:
        _log(f"warning: nodetap kept {out[0]['kept']} rows, the replaced approach {base['kept']}")
    return out


def scenarios(args: argparse.Namespace) -> list[Any]:
    """The latency scenarios the flags ask for (checked before anything runs)."""
    from etl.bench import latency as lat

    out = [lat.mixed(r) for r in _rates(args.rates, "--rates")]
    text = args.fills_under_load.strip()
    if text.lower() not in ("", "none"):
        try:
            fills, orders = (float(x) for x in text.split(":"))
        except ValueError as err:
            raise BenchError(f"--fills-under-load {text!r}: expected FILLS:ORDERS lines/s, "
                             "e.g. 20000:300000") from err
        if fills <= 0 or orders <= 0:
            raise BenchError(f"--fills-under-load {text!r}: rates must be positive")
        out += lat.fills_under_load(fills, orders)
    return out


def latency(scenarios: list[Any], args: argparse.Namespace, work: Path,
            rules: Path | None) -> list[dict[str, Any]]:
    from etl.bench import latency as lat

    out = []
    for i, sc in enumerate(scenarios):
        run_dir = work / "runs" / f"latency-{i}"
        shutil.rmtree(run_dir, ignore_errors=True)
        run_dir.mkdir(parents=True)
        try:
            r = lat.measure(sc, run_dir, seconds=args.seconds, warmup=args.warmup,
                            burst_ms=args.burst_ms, quiet_s=args.quiet, rules=rules)
        finally:
            shutil.rmtree(run_dir, ignore_errors=True)
        _log(f"latency {sc.name}: p50 {r['p50_ms']:.0f} ms, p99 {r['p99_ms']:.0f} ms, "
             f"max {r['max_ms']:.0f} ms, {r['trades_received']}/{r['trades_written']} trades")
        out.append(r)
    return out


def main(args: argparse.Namespace) -> int:
    cpus = pin(args.cores)  # first: every process and thread pool started later inherits it
    parts = _parts(args.only)
    if args.runs < 1 or args.mb < 1 or args.seconds <= 0 or args.warmup < 0:
        raise BenchError("--runs, --mb and --seconds must be positive, --warmup not negative")
    from etl.bench import memory, report
    from etl.bench.data import prepare

    rules = _rules(args.rules)
    planned = scenarios(args) if "latency" in parts else []
    work = args.dir.resolve()  # every flag is checked: from here on, files are written
    work.mkdir(parents=True, exist_ok=True)
    if args.cores:  # children see the pinned CPUs through their affinity; Polars is told as well
        os.environ["POLARS_MAX_THREADS"] = str(len(cpus))
    _log(f"cores {len(cpus)} (CPUs {','.join(map(str, cpus))}), rules {rules or 'built-in'}, dir {work}")
    result: dict[str, Any] = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"), "machine": report.machine(),
        "cores": len(cpus), "cpus": cpus, "runs": args.runs, "rules": str(rules) if rules else "built-in",
        "command": " ".join(["nodetap", *sys.argv[1:]]) if sys.argv[1:2] == ["bench"] else "nodetap bench",
        "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items() if k != "func"},
    }
    if parts & {"throughput", "memory"}:
        data = prepare(work, args.mb)
        result["data"] = data.summary()
        if "throughput" in parts:
            result["throughput"] = throughput(data, work, args.runs, cpus, rules)
        if "memory" in parts:
            result["memory"] = memory.measure(data, work)
            _log(f"memory: peak RSS {result['memory']['peak_rss_mb']:.0f} MB")
    if "latency" in parts:
        result["latency"] = latency(planned, args, work, rules)
    path = args.json or work / "bench.json"
    report.write_json(path, result)
    print(report.markdown(result), end="")
    _log(f"every number: {path}")
    return 0
