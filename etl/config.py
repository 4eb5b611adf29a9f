"""One typed settings object: defaults < TOML file < `NODETAP_*` environment < CLI flags."""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from dataclasses import MISSING, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from etl.candles import DEFAULT_INTERVALS, validate_intervals


class ConfigError(ValueError):
    """A setting is unknown or has a value of the wrong kind."""


def _s(default: Any, doc: str) -> Any:
    return field(default=default, metadata={"doc": doc})


@dataclass(frozen=True)
class Settings:
    node_dir: Path = _s(
        Path("data/demo-node"), "The node's data dir (holds node_order_statuses*, node_fills*, node_trades)."
    )
    db: Path = _s(Path("data/nodetap.duckdb"), "The DuckDB file: rows, cursors, gaps and rejects.")
    start_from: str = _s(
        "end",
        "First-run start per stream: `end` (new data only), `start` (oldest file) or `YYYYMMDD[/H]`. Later runs resume from stored cursors.",
    )
    backlog: str = _s(
        "drop",
        "`drop`: skip the oldest unread data past `max_backlog_bytes` (recorded in `gaps`); `keep`: process everything.",
    )
    max_backlog_bytes: int = _s(
        2 << 30, 'Unread bytes per stream above which the oldest are skipped (with `backlog = "drop"`).'
    )
    batch_max_bytes: int = _s(
        64 << 20,
        "Most bytes read and parsed in one micro-batch; bounds memory (peak RSS is about 10x this). Batches over ~123K rows skip DuckDB's WAL, which is why 64 MiB beats 32 MiB by ~20%.",
    )
    max_line_bytes: int = _s(1 << 20, "A line longer than this is rejected (recorded in `rejects`).")
    debounce_ms: int = _s(20, "watchfiles debounce: how long to gather file events before a batch.")
    poll: bool = _s(False, "Poll the files instead of using inotify (network filesystems, some containers).")
    poll_interval_ms: int = _s(200, "Polling period with `poll`, and the idle tick otherwise.")
    rotate_grace_s: float = _s(
        5.0,
        "How long an unterminated last line of an hour file may wait once the next hour's file exists, before it is rejected.",
    )
    streams: tuple[str, ...] = _s(
        (), "Only these stream directories (e.g. `node_fills_by_block`); empty means all found."
    )
    checkpoint_threshold: str = _s(
        "128MB", "DuckDB WAL size that triggers a checkpoint; DuckDB's 16MB default halves insert speed."
    )
    db_threads: int = _s(
        0,
        "DuckDB threads of the writer; 0: one per four cores, at least one (one leaves the other core of a 2-core machine to the parser).",
    )
    parse_workers: int = _s(
        0,
        "Units a stream's lane parses at once while it is behind; 0: one per two cores, at least one. Memory per lane is about (parse_workers + 2) x batch_max_bytes x 10.",
    )
    live_batch_ms: int = _s(
        250,
        "A lane that is caught up reads at most what it can parse and commit in this time, so the feed publishes often; a lane that is behind reads `batch_max_bytes` at a time. Smaller is not faster: each batch has a fixed cost (50 ms doubled the p99 at 100K lines/s on 2 cores, docs/benchmarks.md).",
    )
    rules_file: Path = _s(Path("data/rules.toml"), "Orders filter rules (TOML, see docs/rules.md); reloaded when it changes. Empty string: built-in defaults. A missing default file falls back to the defaults.")
    keep_all: bool = _s(False, "Keep every order-status row, whatever the rules say. Flag: `--keep-all`.")
    candle_intervals: tuple[str, ...] = _s(DEFAULT_INTERVALS, "Candle intervals computed and stored, from `1s 5s 10s 1m 3m 5m 15m 30m 1h 2h 4h 8h 12h 1d 3d 1w 1M`.")
    stall_after_s: float = _s(60.0, "A stream silent (in event time) for longer than this is recorded as a `stall` gap; candles are never forward-filled across it.")
    lake_dir: Path = _s(Path(""), "Root of the Parquet lake: `<lake_dir>/<table>/date=YYYY-MM-DD/hour=HH/part-N.parquet`. Empty: `<db>.lake/` beside the database (e.g. `data/nodetap.duckdb.lake`). A lake belongs to one database (`nodetap-lake.json` names it); another database refuses to seal into it.")
    seal_grace_s: float = _s(120.0, "An hour is sealed into the lake once the stream's watermark is this far past its end.")
    seal_interval_s: float = _s(30.0, "How often `ingest`/`serve` look for hours to seal.")
    retain_hours: float = _s(48.0, "Rows of sealed hours older than this (behind the watermark) are removed from DuckDB; the lake keeps them. 0 keeps everything in DuckDB.")
    host: str = _s("127.0.0.1", "`serve`: address to listen on (0.0.0.0 in the container).")
    port: int = _s(8000, "`serve`: HTTP and WebSocket port.")
    ws_queue_messages: int = _s(256, "Per-client WebSocket queue; when full, the oldest messages are dropped and the client gets a `lagged` notice.")
    ws_max_lag_s: float = _s(10.0, "A client whose queue stays full (or whose untaken bytes stay over `ws_max_lag_bytes`) this long is disconnected.")
    sql_timeout_s: float = _s(5.0, "`POST /v1/sql`, and every other read of DuckDB by the API (REST, `/info`, WebSocket snapshots, each batch of an export): a query running longer is interrupted.")
    sql_max_rows: int = _s(10000, "`POST /v1/sql`: rows returned at most (`truncated: true` beyond).")
    sql_max_result_bytes: int = _s(64 << 20, "`POST /v1/sql`: a result whose rows take more memory than this (Arrow bytes) is refused with 400; bounds the response, whatever `sql_max_rows` allows.")
    sql_max_concurrent: int = _s(4, "`POST /v1/sql`: queries running at once; more get 429. A query past its time limit keeps its slot until DuckDB gives it back.")
    db_memory_limit: str = _s("2GB", "`serve`: DuckDB's `memory_limit` for the whole process (sorts, joins, aggregates, buffered blocks of SQL queries, exports and ingest). A SQL query that needs more fails with 400 naming this setting.")
    http_max_body_bytes: int = _s(1 << 20, "Largest HTTP request body accepted (`POST /v1/sql`, `POST /info`, `PUT /v1/rules`); a larger one gets 413 before it is read.")
    ws_max_subscriptions: int = _s(1000, "Subscriptions one WebSocket connection may hold; the next one is refused with an error message.")
    ws_max_lag_bytes: int = _s(4 << 20, "Bytes a WebSocket client has not taken yet (kernel send queue + transport buffer + nodetap's queue) above which its new messages are dropped; a client above it for `ws_max_lag_s` is disconnected.")
    node_info_url: str = _s("http://127.0.0.1:3001/info", "The node's own info server (`hl-node --serve-info`): `meta`, `spotMeta`, `perpDexs` and per-user state are passed to it. Empty: never asked; nodetap then derives what the files allow (see docs/api.md).")
    ready_max_lag_s: float = _s(30.0, "`/readyz` fails when a stream has unread bytes and its last commit is older than this.")
    log_level: str = _s("INFO", "Logging level.")

    def __post_init__(self) -> None:
        if self.backlog not in ("drop", "keep"):
            raise ConfigError(f"backlog must be 'drop' or 'keep', not {self.backlog!r}")
        try:
            validate_intervals(self.candle_intervals)
        except ValueError as err:
            raise ConfigError(f"candle_intervals: {err}") from err
        for name in ("max_backlog_bytes", "batch_max_bytes", "max_line_bytes", "live_batch_ms", "sql_max_rows",
                     "sql_max_result_bytes", "sql_max_concurrent", "http_max_body_bytes",
                     "ws_max_subscriptions", "ws_max_lag_bytes"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"{name} must be positive, not {getattr(self, name)!r}")


def lake_root(s: Settings) -> Path:
    """Where the Parquet lake lives: `lake_dir`, or `<db>.lake/` beside the database."""
    return s.lake_dir if str(s.lake_dir) not in ("", ".") else s.db.with_name(s.db.name + ".lake")


def settings_doc() -> list[tuple[str, str, str]]:
    """(name, default, description) of every setting, for docs and `nodetap config`."""
    out = []
    for f in fields(Settings):
        default = f.default if f.default is not MISSING else ""
        out.append((f.name, str(default), f.metadata["doc"]))
    return out


def _coerce(name: str, value: Any, kind: Any) -> Any:
    kind = kind if isinstance(kind, str) else getattr(kind, "__name__", str(kind))
    try:
        if "Path" in kind:
            return Path(value)
        if kind.startswith("tuple"):
            if isinstance(value, str):
                return tuple(v.strip() for v in value.split(",") if v.strip())
            return tuple(str(v) for v in value)
        if kind == "bool":
            if isinstance(value, bool):
                return value
            if str(value).lower() in ("1", "true", "yes", "on"):
                return True
            if str(value).lower() in ("0", "false", "no", "off"):
                return False
            raise ValueError(value)
        if kind == "int":
            if isinstance(value, bool):
                raise ValueError(value)
            return int(value)
        if kind == "float":
            return float(value)
        return str(value)
    except (TypeError, ValueError) as err:
        raise ConfigError(f"setting {name}: {value!r} is not a valid {kind}") from err


def _apply(base: Settings, values: Mapping[str, Any], source: str) -> Settings:
    known = {f.name: f for f in fields(Settings)}
    unknown = sorted(set(values) - set(known))
    if unknown:
        raise ConfigError(
            f"unknown setting(s) in {source}: {', '.join(unknown)} (known: {', '.join(sorted(known))})"
        )
    typed = {k: _coerce(k, v, known[k].type) for k, v in values.items()}
    return replace(base, **typed)


def load_settings(
    config_file: Path | None = None,
    env: Mapping[str, str] | None = None,
    flags: Mapping[str, Any] | None = None,
) -> Settings:
    """Build the settings from every source, later sources winning."""
    settings = Settings()
    if config_file is not None:
        try:
            data = tomllib.loads(Path(config_file).read_text())
        except (OSError, tomllib.TOMLDecodeError) as err:
            raise ConfigError(f"cannot read config file {config_file}: {err}") from err
        settings = _apply(settings, data.get("nodetap", data), str(config_file))
    env = os.environ if env is None else env
    from_env = {
        k[len("NODETAP_") :].lower(): v
        for k, v in env.items()
        if k.startswith("NODETAP_") and k not in ("NODETAP_CONFIG", "NODETAP_FAULT")
    }
    settings = _apply(settings, from_env, "environment (NODETAP_*)")
    return _apply(settings, {k: v for k, v in (flags or {}).items() if v is not None}, "flags")
