"""Every setting, declared once: name, type, default, description, the CLI flags that set it
and the commands that take them, and the allowed values. The settings object, the argument
parser of each command (etl/cli/args.py), `nodetap config --doc` and the README's settings
table are all generated from the `Settings` dataclass below.

Precedence: defaults < TOML file < `NODETAP_*` environment < CLI flags."""

from __future__ import annotations

import difflib
import math
import os
import re
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import MISSING, Field, dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Literal, NamedTuple, get_args
from urllib.parse import urlsplit

from etl.candles import DEFAULT_INTERVALS, validate_intervals


class ConfigError(ValueError):
    """A setting is unknown or has a value of the wrong kind; `setting` names the one at fault."""

    def __init__(self, message: str, setting: str = "") -> None:
        super().__init__(message)
        self.setting = setting


class Origin(NamedTuple):
    """Where a setting's value was set: `kind` is file, env or flag; `where` the file's path, the
    variable's name as set, or the flag."""

    kind: Literal["file", "env", "flag"]
    where: str

    def __str__(self) -> str:
        return f"set in {self.where}" if self.kind == "file" else f"set by {self.where}"


# the commands that take a setting's flag (`config` takes every flag, to show its effect)
NODE = ("ingest", "serve", "demo", "status")  # read a node dir
DB = ("ingest", "serve", "demo", "backfill", "status", "sql", "export", "candles")  # open the database
PIPELINE = ("ingest", "serve")  # run the tailing pipeline
SHAPING = ("ingest", "serve", "backfill")  # parse and filter node lines
SERVER = ("serve", "demo")  # listen for HTTP and WebSocket clients
Backlog = Literal["drop", "keep"]
LogLevel = Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"]
DbFsync = Literal["standard", "none"]
BACKLOG: tuple[str, ...] = get_args(Backlog)
DB_FSYNC: tuple[str, ...] = get_args(DbFsync)
LOG_LEVELS: tuple[str, ...] = get_args(LogLevel)


MEMORY_UNITS = {"b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12,
                "kib": 1 << 10, "mib": 1 << 20, "gib": 1 << 30, "tib": 1 << 40}
MEMORY_SIZE = ("a number and a unit: B, KB, MB, GB or TB (powers of 1000) or KiB, MiB, GiB or TiB "
               "(powers of 1024), such as '128MB' or '1.5GiB'")
_MEMORY = re.compile(r"\s*(\d+(?:\.\d+)?)\s*([a-z]+)\s*", re.IGNORECASE)


def memory_size(text: str) -> int:
    """Bytes of a DuckDB memory size ('128MB', '1.5GiB', '2 GB'), read as DuckDB reads it (MB is
    10**6 bytes, MiB 2**20); ValueError for anything else, a bare number included (DuckDB
    refuses it too)."""
    m = _MEMORY.fullmatch(text)
    if m is None or m.group(2).lower() not in MEMORY_UNITS:
        raise ValueError(f"{text!r} is not a memory size: {MEMORY_SIZE}")
    return int(float(m.group(1)) * MEMORY_UNITS[m.group(2).lower()])


def _s(default: Any, doc: str, *, flag: str = "", on: tuple[str, ...] = (),
       choices: tuple[str, ...] = (), least: float | None = None, above: float | None = None,
       most: float | None = None, zero: str = "", size: bool = False, url: bool = False) -> Any:
    """A setting: its default, its description (Markdown), its CLI flag and the commands
    that take it, and its allowed values (matched case-insensitively). A number's range:
    `least` <= value (or `above` < value) <= `most`; `zero` says what 0 means where it is allowed.
    `size`: a DuckDB memory size (`memory_size`) of at least `least` bytes; `url`: an http(s) URL
    or empty."""
    return field(default=default, metadata={"doc": doc, "flag": flag, "on": on, "choices": choices,
                                            "least": least, "above": above, "most": most, "zero": zero,
                                            "size": size, "url": url})


@dataclass(frozen=True)
class Settings:
    node_dir: Path = _s(Path("data/demo-node"), "The node's data dir, usually `~/hl/data`: it holds `node_order_statuses*`, `node_fills*` or `node_trades`, each laid out `hourly/YYYYMMDD/H`. A dir that does not exist yet is waited for; one that holds none of them is refused.", flag="--node-dir", on=NODE)
    db: Path = _s(Path("data/nodetap.duckdb"), "The DuckDB file: rows, cursors, gaps and rejects. Its directory must exist; not a data file's name (`.parquet`, `.csv`, `.json`, ...), which DuckDB would open as that data.", flag="--db", on=DB)
    start_from: str = _s("end", "First-run start per stream: `end` (new data only), `start` (oldest file) or `YYYYMMDD[/H]` (the first hour file at or after that UTC hour; one later than every file reads none of them, then the first at or after it once it appears). It is the database's first run's setting: a stream's start is stored as soon as it is seen, so later runs resume there even if nothing was read, and a stream first seen by a later run (its directory made later, or added to `streams`) starts as the first run said; with `end`, at its first file written to since the first run.", flag="--from", on=PIPELINE)
    backlog: Backlog = _s("drop", "`drop`: skip the oldest unread data past `max_backlog_bytes` (recorded in `gaps`); `keep`: process everything.", flag="--backlog", on=PIPELINE, choices=BACKLOG)
    max_backlog_bytes: int = _s(2 << 30, 'Unread bytes per stream above which the oldest are skipped (with `backlog = "drop"`).', flag="--max-backlog-bytes", on=PIPELINE, least=1)
    batch_max_bytes: int = _s(64 << 20, "Most bytes read and parsed in one micro-batch; bounds memory (peak RSS 0.7 GB at 64 MiB while catching up; see docs/benchmarks.md). Batches over ~123K rows skip DuckDB's WAL, which is why 64 MiB beats 32 MiB by ~20%.", flag="--batch-max-bytes", on=SHAPING, least=1)
    max_line_bytes: int = _s(1 << 20, "A line longer than this is rejected (recorded in `rejects`).", flag="--max-line-bytes", on=SHAPING, least=1)
    debounce_ms: int = _s(5, "watchfiles debounce: how long to gather file events before a batch (5 against 20 ms: trades 10–20 ms sooner at the median on 2 cores, for ~5 % more CPU caught up; docs/benchmarks.md). 0: a batch at the first event.", flag="--debounce-ms", on=PIPELINE, least=0, zero="a batch at the first event")
    poll: bool = _s(False, "Poll the files instead of using inotify (network filesystems, some containers).", flag="--poll", on=PIPELINE)
    poll_interval_ms: int = _s(200, "Polling period with `poll`, and the idle tick otherwise.", least=1)
    rotate_grace_s: float = _s(5.0, "How long an unterminated last line of an hour file may wait once the next hour's file exists, before it is rejected; 0: at once.", least=0, zero="rejected at once")
    streams: tuple[str, ...] = _s((), "Only these stream directories (e.g. `node_fills_by_block`; comma-separated in a file or the environment, the flag repeated). Empty: one per kind, the lowest-latency variant found (`_streaming`, then `_by_block`, then plain), and `node_trades` only when there are no fills.", flag="--stream", on=PIPELINE)
    checkpoint_threshold: str = _s("128MB", "DuckDB WAL size that triggers a checkpoint; DuckDB's 16MB default halves insert speed.", size=True, least=1 << 20)
    db_fsync: DbFsync = _s("standard", "`standard`: every commit is fsynced, as DuckDB does by default; `none`: commits reach the disk when the OS writes them (DuckDB's `fsync_mode`). On a disk the node writes hundreds of MB/s to, a commit's fsync can wait 100-300 ms for that writeback, and the feed with it (docs/benchmarks.md). With `none` a crash of nodetap itself loses nothing (kill -9 included), but an OS crash or power loss may corrupt the database: rebuild it from the node's files (`--from start`, `nodetap backfill`).", choices=DB_FSYNC)
    db_threads: int = _s(0, "DuckDB threads of the writer; 0: one per four cores, at least one (one leaves the other core of a 2-core machine to the parser).", least=0, zero="chosen for the cores")
    bulk_nice: int = _s(10, "The nice value (Linux) of the order-status lane's threads: when the cores are short (the node's bursts on 2 cores), the kernel runs the node, the fills and trades lanes and the API first, and order statuses catch up when there is time. It changes nothing while cores are free. 0: the same priority as the rest of nodetap.", least=0, most=19, zero="the same priority as the rest of nodetap")
    commit_units: int = _s(0, "Whole DuckDB row groups of order statuses a lane commits side by side while behind, each in a transaction of its own, committed in order (DuckDB compresses a row group on one thread); 0: one per four cores, at least one. It gains only with `db_threads` of 2 or more and cores the parsers leave idle; each adds a unit to the lane's memory.", least=0, zero="chosen for the cores")
    parse_workers: int = _s(0, "Units a stream's lane parses at once while it is behind; 0: one per two cores, at least one (two for order statuses the rules pre-filter, which hold a fraction of a decoded unit). Memory per lane is about (parse_workers + commit_units + 1) x batch_max_bytes x 10.", least=0, zero="chosen for the cores")
    live_batch_ms: int = _s(250, "A lane that is caught up reads at most what it can parse and commit in this time, so the feed publishes often; a lane that is behind reads `batch_max_bytes` at a time. Smaller is not faster: each batch has a fixed cost (50 ms doubled the p99 at 100K lines/s on 2 cores, docs/benchmarks.md).", least=1)
    rules_file: Path = _s(Path("data/rules.toml"), "Orders filter rules (TOML, see docs/rules.md); reloaded when the file changes. Empty: no file, the bundled `data/rules.toml` rules (in memory); a missing default file also means them, any other missing file is an error.", flag="--rules", on=SHAPING)
    keep_all: bool = _s(False, "Keep every order-status row, whatever the rules say.", flag="--keep-all", on=SHAPING)
    candle_intervals: tuple[str, ...] = _s(DEFAULT_INTERVALS, "Candle intervals computed and stored, from `1s 5s 10s 1m 3m 5m 15m 30m 1h 2h 4h 8h 12h 1d 3d 1w 1M`; the others are derived on read.")
    stall_after_s: float = _s(60.0, "A stream silent (in event time) for longer than this is recorded as a `stall` gap; candles are never forward-filled across it.", above=0)
    lake_dir: Path = _s(Path(""), "Root of the Parquet lake: `<lake_dir>/<table>/date=YYYY-MM-DD/hour=HH/part-N.parquet`. Empty: `<db>.lake/` beside the database (a database that sealed into the `lake/` of earlier versions keeps it). A lake belongs to one database (`nodetap-lake.json` names it); another database refuses to seal into it, and a database that sealed hours refuses a lake that holds none of them (another `--lake`, or a copy of the database without its lake), naming its own: move or copy the two together.", flag="--lake", on=PIPELINE)
    seal_grace_s: float = _s(120.0, "An hour is sealed into the lake once its streams' watermark is this far past the hour's end (0: as soon as it is past). `ingest --once` seals with none at its end: nothing more arrives in that run, and a late line a later run reads seals the hour again.", least=0, zero="sealed once the watermark passes the hour's end")
    seal_interval_s: float = _s(30.0, "How often `ingest`/`serve` look for hours to seal.", above=0)
    retain_hours: float = _s(48.0, "Rows of sealed hours older than this (behind the watermark) are removed from DuckDB; the lake keeps them. 0 keeps everything in DuckDB.", least=0, zero="keeps everything in DuckDB")
    host: str = _s("127.0.0.1", "Address `serve` and `demo` listen on (0.0.0.0 in the container).", flag="--host", on=SERVER)
    port: int = _s(8000, "HTTP and WebSocket port of `serve` and `demo`; checked before anything starts.", flag="--port", on=SERVER, least=1, most=65535)
    ws_queue_messages: int = _s(256, "Per-client WebSocket queue; when full, the oldest messages are dropped and the client gets a `lagged` notice.", least=1)
    ws_max_lag_s: float = _s(10.0, "A client whose queue stays full (or whose untaken bytes stay over `ws_max_lag_bytes`) this long is disconnected: close code 1008, and the connection is aborted if the close frame cannot go out within 2 s. 0: disconnected as soon as it lags.", least=0, zero="disconnected as soon as it lags")
    ws_max_lag_bytes: int = _s(4 << 20, "Bytes a WebSocket client has not taken yet (the kernel's send queue, the transport's buffer and nodetap's queue) above which its oldest messages are dropped (it gets a `lagged` notice); a client above it for `ws_max_lag_s` is disconnected.", least=1)
    ws_compression: bool = _s(False, "Compress WebSocket messages (permessage-deflate) for clients that ask for it. Off: compression costs CPU for every message and every client, on the server's event loop and in the client (at 315K lines/s on 2 cores, one client: trades' p50 325 ms with it, 210 ms without, docs/benchmarks.md); turn it on for clients on slow links.")
    ws_max_subscriptions: int = _s(1000, "Subscriptions one WebSocket connection may hold; the next one is refused with an error message.", least=1)
    sql_timeout_s: float = _s(5.0, "`POST /v1/sql`, and every other read of DuckDB by the API (REST, `/info`, WebSocket snapshots, each batch of an export): a query running longer is interrupted; the 408 goes out within a second of the limit.", above=0)
    sql_max_rows: int = _s(10000, "`POST /v1/sql`: rows returned at most (JSON: `truncated: true` beyond; CSV, NDJSON and Parquet: a 400 beyond).", least=1)
    sql_max_result_bytes: int = _s(64 << 20, "`POST /v1/sql`: a result whose rows take more memory than this (Arrow bytes) is refused with 400; bounds the response, whatever `sql_max_rows` allows.", least=1)
    sql_max_concurrent: int = _s(4, "`POST /v1/sql`: queries running at once; more get 429. A query past its time limit keeps its slot until DuckDB gives it back.", least=1)
    db_memory_limit: str = _s("2GB", "`serve`: DuckDB's `memory_limit` for the whole process (SQL queries, exports and ingest share it); a SQL query that needs more fails with 400 naming this setting. Ingestion comes first: a commit that finds it full interrupts the running reads (503 with Retry-After) and is committed again.", size=True, least=1 << 20)
    http_max_body_bytes: int = _s(1 << 20, "Largest HTTP request body accepted (`POST /v1/sql`, `POST /info`, `PUT /v1/rules`); a larger one gets 413 before it is read.", least=1)
    node_info_url: str = _s("http://127.0.0.1:3001/info", "The node's own info server (`hl-node --serve-info`): `meta`, `spotMeta`, `perpDexs` and per-user state (`clearinghouseState`, `openOrders`, ...) are passed to it. Empty: never asked; nodetap then derives what the files allow and logs once what is unavailable (see docs/api.md). An `http://` or `https://` URL; no other scheme is fetched.", url=True)
    ready_max_lag_s: float = _s(30.0, "`/readyz` fails when a stream has unread bytes and its last commit is older than this.", above=0)
    log_level: LogLevel = _s("INFO", "Logging level. Logs go to standard error, one line per event, `key=value`.", flag="--log-level", on=DB, choices=LOG_LEVELS)
    # not a setting: where each value that is not a default was set (`load_settings`), for messages
    origins: Mapping[str, Origin] = field(default_factory=dict, compare=False, repr=False)

    def __post_init__(self) -> None:
        for f in _setting_fields():
            choices = f.metadata["choices"]
            if choices and getattr(self, f.name) not in choices:
                raise ConfigError(f"{f.name} must be {_one_of(choices)}, not {getattr(self, f.name)!r}", f.name)
        try:
            validate_intervals(self.candle_intervals)
        except ValueError as err:
            raise ConfigError(f"candle_intervals: {err}", "candle_intervals") from err
        for spec in setting_specs():
            value = getattr(self, spec.name)
            if spec.kind == "float" and not math.isfinite(value):
                raise ConfigError(f"{spec.name} must be a finite number, not {value!r}", spec.name)
            if spec.kind in ("int", "float") and not in_range(spec, value):
                raise ConfigError(f"{spec.name} must be {value_range(spec)}, not {value!r}", spec.name)
            if spec.name == "db" and (data := _DATA_FILE.search(value.name)):
                raise ConfigError(f"db {value}: DuckDB opens a {data.group(0)} file as data, not as a "
                                  "database; the db is a DuckDB database file, such as "
                                  f"{value.with_name(value.name[:data.start()] + '.duckdb')}", "db")
            if spec.url and value and not is_http_url(value):
                raise ConfigError(f"{spec.name} must be an http:// or https:// URL, such as "
                                  f"{spec.default}, or empty, not {value!r}", spec.name)
            if spec.size:
                try:
                    size = memory_size(value)
                except ValueError as err:
                    raise ConfigError(f"{spec.name}: {err}", spec.name) from None
                if not in_range(spec, size):
                    raise ConfigError(f"{spec.name} must be {value_range(spec)}, not {value!r}", spec.name)


# files DuckDB opens as a view of their data rather than as a database (`duckdb.connect`)
_DATA_FILE = re.compile(r"\.(parquet|csv|tsv|json|ndjson|jsonl)(\.gz|\.zst)?$", re.IGNORECASE)


def is_http_url(url: str) -> bool:
    """Whether `url` is an http:// or https:// URL with a host (`node_info_url`)."""
    try:
        parts = urlsplit(url)
        return parts.scheme.lower() in ("http", "https") and bool(parts.hostname)
    except ValueError:  # such as an unclosed [IPv6 address
        return False


def _setting_fields() -> list[Field[Any]]:
    """The fields of `Settings` that are settings (all but `origins`)."""
    return [f for f in fields(Settings) if "doc" in f.metadata]


def _one_of(choices: tuple[str, ...]) -> str:
    quoted = [repr(c) for c in choices]
    return quoted[0] if len(quoted) == 1 else f"{', '.join(quoted[:-1])} or {quoted[-1]}"


@dataclass(frozen=True)
class SettingSpec:
    """One setting as the parser and the docs see it (a view of its dataclass field)."""

    name: str
    kind: str  # Path | str | int | float | bool | tuple
    default: Any
    doc: str
    flag: str  # "" when only a file or the environment sets it
    commands: tuple[str, ...]
    choices: tuple[str, ...]
    least: float | None = None  # a number's range: least <= value (or above < value) <= most
    above: float | None = None
    most: float | None = None
    zero: str = ""  # what 0 means, where it is allowed
    size: bool = False  # a DuckDB memory size: a str, its range in bytes
    url: bool = False  # an http:// or https:// URL, or empty


def in_range(spec: SettingSpec, value: float) -> bool:
    return not ((spec.least is not None and value < spec.least) or (spec.above is not None and value <= spec.above)
                or (spec.most is not None and value > spec.most))


def value_range(spec: SettingSpec) -> str:
    """A number's allowed values, in words: `1 or more`, `more than 0`, `1 to 65535`."""
    if spec.size:  # `least` in bytes, a whole number of MiB
        return f"at least {int(spec.least or 0) >> 20}MiB"
    if spec.least is not None and spec.most is not None:
        return f"{spec.least:g} to {spec.most:g}"
    if spec.above is not None:
        return f"more than {spec.above:g}"
    if spec.least is not None:
        zero = f" ({spec.zero})" if spec.least == 0 and spec.zero else ""
        return f"{spec.least:g}{zero} or more"
    return "any number"


def _kind(f: Field[Any]) -> str:
    kind = f.type if isinstance(f.type, str) else getattr(f.type, "__name__", str(f.type))
    if kind.startswith("Literal") or kind in ("Backlog", "LogLevel"):
        return "str"  # one of its `choices`
    return "tuple" if kind.startswith("tuple") else kind


def setting_specs() -> list[SettingSpec]:
    """Every setting, in declaration order."""
    return [SettingSpec(f.name, _kind(f), f.default if f.default is not MISSING else None,
                        f.metadata["doc"], f.metadata["flag"], f.metadata["on"], f.metadata["choices"],
                        f.metadata["least"], f.metadata["above"], f.metadata["most"], f.metadata["zero"],
                        f.metadata["size"], f.metadata["url"])
            for f in _setting_fields()]


def lake_root(s: Settings) -> Path:
    """Where the Parquet lake lives: `lake_dir`, or `<db>.lake/` beside the database."""
    return s.lake_dir if str(s.lake_dir) not in ("", ".") else s.db.with_name(s.db.name + ".lake")


def show_default(spec: SettingSpec) -> str:
    """A default as a user would write it in the TOML file or the environment."""
    value = spec.default
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, tuple):
        return ",".join(value) if value else "(empty)"
    text = str(value)
    return "(empty)" if text in ("", ".") else text


def settings_doc() -> list[tuple[str, str, str]]:
    """(name, default, description) of every setting."""
    return [(spec.name, show_default(spec), spec.doc) for spec in setting_specs()]


def settings_table() -> str:
    """The settings as a Markdown table: `nodetap config --doc`, and the README's table."""
    lines = ["| setting | default | flag | what it does |", "|---|---|---|---|"]
    for spec in setting_specs():
        flag = f"`{spec.flag}` ({', '.join(spec.commands)})" if spec.flag else ""
        values = f" One of {', '.join(f'`{c}`' for c in spec.choices)}." if spec.choices else ""
        if spec.kind in ("int", "float"):
            allowed = value_range(spec).replace(f" ({spec.zero})", "")
            values = f" {allowed[0].upper()}{allowed[1:]}."
        if spec.size:
            values = f" A memory size, {MEMORY_SIZE.replace(chr(39), '`')}; {value_range(spec)}."
        lines.append(f"| `{spec.name}` | `{show_default(spec)}` | {flag} | {spec.doc}{values} |")
    return "\n".join(lines) + "\n"


def _coerce(name: str, value: Any, kind: str, choices: tuple[str, ...]) -> Any:
    if isinstance(value, dict) or isinstance(value, list) and kind != "tuple":  # a TOML table or array
        raise ConfigError(f"setting {name}: {value!r} is not a valid {kind}", name)
    try:
        if kind == "Path":
            return Path(value)
        if kind == "tuple":
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
            if isinstance(value, bool | float):  # a TOML float: int() would drop its fraction
                raise ValueError(value)
            return int(value)
        if kind == "float":
            if isinstance(value, bool):
                raise ValueError(value)
            return float(value)
        return canonical_choice(str(value), choices)
    except (TypeError, ValueError) as err:
        how = ": a whole number, written without a decimal point (2, not 2.0)" if kind == "int" else ""
        raise ConfigError(f"setting {name}: {value!r} is not a valid {kind}{how}", name) from err


def canonical_choice(value: str, choices: tuple[str, ...]) -> str:
    """`value` spelled as its choice is (`debug` -> `DEBUG`); unchanged when no choice matches."""
    return next((c for c in choices if c.lower() == value.lower()), value)


def _apply(base: Settings, values: Mapping[str, Any], source: str, origin: Callable[[str], Origin],
           spelled: Callable[[str], str] = str) -> Settings:
    """`values` over `base`; `spelled` writes a setting's name as `source` spells it, `origin`
    says where it was set. A bad value's message ends with where it was set."""
    known = {spec.name: spec for spec in setting_specs()}
    unknown = sorted(set(values) - set(known))
    if unknown:
        named = ", ".join(spelled(k) + _did_you_mean(k, known, spelled) for k in unknown)
        raise ConfigError(f"unknown setting(s) in {source}: {named} "
                          f"(known: {', '.join(spelled(k) for k in sorted(known))})")
    try:
        typed = {k: _coerce(k, v, known[k].kind, known[k].choices) for k, v in values.items()}
        return replace(base, **typed, origins={**base.origins, **{k: origin(k) for k in values}})
    except ConfigError as err:
        if err.setting not in values:
            raise
        raise ConfigError(f"{err} ({origin(err.setting)})", err.setting) from None


def _did_you_mean(name: str, known: Mapping[str, object], spelled: Callable[[str], str]) -> str:
    """" (did you mean X?)" for a known setting spelled much like `name`, else ""."""
    close = difflib.get_close_matches(name.lower(), list(known), n=1, cutoff=0.75)
    return f" (did you mean {spelled(close[0])}?)" if close else ""


def _settings_table(data: dict[str, Any], config_file: Path) -> dict[str, Any]:
    """The settings of a config file: its top-level keys, or its [nodetap] table when it has one,
    and then nothing else (a key above the `[nodetap]` line, or another table, would be ignored)."""
    if "nodetap" not in data:
        return data
    table = data["nodetap"]
    if not isinstance(table, dict):
        raise ConfigError(f"config file {config_file}: nodetap must be the [nodetap] table of settings, "
                          f"not {table!r}")
    others = [k for k in data if k != "nodetap"]
    if others:
        known = {spec.name: spec for spec in setting_specs()}
        named = ", ".join(f"[{k}]" if isinstance(data[k], dict) else
                          k if k in known else k + _did_you_mean(k, known, str) for k in others)
        raise ConfigError(f"config file {config_file}: {named} outside the [nodetap] table, which holds "
                          "the settings of a file that has one: move settings under [nodetap] (a key "
                          "above the [nodetap] line is outside it) or remove what is not a setting")
    return table


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
        settings = _apply(settings, _settings_table(data, config_file), str(config_file),
                          lambda k: Origin("file", str(config_file)))
    env = os.environ if env is None else env
    from_env = {
        k[len("NODETAP_") :].lower(): v
        for k, v in env.items()
        if k.startswith("NODETAP_") and k not in ("NODETAP_CONFIG", "NODETAP_FAULT")
    }
    as_set = {k[len("NODETAP_"):].lower(): k for k in env if k.startswith("NODETAP_")}

    def env_name(k: str) -> str:
        return as_set.get(k, f"NODETAP_{k.upper()}")

    settings = _apply(settings, from_env, "environment (NODETAP_*)", lambda k: Origin("env", env_name(k)),
                      env_name)
    flag_of = {spec.name: spec.flag or f"--{spec.name}" for spec in setting_specs()}
    return _apply(settings, {k: v for k, v in (flags or {}).items() if v is not None}, "flags",
                  lambda k: Origin("flag", flag_of.get(k, k)))
