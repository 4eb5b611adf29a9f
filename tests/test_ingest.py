"""End to end: the real pipeline and the real `nodetap ingest` on node dirs that keep growing."""

from __future__ import annotations

import os
import random
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import lz4.frame
import orjson
import polars as pl
import pytest

from etl.config import Settings
from etl.pipeline import Pipeline, status_file
from etl.rejectlog import RejectsLog
from etl.store import Store
from tests.conftest import ROOT, query, run_cli, wait_for

ORDERS = "node_order_statuses"
FILLS = "node_fills"


def split_into_hours(src: Path, dst: Path, hours: int = 3) -> dict[str, list[bytes]]:
    """Spread a generated node dir's lines over `hours` hour files per stream (content for
    a writer to replay); returns stream -> [content of each hour]."""
    out = {}
    for stream_dir in sorted(p for p in src.iterdir() if p.is_dir()):
        data = b"".join(p.read_bytes() for p in sorted((stream_dir / "hourly").rglob("*"),
                                                        key=lambda p: (p.parent.name, int(p.name)))
                        if p.is_file())
        lines = data.splitlines(keepends=True)
        per = -(-len(lines) // hours)
        out[stream_dir.name] = [b"".join(lines[i * per:(i + 1) * per]) for i in range(hours)]
        (dst / stream_dir.name / "hourly" / "20260105").mkdir(parents=True, exist_ok=True)
    return out


def replay(dst: Path, content: dict[str, list[bytes]], seed: int = 1, pause: float = 0.002,
           chunk: tuple[int, int] = (500, 40_000)) -> threading.Thread:
    """A thread that appends the content like a node: arbitrary chunk boundaries (mid-line
    included), hour after hour, all streams interleaved."""
    rng = random.Random(seed)

    def run() -> None:
        for hour in range(len(next(iter(content.values())))):
            pos = dict.fromkeys(content, 0)
            while any(pos[s] < len(content[s][hour]) for s in content):
                for s, hours in content.items():
                    data = hours[hour]
                    if pos[s] >= len(data):
                        continue
                    n = rng.randint(*chunk)
                    with open(dst / s / "hourly" / "20260105" / str(10 + hour), "ab") as f:
                        f.write(data[pos[s]:pos[s] + n])
                    pos[s] += n
                time.sleep(pause)

    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t


def source_keys(content: dict[str, list[bytes]]) -> tuple[list[int], list[tuple[int, int]]]:
    oids = [orjson.loads(x)["order"]["oid"] for x in b"".join(content[ORDERS]).splitlines()]
    fills = [(f[1]["tid"], f[1]["oid"]) for f in map(orjson.loads,
                                                      b"".join(content[FILLS]).splitlines())]
    return oids, fills



def test_pipeline_follows_a_growing_node_dir_with_rotation(
        make_node_dir: Callable[..., Path], tmp_path: Path) -> None:
    src = make_node_dir(lines=6000, name="src")
    node = tmp_path / "node"
    content = split_into_hours(src, node)
    oids, fills = source_keys(content)
    s = Settings(node_dir=node, db=tmp_path / "live.duckdb", start_from="start",
                 debounce_ms=5, poll_interval_ms=50, batch_max_bytes=1 << 16, keep_all=True)
    store = Store(s.db)
    pipe = Pipeline(s, store)
    runner = threading.Thread(target=pipe.run, daemon=True)
    runner.start()
    counts = [0]

    def caught_up() -> bool:
        counts[0] = sum(st.lines for st in pipe.snapshot())  # committed, as stored
        return counts[0] >= len(oids) + len(fills)

    try:
        replay(node, content).join()
        wait_for(caught_up)
    finally:  # a failure above must not leave the pipeline running (pytest would not exit)
        t = time.monotonic()
        pipe.stop()
        runner.join(5)
    assert not runner.is_alive() and time.monotonic() - t < 2
    pipe.close()
    got = [r[0] for r in store.con.execute("SELECT oid FROM orders ORDER BY oid").fetchall()]
    assert got == sorted(oids)
    got_fills = store.con.execute("SELECT tid, oid FROM fills ORDER BY ALL").fetchall()
    assert got_fills == sorted(fills)
    trades = store.con.execute(
        "SELECT count(*), count(DISTINCT tid), count(buyer), count(seller) FROM trades").fetchone()
    assert trades == (len(fills) // 2,) * 4  # every trade once, both users known
    assert store.con.execute("SELECT count(*) FROM rejects").fetchone() == (0,)
    assert store.con.execute("SELECT file FROM cursors WHERE stream = ?", [ORDERS]).fetchone() == (
        "20260105/12",)
    store.close()


def _ingest_proc(node: Path, db: Path, *extra: str, stderr: int = subprocess.PIPE,
                 env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "etl.cli", "ingest", "--node-dir", str(node), "--db", str(db),
         # batches over the tailer's 64 KiB probe: a lane behind reads them on its parse worker
         "--from", "start", "--debounce-ms", "5", "--batch-max-bytes", "131072", "--keep-all", *extra],
        cwd=ROOT, stdout=subprocess.DEVNULL, stderr=stderr, env={**os.environ, **(env or {})})


@pytest.mark.parametrize("fsync", ["standard", "none"])  # setting db_fsync: the page cache outlives us
def test_kill_9_at_random_moments_loses_and_duplicates_nothing(
        make_node_dir: Callable[..., Path], tmp_path: Path, fsync: str) -> None:
    src = make_node_dir(lines=30_000, name="src")
    node = tmp_path / "node"
    content = split_into_hours(src, node)
    oids, fills = source_keys(content)
    db = tmp_path / "k.duckdb"
    writer = replay(node, content, pause=0.01, chunk=(2000, 60_000))
    rng = random.Random(42)
    kills = 0
    while writer.is_alive() or kills < 5:
        proc = _ingest_proc(node, db, stderr=subprocess.DEVNULL, env={"NODETAP_DB_FSYNC": fsync})
        time.sleep(rng.uniform(0.8, 2.5))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        kills += 1
        if kills > 30:
            break
    writer.join()
    assert kills >= 5
    # `--from start` as the killed runs had it: on a busy machine each may have been killed before
    # it stored where it starts, and this is then the first run (`--from` is a first-run setting)
    run_cli("ingest", "--keep-all", "--node-dir", str(node), "--db", str(db), "--once", "--from", "start")
    got = [r[0] for r in query(db, "SELECT oid FROM orders ORDER BY oid")]
    assert len(got) == len(oids)
    assert got == sorted(oids)
    assert query(db, "SELECT tid, oid FROM fills ORDER BY ALL") == sorted(fills)
    assert query(db, "SELECT count(*) - count(DISTINCT tid) FROM trades") == [(0,)]
    assert query(db, "SELECT count(*) FROM trades") == [(len(fills) // 2,)]


@pytest.mark.reliability
@pytest.mark.parametrize("variant", ["plain", "streaming"])
def test_kill_9_while_pre_filtering_loses_and_duplicates_nothing(tmp_path: Path, variant: str) -> None:
    """Selective rules over batches large enough to pre-filter, two units in flight (etl/lanes.py):
    `ingest` killed at random moments, then finished with --once, stores exactly what full
    decoding plus the rules keep (about two minutes: `pytest -m reliability`)."""
    from etl.filters import RulesFile, apply_rules
    from etl.parse import parse
    from etl.simulate import generate

    node = tmp_path / "node"
    generate(node, lines=1_000_000, variant=variant, kinds=("orders",), seed=11)
    rules_file = tmp_path / "rules.toml"
    rules_file.write_text('[orders]\nstatuses = ["open", "canceled"]\nmin_notional = 2000.0\n')
    rules = RulesFile(rules_file).rules
    want = sorted(row for p in sorted(node.rglob("*")) if p.is_file()
                  for row in apply_rules(parse("orders", variant, p.read_bytes()).frame, rules)[0]
                  .select("oid", "status", "time").iter_rows())
    db = tmp_path / "k.duckdb"
    cmd = [sys.executable, "-m", "etl.cli", "ingest", "--node-dir", str(node), "--db", str(db),
           "--from", "start", "--batch-max-bytes", str(4 << 20), "--rules", str(rules_file)]
    rng = random.Random(3)
    for _ in range(12):
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(rng.uniform(0.5, 1.5))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    run_cli(*cmd[3:], "--once", timeout=300)
    assert query(db, "SELECT oid, status, time FROM orders ORDER BY ALL") == want
    assert query(db, "SELECT sum(rejects) FROM cursors") == [(0,)]


def test_sigterm_finishes_the_batch_commits_and_exits_0(
        make_node_dir: Callable[..., Path], tmp_path: Path) -> None:
    node = make_node_dir(lines=3000)
    db = tmp_path / "s.duckdb"
    proc = _ingest_proc(node, db)
    total = sum(len(p.read_bytes().splitlines()) for p in node.rglob("*") if p.is_file())
    wait_for(lambda: status_file(db).exists() and sum(
        r.get("lines", 0) for r in orjson.loads(status_file(db).read_bytes())["streams"]) == total,
             timeout=30)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=10)
    assert proc.returncode == 0, err
    assert b"event=shutdown" in err
    assert query(db, "SELECT sum(lines) FROM cursors") == [(total,)]


def test_malformed_lines_go_to_rejects_with_file_and_offset(tmp_path: Path) -> None:
    node = tmp_path / "node"
    hour = node / ORDERS / "hourly" / "20260105" / "11"
    hour.parent.mkdir(parents=True)
    from tests.test_parse import good
    lines = [good(1), b'{"broken', good(2), b"\xff\xfe", good(3)]
    hour.write_bytes(b"\n".join(lines) + b"\n")
    db = tmp_path / "r.duckdb"
    run_cli("ingest", "--keep-all", "--node-dir", str(node), "--db", str(db), "--from", "start", "--once")
    assert query(db, "SELECT oid FROM orders ORDER BY oid") == [(1,), (2,), (3,)]
    rejects = query(db, 'SELECT stream, file, "offset", reason, line FROM rejects ORDER BY 3')
    off1 = len(good(1)) + 1
    off2 = off1 + len(b'{"broken') + 1 + len(good(2)) + 1
    assert [(r[0], r[1], r[2]) for r in rejects] == [
        (ORDERS, "20260105/11", off1), (ORDERS, "20260105/11", off2)]
    assert rejects[0][3].startswith("invalid JSON") and rejects[0][4] == '{"broken'
    assert query(db, "SELECT rejects, lines, rows FROM cursors") == [(2, 5, 3)]


def test_rejects_are_logged_a_few_times_per_stream_and_the_counts_add_up(tmp_path: Path) -> None:
    """Broken lines in most batches: the first batch with rejects is logged, the rest are counted
    into one line a minute (here: at shutdown); the lines' counts are the status' rejects."""
    node, db = tmp_path / "node", tmp_path / "r.duckdb"
    run_cli("simulate", "--out", str(node), "--lines", "20000", "--malformed", "0.05")
    proc = run_cli("ingest", "--once", "--from", "start", "--node-dir", str(node), "--db", str(db),
                   "--batch-max-bytes", "65536")
    logged: dict[str, list[int]] = {}
    for line in proc.stderr.splitlines():
        if "event=rejects " in line:
            fields = dict(f.split("=", 1) for f in line.split("event=rejects ", 1)[1].split()[:3])
            logged.setdefault(fields["stream"], []).append(int(fields["count"]))
            assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", fields["since"])
    stored = dict(query(db, "SELECT stream, rejects FROM cursors"))
    batches = dict(query(db, "SELECT stream, count(DISTINCT \"offset\" // 65536) FROM rejects GROUP BY 1"))
    assert set(logged) == set(stored) == {ORDERS, "node_fills"}
    for stream, counts in logged.items():
        assert len(counts) == 2 and sum(counts) == stored[stream], (stream, counts, stored)
        assert batches[stream] > 10  # rejects in many batches, logged twice
    status = orjson.loads(run_cli("status", "--json", "--db", str(db)).stdout)
    assert {r["stream"]: r["rejects"] for r in status} == {s: sum(c) for s, c in logged.items()}


def test_rejects_log_says_at_most_one_line_a_minute_with_the_count_since(
        caplog: pytest.LogCaptureFixture) -> None:
    now = [0.0]
    rejects = RejectsLog("node_fills", clock=lambda: now[0], wall=lambda: 1767607200.0 + now[0])
    with caplog.at_level("WARNING", logger="nodetap.lanes"):
        for second in range(0, 150, 2):  # a batch with 3 broken lines every 2 s for 2.5 minutes
            now[0] = float(second)
            rejects.add("20260105/10", 3, "invalid JSON")
        rejects.flush()
        rejects.flush()  # nothing new: no line
    assert [r.getMessage() for r in caplog.records] == [
        "event=rejects stream=node_fills count=3 since=2026-01-05T10:00:00Z file=20260105/10 "
        "first_reason='invalid JSON'",
        "event=rejects stream=node_fills count=90 since=2026-01-05T10:00:02Z file=20260105/10 "
        "first_reason='invalid JSON'",
        "event=rejects stream=node_fills count=90 since=2026-01-05T10:01:02Z file=20260105/10 "
        "first_reason='invalid JSON'",
        "event=rejects stream=node_fills count=42 since=2026-01-05T10:02:02Z file=20260105/10 "
        "first_reason='invalid JSON'",
    ]


def test_backlog_drop_is_recorded_in_gaps(make_node_dir: Callable[..., Path],
                                          tmp_path: Path) -> None:
    node = make_node_dir(lines=20_000, kinds=("orders",))
    size = sum(p.stat().st_size for p in node.rglob("*") if p.is_file())
    db = tmp_path / "g.duckdb"
    run_cli("ingest", "--keep-all", "--node-dir", str(node), "--db", str(db), "--from", "start", "--once",
            "--max-backlog-bytes", str(size // 20), "--batch-max-bytes", str(1 << 16))
    gaps = query(db, "SELECT sum(bytes), sum(est_lines), min(reason), max(reason) FROM gaps")
    (skipped, est, r1, r2), = gaps
    rows, lines = query(db, "SELECT rows, lines FROM cursors")[0]
    assert (r1, r2) == ("backlog", "backlog")
    assert skipped + query(db, "SELECT bytes FROM cursors")[0][0] == size
    assert 0.8 < (est + lines) / 20_000 < 1.2  # the estimate of skipped lines is close
    assert rows < 20_000 // 10
    assert query(db, "SELECT count(*) FROM gaps WHERE time_to IS NULL") == [(0,)]


def _peak_rss_mb(*args: str) -> float:
    code = ("import resource, subprocess, sys; "
            "r = subprocess.run(sys.argv[1:]); assert r.returncode == 0; "
            "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)")
    out = subprocess.run([sys.executable, "-c", code, sys.executable, "-m", "etl.cli", *args],
                         cwd=ROOT, capture_output=True, text=True, check=True)
    return int(out.stdout.split()[-1]) / 1024


def test_memory_does_not_depend_on_backlog(make_node_dir: Callable[..., Path],
                                           tmp_path: Path) -> None:
    limit = 4 << 20
    small = make_node_dir(lines=8_000, kinds=("orders",), name="small")  # ~1x the limit
    big = make_node_dir(lines=170_000, kinds=("orders",), name="big")  # ~20x the limit
    big_size = sum(p.stat().st_size for p in big.rglob("*") if p.is_file())
    assert big_size > 19 * limit
    common = ["--from", "start", "--once", "--keep-all", "--max-backlog-bytes", str(limit),
              "--batch-max-bytes", str(1 << 20), "--log-level", "WARNING"]
    rss_small = _peak_rss_mb("ingest", "--node-dir", str(small), "--db",
                             str(tmp_path / "a.duckdb"), *common)
    rss_big = _peak_rss_mb("ingest", "--node-dir", str(big), "--db",
                           str(tmp_path / "b.duckdb"), *common)
    print(f"peak RSS: backlog 1x {rss_small:.0f} MB, backlog 20x {rss_big:.0f} MB")
    assert rss_big < rss_small * 1.15 + 15


def test_backfill_plain_and_lz4_resumes_without_duplicates(
        make_node_dir: Callable[..., Path], tmp_path: Path) -> None:
    node = make_node_dir(lines=5000, kinds=("orders",), start=datetime(2026, 1, 5, 10, 59, 55, tzinfo=UTC))
    files = sorted((node / ORDERS / "hourly").rglob("*"))
    files = [f for f in files if f.is_file()]
    assert len(files) == 2
    # the public archives hold .lz4 hour files
    lz = files[1].with_name(files[1].name + ".lz4")
    lz.write_bytes(lz4.frame.compress(files[1].read_bytes()))
    total = sum(len(f.read_bytes().splitlines()) for f in files)
    files[1].unlink()
    db = tmp_path / "bf.duckdb"
    out = run_cli("backfill", str(node / ORDERS), "--db", str(db), "--quiet", "--keep-all")
    assert f"lines={total}" in out.stdout and "rejects=0" in out.stdout
    again = run_cli("backfill", str(node / ORDERS), "--db", str(db), "--quiet", "--keep-all")
    assert "skipped_files=2" in again.stdout
    assert query(db, "SELECT count(*), count(DISTINCT oid) FROM orders") == [(total, total)]
    # the commands that read history.* work on a database only backfill wrote
    out = run_cli("sql", "--db", str(db), "SELECT count(*) AS n FROM history.orders", "--format", "csv")
    assert out.stdout.split() == ["n", str(total)]
    run_cli("export", "orders", "--db", str(db), "-o", str(tmp_path / "o.parquet"))
    assert pl.read_parquet(tmp_path / "o.parquet").height == total


def test_backfill_of_cut_files_keeps_their_whole_lines_and_names_them(
        make_node_dir: Callable[..., Path], tmp_path: Path) -> None:
    """An `.lz4` archive cut short (a partial download) or not lz4 at all used to end the run with
    EOFError's traceback, naming no file. Now its whole lines before the cut are stored, the rest
    is an `incomplete` gap, the other files are read, and the run exits 1 naming each file; a
    plain file cut mid-line is named too (its last line is left for live ingestion)."""
    node = make_node_dir(lines=5000, kinds=("orders",), start=datetime(2026, 1, 5, 10, 59, 55, tzinfo=UTC))
    day = node / ORDERS / "hourly" / "20260105"
    whole10, whole11 = (day / "10").read_bytes(), (day / "11").read_bytes()
    (day / "10").unlink()
    packed = lz4.frame.compress(whole10)
    (day / "10.lz4").write_bytes(packed[:len(packed) // 2])
    (day / "9.lz4").write_bytes(b"not lz4 at all\n")
    (day / "11").write_bytes(whole11[:-30])
    decoded = lz4.frame.LZ4FrameDecompressor().decompress(packed[:len(packed) // 2])
    cut = decoded.rfind(b"\n") + 1  # the end of the last whole line before the cut
    assert 0 < cut < len(decoded) < len(whole10)
    db = tmp_path / "bf.duckdb"
    out = run_cli("backfill", str(node / ORDERS), "--db", str(db), "--quiet", "--keep-all", check=False)
    assert out.returncode == 1 and "Traceback" not in out.stderr
    assert out.stdout.endswith(" incomplete_files=2 unterminated_files=1\n")
    end11 = whole11[:-30].rfind(b"\n") + 1
    assert out.stderr.endswith(
        f"nodetap backfill: {day / '11'}: its last line is unterminated ({len(whole11) - 30 - end11} bytes "
        f"after byte {end11} with no newline), so it is not stored. A file the node is still writing: "
        "`nodetap ingest` reads the line once it ends. A cut copy: copy it again and rerun backfill\n"
        "nodetap backfill: 2 file(s) could not be read whole:\n"
        f"  {day / '9.lz4'}: it stops decoding as lz4 (LZ4F_decompress failed with code: "
        "ERROR_frameType_unknown). Its whole lines up to byte 0 (decompressed) are stored; the rest of "
        "the hour is not (gaps, reason incomplete). Download it again and rerun backfill: it goes on "
        "from there\n"
        f"  {day / '10.lz4'}: it ends before its end-of-stream marker (cut short: a partial download or "
        f"copy?). Its whole lines up to byte {cut} (decompressed) are stored; the rest of the hour is "
        "not (gaps, reason incomplete). Download it again and rerun backfill: it goes on from there\n")
    assert "event=backfill_incomplete" in out.stderr and f"path={day / '10.lz4'}" in out.stderr
    kept = decoded[:cut].count(b"\n") + whole11[:end11].count(b"\n")
    assert query(db, "SELECT count(*) FROM orders") == [(kept,)]
    gaps = 'SELECT file, from_offset, to_offset, reason FROM gaps ORDER BY file'
    assert query(db, gaps) == [("20260105/10", cut, len(decoded), "incomplete"),
                               ("20260105/9", 0, 0, "incomplete")]
    rerun = run_cli("backfill", str(node / ORDERS), "--db", str(db), "--quiet", "--keep-all", check=False)
    assert rerun.returncode == 1 and query(db, "SELECT count(*) FROM gaps") == [(2,)]  # recorded once
    # the whole archive downloaded again: the run goes on from the cut, nothing stored twice
    (day / "10.lz4").write_bytes(packed)
    (day / "9.lz4").unlink()
    again = run_cli("backfill", str(node / ORDERS), "--db", str(db), "--quiet", "--keep-all")
    assert "incomplete_files=0 unterminated_files=1" in again.stdout
    total = whole10.count(b"\n") + whole11[:end11].count(b"\n")
    assert query(db, "SELECT count(*), count(DISTINCT oid) FROM orders") == [(total, total)]
    assert len(query(db, gaps)) == 2


def test_backfill_refuses_a_path_with_no_stream_and_an_unknown_stream(tmp_path: Path) -> None:
    f = tmp_path / "9"
    f.write_bytes(b"{}\n")
    proc = run_cli("backfill", str(f), "--db", str(tmp_path / "x.duckdb"), check=False)
    assert proc.returncode == 2
    assert "cannot tell the stream" in proc.stderr
    streams = ("node_order_statuses, node_order_statuses_by_block, node_order_statuses_streaming, "
               "node_fills, node_fills_by_block, node_fills_streaming, node_trades")
    for given, hint in (("fills", " Did you mean node_fills?"), ("xyz", "")):
        proc = run_cli("backfill", str(f), "--db", str(tmp_path / "y.duckdb"), "--stream", given, check=False)
        assert (proc.returncode, proc.stderr) == (
            2, f"nodetap backfill: unknown stream {given!r} (--stream).{hint} Valid streams: {streams}\n")
    assert not (tmp_path / "y.duckdb").exists()


def test_status_prints_per_stream_rows(make_node_dir: Callable[..., Path], tmp_path: Path) -> None:
    node = make_node_dir(lines=3000)
    db = tmp_path / "st.duckdb"
    run_cli("ingest", "--keep-all", "--node-dir", str(node), "--db", str(db), "--from", "start", "--once")
    with open(node / ORDERS / "hourly" / "20260105" / "11", "ab") as f:
        f.write(b"x" * 100)  # unread bytes: lag
    out = run_cli("status", "--node-dir", str(node), "--db", str(db), "--json")
    rows = {r["stream"]: r for r in orjson.loads(out.stdout)}
    assert set(rows) == {ORDERS, FILLS}
    assert rows[ORDERS]["lag_bytes"] == 100 and rows[FILLS]["lag_bytes"] == 0
    assert rows[ORDERS]["rejects"] == 0 and rows[ORDERS]["gaps"] == 0
    table = run_cli("status", "--node-dir", str(node), "--db", str(db)).stdout
    assert table.splitlines()[0].split()[:3] == ["stream", "file", "offset"]


def test_status_while_ingest_holds_the_db(make_node_dir: Callable[..., Path],
                                          tmp_path: Path) -> None:
    node = make_node_dir(lines=2000)
    db = tmp_path / "busy.duckdb"
    proc = _ingest_proc(node, db)
    try:
        wait_for(lambda: status_file(db).exists(), timeout=30)
        out = run_cli("status", "--node-dir", str(node), "--db", str(db), "--json")
        rows = orjson.loads(out.stdout)
        assert {r["stream"] for r in rows} == {ORDERS, FILLS}
        assert {(r["running"], r["stopped_reason"]) for r in rows} == {(True, None)}
        assert "stopped" not in {r["mode"] for r in rows}
        table = run_cli("status", "--node-dir", str(node), "--db", str(db)).stdout
        assert "no ingest/serve is running" not in table
        # another node dir is refused while one runs too, as when none does
        other = tmp_path / "other"
        other.mkdir()
        refused = run_cli("status", "--node-dir", str(other), "--db", str(db), check=False)
        assert refused.returncode == 2
        assert f"reads node dir {node.resolve()}, not {other.resolve()}" in refused.stderr
        assert len(orjson.loads(run_cli("status", "--db", str(db), "--json").stdout)) == 2
    finally:
        proc.send_signal(signal.SIGINT)
        proc.communicate(timeout=10)
    assert proc.returncode == 0


@pytest.mark.parametrize("variant", ["by_block", "streaming"])
def test_block_variants_end_to_end(make_node_dir: Callable[..., Path], tmp_path: Path,
                                   variant: str) -> None:
    node = make_node_dir(lines=3000, variant=variant)
    db = tmp_path / "v.duckdb"
    run_cli("ingest", "--keep-all", "--node-dir", str(node), "--db", str(db), "--from", "start", "--once")
    events = 0
    for p in (node / f"{ORDERS}_{variant}").rglob("*"):
        if p.is_file():
            events += sum(len(orjson.loads(x)["events"]) for x in p.read_bytes().splitlines())
    assert query(db, "SELECT count(*), count(block_number) FROM orders") == [(events, events)]
    assert query(db, "SELECT count(*) - count(buyer) - count(seller) + count(*) FROM trades") == [
        (0,)]
    assert os.path.exists(db)


def test_a_fill_with_a_time_out_of_range_is_a_reject_not_the_end_of_the_lane(tmp_path: Path) -> None:
    """A fill whose `time` is 1e16 ms (year 318857) took the pipeline down: Python cannot hold
    that time, and the watermark converts it. Now the line is a reject and its neighbours are
    stored."""
    node = tmp_path / "node"
    hour = node / "node_fills" / "hourly" / "20260105" / "10"
    hour.parent.mkdir(parents=True)

    def fill(tid: int, ms: int) -> bytes:
        return orjson.dumps(["0x" + "1" * 40, {
            "coin": "BTC", "px": "100.0", "sz": "1.0", "side": "B", "time": ms, "startPosition": "0.0",
            "dir": "Open Long", "closedPnl": "0.0", "hash": "0x02", "oid": tid, "crossed": True,
            "fee": "0.25", "tid": tid, "feeToken": "USDC", "twapId": None}])

    hour.write_bytes(b"\n".join([fill(1, 1767607200000), fill(2, 10**16), fill(3, 1767607201000)]) + b"\n")
    db = tmp_path / "f.duckdb"
    run_cli("ingest", "--node-dir", str(node), "--db", str(db), "--from", "start", "--once")
    assert query(db, "SELECT tid FROM fills ORDER BY tid") == [(1,), (3,)]
    assert query(db, "SELECT reason FROM rejects") == [("missing or out-of-range required field: time",)]


def test_ingest_once_waits_out_the_grace_of_a_rotated_files_unterminated_line(tmp_path: Path) -> None:
    """`ingest --once` over an hour file whose last line is unterminated, with the next hour's
    file there: the run waits `rotate_grace_s`, rejects the line and reads the next file. Each
    run once waited anew and exited, so the next file was never read (found by fuzzing)."""
    from tests.test_parse import good
    node = tmp_path / "node"
    first = node / ORDERS / "hourly" / "20260105" / "10"
    first.parent.mkdir(parents=True)
    first.write_bytes(good(1) + b"\n" + good(2)[:40])
    (first.parent / "11").write_bytes(good(3) + b"\n" + good(4) + b"\n")
    db = tmp_path / "o.duckdb"
    run_cli("ingest", "--keep-all", "--node-dir", str(node), "--db", str(db), "--from", "start", "--once",
            env={"NODETAP_ROTATE_GRACE_S": "0.5"})
    assert query(db, "SELECT oid FROM orders ORDER BY oid") == [(1,), (3,), (4,)]
    assert query(db, 'SELECT file, "offset", reason FROM rejects') == [
        ("20260105/10", len(good(1)) + 1, "unterminated last line of a rotated file")]


def test_a_first_run_from_the_end_keeps_its_place_when_it_read_nothing(tmp_path: Path) -> None:
    """`--from end` (the default) starts after the lines already there. A first run that read
    no new line, or found no file yet, still fixes where the stream starts: the lines written
    while nodetap is stopped are read by the next run, not skipped for a new end."""
    from tests.test_lake import Node

    node = Node(tmp_path / "node")
    node.add_order("2026-01-05T10:00:00", 1)  # before the first run: not read
    db = tmp_path / "end.duckdb"
    args = ("ingest", "--keep-all", "--node-dir", str(node.root), "--db", str(db), "--once")
    run_cli(*args)  # the order-status stream's place; no fills file yet
    node.add_order("2026-01-05T10:00:01", 2)  # while stopped
    node.add_trade("2026-01-05T10:00:02", 7)  # the fills stream's first file
    second = run_cli(*args)
    assert "resumed=True" in [ln for ln in second.stderr.splitlines() if "node_order_statuses" in ln
                              and "event=stream_start" in ln][0]
    assert query(db, "SELECT oid FROM orders") == [(2,)]
    assert query(db, "SELECT count(*) FROM fills") == [(2,)]  # a trade is two fill lines
    assert query(db, "SELECT count(*) FROM gaps") == [(0,)]
    # nothing was committed by the first run: `nodetap status` says so, and no lines
    status = orjson.loads(run_cli("status", "--db", str(db), "--json").stdout)
    assert {(r["stream"], r["lines"]) for r in status} == {("node_order_statuses", 1), ("node_fills", 2)}


def test_a_stream_that_appears_while_running_from_the_end_is_read_whole(tmp_path: Path) -> None:
    """A stream directory made after nodetap started holds only lines written since: with
    `--from end` they are read from its first file's start, not skipped for its end at the
    moment it was seen."""
    from tests.test_lake import Node

    node = Node(tmp_path / "node")
    node.add_order("2026-01-05T10:00:00", 1)
    s = Settings(node_dir=node.root, db=tmp_path / "run.duckdb", keep_all=True, debounce_ms=5,
                 poll_interval_ms=50)
    store = Store.from_settings(s)
    pipe = Pipeline(s, store)
    thread = threading.Thread(target=pipe.run, daemon=True)
    thread.start()
    try:
        wait_for(lambda: "node_order_statuses" in pipe.states, timeout=30)
        # the fills directory, with a trade in it, appears at once (a rename), before it is seen
        staging = Node(tmp_path / "staging")
        staging.add_trade("2026-01-05T10:00:02", 7)
        os.rename(staging.root / "node_fills", node.root / "node_fills")
        node.add_order("2026-01-05T10:00:03", 2)
        wait_for(lambda: {n: lane.cursor.offset for n, lane in pipe.states.items()}.get("node_fills", 0)
                 == (node.root / "node_fills" / "hourly" / "20260105" / "10").stat().st_size, timeout=30)
        wait_for(lambda: pipe.states["node_order_statuses"].cursor.offset
                 == (node.root / "node_order_statuses" / "hourly" / "20260105" / "10").stat().st_size)
    finally:
        pipe.stop()
        thread.join(30)
        pipe.close()
    assert query_store(store, "SELECT count(*) FROM fills") == [(2,)]
    assert query_store(store, "SELECT oid FROM orders") == [(2,)]
    store.close()


def query_store(store: Store, sql: str) -> list[tuple[object, ...]]:
    return store.con.execute(sql).fetchall()


def test_a_stream_seen_later_starts_where_the_first_run_said(tmp_path: Path) -> None:
    """`--from` is the database's first run's setting: a stream first seen by a later run that
    has another `--from` (the default `end`) starts as the first run said, here at its first
    file's start, even a file written before the database's first run (its mtime)."""
    from tests.test_lake import Node

    node = Node(tmp_path / "node")
    node.add_order("2026-01-05T10:00:00", 1)
    db = tmp_path / "first.duckdb"
    run_cli("ingest", "--keep-all", "--node-dir", str(node.root), "--db", str(db), "--from", "start",
            "--once")
    node.add_trade("2026-01-05T10:00:02", 7)
    fills = node.root / "node_fills" / "hourly" / "20260105" / "10"
    os.utime(fills, (time.time() - 3600, time.time() - 3600))  # written an hour before
    run_cli("ingest", "--keep-all", "--node-dir", str(node.root), "--db", str(db), "--once")
    assert query(db, "SELECT count(*) FROM fills") == [(2,)]
    assert query(db, "SELECT oid FROM orders") == [(1,)]
