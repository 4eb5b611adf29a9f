"""The orders filter: each rule alone, their combination, validation errors, live reload and replace."""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import re
import threading
import tomllib
from dataclasses import replace
from datetime import datetime
from pathlib import Path
from typing import Any

import polars as pl
import pytest
from polars.testing import assert_frame_equal

from etl.columns import ORDERS_SCHEMA
from etl.filters import (
    EMPTY_GRACE_S,
    KEEP_ALL,
    SHIPPED,
    Rules,
    RulesError,
    RulesFile,
    apply_rules,
    load_rules,
    parse_rules,
    rules_to_dict,
    rules_to_toml,
)

ROOT = Path(__file__).resolve().parent.parent
T0 = datetime(2026, 1, 5, 10, 58)
U1, U2, U3, U4 = ("0x" + digits * 20 for digits in ("a1", "b2", "c3", "d4"))  # users' addresses


def order(oid: int, **kw: Any) -> dict[str, Any]:
    """One orders row with every ORDERS_SCHEMA column; `kw` overrides the defaults."""
    row: dict[str, Any] = {
        "time": T0,
        "block_number": 1000 + oid,
        "block_time": T0,
        "user": U1,
        "status": "open",
        "coin": "BTC",
        "side": "B",
        "limit_px": 100.0,
        "sz": 1.0,
        "orig_sz": 1.0,
        "oid": oid,
        "order_time": T0,
        "order_type": "Limit",
        "tif": "Gtc",
        "reduce_only": False,
        "is_trigger": False,
        "trigger_condition": "N/A",
        "trigger_px": 0.0,
        "is_position_tpsl": False,
        "children": "[]",
        "cloid": None,
        "hash": "0x00",
        "builder": None,
    }
    row.update(kw)
    return row


def frame(*rows: dict[str, Any]) -> pl.DataFrame:
    return pl.DataFrame(list(rows), schema=ORDERS_SCHEMA, orient="row")


def make_orders() -> pl.DataFrame:
    """Six orders, one per kind of coin name; notionals 100000, 15000, 4000, 3000, 40000, 1500."""
    return frame(
        order(1, coin="BTC", status="open", side="B", limit_px=100000.0, orig_sz=1.0, user=U1),
        order(2, coin="ETH", status="filled", side="A", limit_px=3000.0, orig_sz=5.0, user=U2),
        order(3, coin="PURR/USDC", status="canceled", side="B", limit_px=0.25, orig_sz=16000.0, user=U3),
        order(4, coin="@107", status="triggered", side="A", limit_px=30.0, orig_sz=100.0, user=U1,
              is_trigger=True, order_type="Stop Market"),
        order(5, coin="km:USTECH", status="badAloPxRejected", side="B", limit_px=20000.0, orig_sz=2.0,
              user=U4, is_trigger=True, order_type="Take Profit Limit"),
        order(6, coin="SOL", status="marginCanceled", side="A", limit_px=150.0, orig_sz=10.0, user=U2),
    )


def kept_oids(orders: pl.DataFrame, rules: Rules) -> list[int]:
    kept, _ = apply_rules(orders, rules)
    assert kept.schema == orders.schema
    return kept["oid"].to_list()


# ------------------------------------------------------------------- semantics
def test_defaults_equal_an_empty_file_and_keep_the_four_statuses() -> None:
    assert Rules() == parse_rules({}) == parse_rules({"orders": {}})
    assert Rules().statuses == ("open", "filled", "canceled", "triggered")
    assert kept_oids(make_orders(), Rules()) == [1, 2, 3, 4]


@pytest.mark.parametrize(
    ("kw", "expected"),
    [
        ({}, [1, 2, 3, 4, 5, 6]),
        ({"coins": ("BTC", "@107")}, [1, 4]),
        ({"exclude_coins": ("ETH", "km:USTECH")}, [1, 3, 4, 6]),
        ({"statuses": ("badAloPxRejected", "marginCanceled")}, [5, 6]),
        ({"sides": ("A",)}, [2, 4, 6]),
        ({"sides": ("B",)}, [1, 3, 5]),
        ({"sides": ("A", "B")}, [1, 2, 3, 4, 5, 6]),
        ({"min_notional": 5000.0}, [1, 2, 5]),
        ({"min_notional": 4000.0}, [1, 2, 3, 5]),  # at the minimum is kept
        ({"trigger": "only"}, [4, 5]),
        ({"trigger": "exclude"}, [1, 2, 3, 6]),
        ({"order_types": ("Limit",)}, [1, 2, 3, 6]),
        ({"order_types": ("Stop Market", "Take Profit Limit")}, [4, 5]),
        ({"watch_users": (U1,)}, [1, 2, 3, 4, 5, 6]),
    ],
)
def test_each_rule_alone(kw: dict[str, Any], expected: list[int]) -> None:
    # statuses=() switches the default status rule off, so only the rule under test filters
    assert kept_oids(make_orders(), Rules(**{"statuses": (), **kw})) == expected


def test_per_coin_minimum_overrides_the_default_both_ways() -> None:
    by_coin = {"BTC": 150000.0, "PURR/USDC": 4000.0, "@107": 3001.0, "km:USTECH": 40000.0, "SOL": 1000.0}
    rules = Rules(statuses=(), min_notional=3500.0, min_notional_by_coin=by_coin)
    # BTC 100000 < 150000; ETH 15000 >= default 3500; PURR 4000 >= 4000; @107 3000 < 3001;
    # km:USTECH 40000 >= 40000; SOL 1500 >= 1000 although below the default
    assert kept_oids(make_orders(), rules) == [2, 3, 5, 6]
    # a per-coin minimum alone, with the default at 0, filters only that coin
    rules = Rules(statuses=(), min_notional_by_coin={"BTC": 150000.0})
    assert kept_oids(make_orders(), rules) == [2, 3, 4, 5, 6]


def test_per_coin_minimums_from_toml_with_quoted_coin_names(tmp_path: Path) -> None:
    path = tmp_path / "rules.toml"
    path.write_text(
        "[orders]\nstatuses = []\nmin_notional = 3500\n"
        '[orders.min_notional_by_coin]\nBTC = 150000\n"PURR/USDC" = 4000.0\n"@107" = 3001\n'
        '"km:USTECH" = 40000\nSOL = 1000\n'
    )
    rules = load_rules(path)
    assert dict(rules.min_notional_by_coin) == {
        "BTC": 150000.0, "PURR/USDC": 4000.0, "@107": 3001.0, "km:USTECH": 40000.0, "SOL": 1000.0
    }
    assert kept_oids(make_orders(), rules) == [2, 3, 5, 6]


def test_nulls_fail_allow_rules_and_pass_deny_rules_nan_notional_fails() -> None:
    orders = frame(
        order(1, coin=None, status=None, side=None, order_type=None, is_trigger=None, limit_px=None),
        order(2, limit_px=math.nan, orig_sz=1.0),
        order(3, limit_px=1e6, orig_sz=1.0),
    )
    assert kept_oids(orders, Rules(statuses=(), coins=("BTC",))) == [2, 3]
    assert kept_oids(orders, Rules(statuses=(), exclude_coins=("BTC",))) == [1]
    assert kept_oids(orders, Rules()) == [2, 3]
    assert kept_oids(orders, Rules(statuses=(), sides=("B",))) == [2, 3]
    assert kept_oids(orders, Rules(statuses=(), order_types=("Limit",))) == [2, 3]
    assert kept_oids(orders, Rules(statuses=(), trigger="only")) == []
    assert kept_oids(orders, Rules(statuses=(), trigger="exclude")) == [1, 2, 3]
    assert kept_oids(orders, Rules(statuses=(), min_notional=1.0)) == [3]
    # a null coin falls back to the default minimum
    assert kept_oids(orders, Rules(statuses=(), min_notional_by_coin={"BTC": 5.0})) == [3]


def test_watch_users_are_kept_whatever_the_other_rules_say() -> None:
    rules = Rules(coins=("ETH",), statuses=("filled",), trigger="exclude", watch_users=(U1, U4))
    # 2 passes every rule; 1 and 4 (U1) and 5 (U4, a rejected trigger order) are watched
    assert kept_oids(make_orders(), rules) == [1, 2, 4, 5]
    # as a checksummed address is written: the node writes addresses in lowercase
    checksummed = replace(rules, watch_users=("0x" + U1[2:].upper(), "0X" + U4[2:]))
    assert kept_oids(make_orders(), checksummed) == [1, 2, 4, 5]
    assert parse_rules({"orders": {"watch_users": ["0x" + "Ab" * 20]}}).watch_users == ("0x" + "ab" * 20,)


def test_keep_all_keeps_every_row_unchanged() -> None:
    orders = make_orders()
    for rules in (KEEP_ALL, Rules(keep_all=True, coins=("BTC",), min_notional=1e9)):
        kept, counts = apply_rules(orders, rules)
        assert_frame_equal(kept, orders)
        assert counts == {"total": (6, 6)}


def test_exact_counts_per_rule_each_evaluated_alone() -> None:
    rules = Rules(coins=("BTC", "ETH", "@107", "km:USTECH"), sides=("B",), min_notional=3000.0,
                  watch_users=(U2,))
    kept, counts = apply_rules(make_orders(), rules)
    assert kept["oid"].to_list() == [1, 2, 6]
    assert counts == {
        "coins": (6, 4),
        "statuses": (6, 4),
        "sides": (6, 3),
        "min_notional": (6, 5),  # @107 at exactly 3000 passes
        "watch_users": (6, 2),
        "total": (6, 3),
    }
    assert apply_rules(make_orders(), Rules(statuses=()))[1] == {"total": (6, 6)}


def test_empty_frame() -> None:
    kept, counts = apply_rules(frame(), Rules(coins=("BTC",), min_notional=1.0, watch_users=(U1,)))
    assert kept.height == 0 and kept.schema == pl.Schema(ORDERS_SCHEMA)
    assert counts == {"coins": (0, 0), "statuses": (0, 0), "min_notional": (0, 0), "watch_users": (0, 0),
                      "total": (0, 0)}


def test_unknown_statuses_are_accepted() -> None:
    rules = parse_rules({"orders": {"statuses": ["badAloPxRejected", "someFutureStatus"]}})
    assert rules.statuses == ("badAloPxRejected", "someFutureStatus")
    assert kept_oids(make_orders(), rules) == [5]


@pytest.mark.parametrize(("status", "said"), [
    ("opne", "'opne' is not a status the node writes: did you mean 'open'?"),
    ("Filled", "'Filled' is not a status the node writes: did you mean 'filled'? "
               "(statuses are case-sensitive)"),
    ("cancelled", "'cancelled' is not a status the node writes: did you mean 'canceled'?"),
    ("perpMarginRejcted", "did you mean 'perpMarginRejected'?"),
])
def test_a_near_miss_of_a_known_status_is_an_error(status: str, said: str) -> None:
    """A typo would keep none of the orders of the status meant, silently; a status nodetap does
    not know and that is near none it knows is taken as given (a status added later)."""
    with pytest.raises(RulesError) as err:
        parse_rules({"orders": {"statuses": ["open", status]}})
    assert said in str(err.value) and str(err.value).startswith("<rules>: orders.statuses[1]: ")
    assert err.value.key == "orders.statuses[1]"


def test_rules_are_immutable() -> None:
    rules = Rules(min_notional_by_coin={"BTC": 1.0}, coins=["BTC"])  # type: ignore[arg-type]
    assert rules.coins == ("BTC",)
    with pytest.raises(TypeError):
        rules.min_notional_by_coin["BTC"] = 2.0  # type: ignore[index]


# ------------------------------------------------------------------ validation
VALID_KEYS = ("coins, exclude_coins, keep_all, min_notional, min_notional_by_coin, order_types, sides, "
              "statuses, trigger, watch_users")


@pytest.mark.parametrize(
    ("orders", "message"),
    [
        ({"coinz": ["BTC"]}, f"orders.coinz: unknown key (valid keys: {VALID_KEYS})"),
        ({"keep_all": "yes"}, "orders.keep_all: expected a boolean (true/false), got 'yes' (str)"),
        ({"coins": "BTC"}, "orders.coins: expected a list of strings, got 'BTC' (str)"),
        ({"coins": ["BTC", 5]}, "orders.coins[1]: expected a non-empty string, got 5 (int)"),
        ({"exclude_coins": [""]}, "orders.exclude_coins[0]: expected a non-empty string, got '' (str)"),
        ({"statuses": "open"}, "orders.statuses: expected a list of strings, got 'open' (str)"),
        ({"watch_users": [None]}, "orders.watch_users[0]: expected a non-empty string, got None"),
        ({"watch_users": [U1, "abc"]}, "orders.watch_users[1]: expected an address, 0x and 40 hex digits, "
                                       "got 'abc'"),
        ({"watch_users": [U1[:-1]]}, f"orders.watch_users[0]: expected an address, 0x and 40 hex digits, "
                                     f"got {U1[:-1]!r}"),
        ({"watch_users": [U1[:-1] + "g"]}, "orders.watch_users[0]: expected an address"),
        ({"watch_users": [" " + U1]}, "orders.watch_users[0]: expected an address"),
        ({"min_notional": "10k"}, "orders.min_notional: expected a number (USD), got '10k' (str)"),
        ({"min_notional": True}, "orders.min_notional: expected a number (USD), got True (bool)"),
        ({"min_notional": -1}, "orders.min_notional: minimum notional must not be negative, got -1.0"),
        ({"min_notional": math.inf}, "orders.min_notional: must be a finite number of USD, got inf"),
        ({"min_notional_by_coin": {"BTC": -5.0}},
         "orders.min_notional_by_coin.BTC: minimum notional must not be negative, got -5.0"),
        ({"min_notional_by_coin": {"@107": "x"}},
         "orders.min_notional_by_coin.\"@107\": expected a number (USD), got 'x' (str)"),
        ({"min_notional_by_coin": 5}, "orders.min_notional_by_coin: expected a table of coin = USD, got 5"),
        ({"sides": ["B", "buy"]}, "orders.sides[1]: must be 'A' (ask/sell) or 'B' (bid/buy), got 'buy'"),
        ({"trigger": "yes"}, "orders.trigger: must be one of 'any', 'only', 'exclude', got 'yes'"),
        ({"trigger": 1}, "orders.trigger: expected a string ('any', 'only' or 'exclude'), got 1 (int)"),
        ({"coins": ["BTC", "ETH"], "exclude_coins": ["SOL", "ETH"]},
         "orders.exclude_coins: 'ETH' also listed in orders.coins; a coin is either allowed or excluded"),
    ],
)
def test_rules_errors(orders: dict[str, Any], message: str) -> None:
    with pytest.raises(RulesError) as err:
        parse_rules({"orders": orders})
    assert f"<rules>: {message}" in str(err.value)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"order": {}}, "<rules>: order: unknown key (valid keys: orders)"),
        ({"orders": 5}, "<rules>: orders: expected a table, got 5 (int)"),
        ([1], "<rules>: expected a table with an [orders] table, got [1] (list)"),
    ],
)
def test_rules_errors_top_level(data: Any, message: str) -> None:
    with pytest.raises(RulesError, match="^" + re.escape(message)):
        parse_rules(data)


def test_direct_construction_is_validated() -> None:
    with pytest.raises(RulesError, match=r"^<rules>: orders\.sides\[0\]: must be 'A'"):
        Rules(sides=("X",))


def test_unknown_key_in_a_file_names_the_file_and_the_key(tmp_path: Path) -> None:
    path = tmp_path / "rules.toml"
    path.write_text("[orders]\ncoins = []\nmin_notionl = 5\n")
    with pytest.raises(RulesError) as err:
        load_rules(path)
    assert str(err.value) == f"{path}: orders.min_notionl: unknown key (valid keys: {VALID_KEYS})"
    assert (err.value.source, err.value.key) == (str(path), "orders.min_notionl")
    path.write_text("[filters]\n")
    with pytest.raises(RulesError, match=f"^{path}: filters: unknown key"):
        load_rules(path)


def test_toml_syntax_error_names_the_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "rules.toml"
    path.write_text("[orders]\ncoins = [BTC]\n")
    with pytest.raises(RulesError) as err:
        load_rules(path)
    assert str(err.value).startswith(f"{path}: invalid TOML: ")
    assert "line 2" in str(err.value)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(RulesError, match="cannot read rules file: No such file or directory"):
        load_rules(tmp_path / "nope.toml")


# ---------------------------------------------------------------- round trips
ODD = Rules(
    keep_all=True,
    coins=("BTC", "PURR/USDC", "@107", "km:USTECH", 'we"ird\\coin', "ÜNI"),
    exclude_coins=("ETH",),
    statuses=("open", "someFutureStatus"),
    sides=("A",),
    min_notional=1234.5,
    min_notional_by_coin={"BTC": 1e20, "PURR/USDC": 0.0, "@107": 7.0, "km:USTECH": 3.25, 'we"ird\\coin': 1.0},
    trigger="exclude",
    order_types=("Stop Market",),
    watch_users=("0x" + "abc0" * 10,),
)


@pytest.mark.parametrize("rules", [Rules(), KEEP_ALL, ODD])
def test_rules_to_dict_round_trips(rules: Rules) -> None:
    doc = rules_to_dict(rules)
    assert parse_rules(json.loads(json.dumps(doc))) == rules
    assert set(doc["orders"]) == set(VALID_KEYS.split(", "))


@pytest.mark.parametrize("rules", [Rules(), KEEP_ALL, ODD])
def test_rules_to_toml_round_trips(rules: Rules) -> None:
    assert parse_rules(tomllib.loads(rules_to_toml(rules))) == rules


# ------------------------------------------------------------------ RulesFile
def test_rules_file_reloads_on_change_and_keeps_good_rules_on_error(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "rules.toml"
    path.write_text('[orders]\ncoins = ["BTC"]\n')
    rf = RulesFile(path)
    assert rf.rules == Rules(coins=("BTC",))
    assert rf.check() is False  # unchanged

    path.write_text('[orders]\ncoins = ["ETH", "SOL"]\nstatuses = []\n')
    assert rf.check() is True
    assert rf.rules == Rules(coins=("ETH", "SOL"), statuses=())
    assert kept_oids(make_orders(), rf.rules) == [2, 6]

    good = rf.rules
    with caplog.at_level(logging.ERROR, logger="nodetap.filters"):
        path.write_text('[orders]\ncoins = ["ETH",\n')
        assert rf.check() is False
        assert rf.rules is good
        assert rf.check() is False  # the same bad file is not reparsed nor logged again
        path.write_text('[orders]\nsides = ["X"]\n')
        assert rf.check() is False
        assert rf.rules is good
        path.unlink()
        assert rf.check() is False
    messages = [r.getMessage() for r in caplog.records]
    assert len(messages) == 3
    assert all(m.startswith(f"event=rules_error path={path} error=") for m in messages)
    assert "invalid TOML" in messages[0] and "line 3" in messages[0]
    assert "orders.sides[0]: must be 'A' (ask/sell) or 'B' (bid/buy), got 'X'" in messages[1]
    assert "cannot read rules file" in messages[2]

    path.write_text('[orders]\nsides = ["A"]\n')
    assert rf.check() is True
    assert rf.rules == Rules(sides=("A",))
    # the same rules saved again (an editor, `touch`) keep their counters; other rules do not
    rf.record(apply_rules(make_orders(), rf.rules)[1], rf.rules)
    path.write_text('[orders]\nsides = [ "A" ]  # the same\n')
    assert rf.check() is True and rf.stats()["total"] == {"seen": 6, "kept": 2}
    path.write_text('[orders]\nsides = ["B"]\n')
    assert rf.check() is True and rf.stats() == {}


def test_an_empty_rules_file_is_read_only_once_it_stayed_empty(tmp_path: Path) -> None:
    """An editor saving in place truncates the file, then writes it: the empty file in between
    does not swap in the default rules."""
    path = tmp_path / "rules.toml"
    path.write_text('[orders]\ncoins = ["BTC"]\n')
    now = [0.0]
    rf = RulesFile(path, wall=lambda: now[0])
    path.write_text("")  # truncated
    now[0] = path.stat().st_mtime_ns / 1e9 + 0.5
    assert rf.check() is False and rf.rules == Rules(coins=("BTC",))
    path.write_text('[orders]\ncoins = ["ETH"]\n')  # then written
    assert rf.check() is True and rf.rules == Rules(coins=("ETH",))
    path.write_text("")  # emptied on purpose: the defaults, once it stayed empty
    now[0] = path.stat().st_mtime_ns / 1e9 + 0.5
    assert rf.check() is False and rf.rules == Rules(coins=("ETH",))
    now[0] += EMPTY_GRACE_S
    assert rf.check() is True and rf.rules == Rules()


def test_rules_file_bad_at_startup_raises(tmp_path: Path) -> None:
    path = tmp_path / "rules.toml"
    path.write_text("[orders]\ntrigger = 'sometimes'\n")
    with pytest.raises(RulesError, match=f"^{path}: orders.trigger: must be one of"):
        RulesFile(path)


def test_replace_writes_atomically_and_reloads_the_same(tmp_path: Path) -> None:
    path = tmp_path / "rules.toml"
    path.write_text('[orders]\ncoins = ["BTC"]\n')
    rf = RulesFile(path)
    inode = path.stat().st_ino
    data = {"orders": {"coins": ["PURR/USDC", "@107"], "sides": ["A"],
                       "min_notional_by_coin": {"km:USTECH": 5.0, "@107": 10}}}
    new = rf.replace(data)
    assert new == rf.rules == load_rules(path) == parse_rules(data)
    assert path.stat().st_ino != inode  # a new file renamed over the old one, not rewritten in place
    assert os.listdir(tmp_path) == ["rules.toml"]  # no temp file left behind
    assert rf.check() is False  # our own write is not a change
    assert kept_oids(make_orders(), rf.rules) == [4]

    before = path.read_bytes()
    with pytest.raises(RulesError, match=r"^<request>: orders\.sides\[0\]: must be 'A'"):
        rf.replace({"orders": {"sides": ["sell"]}})
    assert path.read_bytes() == before and rf.rules == new


def test_readers_never_see_a_partial_file(tmp_path: Path) -> None:
    path = tmp_path / "rules.toml"
    path.write_text(rules_to_toml(Rules()))
    rf = RulesFile(path)
    stop = threading.Event()
    seen: list[Rules] = []
    errors: list[Exception] = []

    def read() -> None:
        while not stop.is_set():
            try:
                seen.append(load_rules(path))
            except RulesError as err:
                errors.append(err)

    reader = threading.Thread(target=read)
    reader.start()
    try:
        for i in range(40):
            rf.replace({"orders": {"coins": [f"C{j}" for j in range(i % 7 * 50)], "min_notional": i}})
    finally:
        stop.set()
        reader.join()
    assert errors == [] and seen
    assert load_rules(path) == rf.rules


def test_rules_file_without_a_path_keeps_rules_in_memory(tmp_path: Path) -> None:
    rf = RulesFile(None)
    assert rf.rules == SHIPPED
    assert rf.check() is False
    assert rf.replace({"orders": {"coins": ["BTC"]}}) == Rules(coins=("BTC",)) == rf.rules
    assert os.listdir(tmp_path) == []
    assert RulesFile(None, keep_all=True).rules == replace(SHIPPED, keep_all=True)  # keeps every row


def test_a_missing_rules_file_allowed_to_be_missing_means_the_defaults_until_it_is_written(
        tmp_path: Path) -> None:
    path = tmp_path / "data" / "rules.toml"
    rf = RulesFile(path, missing_ok=True)
    assert (rf.rules, rf.check(), rf.saved) == (SHIPPED, False, True)
    assert rf.replace({"orders": {"coins": ["BTC"]}}) == Rules(coins=("BTC",))
    assert load_rules(path) == Rules(coins=("BTC",))  # written, its folder created
    by_hand = RulesFile(tmp_path / "other.toml", missing_ok=True)
    (tmp_path / "other.toml").write_text('[orders]\ncoins = ["ETH"]\n')
    assert by_hand.check() is True and by_hand.rules == Rules(coins=("ETH",))
    with pytest.raises(RulesError, match="cannot read rules file"):
        RulesFile(tmp_path / "absent.toml")  # not allowed to be missing: an error, as before


def test_keep_all_switch_overrides_the_file(tmp_path: Path) -> None:
    path = tmp_path / "rules.toml"
    path.write_text('[orders]\ncoins = ["BTC"]\n')
    rf = RulesFile(path, keep_all=True)
    assert rf.rules == Rules(keep_all=True, coins=("BTC",))
    path.write_text('[orders]\ncoins = ["ETH"]\nkeep_all = false\n')
    assert rf.check() is True
    assert rf.rules == Rules(keep_all=True, coins=("ETH",))
    assert rf.replace({"orders": {"coins": ["SOL"]}}) == Rules(keep_all=True, coins=("SOL",))
    assert load_rules(path) == Rules(coins=("SOL",))  # the switch is not written to the file


def test_record_and_stats_accumulate_across_batches_of_the_rules_in_effect() -> None:
    rf = RulesFile(None)
    rules = rf.replace({"orders": {"coins": ["BTC", "ETH"], "min_notional": 3000.0}})
    for _ in range(2):
        rf.record(apply_rules(make_orders(), rules)[1], rules)
    rf.record(apply_rules(make_orders().head(1), rules)[1], rules)
    # a batch filtered with other rules (before they changed) is not counted with these
    rf.record(apply_rules(make_orders(), Rules(coins=("SOL",)))[1], Rules(coins=("SOL",)))
    stats = rf.stats()
    assert stats == {
        "coins": {"seen": 13, "kept": 5},
        "statuses": {"seen": 13, "kept": 9},
        "min_notional": {"seen": 13, "kept": 11},
        "total": {"seen": 13, "kept": 5},
    }
    stats["total"]["kept"] = 0
    assert rf.stats()["total"]["kept"] == 5  # a copy
    # the same rules again change nothing; new rules count from nothing
    assert rf.replace(rules_to_dict(rules)) == rules and rf.stats()["total"] == {"seen": 13, "kept": 5}
    new = rf.replace({"orders": {"coins": ["SOL"]}})
    assert rf.stats() == {}
    rf.record(apply_rules(make_orders(), new)[1], new)
    assert set(rf.stats()) == {"coins", "statuses", "total"}


# ------------------------------------------------------------ data/rules.toml
def test_bundled_rules_file() -> None:
    rules = load_rules(ROOT / "data" / "rules.toml")
    assert rules == Rules(min_notional=10000.0, min_notional_by_coin={"BTC": 50000.0, "ETH": 25000.0})
    orders = frame(
        order(1, coin="BTC", limit_px=40000.0, orig_sz=1.0),  # below BTC's 50000
        order(2, coin="BTC", limit_px=60000.0, orig_sz=1.0),
        order(3, coin="ETH", status="filled", limit_px=3000.0, orig_sz=10.0),
        order(4, coin="ETH", status="canceled", limit_px=3000.0, orig_sz=8.0),  # 24000 < 25000
        order(5, coin="SOL", limit_px=99.9999, orig_sz=100.0),  # just below the 10000 default
        order(6, coin="SOL", status="canceled", limit_px=100.0, orig_sz=100.0),  # exactly 10000
        order(7, coin="BTC", status="badAloPxRejected", limit_px=1e6, orig_sz=1.0),
        order(8, coin="@107", status="triggered", limit_px=12.0, orig_sz=1000.0, is_trigger=True),
        order(9, coin="PURR/USDC", status="marginCanceled", limit_px=1.0, orig_sz=1e6),
    )
    assert kept_oids(orders, rules) == [2, 3, 6, 8]


def test_the_shipped_rules_are_those_of_the_bundled_rules_file() -> None:
    """What a missing default rules file (or none at all) leaves in effect is what the bundled
    file says: order statuses of the four statuses at or above a minimum notional."""
    assert load_rules(ROOT / "data" / "rules.toml") == SHIPPED != Rules()


def test_the_rules_docs_show_the_bundled_file() -> None:
    """docs/rules.md's copy of data/rules.toml holds the same rules, every key."""
    doc = (ROOT / "docs" / "rules.md").read_text()
    block = doc.split("The bundled `data/rules.toml`", 1)[1].split("```toml\n", 1)[1].split("```", 1)[0]
    shown = tomllib.loads(block)
    assert parse_rules(shown) == load_rules(ROOT / "data" / "rules.toml")
    assert set(shown["orders"]) == {f.name for f in dataclasses.fields(Rules)}
