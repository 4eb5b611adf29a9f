"""The simulator: deterministic, realistic, and honest about partial writes and bursts."""

from __future__ import annotations

import threading
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path

import orjson
import pytest

from etl.cli import main
from etl.config import Settings
from etl.pipeline import Pipeline
from etl.simulate import generate, run_live
from etl.store import Store
from tests.conftest import run_cli


def test_same_seed_same_bytes(tmp_path: Path) -> None:
    a, b, c = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    for out, seed in ((a, 3), (b, 3), (c, 4)):
        generate(out, lines=3000, variant="by_block", seed=seed)
    files = sorted(p.relative_to(a) for p in a.rglob("*") if p.is_file())
    assert files and all((a / f).read_bytes() == (b / f).read_bytes() for f in files)
    assert any((a / f).read_bytes() != (c / f).read_bytes() for f in files if (c / f).exists())


def test_output_looks_like_mainnet(tmp_path: Path) -> None:
    generate(tmp_path, lines=20_000, kinds=("orders", "fills", "trades"),
             start=datetime(2026, 1, 5, 10, 59, 45, tzinfo=UTC))
    orders = [orjson.loads(x) for p in (tmp_path / "node_order_statuses").rglob("*") if p.is_file()
              for x in p.read_bytes().splitlines()]
    coins = Counter(o["order"]["coin"] for o in orders)
    assert {"BTC", "PURR/USDC", "@107", "km:USTECH"} <= set(coins)
    statuses = Counter(o["status"] for o in orders)
    assert statuses.most_common(2)[0][0] == "open" and "badAloPxRejected" in statuses
    fills = [orjson.loads(x) for p in (tmp_path / "node_fills").rglob("*") if p.is_file()
             for x in p.read_bytes().splitlines()]
    by_tid = Counter(f[1]["tid"] for f in fills)
    assert set(by_tid.values()) == {2}  # every trade as two fills
    assert sum(f[1]["crossed"] for f in fills) == len(by_tid)  # one taker each
    # hour files by the simulated clock: 20K lines from 10:59:45 cross into hour 11
    assert sorted(p.name for p in (tmp_path / "node_order_statuses").rglob("*") if p.is_file()) == [
        "10", "11"]


def test_live_partial_writes_and_bursts_are_ingested_exactly(tmp_path: Path) -> None:
    node = tmp_path / "node"
    stop = threading.Event()
    seen_partial = []

    def watch_for_partial_lines() -> None:
        while not stop.is_set():
            for p in node.rglob("*"):
                if p.is_file() and p.stat().st_size and not p.read_bytes().endswith(b"\n"):
                    seen_partial.append(p)
                    return
            stop.wait(0.01)  # look again until the writer is done

    watcher = threading.Thread(target=watch_for_partial_lines)
    watcher.start()
    written = run_live(node, rate=3000, partial_writes=True, burst_every_s=1.0, burst_factor=4,
                       burst_s=0.3, duration_s=2.0)
    stop.set()
    watcher.join()
    assert seen_partial, "a partial last line was visible while writing"
    s = Settings(node_dir=node, db=tmp_path / "s.duckdb", start_from="start", keep_all=True)
    store = Store.from_settings(s)
    pipe = Pipeline(s, store)
    pipe.run_once()
    pipe.close()
    lines = sum(len(p.read_bytes().splitlines()) for p in node.rglob("*") if p.is_file())
    assert lines == written
    assert store.con.execute("SELECT sum(lines), sum(rejects) FROM cursors").fetchone() == (written, 0)
    store.close()
    # 2 s at 3000 lines/s with two bursts at 4x for 0.3 s: more than the plain rate gives
    assert written > 2 * 3000 * 1.2


# ------------------------------------------------------------------ the command line
@pytest.mark.parametrize(("argv", "said"), [
    ([], "error: one of the arguments --lines --rate is required"),  # it used to run until killed
    (["--lines", "-5"], "error: argument --lines: must be a whole number of at least 1, not '-5'"),
    (["--lines", "0"], "error: argument --lines: must be a whole number of at least 1, not '0'"),
    (["--lines", "10", "--malformed", "2"],
     "error: argument --malformed: is a share of the lines, from 0 to 1 (0.01: one line in 100), not '2'"),
    (["--rate", "0"], "error: argument --rate: must be a number above 0, not '0'"),
    (["--rate", "10", "--lines", "10"], "error: argument --lines: not allowed with argument --rate"),
])
def test_simulate_refuses_flags_it_cannot_honour(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                 argv: list[str], said: str) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["simulate", "--out", str(tmp_path / "n"), *argv])
    assert exc.value.code == 2
    assert capsys.readouterr().err.splitlines()[-1] == f"nodetap simulate: {said}"
    assert not (tmp_path / "n").exists()


@pytest.mark.parametrize(("argv", "said"), [
    (["--lines", "10", "--duration", "3"],
     "--duration goes with --rate (writing on the wall clock), not --lines"),
    (["--lines", "10", "--partial-writes", "--burst-every", "2"],
     "--partial-writes, --burst-every go with --rate (writing on the wall clock), not --lines"),
    (["--rate", "10", "--start", "2026-01-05"],
     "--start sets the simulated clock of --lines; --rate writes at the wall clock's time"),
    (["--lines", "10", "--start", "noon"],
     "--start: 'noon' is not an ISO time (e.g. 2026-01-05T10:59:50, UTC when no zone)"),
    (["--lines", "10", "--streams", ","],
     "--streams ',': name kinds from orders, fills, trades, comma-separated"),
])
def test_simulate_refuses_flags_of_the_other_clock(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                   argv: list[str], said: str) -> None:
    assert main(["simulate", "--out", str(tmp_path / "n"), *argv]) == 2
    assert capsys.readouterr().err == f"nodetap simulate: {said}\n"
    assert not (tmp_path / "n").exists()


def test_simulate_into_a_file_says_it_is_not_a_directory(tmp_path: Path) -> None:
    a_file = tmp_path / "notes.txt"
    a_file.write_text("x\n")
    for out, why in ((a_file, ""), (a_file / "node", f": {a_file} is a file")):
        proc = run_cli("simulate", "--out", str(out), "--lines", "10", check=False)
        assert (proc.returncode, proc.stdout) == (2, "")
        assert proc.stderr == (f"nodetap simulate: --out {out} is not a directory{why}; pass a directory "
                               "to write the node's hour files into (it is made if missing)\n")
    assert a_file.read_text() == "x\n"


def test_lines_counts_the_lines_of_every_stream_as_its_help_says(tmp_path: Path) -> None:
    help_text = " ".join(run_cli("simulate", "--help").stdout.split())
    assert "--lines LINES write this many lines in all, split between the streams" in help_text
    out = run_cli("simulate", "--out", str(tmp_path / "n"), "--lines", "1000",
                  "--streams", "orders,fills,trades").stdout
    counts = {d.name: sum(f.read_bytes().count(b"\n") for f in d.rglob("*") if f.is_file())
              for d in (tmp_path / "n").iterdir()}
    assert set(counts) == {"node_order_statuses", "node_fills", "node_trades"} and min(counts.values()) > 0
    assert out == f"wrote {sum(counts.values())} lines under {tmp_path / 'n'}\n"
    assert 1000 <= sum(counts.values()) < 1100  # whole blocks: a few more
