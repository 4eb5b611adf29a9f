"""The orders filter: a declarative rule set read from TOML, validated, applied per batch, reloadable live.

A row is kept when `keep_all` is set, or its user is in `watch_users`, or it passes every active rule.
Each rule is one boolean Polars expression; `apply_rules` evaluates them all in one pass.
"""

from __future__ import annotations

import difflib
import json
import logging
import math
import os
import re
import tempfile
import threading
import time
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from types import MappingProxyType
from typing import Any

import polars as pl

log = logging.getLogger("nodetap.filters")

DEFAULT_STATUSES = ("open", "filled", "canceled", "triggered")
# the statuses the node writes (Hyperliquid's order statuses); `statuses` may name others (a
# status added later), but not one that is a near miss of these: a typo would keep nothing
KNOWN_STATUSES = (
    *DEFAULT_STATUSES, "rejected", "marginCanceled", "vaultWithdrawalCanceled", "openInterestCapCanceled",
    "selfTradeCanceled", "reduceOnlyCanceled", "siblingFilledCanceled", "delistedCanceled",
    "liquidatedCanceled", "outcomeSettledCanceled", "scheduledCancel", "tickRejected", "minTradeNtlRejected",
    "minTradeSpotNtlRejected", "perpMarginRejected", "reduceOnlyRejected", "badAloPxRejected",
    "iocCancelRejected", "badTriggerPxRejected", "marketOrderNoLiquidityRejected",
    "positionIncreaseAtOpenInterestCapRejected", "positionFlipAtOpenInterestCapRejected",
    "tooAggressiveAtOpenInterestCapRejected", "openInterestIncreaseRejected",
    "insufficientSpotBalanceRejected", "oracleRejected", "perpMaxPositionRejected",
)
SIDES = ("A", "B")
TRIGGER_MODES = ("any", "only", "exclude")
_LIST_KEYS = ("coins", "exclude_coins", "statuses", "sides", "order_types", "watch_users")
_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")
ADDRESS = re.compile(r"0x[0-9a-fA-F]{40}")  # a user: the node writes it in lowercase, clients any case


class RulesError(ValueError):
    """A rules file or rules mapping is invalid: names the source, the key path and what is wrong."""

    def __init__(self, source: str, key: str, problem: str) -> None:
        self.source, self.key, self.problem = source, key, problem
        super().__init__(f"{source}: {key}: {problem}" if key else f"{source}: {problem}")


# a TOML key path, quoting the parts that are not bare keys: orders.min_notional_by_coin."@107"
def _key(*parts: str) -> str:
    return ".".join(p if _BARE_KEY.fullmatch(p) else json.dumps(p) for p in parts)


def _got(value: Any) -> str:
    return f"got {value!r} ({type(value).__name__})"


@dataclass(frozen=True)
class Rules:
    """The orders filter rules.

    `Rules()` equals an empty rules file: it keeps every row whose status is one of
    open/filled/canceled/triggered and drops nothing else. `KEEP_ALL` keeps every row.
    Lists are stored as tuples and `min_notional_by_coin` as a read-only mapping.
    """

    keep_all: bool = False
    coins: tuple[str, ...] = ()
    exclude_coins: tuple[str, ...] = ()
    statuses: tuple[str, ...] = DEFAULT_STATUSES
    sides: tuple[str, ...] = ()
    min_notional: float = 0.0
    min_notional_by_coin: Mapping[str, float] = field(default_factory=lambda: MappingProxyType({}))
    trigger: str = "any"
    order_types: tuple[str, ...] = ()
    watch_users: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        for name in _LIST_KEYS:
            object.__setattr__(self, name, tuple(getattr(self, name)))
        for i, user in enumerate(self.watch_users):
            if not ADDRESS.fullmatch(user.lower()):  # any case, the 0X too
                raise RulesError("<rules>", f"orders.watch_users[{i}]",
                                 f"expected an address, 0x and 40 hex digits, got {user!r}")
        # the node writes addresses in lowercase; a checksummed (mixed-case) one would match nothing
        object.__setattr__(self, "watch_users", tuple(u.lower() for u in self.watch_users))
        by_coin = {str(c): float(v) for c, v in self.min_notional_by_coin.items()}
        object.__setattr__(self, "min_notional_by_coin", MappingProxyType(by_coin))
        object.__setattr__(self, "min_notional", float(self.min_notional))
        _check_values(self, "<rules>")


def _check_notional(value: float, key: str, source: str) -> None:
    if not math.isfinite(value):
        raise RulesError(source, key, f"must be a finite number of USD, got {value!r}")
    if value < 0:
        raise RulesError(source, key, f"minimum notional must not be negative, got {value!r}")


def _check_values(r: Rules, source: str) -> None:
    _check_notional(r.min_notional, _key("orders", "min_notional"), source)
    for coin, value in r.min_notional_by_coin.items():
        _check_notional(value, _key("orders", "min_notional_by_coin", coin), source)
    for i, side in enumerate(r.sides):
        if side not in SIDES:
            raise RulesError(
                source, f"orders.sides[{i}]", f"must be 'A' (ask/sell) or 'B' (bid/buy), got {side!r}"
            )
    for i, status in enumerate(r.statuses):
        if status in KNOWN_STATUSES:
            continue
        case = [k for k in KNOWN_STATUSES if k.lower() == status.lower()]
        near = case or difflib.get_close_matches(status, KNOWN_STATUSES, n=1, cutoff=0.75)
        if near:
            why = " (statuses are case-sensitive)" if case else ""
            raise RulesError(source, f"orders.statuses[{i}]",
                             f"{status!r} is not a status the node writes: did you mean {near[0]!r}?{why}")
    if r.trigger not in TRIGGER_MODES:
        raise RulesError(
            source, "orders.trigger", f"must be one of 'any', 'only', 'exclude', got {r.trigger!r}"
        )
    both = sorted(set(r.coins) & set(r.exclude_coins))
    if both:
        listed = ", ".join(repr(c) for c in both)
        raise RulesError(
            source,
            "orders.exclude_coins",
            f"{listed} also listed in orders.coins; a coin is either allowed or excluded",
        )


def _str_list(value: Any, key: str, source: str) -> tuple[str, ...]:
    if not isinstance(value, list | tuple):
        raise RulesError(source, key, f"expected a list of strings, {_got(value)}")
    for i, item in enumerate(value):
        if not isinstance(item, str) or not item:
            raise RulesError(source, f"{key}[{i}]", f"expected a non-empty string, {_got(item)}")
    return tuple(value)


def _number(value: Any, key: str, source: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise RulesError(source, key, f"expected a number (USD), {_got(value)}")
    return float(value)


def parse_rules(data: Mapping[str, Any], source: str = "<rules>") -> Rules:
    """Validate a decoded rules document (`{"orders": {...}}`, every key optional) into `Rules`.

    Raises `RulesError` naming `source`, the key path and the problem: unknown keys (with the
    valid ones), wrong types, negative or non-finite notionals, sides other than A/B, an unknown
    trigger mode, a coin both allowed and excluded. Status names are open-ended and never rejected.
    """
    if not isinstance(data, Mapping):
        raise RulesError(source, "", f"expected a table with an [orders] table, {_got(data)}")
    for top in data:
        if top != "orders":
            raise RulesError(source, _key(str(top)), "unknown key (valid keys: orders)")
    orders = data.get("orders", {})
    if not isinstance(orders, Mapping):
        raise RulesError(source, "orders", f"expected a table, {_got(orders)}")
    kw: dict[str, Any] = {}
    for name, value in orders.items():
        key = _key("orders", str(name))
        if name in _LIST_KEYS:
            kw[name] = _str_list(value, key, source)
        elif name == "keep_all":
            if not isinstance(value, bool):
                raise RulesError(source, key, f"expected a boolean (true/false), {_got(value)}")
            kw[name] = value
        elif name == "min_notional":
            kw[name] = _number(value, key, source)
        elif name == "trigger":
            if not isinstance(value, str):
                raise RulesError(
                    source, key, f"expected a string ('any', 'only' or 'exclude'), {_got(value)}"
                )
            kw[name] = value
        elif name == "min_notional_by_coin":
            if not isinstance(value, Mapping):
                raise RulesError(source, key, f"expected a table of coin = USD, {_got(value)}")
            kw[name] = {
                str(coin): _number(v, _key("orders", name, str(coin)), source) for coin, v in value.items()
            }
        else:
            raise RulesError(source, key, f"unknown key (valid keys: {', '.join(sorted(_ORDERS_KEYS))})")
    try:
        return Rules(**kw)
    except RulesError as err:  # re-raised with the real source
        raise RulesError(source, err.key, err.problem) from None


KEEP_ALL = Rules(keep_all=True)
# the rules of the bundled data/rules.toml (tests/test_filters.py checks that they agree): in
# effect while the default rules file is missing, or with no rules file at all (`--rules ""`),
# so that nodetap run from another folder does not keep most of a 10-50 GB/hour stream
SHIPPED = Rules(min_notional=10000.0, min_notional_by_coin=MappingProxyType({"BTC": 50000.0, "ETH": 25000.0}))
_ORDERS_KEYS = tuple(f.name for f in fields(Rules))


def load_rules(path: Path) -> Rules:
    """Read and validate a TOML rules file; unreadable files and TOML syntax errors are `RulesError`s."""
    try:
        text = Path(path).read_bytes().decode("utf-8")
    except OSError as err:
        raise RulesError(str(path), "", f"cannot read rules file: {err.strerror or err}") from err
    except UnicodeDecodeError as err:
        raise RulesError(str(path), "", f"not UTF-8 text: {err}") from err
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as err:
        # tomllib names no line for an error at the very end ("unclosed list"); give one anyway
        where = f"(at end of document, line {text.count(chr(10)) + 1})"
        problem = str(err).replace("(at end of document)", where)
        raise RulesError(str(path), "", f"invalid TOML: {problem}") from err
    return parse_rules(data, str(path))


def rules_to_dict(rules: Rules) -> dict[str, Any]:
    """The rules as a plain document (`{"orders": {...}}`, lists and dicts) that `parse_rules` reads back."""
    out: dict[str, Any] = {}
    for f in fields(Rules):
        value = getattr(rules, f.name)
        if f.name in _LIST_KEYS:
            value = list(value)
        elif f.name == "min_notional_by_coin":
            value = dict(value)
        out[f.name] = value
    return {"orders": out}


def rules_to_toml(rules: Rules) -> str:
    """The rules as a TOML document that `load_rules` reads back (every key written, defaults included)."""

    def val(v: Any) -> str:
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, float):
            return repr(v)
        if isinstance(v, str):
            return json.dumps(v)  # JSON string escapes are valid TOML basic-string escapes
        return "[" + ", ".join(val(x) for x in v) + "]"

    doc = rules_to_dict(rules)["orders"]
    by_coin = doc.pop("min_notional_by_coin")
    lines = ["# nodetap orders filter rules, written through the API; edits are picked up live.", "[orders]"]
    lines += [f"{k} = {val(v)}" for k, v in doc.items()]
    lines += ["", "[orders.min_notional_by_coin]"]
    lines += [f"{_key(coin)} = {val(v)}" for coin, v in by_coin.items()]
    return "\n".join(lines) + "\n"


# one boolean expression per active rule; a null input fails an allow rule and passes a deny rule
def _rule_exprs(rules: Rules) -> dict[str, pl.Expr]:
    exprs: dict[str, pl.Expr] = {}
    if rules.coins:
        exprs["coins"] = pl.col("coin").is_in(rules.coins).fill_null(False)
    if rules.exclude_coins:
        exprs["exclude_coins"] = ~pl.col("coin").is_in(rules.exclude_coins).fill_null(False)
    if rules.statuses:
        exprs["statuses"] = pl.col("status").is_in(rules.statuses).fill_null(False)
    if rules.sides:
        exprs["sides"] = pl.col("side").is_in(rules.sides).fill_null(False)
    if rules.min_notional > 0 or rules.min_notional_by_coin:
        notional = pl.col("limit_px") * pl.col("orig_sz")
        minimum: pl.Expr = pl.lit(rules.min_notional)
        if rules.min_notional_by_coin:
            minimum = pl.col("coin").replace_strict(
                dict(rules.min_notional_by_coin), default=rules.min_notional, return_dtype=pl.Float64
            )
        # Polars orders NaN above every number: a NaN notional must fail, not pass
        exprs["min_notional"] = (notional.is_not_nan() & (notional >= minimum)).fill_null(False)
    if rules.trigger == "only":
        exprs["trigger"] = pl.col("is_trigger").fill_null(False)
    elif rules.trigger == "exclude":
        exprs["trigger"] = ~pl.col("is_trigger").fill_null(False)
    if rules.order_types:
        exprs["order_types"] = pl.col("order_type").is_in(rules.order_types).fill_null(False)
    return exprs


def rule_columns(rules: Rules) -> frozenset[str]:
    """The columns whose values the active rules (and `watch_users`) compare."""
    exprs = [] if rules.keep_all else list(_rule_exprs(rules).values())
    names = {name for e in exprs for name in e.meta.root_names()}
    return frozenset(names | ({"user"} if rules.watch_users and exprs else set()))


def rule_masks(orders: pl.DataFrame, rules: Rules) -> pl.DataFrame | None:
    """One boolean column per active rule (and `watch_users`), plus `__keep`: whether each row
    is kept. None when the rules keep every row (`keep_all`, or no active rule)."""
    exprs = {} if rules.keep_all else _rule_exprs(rules)
    if not exprs:
        return None
    cols = dict(exprs)
    keep = pl.all_horizontal(list(exprs))
    if rules.watch_users:
        cols["watch_users"] = pl.col("user").is_in(rules.watch_users).fill_null(False)
        keep = keep | pl.col("watch_users")
    return orders.select(**cols).with_columns(__keep=keep)


def mask_counts(masks: pl.DataFrame) -> dict[str, tuple[int, int]]:
    """`{rule: (rows, rows passing it)}` and `total: (rows, rows kept)` of `rule_masks` output."""
    n = masks.height
    sums = masks.sum().row(0, named=True) if n else dict.fromkeys(masks.columns, 0)
    counts = {name: (n, int(sums[name] or 0)) for name in masks.columns if name != "__keep"}
    counts["total"] = (n, int(sums["__keep"] or 0))
    return counts


def add_counts(*parts: Mapping[str, tuple[int, int]]) -> dict[str, tuple[int, int]]:
    """The sum of several `apply_rules` counts."""
    out: dict[str, tuple[int, int]] = {}
    for part in parts:
        for name, (seen, kept) in part.items():
            s0, k0 = out.get(name, (0, 0))
            out[name] = (s0 + seen, k0 + kept)
    return out


def apply_rules(orders: pl.DataFrame, rules: Rules) -> tuple[pl.DataFrame, dict[str, tuple[int, int]]]:
    """Keep the orders the rules select; return them (same schema and order) and per-rule counts.

    Counts are `{rule: (seen, passed)}` for each active rule, each evaluated alone on every row,
    plus `watch_users: (seen, rows from watched users)` when that list is set and
    `total: (rows in, rows kept)`. With `keep_all` only `total` is reported.
    """
    masks = rule_masks(orders, rules)
    if masks is None:
        return orders, {"total": (orders.height, orders.height)}
    return orders.filter(masks.get_column("__keep")), mask_counts(masks)


EMPTY_GRACE_S = 2.0  # an empty rules file younger than this is being written (`RulesFile.check`)


def _signature(path: Path) -> tuple[int, int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_mtime_ns, st.st_size, st.st_ino)


class RulesFile:
    """The live rules: loaded from `path`, reloaded when it changes, replaced through the API.

    `keep_all=True` (the `--keep-all` switch) forces `keep_all` on whatever the file says.
    With `path=None` the rules are `SHIPPED` and `replace` keeps them in memory only (`saved`
    is False). With `missing_ok`, a `path` that does not exist means `SHIPPED` until it
    appears (written by `replace`, or by hand: `check` loads it).
    Thread-safe: the pipeline thread calls `check`/`record`, the API thread `replace`/`stats`.
    """

    def __init__(self, path: Path | None, keep_all: bool = False, missing_ok: bool = False,
                 wall: Callable[[], float] = time.time) -> None:
        self.path = path
        self._wall = wall  # the clock an empty file's mtime is compared with (`check`)
        self._force_keep_all = keep_all
        self._lock = threading.Lock()
        self._stats: dict[str, dict[str, int]] = {}
        self._sig = _signature(path) if path is not None else None
        if path is None or (missing_ok and self._sig is None):
            self._rules = self._effective(SHIPPED)
        else:
            self._rules = self._effective(load_rules(path))
        self.error: str | None = None  # the last change's error while the previous rules stay

    @property
    def saved(self) -> bool:
        """Whether `replace` writes the rules to a file (else they last until the process ends)."""
        return self.path is not None

    def _effective(self, rules: Rules) -> Rules:
        return replace(rules, keep_all=True) if self._force_keep_all else rules

    @property
    def rules(self) -> Rules:
        """The rules in effect now."""
        return self._rules

    def check(self) -> bool:
        """Reload the file if its mtime, size or inode changed; True when new rules were swapped in.

        A bad file is logged once per change and the previous good rules stay in effect. An empty
        file changed less than `EMPTY_GRACE_S` ago is not read yet: an editor that saves in place
        truncates the file, then writes it, and the rules in between would be the defaults.
        """
        if self.path is None:
            return False
        with self._lock:
            sig = _signature(self.path)
            if sig == self._sig:
                return False
            if sig is not None and sig[1] == 0 and self._wall() - sig[0] / 1e9 < EMPTY_GRACE_S:
                return False  # truncated by an editor about to write it: looked at again next time
            self._sig = sig
            try:
                rules = load_rules(self.path)
            except RulesError as err:
                self.error = str(err)
                log.error("event=rules_error path=%s error=%r (the previous rules stay in effect)",
                          self.path, str(err))
                return False
            if self._effective(rules) != self._rules:  # not a save of the same rules
                self._stats = {}
            self._rules = self._effective(rules)
            self.error = None
            log.info("event=rules_reload path=%s", self.path)
            return True

    def replace(self, data: Mapping[str, Any]) -> Rules:
        """Validate `data`, write it atomically to the file (if any: see `saved`), apply it; return
        the rules in effect.

        Raises `RulesError` (nothing written, nothing changed) when `data` is invalid.
        """
        rules = parse_rules(data, "<request>")
        with self._lock:
            if self.path is not None:
                self.path.parent.mkdir(parents=True, exist_ok=True)  # the default's data/ may not exist
                fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=f".{self.path.name}.", suffix=".tmp")
                try:
                    with os.fdopen(fd, "w", encoding="utf-8") as fh:
                        fh.write(rules_to_toml(rules))
                        fh.flush()
                        os.fsync(fh.fileno())
                    os.replace(tmp, self.path)
                except BaseException:
                    Path(tmp).unlink(missing_ok=True)
                    raise
                self._sig = _signature(self.path)  # our own write is not a change to reload
            if self._effective(rules) != self._rules:
                self._stats = {}
            self._rules = self._effective(rules)
            self.error = None
            if self.path is None:
                log.warning("event=rules_replace saved=false (no rules file: setting rules_file is empty; "
                            "the new rules last until nodetap stops)")
            else:
                log.info("event=rules_replace path=%s saved=true", self.path)
            return self._rules

    def record(self, counts: Mapping[str, tuple[int, int]], rules: Rules | None) -> None:
        """Add one batch's `apply_rules` counts, made with `rules`, to the running per-rule
        totals: counts of other rules (a batch filtered before they changed) are left out."""
        with self._lock:
            if rules != self._rules:
                return
            for name, (seen, passed) in counts.items():
                acc = self._stats.setdefault(name, {"seen": 0, "kept": 0})
                acc["seen"] += seen
                acc["kept"] += passed

    def stats(self) -> dict[str, dict[str, int]]:
        """Per-rule totals since start or since the rules last changed: `{rule: {"seen": rows,
        "kept": rows passing that rule}}`."""
        with self._lock:
            return {name: dict(acc) for name, acc in self._stats.items()}
