"""Settings: precedence, unknown keys named, bad values explained, docs complete."""

from __future__ import annotations

import re
from dataclasses import fields
from pathlib import Path

import pytest

from etl.config import ConfigError, Settings, load_settings
from tests.conftest import ROOT, run_cli


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
    with pytest.raises(ConfigError, match=r"unknown setting\(s\) in .*n\.toml: batch_max_byte, node_dri"):
        load_settings(cfg, env={})


def test_unknown_env_key_is_named() -> None:
    with pytest.raises(ConfigError, match="NODETAP_.*: frobnicate"):
        load_settings(None, env={"NODETAP_FROBNICATE": "1"})


@pytest.mark.parametrize(("key", "value", "message"), [
    ("NODETAP_BATCH_MAX_BYTES", "lots", "setting batch_max_bytes: 'lots' is not a valid int"),
    ("NODETAP_POLL", "maybe", "setting poll: 'maybe' is not a valid bool"),
    ("NODETAP_BACKLOG", "some", "backlog must be 'drop' or 'keep'"),
    ("NODETAP_MAX_BACKLOG_BYTES", "0", "max_backlog_bytes must be positive"),
])
def test_bad_values_are_explained(key: str, value: str, message: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(message)):
        load_settings(None, env={key: value})


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


def test_every_setting_is_documented_in_the_readme() -> None:
    readme = (ROOT / "README.md").read_text()
    missing = [f.name for f in fields(Settings) if f"`{f.name}`" not in readme]
    assert missing == []


def test_bundled_config_loads() -> None:
    s = load_settings(ROOT / "data" / "nodetap.toml", env={})
    assert s.node_dir == Path("data/sample-node")
