"""The command line as a user meets it: help that matches the README, errors that say what
to pass, candles from the data's own clock, tables a person can read."""

from __future__ import annotations

import os
import re
import socket
import stat
import subprocess
import sys
import threading
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import duckdb
import orjson
import polars as pl
import pytest

from etl.cli import COMMANDS, build_parser, main
from etl.cli.checks import check_node_dir
from etl.cli.common import CliError, settings_from
from etl.cli.info import STATUS_COLUMNS
from etl.cli.output import cell
from etl.config import Settings
from etl.pipeline import Pipeline
from etl.store import Store
from tests.conftest import ROOT, free_port, query, run_cli
from tests.test_lake import Node, fill_lines

LAYOUT = ("<node-dir>/node_order_statuses[_by_block|_streaming]/hourly/YYYYMMDD/H, "
          "or node_fills[_by_block|_streaming]/..., or node_trades/...")
MIN = 60_000
T1230 = int(datetime(2026, 1, 5, 12, 30, tzinfo=UTC).timestamp() * 1000)


def readme_section(title: str) -> str:
    text = (ROOT / "README.md").read_text()
    return text.split(f"\n## {title}\n", 1)[1].split("\n## ", 1)[0]


# ------------------------------------------------------------------ help and README
def test_help_names_every_command_as_the_readme_does() -> None:
    out = run_cli("--help").stdout
    listed = re.findall(r"^    (\w+)  ", out.split("\ncommands:\n", 1)[1], flags=re.M)
    in_readme = re.findall(r"^\| `nodetap (\w+)", readme_section("CLI"), flags=re.M)
    assert listed == in_readme == list(COMMANDS)
    assert len(listed) == 11


def test_serve_takes_every_setting_flag_of_ingest() -> None:
    def setting_flags(command: str) -> set[str]:
        sub = build_parser(COMMANDS)._subparsers._group_actions[0].choices[command]  # type: ignore[union-attr]
        return {a.option_strings[0] for a in sub._actions if a.dest in Settings.__dataclass_fields__}

    assert setting_flags("ingest") <= setting_flags("serve")
    assert setting_flags("serve") - setting_flags("ingest") == {"--host", "--port"}
    args = build_parser(COMMANDS).parse_args(
        ["serve", "--stream", "node_fills", "--stream", "node_trades", "--max-backlog-bytes", "5000",
         "--debounce-ms", "7", "--log-level", "warning"])
    s = settings_from(args)
    assert (s.streams, s.max_backlog_bytes, s.debounce_ms, s.log_level) == (
        ("node_fills", "node_trades"), 5000, 7, "WARNING")


def test_log_level_is_described_with_its_choices(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["ingest", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert "--log-level {DEBUG,INFO,WARNING,ERROR,CRITICAL} Logging level." in out
    with pytest.raises(SystemExit) as exc:
        main(["ingest", "--log-level", "loud"])
    assert exc.value.code == 2
    assert "argument --log-level: invalid choice: 'loud'" in capsys.readouterr().err


def test_status_help_lists_the_columns_status_prints(tmp_path: Path) -> None:
    node = Node(tmp_path / "node")
    node.add_trade("2026-01-05T10:00:10", 1)
    db = tmp_path / "s.duckdb"
    run_cli("ingest", "--node-dir", str(node.root), "--db", str(db), "--from", "start", "--once")
    out = run_cli("status", "--node-dir", str(node.root), "--db", str(db)).stdout
    header = out.splitlines()[0].split()
    assert header == list(STATUS_COLUMNS)
    helped = " ".join(run_cli("status", "--help").stdout.split())
    listed = helped.split("Per stream: ", 1)[1].split(".", 1)[0].split(", ")
    assert [c.replace(" ", "_") for c in listed] == header[1:]


@pytest.mark.parametrize(("argv", "said"), [
    (("serve", "--hots", "0.0.0.0"), "unrecognized argument --hots (did you mean --host?)"),
    (("config", "--prot", "8000"), "unrecognized argument --prot (did you mean --port?)"),
    (("ingest", "--xyzzy=1"), "unrecognized argument --xyzzy"),  # nothing near
    (("candles", "--coin", "BTC", "--intervall", "1h", "--xyzzy"),
     "unrecognized arguments --intervall (did you mean --interval?), --xyzzy"),
    (("sql", "select 1", "extra"), "unrecognized argument extra"),
])
def test_an_unknown_flag_gets_the_commands_usage_and_its_nearest_flag(argv: tuple[str, ...],
                                                                      said: str) -> None:
    proc = run_cli(*argv, check=False)
    assert proc.returncode == 2
    lines = proc.stderr.splitlines()
    assert lines[0].startswith(f"usage: nodetap {argv[0]} [-h]")
    assert lines[-1] == f"nodetap {argv[0]}: error: {said}"


# ------------------------------------------------------------------ config
def test_config_prints_effective_absolute_paths(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("NODETAP_CONFIG", raising=False)
    (tmp_path / "d").mkdir()
    assert main(["config", "--db", "d/x.duckdb", "--node-dir", "node", "--rules", ""]) == 0
    values = dict(line.split(" = ", 1) for line in capsys.readouterr().out.splitlines())
    assert values["db"] == f"{tmp_path}/d/x.duckdb"
    assert values["node_dir"] == f"{tmp_path}/node"
    assert values["lake_dir"] == f"{tmp_path}/d/x.duckdb.lake"
    assert values["rules_file"] == "(empty: the built-in rules)"
    assert values["port"] == "8000"
    assert list(values) == [name for name in Settings.__dataclass_fields__ if name != "origins"]


@pytest.mark.parametrize("flags", [
    ("--from", "yesterday"),
    ("--from", "20261332"),
    ("--db", "{tmp}/nodir/x.duckdb"),
    ("--rules", "{tmp}/norules.toml"),
])
def test_config_refuses_what_ingest_refuses_with_the_same_message(tmp_path: Path,
                                                                  flags: tuple[str, str]) -> None:
    given = [f.format(tmp=tmp_path) for f in flags]
    node = Node(tmp_path / "node")
    node.add_trade("2026-01-05T10:00:10", 1)
    shown = run_cli("config", *given, check=False, cwd=tmp_path)
    ingest = run_cli("ingest", "--node-dir", str(node.root), "--db", str(tmp_path / "x.duckdb"), "--once",
                     *given, check=False, cwd=tmp_path)
    assert (shown.returncode, shown.stdout) == (2, "")
    assert ingest.returncode == 2
    assert shown.stderr.removeprefix("nodetap config: ") == ingest.stderr.removeprefix("nodetap ingest: ")
    assert run_cli("config", "--doc", *given, cwd=tmp_path).stdout.startswith("| setting |")


def test_config_with_no_flags_runs_anywhere(tmp_path: Path) -> None:
    out = run_cli("config", cwd=tmp_path).stdout
    assert f"db = {tmp_path}/data/nodetap.duckdb" in out.splitlines()


def test_output_to_a_closed_pipe_exits_quietly() -> None:
    read, write = os.pipe()
    os.close(read)
    try:
        proc = subprocess.run([sys.executable, "-m", "etl.cli", "config", "--doc"], stdout=write,
                              stderr=subprocess.PIPE, text=True, cwd=ROOT, timeout=60)
    finally:
        os.close(write)
    assert (proc.returncode, proc.stderr) == (141, "")


# ------------------------------------------------------------------ node dir, rules, port
def _hl(tmp_path: Path) -> Path:
    """~/hl with the node's output in ~/hl/data, as a real node lays it out."""
    Node(tmp_path / "hl" / "data").add_trade("2026-01-05T10:00:10", 1)
    return tmp_path / "hl"


@pytest.mark.parametrize(("command", "given", "hint"), [
    ("ingest", "empty", ""),  # with --once: nothing to wait for
    *((command, given, "; did you mean --node-dir {tmp}/hl/data?")
      for command in ("ingest", "serve")
      for given in ("hl", "hl/data/node_fills", "hl/data/node_fills/hourly/20260105")),
])
def test_a_node_dir_without_streams_is_refused_with_the_right_path(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], command: str, given: str,
        hint: str) -> None:
    _hl(tmp_path)
    (tmp_path / "empty").mkdir()
    db = tmp_path / "x.duckdb"
    argv = [command, "--node-dir", str(tmp_path / given), "--db", str(db), "--port", str(free_port())]
    assert main(argv if command == "serve" else [*argv[:-2], "--once"]) == 2
    assert capsys.readouterr().err == (
        f"nodetap {command}: node dir {tmp_path / given} holds no node output: expected {LAYOUT} "
        f"(--node-dir, setting node_dir){hint.format(tmp=tmp_path)}\n")
    assert not db.exists()  # nothing started


def test_an_empty_node_dir_is_waited_for_by_a_long_running_command(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A node set up but not writing yet: `serve` and `ingest` wait for its first file."""
    (tmp_path / "empty").mkdir()
    s = Settings(node_dir=tmp_path / "empty")
    with caplog.at_level("WARNING", logger="nodetap.cli"):
        check_node_dir(s, must_exist=False)
    assert f"event=node_dir_empty node_dir={tmp_path / 'empty'}" in caplog.text
    with pytest.raises(CliError, match="holds no node output"):
        check_node_dir(s, must_exist=True)


def test_a_file_as_node_dir_is_called_a_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    f = tmp_path / "data"
    f.write_text("")
    assert main(["ingest", "--node-dir", str(f), "--db", str(tmp_path / "x.duckdb"), "--once"]) == 2
    assert capsys.readouterr().err == (
        f"nodetap ingest: --node-dir {f} is a file, not a directory: pass the node's data dir "
        f"(usually ~/hl/data), laid out {LAYOUT} (setting node_dir)\n")


def test_streams_asked_for_that_are_not_there_are_named(tmp_path: Path,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    node = _hl(tmp_path) / "data"
    assert main(["ingest", "--node-dir", str(node), "--db", str(tmp_path / "x.duckdb"), "--once",
                 "--stream", "node_fills_by_block"]) == 2
    assert capsys.readouterr().err == (
        f"nodetap ingest: node dir {node} holds none of the streams asked for (node_fills_by_block; "
        "--stream, setting streams); it holds: node_fills\n")


def test_a_missing_rules_file_is_one_line_naming_the_flag(tmp_path: Path) -> None:
    node = _hl(tmp_path) / "data"
    proc = run_cli("ingest", "--node-dir", str(node), "--db", str(tmp_path / "x.duckdb"), "--once",
                   "--rules", str(tmp_path / "nope.toml"), check=False)
    assert proc.returncode == 2
    assert proc.stderr == (f"nodetap ingest: --rules {tmp_path / 'nope.toml'}: no such file "
                           "(setting rules_file; see docs/rules.md)\n")


def test_a_rules_file_with_bad_rules_is_refused_before_the_database_is_made(tmp_path: Path) -> None:
    node = _hl(tmp_path) / "data"
    rules = tmp_path / "rules.toml"
    rules.write_text('[orders]\nwatch_users = ["abc"]\n')
    db = tmp_path / "x.duckdb"
    said = (f"{rules}: orders.watch_users[0]: expected an address, 0x and 40 hex digits, got 'abc' "
            "(--rules, setting rules_file; see docs/rules.md)\n")
    for argv in (["ingest", "--once", "--node-dir", str(node)], ["backfill", str(node)],
                 ["serve", "--node-dir", str(node), "--port", str(free_port())]):
        proc = run_cli(*argv, "--db", str(db), "--rules", str(rules), check=False)
        assert (proc.returncode, proc.stderr) == (2, f"nodetap {argv[0]}: {said}"), argv
    proc = run_cli("demo", "--node-dir", str(tmp_path / "demo"), "--port", str(free_port()), "--db", str(db),
                   env={"NODETAP_RULES_FILE": str(rules)}, check=False)
    assert proc.returncode == 2
    assert proc.stderr == "nodetap demo: " + said.replace("--rules", "NODETAP_RULES_FILE")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["hl", "rules.toml"]


def test_a_port_in_use_is_refused_before_anything_starts(tmp_path: Path) -> None:
    node = _hl(tmp_path) / "data"
    db = tmp_path / "x.duckdb"
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        proc = run_cli("serve", "--node-dir", str(node), "--db", str(db), "--port", str(port),
                       check=False)
    assert proc.returncode == 2
    assert proc.stderr == (f"nodetap serve: port {port} on 127.0.0.1 is already in use by another "
                           "program: pick another with --port (setting port)\n")
    assert not db.exists()


def test_a_port_out_of_range_is_refused_before_anything_starts(tmp_path: Path) -> None:
    node = _hl(tmp_path) / "data"
    db = tmp_path / "x.duckdb"
    for port in ("99999", "0", "-1"):
        proc = run_cli("serve", "--node-dir", str(node), "--db", str(db), "--port", port, check=False)
        assert (proc.returncode, proc.stderr) == (
            2, f"nodetap: port must be 1 to 65535, not {port} (set by --port)\n")
    cfg = tmp_path / "n.toml"
    cfg.write_text("[nodetap]\nport = 99999\n")
    proc = run_cli("demo", "--config", str(cfg), "--node-dir", str(tmp_path / "demo"), "--db", str(db),
                   check=False)
    assert proc.returncode == 2
    assert proc.stderr == f"nodetap: port must be 1 to 65535, not 99999 (set in {cfg})\n"
    assert not db.exists() and not (tmp_path / "demo").exists()


def test_demo_checks_the_port_before_it_writes_a_node_dir(tmp_path: Path,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert main(["demo", "--node-dir", str(tmp_path / "n"), "--db", str(tmp_path / "d.duckdb"),
                     "--port", str(port)]) == 2
    assert capsys.readouterr().err == (f"nodetap demo: port {port} on 127.0.0.1 is already in use "
                                       "by another program: pick another with --port (setting port)\n")
    assert list(tmp_path.iterdir()) == []


def test_a_lake_or_demo_node_dir_that_cannot_be_written_is_refused_before_the_database_is_made(
        tmp_path: Path) -> None:
    """A lake or a demo's node dir under a file (as on a read-only mount, which tests cannot
    make): one line naming the path, no traceback, and no database made and bound."""
    node = _hl(tmp_path) / "data"
    afile = tmp_path / "afile"
    afile.write_text("")
    db = tmp_path / "x.duckdb"
    for lake, why in ((afile / "lake", f" is not a directory: {afile} is a file"),
                      (afile, " is not a directory")):
        proc = run_cli("ingest", "--once", "--node-dir", str(node), "--db", str(db), "--lake", str(lake),
                       check=False)
        assert (proc.returncode, proc.stderr) == (2, (
            f"nodetap ingest: lake {lake}{why} (--lake, setting lake_dir): pass a directory (it is made "
            "if missing), or leave lake_dir empty for <db>.lake beside the database\n"))
    demo = ["demo", "--db", str(db), "--port", str(free_port())]
    proc = run_cli(*demo, "--node-dir", str(afile / "demo"), check=False)
    assert (proc.returncode, proc.stderr) == (2, (
        f"nodetap demo: cannot make node dir {afile / 'demo'}: Not a directory (--node-dir, setting "
        "node_dir): pass a directory this user can write to\n"))
    proc = run_cli(*demo, "--node-dir", str(afile), check=False)
    assert (proc.returncode, proc.stderr) == (2, (
        f"nodetap demo: node dir {afile} is a file (--node-dir, setting node_dir): pass a directory for "
        "the simulated node (it is made if missing)\n"))
    proc = run_cli(*demo, "--node-dir", str(tmp_path / "demo"), env={"NODETAP_LAKE_DIR": str(afile / "l")},
                   check=False)
    assert proc.returncode == 2 and proc.stderr.startswith(f"nodetap demo: lake {afile / 'l'} is not a")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["afile", "hl"]


# ------------------------------------------------------------------ candles and tables
@pytest.fixture
def history_db(tmp_path: Path) -> Path:
    """Trades at 10:10, 11:20 and 12:30 on 2026-01-05 (BTC, and km:USTECH at 11:20); an order of
    @107 at 12:32, a coin with no trade."""
    node = Node(tmp_path / "node")
    node.add_trade("2026-01-05T10:10:00", 1, px="100.0")
    node.add_trade("2026-01-05T11:20:00", 2, coin="km:USTECH", px="5.0")
    node.add_trade("2026-01-05T12:30:00", 3, px="89051.035", sz="200.0")
    node.add_trade("2026-01-05T12:31:00", 4, px="89052.0", sz="0.00004")
    node.add_order("2026-01-05T12:32:00", 7, coin="@107")  # orders of a coin never traded
    s = Settings(node_dir=node.root, db=tmp_path / "h.duckdb", start_from="start", keep_all=True,
                 candle_intervals=("1m", "1h"), stall_after_s=86400.0, rules_file=Path(""))
    store = Store.from_settings(s)
    pipe = Pipeline(s, store)
    pipe.run_once()
    pipe.flush()
    pipe.close()
    store.close()
    return s.db


def _candles(capsys: pytest.CaptureFixture[str], db: Path, *flags: str) -> list[tuple[object, ...]]:
    assert main(["candles", "--db", str(db), "--format", "json", *flags]) == 0
    return [(c["t"], c["o"], c["c"], c["n"]) for c in orjson.loads(capsys.readouterr().out)]


def test_candles_default_to_the_data_last_hour(history_db: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    # the wall clock is months later: the window ends at the last trade, 12:31
    assert _candles(capsys, history_db, "--coin", "BTC", "--no-fill") == [
        (T1230, 89051.035, 89051.035, 1), (T1230 + MIN, 89052.0, 89052.0, 1)]
    filled = _candles(capsys, history_db, "--coin", "BTC")
    assert (len(filled), filled[0][0], filled[-1][0]) == (61, T1230 + MIN - 60 * MIN, T1230 + MIN)


def test_candles_of_an_interval_not_stored_are_derived(history_db: Path,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    assert _candles(capsys, history_db, "--coin", "BTC", "--interval", "3m", "--no-fill") == [
        (T1230, 89051.035, 89052.0, 2)]


def test_an_unknown_coin_lists_known_ones(history_db: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["candles", "--db", str(history_db), "--coin", "DOGE"]) == 2
    assert capsys.readouterr().err == (
        "nodetap candles: unknown coin 'DOGE' (--coin): no candles of it are stored. "
        "Known coins (2): BTC, km:USTECH\n")
    assert main(["candles", "--db", str(history_db), "--coin", "btc"]) == 2
    assert "no candles of it are stored. Did you mean BTC? Known coins (2)" in capsys.readouterr().err


# ------------------------------------------------------------------ export and sql
CANDLES_3M = ("interval '3m' (--interval) is not stored here (setting candle_intervals: 1m 5m 15m 1h 4h "
              "1d): `nodetap candles --coin C --interval 3m --start T --end T --format parquet -o FILE` "
              "derives them on read")


@pytest.mark.parametrize(("argv", "said"), [
    (["candles", "--interval", "3m"], CANDLES_3M),
    (["candles", "--interval", "7m"], "unknown interval '7m' (--interval); valid intervals: 1s 5s 10s 1m "
                                      "3m 5m 15m 30m 1h 2h 4h 8h 12h 1d 3d 1w 1M"),
    (["trades", "--interval", "1m"], "interval (--interval) applies to candles only, not to trades"),
    (["candles", "--coin", "btc"], "unknown coin 'btc' (--coin): no candles of it are stored. Did you "
                                   "mean BTC? Known coins (2): BTC, km:USTECH"),
    (["orders", "--coin", "NOPE"], "unknown coin 'NOPE' (--coin): no orders or candles of it are "
                                   "stored. Known coins (3): BTC, km:USTECH, @107"),
    (["trades", "--start", "2026-01-05T12:00", "--end", "2026-01-05T11:00"],
     "--end (2026-01-05T11:00) is before --start (2026-01-05T12:00)"),
    (["trades", "--end", "99999999999999999999"],
     "--end: 99999999999999999999 is out of range: epoch milliseconds from -62135596800000 to "
     "253402300799999 (years 1 to 9999; e.g. --end=1767610680000 or --end=2026-01-05T10:58:00Z)"),
    (["trades", "-o", "{tmp}/none/x.parquet"],
     "-o {tmp}/none/x.parquet: directory {tmp}/none does not exist; create it first (mkdir -p "
     "{tmp}/none) or write elsewhere"),
    (["trades", "-o", "{tmp}/t.txt"],
     "-o {tmp}/t.txt: the file name ends in .txt; name a .parquet, .csv or .ndjson file: the extension "
     "says the format"),
])
def test_export_refuses_what_the_http_export_refuses(
        history_db: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], argv: list[str],
        said: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """What `GET /v1/export` answers with a 400 or a 404 is an error here too, never an empty file
    written with exit status 0 (the checks are the same function)."""
    monkeypatch.delenv("NODETAP_CANDLE_INTERVALS", raising=False)
    out = ["-o", str(tmp_path / "x.parquet")] if "-o" not in argv else []
    argv = [a.format(tmp=tmp_path) for a in argv]
    assert main(["export", *argv, *out, "--db", str(history_db)]) == 2
    assert capsys.readouterr().err == f"nodetap export: {said.format(tmp=tmp_path)}\n"
    assert not (tmp_path / "x.parquet").exists() and not (tmp_path / "t.txt").exists()


def test_export_writes_the_format_its_file_name_says(history_db: Path, tmp_path: Path) -> None:
    db = str(history_db)
    for name in ("btc.parquet", "btc.csv", "btc.ndjson"):
        out = run_cli("export", "trades", "--coin", "BTC", "-o", str(tmp_path / name), "--db", db)
        assert out.stdout == f"wrote 3 rows to {tmp_path / name}\n"
    want = pl.read_parquet(tmp_path / "btc.parquet")
    assert want["tid"].to_list() == [1, 3, 4]
    assert pl.read_csv(tmp_path / "btc.csv", schema=want.schema).equals(want)
    lines = [orjson.loads(x) for x in (tmp_path / "btc.ndjson").read_bytes().splitlines()]
    assert [(x["tid"], x["px"], x["time"]) for x in lines] == [
        (1, 100.0, "2026-01-05T10:10:00"), (3, 89051.035, "2026-01-05T12:30:00"),
        (4, 89052.0, "2026-01-05T12:31:00")]
    # a coin with orders but no candle, and one with candles but no order kept: rows, or none
    out = run_cli("export", "orders", "--coin", "@107", "-o", str(tmp_path / "o.csv"), "--db", db)
    assert out.stdout == f"wrote 1 rows to {tmp_path / 'o.csv'}\n"
    out = run_cli("export", "orders", "--coin", "km:USTECH", "-o", str(tmp_path / "k.csv"), "--db", db)
    assert out.stdout == f"wrote 0 rows to {tmp_path / 'k.csv'}\n"
    refused = run_cli("export", "trades", "-o", "/nonexistent/dir/x.parquet", "--db", db, check=False)
    assert (refused.returncode, refused.stdout) == (2, "")
    assert refused.stderr == ("nodetap export: -o /nonexistent/dir/x.parquet: directory /nonexistent/dir "
                              "does not exist; create it first (mkdir -p /nonexistent/dir) or write "
                              "elsewhere\n")


@pytest.mark.parametrize("query", ["", "  ", "-- nothing", "/* x */ ;"])
def test_sql_without_a_statement_says_so(history_db: Path, capsys: pytest.CaptureFixture[str],
                                         query: str) -> None:
    assert main(["sql", "--db", str(history_db), query]) == 2
    assert capsys.readouterr().err == (
        f"nodetap sql: no SQL statement in {query!r} (only blanks, comments or semicolons): pass a "
        'query, e.g. nodetap sql "SELECT count(*) FROM history.trades"\n')


def test_sql_to_a_file_that_cannot_be_written_says_why(history_db: Path, tmp_path: Path) -> None:
    for fmt in ("csv", "parquet"):
        out = run_cli("sql", "SELECT 1 AS x", "--db", str(history_db), "--format", fmt,
                      "-o", "/nonexistent/x." + fmt, check=False)
        assert (out.returncode, out.stdout) == (2, "")
        assert out.stderr == (f"nodetap sql: -o /nonexistent/x.{fmt}: directory /nonexistent does not "
                              "exist; create it first (mkdir -p /nonexistent) or write elsewhere\n")
    assert main(["sql", "SELECT 1 AS x", "--db", str(history_db), "--format", "csv",
                 "-o", str(tmp_path)]) == 2
    assert not list(tmp_path.glob(".*partial"))


def test_a_write_refused_is_one_line_not_the_cleanup_error(history_db: Path, tmp_path: Path) -> None:
    """A file system that refuses the write (read-only: EROFS) refuses removing the partial file
    too; the error said is the write's. A name too long for the partial file's name fails both
    ways alike, as a read-only mount does (tests cannot mount one)."""
    out = tmp_path / ("a" * 250 + ".csv")
    for argv in (["sql", "SELECT 1 AS x", "--format", "csv"], ["export", "trades"]):
        proc = run_cli(*argv, "--db", str(history_db), "-o", str(out), check=False)
        assert (proc.returncode, proc.stdout) == (2, "")
        assert proc.stderr == f"nodetap {argv[0]}: cannot write -o {out}: File name too long\n"
    assert not list(tmp_path.glob(".*partial")) and not out.exists()


@pytest.mark.parametrize("command", [["sql", "SELECT 1 AS x, 2.5 AS y"],
                                     ["candles", "--coin", "BTC", "--no-fill"]])
def test_sql_and_candles_write_the_format_the_file_name_says(history_db: Path, tmp_path: Path,
                                                             command: list[str]) -> None:
    """Without --format, the -o file's extension picks the format, as `export` does; a --format
    that contradicts it is refused, and an extension that names no format keeps the table."""
    argv = [*command, "--db", str(history_db)]
    frames = {}
    for ext in ("parquet", "csv", "json", "ndjson"):
        out = tmp_path / f"x.{ext}"
        assert run_cli(*argv, "-o", str(out)).stdout == ""
        frames[ext] = {"parquet": pl.read_parquet, "csv": pl.read_csv, "json": pl.read_json,
                       "ndjson": pl.read_ndjson}[ext](out)
        explicit = run_cli(*argv, "--format", ext, "-o", str(tmp_path / f"e.{ext.upper()}"))
        assert explicit.returncode == 0 and (tmp_path / f"e.{ext.upper()}").read_bytes() == out.read_bytes()
    assert frames["parquet"].equals(frames["csv"].cast(frames["parquet"].schema))  # type: ignore[arg-type]
    assert frames["json"].equals(frames["ndjson"])
    assert len(frames["parquet"]) == (1 if command[0] == "sql" else 2)
    table = run_cli(*argv).stdout
    run_cli(*argv, "-o", str(tmp_path / "x.txt"))
    assert (tmp_path / "x.txt").read_text() == table
    for fmt, name in (("csv", "y.parquet"), ("table", "y.csv"), ("parquet", "y.json")):
        proc = run_cli(*argv, "--format", fmt, "-o", str(tmp_path / name), check=False)
        ext = name.split(".")[1]
        assert (proc.returncode, proc.stderr) == (2, (
            f"nodetap {command[0]}: --format {fmt} but -o {tmp_path / name} names a {ext} file: drop "
            f"--format (the extension says {ext}), or name the file for {fmt}\n"))
        assert not (tmp_path / name).exists()


def test_sql_writes_through_a_pipe_or_a_link_at_the_output_path(history_db: Path, tmp_path: Path) -> None:
    """Only a regular file is written beside and renamed into place: a pipe (or /dev/stdout)
    is written to, and a link's target, the link kept."""
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    got: list[bytes] = []
    reader = threading.Thread(target=lambda: got.append(fifo.read_bytes()), daemon=True)
    reader.start()
    run_cli("sql", "SELECT 1 AS x", "--db", str(history_db), "--format", "csv", "-o", str(fifo))
    reader.join(timeout=60)
    assert got == [b"x\n1\n"] and stat.S_ISFIFO(fifo.lstat().st_mode)
    target, link = tmp_path / "target.csv", tmp_path / "link.csv"
    target.write_bytes(b"old")
    link.symlink_to(target)
    run_cli("sql", "SELECT 2 AS y", "--db", str(history_db), "--format", "csv", "-o", str(link))
    assert link.is_symlink() and target.read_bytes() == b"y\n2\n"


def test_candles_times_are_checked_as_exports_check_them(history_db: Path,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["candles", "--db", str(history_db), "--coin", "BTC"]
    assert main([*argv, "--start", "2026-01-05T12:00", "--end", "2026-01-05T11:00"]) == 2
    assert capsys.readouterr().err == ("nodetap candles: --end (2026-01-05T11:00) is before --start "
                                       "(2026-01-05T12:00)\n")
    assert main([*argv, "--start", "-99999999999999999999"]) == 2
    assert capsys.readouterr().err.startswith(
        "nodetap candles: --start: -99999999999999999999 is out of range")
    # a start past the data's last trade, with no --end: said so, not in the protocol's words
    assert main([*argv, "--start", "2030-01-01"]) == 2
    assert capsys.readouterr().err == (
        "nodetap candles: --start 2030-01-01T00:00:00Z is after the data's end (2026-01-05T12:31:00Z, "
        "the trades' watermark): pass an earlier --start, or --end too\n")


def test_tables_print_plain_decimals_and_iso_times(history_db: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["candles", "--db", str(history_db), "--coin", "BTC", "--no-fill"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["coin", "interval", "t", "T", "o", "h", "l", "c", "v", "vq", "n",
                                "vwap", "filled"]
    assert lines[1].split() == ["BTC", "1m", "2026-01-05T12:30:00", "2026-01-05T12:30:59.999",
                                "89051.035", "89051.035", "89051.035", "89051.035", "200.0",
                                "17810207.0", "1", "89051.035", "false"]
    assert lines[2].split()[8:10] == ["0.00004", "3.56208"]
    assert main(["sql", "SELECT 1.7810207e7::DOUBLE AS x, TIMESTAMP '2026-01-05 10:00:00' AS t",
                 "--db", str(history_db)]) == 0
    assert capsys.readouterr().out.splitlines()[1].split() == ["17810207.0", "2026-01-05T10:00:00"]


def test_the_candles_table_gives_the_volume_weighted_price_to_eight_figures(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    node = Node(tmp_path / "node")
    node.add_trade("2026-01-05T10:10:00", 1, px="100.0", sz="1.0")
    node.add_trade("2026-01-05T10:10:01", 2, px="100.1", sz="2.0")  # vwap 100.0666...
    db = tmp_path / "v.duckdb"
    run_cli("ingest", "--node-dir", str(node.root), "--db", str(db), "--from", "start", "--once")
    assert main(["candles", "--db", str(db), "--coin", "BTC", "--no-fill"]) == 0
    assert capsys.readouterr().out.splitlines()[1].split()[11] == "100.06667"
    assert main(["candles", "--db", str(db), "--coin", "BTC", "--no-fill", "--format", "json"]) == 0
    assert orjson.loads(capsys.readouterr().out)[0]["vwap"] == pytest.approx(300.2 / 3, rel=1e-15)


def test_cells() -> None:
    assert [cell(v) for v in (1.7810207e7, 1e-07, 5.0, None, True, 3)] == [
        "17810207.0", "0.0000001", "5.0", "-", "true", "3"]
    assert cell(datetime(2026, 1, 5, 10, 0, 59, 999000)) == "2026-01-05T10:00:59.999"
    assert cell(datetime(2026, 1, 5, 10, 0, 0, 1)) == "2026-01-05T10:00:00.000001"


def test_status_measures_lag_against_the_node_dir_the_database_reads(tmp_path: Path) -> None:
    """`status --db` alone measures lag against the node dir the database is bound to (not the
    default one); another node dir given is refused with both paths and what to do."""
    node = Node(tmp_path / "node")
    node.add_trade("2026-01-05T10:00:10", 1)
    db = tmp_path / "s.duckdb"
    run_cli("ingest", "--node-dir", str(node.root), "--db", str(db), "--from", "start", "--once")
    node.add_trade("2026-01-05T10:00:20", 2)  # written after: lag
    rows = orjson.loads(run_cli("status", "--db", str(db), "--json").stdout)
    fills = next(r for r in rows if r["stream"].startswith("node_fills"))
    size = sum(p.stat().st_size for p in (node.root / fills["stream"]).rglob("*") if p.is_file())
    assert fills["offset"] < size and fills["lag_bytes"] == size - fills["offset"] > 0
    other = tmp_path / "other"
    other.mkdir()
    refused = run_cli("status", "--db", str(db), "--node-dir", str(other), check=False)
    assert refused.returncode != 0
    assert f"reads node dir {node.root.resolve()}, not {other.resolve()}" in refused.stderr


def test_status_refuses_a_node_dir_asked_for_even_the_default_one(tmp_path: Path) -> None:
    node = Node(tmp_path / "node")
    node.add_trade("2026-01-05T10:00:10", 1)
    db = tmp_path / "s.duckdb"
    run_cli("ingest", "--node-dir", str(node.root), "--db", str(db), "--from", "start", "--once")
    for how in (["--node-dir", "data/demo-node"], ["--node-dir", "./data/demo-node"]):
        refused = run_cli("status", "--db", str(db), *how, check=False)
        assert refused.returncode == 2 and "reads node dir" in refused.stderr
    refused = run_cli("status", "--db", str(db), env={"NODETAP_NODE_DIR": "data/demo-node"}, check=False)
    assert refused.returncode == 2 and "reads node dir" in refused.stderr
    missing = run_cli("status", "--db", str(tmp_path / "none.duckdb"), check=False)
    assert missing.returncode == 2
    assert f"database {tmp_path / 'none.duckdb'} does not exist" in missing.stderr
    assert "`nodetap ingest` or `nodetap serve` makes it" in missing.stderr


def test_a_db_path_that_cannot_be_a_database_is_refused_before_anything_starts(tmp_path: Path) -> None:
    node = Node(tmp_path / "node")
    node.add_trade("2026-01-05T10:00:10", 1)
    a_file = tmp_path / "notes.txt"
    a_file.write_text("not a database\n")
    a_dir = tmp_path / "dbdir"
    a_dir.mkdir()
    cases = {
        str(a_file / "x.duckdb"): f"{a_file} is a file, not a directory",
        str(a_dir): f"--db {a_dir} is a directory: pass a file in it, e.g. {a_dir / 'nodetap.duckdb'}",
        str(a_file): f"--db {a_file} is not a DuckDB database file (--db, setting db): pass the .duckdb file",
    }
    for db, said in cases.items():
        for argv in (["ingest", "--once", "--from", "start", "--node-dir", str(node.root), "--db", db],
                     ["backfill", "--db", db, str(node.root)]):
            out = run_cli(*argv, check=False)
            assert out.returncode == 2, (argv, out.stderr)
            assert said in out.stderr and "Traceback" not in out.stderr, out.stderr
    assert a_file.read_text() == "not a database\n" and not any(a_dir.iterdir())
    # a path to backfill that is not there: refused before a database is made
    db = tmp_path / "made.duckdb"
    out = run_cli("backfill", "--db", str(db), str(tmp_path / "nowhere"), check=False)
    assert out.returncode == 2 and f"{tmp_path / 'nowhere'}: no such file or directory" in out.stderr
    assert not db.exists()


def test_backfill_prints_its_log_lines_above_its_progress_bar(tmp_path: Path) -> None:
    node = Node(tmp_path / "node")
    node.add_trade("2026-01-05T10:10:00", 1)
    out = run_cli("backfill", "--db", str(tmp_path / "b.duckdb"), "--log-level", "INFO", str(node.root))
    said = [line for line in re.split(r"[\r\n]", out.stderr) if "event=backfill_file" in line]
    assert said and all(re.match(r"\d{4}-\d\d-\d\d \d\d:\d\d", line) for line in said), out.stderr
    assert "backfill: 100%" in out.stderr


def test_each_database_error_says_what_to_do_about_it(history_db: Path, tmp_path: Path) -> None:
    """Not a DuckDB file, a directory, a file held by a running ingest/serve: each says so, and
    only the last one points at the server, at the endpoint that does what the command does."""
    toml = tmp_path / "nodetap.toml"
    toml.write_text("port = 8000\n")
    for db, said in ((toml, f"--db {toml} is not a DuckDB database file (--db, setting db): pass the .duckdb "
                            "file that `nodetap ingest` or `serve` made (e.g. data/nodetap.duckdb)"),
                     (tmp_path, f"--db {tmp_path} is a directory: pass a file in it, e.g. "
                                f"{tmp_path / 'nodetap.duckdb'} (setting db)")):
        proc = run_cli("sql", "select 1", "--db", str(db), check=False)
        assert (proc.returncode, proc.stdout, proc.stderr) == (2, "", f"nodetap sql: {said}\n")
    hold = (f"import duckdb, sys; c = duckdb.connect({str(history_db)!r}); print('held', flush=True); "
            "sys.stdin.read()")
    holder = subprocess.Popen([sys.executable, "-c", hold], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline() == "held\n"
        for argv, endpoint in ((["sql", "select 1"], "POST /v1/sql"),
                               (["export", "trades", "-o", str(tmp_path / "t.csv")],
                                "GET /v1/export/<table>.<format>"),
                               (["candles", "--coin", "BTC"], "GET /v1/candles")):
            proc = run_cli(*argv, "--db", str(history_db), check=False)
            assert proc.returncode == 2
            said = (rf"nodetap {argv[0]}: database {re.escape(str(history_db))} is held by .+ \(PID "
                    rf"{holder.pid}\): while `nodetap ingest` or `serve` runs on it, ask the server "
                    rf"\({re.escape(endpoint)}\), or stop that process\n")
            assert re.fullmatch(said, proc.stderr), proc.stderr
        proc = run_cli("backfill", "--quiet", "--db", str(history_db), str(tmp_path), check=False)
        assert proc.returncode == 2 and proc.stderr.endswith(
            f"(PID {holder.pid}) (--db, setting db): stop that process, or pass another file\n")
        assert "/v1/" not in proc.stderr
    finally:
        holder.communicate("")


def test_a_database_on_a_read_only_volume_says_so(tmp_path: Path) -> None:
    """A read-only tmpfs mounted in a mount namespace of its own (root, or user namespaces)."""
    node = Node(tmp_path / "node")
    node.add_trade("2026-01-05T10:00:10", 1)
    rom = tmp_path / "rom"
    rom.mkdir()
    cli = f"{sys.executable} -m etl.cli ingest --once --node-dir {node.root} --db {rom}/x.duckdb"
    proc = subprocess.run(["unshare", "-rm", "sh", "-c", f"mount -t tmpfs -o ro tmpfs {rom} && {cli}"],
                          capture_output=True, text=True, cwd=ROOT, timeout=60)
    if "nodetap" not in proc.stderr:
        pytest.skip(f"cannot mount a read-only file system here: {proc.stderr.strip()}")
    assert (proc.returncode, proc.stderr) == (2, (
        f"nodetap ingest: cannot open database {rom}/x.duckdb: {rom} is on a read-only file system "
        "(--db, setting db): pass a path on a volume this user can write to\n"))


def test_a_db_in_a_directory_that_does_not_exist_is_refused_not_made(tmp_path: Path) -> None:
    node = Node(tmp_path / "node")
    node.add_trade("2026-01-05T10:00:10", 1)
    db = tmp_path / "no" / "such" / "x.duckdb"
    said = (f"database {db}: directory {db.parent} does not exist (--db, setting db): create it "
            f"(mkdir -p {db.parent}) or pass a path in a directory that exists\n")
    for argv in (["ingest", "--once", "--from", "start", "--node-dir", str(node.root)],
                 ["serve", "--node-dir", str(node.root), "--port", str(free_port())],
                 ["backfill", str(node.root)]):
        proc = run_cli(*argv, "--db", str(db), check=False)
        assert (proc.returncode, proc.stderr) == (2, f"nodetap {argv[0]}: {said}"), argv
    assert not (tmp_path / "no").exists()


def test_a_db_named_as_a_data_file_is_refused_by_every_command(tmp_path: Path) -> None:
    """DuckDB opens x.parquet (or .csv, .json, ...) as a view of that data: `sql` and `status`
    died with "Cannot launch in-memory database in read-only mode", `ingest` stored rows in a new
    database of that name, or failed with a message about the lake, leaving files behind."""
    node = Node(tmp_path / "node")
    node.add_trade("2026-01-05T10:00:10", 1)
    data = tmp_path / "trades.parquet"
    duckdb.connect().execute(f"COPY (SELECT 1 AS a) TO '{data}' (FORMAT parquet)")
    before = data.read_bytes()
    for db, suffix, instead in ((data, ".parquet", "trades.duckdb"),
                                (tmp_path / "new.CSV", ".CSV", "new.duckdb"),
                                (tmp_path / "x.json.gz", ".json.gz", "x.duckdb")):
        said = (f"nodetap: db {db}: DuckDB opens a {suffix} file as data, not as a database; the db is a "
                f"DuckDB database file, such as {tmp_path / instead} (set by --db)\n")
        for argv in (["ingest", "--once", "--from", "start", "--node-dir", str(node.root)], ["status"],
                     ["sql", "SELECT 1"], ["export", "trades", "-o", str(tmp_path / "out.parquet")],
                     ["config"]):
            proc = run_cli(*argv, "--db", str(db), check=False)
            assert (proc.returncode, proc.stderr) == (2, said), argv
    assert data.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["node", "trades.parquet"]


@pytest.mark.parametrize(("given", "why"), [
    ("yesterday", ""),
    ("20261399", ": 20261399 is not a date (month must be in 1..12)"),
    ("20260230", ": 20260230 is not a date (day is out of range for month)"),
    ("20260105/25", ": the hour is 0 to 23 (UTC), not 25"),
    ("20260105/", ""),
])
def test_a_bad_from_is_refused_before_the_database_is_made(tmp_path: Path, given: str, why: str) -> None:
    node = Node(tmp_path / "node")
    node.add_trade("2026-01-05T10:00:10", 1)
    db = tmp_path / "new" / "x.duckdb"
    out = run_cli("ingest", "--once", "--node-dir", str(node.root), "--db", str(db), "--from",
                  given, check=False)
    assert (out.returncode, out.stdout) == (2, "")
    assert out.stderr == ("nodetap ingest: start_from must be end, start or YYYYMMDD[/H], not "
                          f"{given!r}{why} (--from, setting start_from; a day and hour as 20260105/9)\n")
    assert not db.exists() and not db.parent.exists()


def test_a_from_later_than_every_file_reads_none_of_them(tmp_path: Path) -> None:
    """A first run `--from` a day no file has reached yet skips every file there (it used to read
    them all, from the first), then reads the first file at or after that day when it appears."""
    node = Node(tmp_path / "node")
    node.add_trade("2026-01-05T10:00:10", 1)
    db = tmp_path / "x.duckdb"
    out = run_cli("ingest", "--once", "--node-dir", str(node.root), "--db", str(db), "--from", "20300101")
    assert "event=start_after_files stream=node_fills from=20300101/0 files_before=1" in out.stderr
    assert query(db, "SELECT count(*) FROM trades") == [(0,)]
    # the files appear while the pipeline runs
    s = Settings(node_dir=node.root, db=db, start_from="20300101", keep_all=True, rules_file=Path(""))
    store = Store.from_settings(s)
    pipe = Pipeline(s, store)
    pipe.run_once()
    # nothing is waiting to be read: the files there are before --from
    assert [(st.stream, st.lag_bytes) for st in pipe.snapshot()] == [("node_fills", 0)]
    later = node.root / "node_fills" / "hourly" / "20300101" / "2"
    later.parent.mkdir()
    later.write_bytes(fill_lines("2030-01-01T02:00:10", 5) + b"\n")
    node.hour_of_writes = 11  # an hour file before --from that appears late: not read either
    node.add_trade("2026-01-05T11:00:10", 2)
    pipe.run_once()
    assert store.con.execute("SELECT tid FROM trades").fetchall() == [(5,)]
    pipe.close()
    store.close()


def test_a_first_run_from_the_end_says_how_to_read_the_files_already_there(tmp_path: Path) -> None:
    node = Node(tmp_path / "node")
    node.add_trade("2026-01-05T10:00:10", 1)
    node.hour_of_writes = 11  # the node has moved on to the next hour file
    node.add_trade("2026-01-05T11:00:10", 2)
    at_end = run_cli("ingest", "--once", "--node-dir", str(node.root), "--db", str(tmp_path / "a.duckdb"))
    hint = [line for line in at_end.stderr.splitlines() if "event=start_at_end" in line]
    assert len(hint) == 1 and "files_before=1" in hint[0]
    assert "--from start reads the files already there" in hint[0]
    from_start = run_cli("ingest", "--once", "--from", "start", "--node-dir", str(node.root),
                         "--db", str(tmp_path / "b.duckdb"))
    assert "start_at_end" not in from_start.stderr


def test_candles_of_a_database_with_no_trade_say_so(make_node_dir: Any, tmp_path: Path) -> None:
    """Order statuses only: no trade, so no candle (and the data's end is the clock's)."""
    node = make_node_dir(lines=300, kinds=("orders",))
    db = tmp_path / "o.duckdb"
    run_cli("ingest", "--node-dir", str(node), "--db", str(db), "--from", "start", "--once", "--keep-all")
    out = run_cli("candles", "--coin", "BTC", "--db", str(db), check=False)
    assert out.returncode == 2
    assert out.stderr.strip() == ("nodetap candles: unknown coin 'BTC' (--coin): no candles are stored in "
                                  "this database yet (--db, setting db)")


def test_candle_volumes_are_rounded_as_the_api_rounds_them(tmp_path: Path,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    """Volumes are float sums (0.1 + 0.2 = 0.30000000000000004): every format prints them to 8
    decimals, as `/v1/candles` and the live feed send them."""
    node = Node(tmp_path / "node")
    node.add_trade("2026-01-05T10:10:00", 1, px="1.0", sz="0.1")
    node.add_trade("2026-01-05T10:10:01", 2, px="1.0", sz="0.2")
    db = tmp_path / "v.duckdb"
    run_cli("ingest", "--node-dir", str(node.root), "--db", str(db), "--from", "start", "--once",
            "--keep-all")
    assert main(["candles", "--db", str(db), "--coin", "BTC", "--no-fill", "--format", "csv"]) == 0
    rows = capsys.readouterr().out.splitlines()
    header, row = rows[0].split(","), rows[1].split(",")
    assert (row[header.index("v")], row[header.index("vq")]) == ("0.3", "0.3")


@pytest.mark.parametrize("command", ["demo", "serve"])
def test_the_address_is_printed_once_it_answers(tmp_path: Path, command: str) -> None:
    """The dashboard's address is printed when the server listens, not before the app's
    startup (seconds on a first run): a user who opens it at once finds it."""
    import signal

    import httpx

    port = free_port()
    node = tmp_path / "node"
    if command == "serve":
        Node(node).add_trade("2026-01-05T10:00:10", 1)
    proc = subprocess.Popen([sys.executable, "-m", "etl.cli", command, "--node-dir", str(node), "--db",
                             str(tmp_path / "d.duckdb"), "--port", str(port)],
                            cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    said: list[str] = []
    try:
        assert proc.stderr is not None
        for line in proc.stderr:  # the process ends on a failure: the loop too
            said.append(line)
            if f"http://127.0.0.1:{port}/" in line:
                break
        assert f"http://127.0.0.1:{port}/" in "".join(said), said
        assert httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=30).status_code == 200
    finally:
        proc.send_signal(signal.SIGINT)
        proc.communicate(timeout=30)
    assert proc.returncode == 0


def test_ingest_once_on_the_bundled_sample_seals_its_complete_hour(tmp_path: Path) -> None:
    """`ingest --once` seals every hour its streams have passed, without `seal_grace_s`: the
    README's lake examples work on the bundled sample, whose data ends 6 s into 11:00."""
    db = tmp_path / "sample.duckdb"
    run_cli("ingest", "--config", "data/nodetap.toml", "--db", str(db), "--once")
    sealed = query(db, "SELECT tbl, hour FROM lake_hours WHERE sealed_at IS NOT NULL ORDER BY ALL")
    hour10 = datetime(2026, 1, 5, 10)
    assert ("trades", hour10) in sealed and ("orders", hour10) in sealed
    assert all(hour == hour10 for _, hour in sealed)  # 11:00 is not over
    lake = pl.read_parquet(tmp_path / "sample.duckdb.lake" / "trades" / "date=2026-01-05" / "hour=10")
    stored = query(db, "SELECT count(*) FROM history.trades WHERE time < '2026-01-05 11:00'")
    assert lake.height == stored[0][0] > 0
