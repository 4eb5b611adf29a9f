"""Settings: precedence, unknown keys named, bad values explained, the flags and the README
table generated from the one declaration."""

from __future__ import annotations

import re
import threading
from dataclasses import fields
from pathlib import Path

import duckdb
import pytest

from etl.cli import COMMANDS, build_parser
from etl.config import ConfigError, Settings, load_settings, memory_size, setting_specs, value_range
from etl.nodefiles import wait_for_dir
from tests.conftest import ROOT, run_cli
from tests.test_lake import Node


def test_defaults_file_env_flags_precedence(tmp_path: Path) -> None:
    cfg = tmp_path / "n.toml"
    cfg.write_text('[nodetap]\nbatch_max_bytes = 1000\ndebounce_ms = 7\nbacklog = "keep"\n')
    s = load_settings(cfg, env={"NODETAP_DEBOUNCE_MS": "9", "NODETAP_POLL": "true"},
                      flags={"backlog": "drop", "db": None})
    assert s.batch_max_bytes == 1000  # file over default
    assert s.debounce_ms == 9  # env over file
    assert s.poll is True
    assert s.backlog == "drop"  # flag over file
    assert s.db == Settings().db  # a flag left unset does not override
    assert load_settings(None, env={}).max_line_bytes == Settings().max_line_bytes


def test_unknown_key_in_file_is_named(tmp_path: Path) -> None:
    cfg = tmp_path / "n.toml"
    cfg.write_text("batch_max_byte = 5\nnode_dri = 'x'\n")
    with pytest.raises(ConfigError, match=re.escape(
            "unknown setting(s) in " + str(cfg) + ": batch_max_byte (did you mean batch_max_bytes?), "
            "node_dri (did you mean node_dir?) (known: backlog, batch_max_bytes,")):
        load_settings(cfg, env={})


def test_a_file_with_a_nodetap_table_holds_nothing_outside_it(tmp_path: Path) -> None:
    cfg = tmp_path / "n.toml"
    cfg.write_text(f'port = 9000\nnode_dri = "typo"\n[nodetap]\ndb = "{tmp_path / "x.duckdb"}"\n'
                   '[other]\nport = 1\n')
    proc = run_cli("ingest", "--once", "--config", str(cfg), "--node-dir", str(tmp_path), check=False)
    assert proc.returncode == 2
    assert proc.stderr == (
        f"nodetap: config file {cfg}: port, node_dri (did you mean node_dir?), [other] outside the [nodetap] "
        "table, which holds the settings of a file that has one: move settings under [nodetap] (a key above "
        "the [nodetap] line is outside it) or remove what is not a setting\n")
    assert list(tmp_path.iterdir()) == [cfg]
    cfg.write_text("nodetap = 5\n")
    with pytest.raises(ConfigError, match=re.escape(f"config file {cfg}: nodetap must be the [nodetap] ")):
        load_settings(cfg, env={})
    # the two documented layouts: every key at the top, or every key under [nodetap]
    cfg.write_text("port = 9000\n")
    assert load_settings(cfg, env={}).port == 9000
    cfg.write_text("[nodetap]\nport = 9000\n")
    assert load_settings(cfg, env={}).port == 9000


def test_unknown_env_key_is_named_as_typed() -> None:
    with pytest.raises(ConfigError, match=re.escape(
            "unknown setting(s) in environment (NODETAP_*): NODETAP_FROBNICATE (known: NODETAP_BACKLOG,")):
        load_settings(None, env={"NODETAP_FROBNICATE": "1"})
    with pytest.raises(ConfigError, match=re.escape("NODETAP_NODEDIR (did you mean NODETAP_NODE_DIR?)")):
        load_settings(None, env={"NODETAP_NODEDIR": "/x"})
    with pytest.raises(ConfigError, match=re.escape(": NODETAP_node_dri (did you mean NODETAP_NODE_DIR?)")):
        load_settings(None, env={"NODETAP_node_dri": "/x"})  # named as it is set: names are case-sensitive


@pytest.mark.parametrize(("key", "value", "message"), [
    ("NODETAP_BATCH_MAX_BYTES", "lots", "setting batch_max_bytes: 'lots' is not a valid int"),
    ("NODETAP_POLL", "maybe", "setting poll: 'maybe' is not a valid bool"),
    ("NODETAP_BACKLOG", "some", "backlog must be 'drop' or 'keep'"),
    ("NODETAP_MAX_BACKLOG_BYTES", "0", "max_backlog_bytes must be 1 or more, not 0"),
    ("NODETAP_PARSE_WORKERS", "-1", "parse_workers must be 0 (chosen for the cores) or more, not -1"),
    ("NODETAP_COMMIT_UNITS", "-2", "commit_units must be 0 (chosen for the cores) or more, not -2"),
    ("NODETAP_SQL_TIMEOUT_S", "-5",
     "sql_timeout_s must be more than 0, not -5.0 (set by NODETAP_SQL_TIMEOUT_S)"),
    ("NODETAP_SQL_TIMEOUT_S", "0", "sql_timeout_s must be more than 0, not 0.0"),
    ("NODETAP_RETAIN_HOURS", "-1", "retain_hours must be 0 (keeps everything in DuckDB) or more, not -1.0"),
    ("NODETAP_SEAL_GRACE_S", "-100",
     "seal_grace_s must be 0 (sealed once the watermark passes the hour's end) or more, not -100.0"),
    ("NODETAP_STALL_AFTER_S", "nan", "stall_after_s must be a finite number, not nan"),
    ("NODETAP_RETAIN_HOURS", "inf", "retain_hours must be a finite number, not inf"),
    ("NODETAP_PORT", "99999", "port must be 1 to 65535, not 99999 (set by NODETAP_PORT)"),
    ("NODETAP_PORT", "0", "port must be 1 to 65535, not 0"),
    ("NODETAP_POLL_INTERVAL_MS", "0", "poll_interval_ms must be 1 or more, not 0"),
])
def test_bad_values_are_explained(key: str, value: str, message: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(message)):
        load_settings(None, env={key: value})


def test_a_bad_value_says_where_it_was_set(tmp_path: Path) -> None:
    cfg = tmp_path / "n.toml"
    cfg.write_text("[nodetap]\nmax_backlog_bytes = 0\n")
    said = "max_backlog_bytes must be 1 or more, not 0"
    with pytest.raises(ConfigError) as in_file:
        load_settings(cfg, env={})
    assert str(in_file.value) == f"{said} (set in {cfg})"
    with pytest.raises(ConfigError) as in_env:
        load_settings(None, env={"NODETAP_MAX_BACKLOG_BYTES": "0"})
    assert str(in_env.value) == f"{said} (set by NODETAP_MAX_BACKLOG_BYTES)"
    cfg.write_text("[nodetap]\nmax_backlog_bytes = 7\ndebounce_ms = 3\n")
    with pytest.raises(ConfigError) as by_flag:
        load_settings(cfg, env={"NODETAP_MAX_BACKLOG_BYTES": "5"}, flags={"max_backlog_bytes": 0})
    assert str(by_flag.value) == f"{said} (set by --max-backlog-bytes)"
    assert load_settings(cfg, env={"NODETAP_MAX_BACKLOG_BYTES": "5"}).origins == {
        "max_backlog_bytes": ("env", "NODETAP_MAX_BACKLOG_BYTES"), "debounce_ms": ("file", str(cfg))}


@pytest.mark.parametrize(("line", "message"), [
    ("max_line_bytes = 1.5", "setting max_line_bytes: 1.5 is not a valid int: a whole number, written "
                             "without a decimal point (2, not 2.0)"),
    ("max_line_bytes = 2.0", "setting max_line_bytes: 2.0 is not a valid int: a whole number"),
    ("port = true", "setting port: True is not a valid int"),
    ("retain_hours = true", "setting retain_hours: True is not a valid float"),
    ('host = ["a", "b"]', "setting host: ['a', 'b'] is not a valid str"),
    ("node_dir = {a = 1}", "setting node_dir: {'a': 1} is not a valid Path"),
    ("streams = {a = 1}", "setting streams: {'a': 1} is not a valid tuple"),
])
def test_a_file_value_of_the_wrong_kind_is_refused_not_converted(tmp_path: Path, line: str,
                                                                message: str) -> None:
    cfg = tmp_path / "n.toml"
    cfg.write_text(f"[nodetap]\n{line}\n")
    with pytest.raises(ConfigError) as err:
        load_settings(cfg, env={})
    assert str(err.value).startswith(message) and str(err.value).endswith(f" (set in {cfg})")


def test_an_int_setting_refuses_a_fraction_from_every_source(tmp_path: Path) -> None:
    said = "setting max_line_bytes: {} is not a valid int: a whole number, written without a decimal point"
    for raw in ("1.5", "2.0"):
        with pytest.raises(ConfigError, match=re.escape(said.format(repr(raw)))):
            load_settings(None, env={"NODETAP_MAX_LINE_BYTES": raw})
    assert load_settings(None, env={"NODETAP_MAX_LINE_BYTES": "2"}).max_line_bytes == 2
    cfg = tmp_path / "n.toml"
    cfg.write_text(f"[nodetap]\nmax_line_bytes = 1.5\ndb = '{tmp_path / 'x.duckdb'}'\n")
    proc = run_cli("ingest", "--once", "--config", str(cfg), "--node-dir", str(tmp_path), check=False)
    assert proc.returncode == 2
    assert proc.stderr == f"nodetap: {said.format('1.5')} (2, not 2.0) (set in {cfg})\n"
    assert list(tmp_path.iterdir()) == [cfg]


def test_every_number_has_a_range_and_zero_is_allowed_only_where_it_means_something() -> None:
    numbers = [spec for spec in setting_specs() if spec.kind in ("int", "float")]
    assert len(numbers) == 26
    for spec in numbers:
        assert spec.least is not None or spec.above is not None, spec.name
        low = spec.least if spec.least is not None else spec.above
        below = low - 1 if spec.kind == "int" else low - 0.5
        with pytest.raises(ConfigError, match=re.escape(f"{spec.name} must be {value_range(spec)}, not ")):
            load_settings(None, env={f"NODETAP_{spec.name.upper()}": str(below)})
        if spec.least == 0:  # the doc says what 0 means
            assert spec.zero and re.search(r"\b0\b", spec.doc), spec.name
            assert getattr(load_settings(None, env={f"NODETAP_{spec.name.upper()}": "0"}), spec.name) == 0
    assert [s.name for s in numbers if s.least == 0] == [
        "debounce_ms", "rotate_grace_s", "db_threads", "bulk_nice", "commit_units", "parse_workers",
        "seal_grace_s", "retain_hours", "ws_max_lag_s"]


@pytest.mark.parametrize(("name", "value", "said"), [
    ("checkpoint_threshold", "zz", "checkpoint_threshold: 'zz' is not a memory size: a number and a unit: "
                                   "B, KB, MB, GB or TB (powers of 1000) or KiB, MiB, GiB or TiB (powers of "
                                   "1024), such as '128MB' or '1.5GiB'"),
    ("db_memory_limit", "lots", "db_memory_limit: 'lots' is not a memory size: a number and a unit"),
    ("db_memory_limit", "1000", "db_memory_limit: '1000' is not a memory size"),  # DuckDB wants a unit
    ("db_memory_limit", "-1GB", "db_memory_limit: '-1GB' is not a memory size"),  # DuckDB: no limit at all
    ("db_memory_limit", "80%", "db_memory_limit: '80%' is not a memory size"),
    ("checkpoint_threshold", "2GBs", "checkpoint_threshold: '2GBs' is not a memory size"),
    ("checkpoint_threshold", "0MB", "checkpoint_threshold must be at least 1MiB, not '0MB'"),
    ("db_memory_limit", "1000KB", "db_memory_limit must be at least 1MiB, not '1000KB'"),
])
def test_a_memory_size_is_checked_when_the_settings_are_read(tmp_path: Path, name: str, value: str,
                                                             said: str) -> None:
    cfg = tmp_path / "n.toml"
    cfg.write_text(f"[nodetap]\n{name} = '{value}'\n")
    with pytest.raises(ConfigError) as err:
        load_settings(cfg, env={})
    assert str(err.value).startswith(said) and str(err.value).endswith(f" (set in {cfg})")


def test_a_memory_size_accepted_is_one_duckdb_reads_the_same_way() -> None:
    sizes = {"128MB": 128_000_000, "2GB": 2 * 10**9, "1.5GiB": 3 << 29, "5000KB": 5_000_000, "2 TiB": 2 << 40,
             " 64 mib ": 64 << 20, "1048576B": 1 << 20, "1TB": 10**12, "1.5 gb": 1_500_000_000}
    con = duckdb.connect()
    try:
        for text, size in sizes.items():
            env = {"NODETAP_CHECKPOINT_THRESHOLD": text, "NODETAP_DB_MEMORY_LIMIT": text}
            s = load_settings(None, env=env)
            assert memory_size(s.checkpoint_threshold) == memory_size(s.db_memory_limit) == size
            for setting in ("memory_limit", "checkpoint_threshold"):
                con.execute(f"SET {setting} = '{text}'")
                theirs = con.execute(f"SELECT current_setting('{setting}')").fetchone()
                con.execute(f"SET {setting} = '{size}B'")
                assert theirs == con.execute(f"SELECT current_setting('{setting}')").fetchone(), text
    finally:
        con.close()


def test_serve_refuses_a_bad_memory_size_before_it_makes_the_database(tmp_path: Path) -> None:
    cfg = tmp_path / "n.toml"
    cfg.write_text(f"[nodetap]\ndb = '{tmp_path / 'x.duckdb'}'\ndb_memory_limit = 'lots'\n")
    proc = run_cli("serve", "--config", str(cfg), "--node-dir", str(tmp_path), check=False)
    assert proc.returncode == 2
    assert proc.stderr.startswith("nodetap: db_memory_limit: 'lots' is not a memory size: a number and a")
    assert list(tmp_path.iterdir()) == [cfg]


def test_node_info_url_is_http_or_https_or_empty(tmp_path: Path) -> None:
    cfg = tmp_path / "n.toml"
    cfg.write_text('[nodetap]\nnode_info_url = "file:///etc/passwd"\n')
    with pytest.raises(ConfigError) as err:
        load_settings(cfg, env={})
    assert str(err.value) == ("node_info_url must be an http:// or https:// URL, such as "
                              "http://127.0.0.1:3001/info, or empty, not 'file:///etc/passwd' "
                              f"(set in {cfg})")
    for url in ("ftp://127.0.0.1/info", "127.0.0.1:3001/info", "http://", "http://[::1:3001/info",
                "data:,{}", "gopher://127.0.0.1:3001/"):
        said = f"or empty, not {url!r} (set by NODETAP_NODE_INFO_URL)"
        with pytest.raises(ConfigError, match=re.escape(said)):
            load_settings(None, env={"NODETAP_NODE_INFO_URL": url})
    for url in ("", "https://node.example:3001/info", "HTTP://127.0.0.1:3001/info", "http://[::1]:3001/info"):
        assert load_settings(None, env={"NODETAP_NODE_INFO_URL": url}).node_info_url == url


def test_a_relative_path_from_a_config_file_that_is_not_there_says_where_it_was_looked_for(
        tmp_path: Path) -> None:
    """Relative paths in a config file are relative to the working directory (the bundled
    data/nodetap.toml relies on it), not to the file: a message says so, with the path tried."""
    conf, work = tmp_path / "conf", tmp_path / "work"
    Node(conf / "node").add_trade("2026-01-05T10:00:10", 1)  # beside the file, not in the working dir
    (conf / "rules.toml").write_text("[orders]\n")
    work.mkdir()
    cfg = conf / "n.toml"
    cfg.write_text('[nodetap]\nnode_dir = "node"\nrules_file = "rules.toml"\ndb = "x.duckdb"\n')

    def relative(name: str, path: str) -> str:
        return (f"setting {name} in {cfg}; a relative path there is relative to the working directory, "
                f"not to the file: {work / path}")

    said = {
        ("ingest", "--once"):
            f"nodetap ingest: node dir node does not exist ({relative('node_dir', 'node')})",
        ("status",): f"nodetap status: database x.duckdb does not exist ({relative('db', 'x.duckdb')}): "
                     "`nodetap ingest` or `nodetap serve` makes it",
        ("sql", "SELECT 1"): f"nodetap sql: database x.duckdb does not exist ({relative('db', 'x.duckdb')})",
    }
    for argv, message in said.items():
        proc = run_cli(*argv, "--config", str(cfg), cwd=work, check=False)
        assert (proc.returncode, proc.stderr) == (2, message + "\n"), argv
    Node(work / "node").add_trade("2026-01-05T10:00:10", 1)
    proc = run_cli("ingest", "--once", "--config", str(cfg), cwd=work, check=False)
    assert proc.returncode == 2
    assert proc.stderr == (f"nodetap ingest: rules file rules.toml: no such file "
                           f"({relative('rules_file', 'rules.toml')}; see docs/rules.md)\n")
    assert sorted(p.name for p in work.iterdir()) == ["node"]
    proc = run_cli("status", cwd=work, env={"NODETAP_DB": "x.duckdb"}, check=False)
    assert proc.stderr == ("nodetap status: database x.duckdb does not exist (NODETAP_DB, setting db): "
                           "`nodetap ingest` or `nodetap serve` makes it\n")
    (work / "rules.toml").write_text("[orders]\n")  # every path there now: it runs
    run_cli("ingest", "--once", "--from", "start", "--config", str(cfg), cwd=work)
    assert (work / "x.duckdb").exists()


def test_a_node_dir_waited_for_is_logged_as_the_absolute_path_looked_for(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.chdir(tmp_path)
    stop = threading.Event()
    stop.set()  # one look, one log line
    with caplog.at_level("WARNING", logger="nodetap.tail"):
        assert wait_for_dir(Path("node"), stop) is False
    assert f"event=node_dir_missing path={tmp_path / 'node'} waited_s=0" in caplog.text


def test_broken_toml_is_reported(tmp_path: Path) -> None:
    cfg = tmp_path / "n.toml"
    cfg.write_text("batch_max_bytes = = 3")
    with pytest.raises(ConfigError, match="cannot read config file"):
        load_settings(cfg, env={})


def test_cli_reports_unknown_key_and_exits_2(tmp_path: Path) -> None:
    cfg = tmp_path / "n.toml"
    cfg.write_text("colour = 'blue'\n")
    proc = run_cli("ingest", "--config", str(cfg), "--once", check=False)
    assert proc.returncode == 2
    assert "unknown setting(s)" in proc.stderr and "colour" in proc.stderr


def test_readme_settings_table_is_config_doc() -> None:
    doc = run_cli("config", "--doc").stdout
    readme = (ROOT / "README.md").read_text()
    start = readme.index("| setting | default | flag | what it does |")
    table = readme[start:readme.index("\n\n", start) + 1]
    assert table == doc
    assert [line.split("`")[1] for line in doc.splitlines()[2:]] == [
        f.name for f in fields(Settings) if f.name != "origins"]


def test_every_flag_is_parsed_into_its_setting_on_each_command_that_takes_it(tmp_path: Path) -> None:
    samples = {"Path": (str(tmp_path / "p"), tmp_path / "p"), "int": ("7", 7), "float": ("7.5", 7.5),
               "str": ("x", "x")}
    required = {"backfill": ["some/dir"], "sql": ["SELECT 1"], "export": ["trades", "-o", "x.parquet"],
                "candles": ["--coin", "BTC"], "ingest": ["--once"]}
    checked = 0
    for spec in (s for s in setting_specs() if s.flag):
        for command in (*spec.commands, "config"):
            extra = required.get(command, [])
            if spec.kind == "bool":
                argv, want = [spec.flag], True
            elif spec.kind == "tuple":
                argv, want = [spec.flag, "a", spec.flag, "b"], ("a", "b")
            elif spec.choices:
                argv, want = [spec.flag, spec.choices[-1].lower()], spec.choices[-1]
            else:
                raw, want = samples[spec.kind]
                argv = [spec.flag, raw]
            args = build_parser(COMMANDS).parse_args([command, *extra, *argv])
            assert getattr(args, spec.name) == (list(want) if spec.kind == "tuple" else want)
            checked += 1
    assert checked == 66  # 16 flags, on 50 (setting, command) pairs, and all on `config`


def test_settings_without_a_flag_are_not_offered_as_flags() -> None:
    parser_flags = {a.option_strings[0] for a in build_parser(COMMANDS)._subparsers  # type: ignore[union-attr]
                    ._group_actions[0].choices["config"]._actions if a.option_strings}
    declared = {spec.flag for spec in setting_specs() if spec.flag}
    assert parser_flags == declared | {"-h", "--config", "--doc"}


def test_a_choice_is_matched_without_case_and_a_bad_one_named() -> None:
    assert load_settings(None, env={"NODETAP_LOG_LEVEL": "debug"}).log_level == "DEBUG"
    with pytest.raises(ConfigError, match=re.escape(
            "log_level must be 'DEBUG', 'INFO', 'WARNING', 'ERROR' or 'CRITICAL', not 'LOUD'")):
        load_settings(None, env={"NODETAP_LOG_LEVEL": "LOUD"})


def test_bundled_config_loads() -> None:
    s = load_settings(ROOT / "data" / "nodetap.toml", env={})
    assert s.node_dir == Path("data/sample-node")


def test_db_fsync_sets_duckdbs_fsync_mode(tmp_path: Path) -> None:
    from etl.store import Store

    for value, mode in (("standard", "STANDARD"), ("none", "none")):
        env = {"NODETAP_DB_FSYNC": value, "NODETAP_DB": str(tmp_path / f"{value}.duckdb")}
        store = Store.from_settings(load_settings(None, env=env))
        try:
            assert store.con.execute("SELECT current_setting('fsync_mode')").fetchone() == (mode,)
        finally:
            store.close()
    with pytest.raises(ConfigError, match="db_fsync"):
        load_settings(None, env={"NODETAP_DB_FSYNC": "sometimes"})
