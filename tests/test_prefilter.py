"""The pre-filtered path keeps exactly what full decoding plus the rules keep, and the byte
scan's reading of a batch decoded whole (etl/bytescan.py) gives exactly the rows and rejects of
Polars'."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from etl.filters import Rules, load_rules, rule_columns
from etl.parse import line_bounds, parse, take_lines
from etl.prefilter import (
    LIGHT_COLUMNS,
    MIN_LINES,
    OrdersFilter,
    TooMany,
    filter_parsed,
    light_fields,
    prefilter,
)

ROOT = Path(__file__).resolve().parent.parent
SAMPLES = ROOT.parent / "shared" / "samples"
COINS = ["BTC", "ETH", "PURR/USDC", "@107", "km:USTECH", 'q"x', "é€"]
STATUSES = ["open", "filled", "canceled", "triggered", "badAloPxRejected", "marginCanceled"]
ADDRESSES = ["0x" + "aa" * 20, "0x" + "bb" * 20, "0x" + "cc" * 20]  # what watch_users may hold
USERS = [*ADDRESSES, 'we\\ird"user']
TIMES = ["2026-01-05T11:00:00.05", "2026-01-05T11:02:30", "2026-01-05T12:00:00.123456789"]
SEPARATORS = [(",", ":"), (", ", ": ")]


def node_line(limit_px: str = "1", oid: int = 1) -> bytes:
    """An order-status line as the node writes it."""
    order = {"coin": "BTC", "side": "B", "limitPx": limit_px, "sz": "1", "oid": oid, "timestamp": 1,
             "triggerCondition": "N/A", "isTrigger": False, "triggerPx": "0", "children": [],
             "isPositionTpsl": False, "reduceOnly": False, "orderType": "Limit", "origSz": "1",
             "tif": None, "cloid": None}
    event = {"time": "2026-01-05T11:00:00", "user": "0xa", "hash": None, "builder": None,
             "status": "open", "order": order}
    return json.dumps(event, separators=(",", ":")).encode()


BIG = "__a number out of a double's range__"  # json.dumps cannot write one: put in by hand
HUGE = ["1e400", "-1e400", "1E400", "1.0E400", "1e309", "9" * 400]  # what BIG becomes
# values of other JSON types than the node writes, which JSON readers render or cast differently
# (DuckDB's: "1e-07" against Polars' "0.0000001"; it casts "5", 5.0 and "true")
ODD_VALUES = st.sampled_from(["5", "true", 5, 5.0, 3e11, 2**70, -3, 1e-7, 1.5e300, True, None,
                              {"a": 1}, [1], "\\u00e9", "\ud800", BIG])
ODD_TEXTS = ["1e-07", "0.0000001", '{"a":1}', '{"a": 1}', "5", "5.0", "true", "[1]"]


def numbers() -> st.SearchStrategy[object]:
    """Decimal strings as the node writes them, exponent forms, and bare JSON numbers."""
    return st.one_of(
        st.sampled_from(["0.0", "1", "97000.5", "0.00001", "1e5", "2.5E-3", "1e400", "-3", "abc", ""]),
        st.floats(min_value=0, max_value=1e7, allow_nan=False).map(lambda x: f"{x:.6g}"),
        st.sampled_from([12345, 1e5, 0.5]),
    )


LIGHT_JSON = {c: path.removeprefix("order.") for c, (path, _) in LIGHT_COLUMNS.items()}
LIGHT_KEYS = ("time", "user", "status", "coin", "side", "orderType", "oid", "isTrigger", "limitPx", "origSz")


@st.composite
def order_event(draw: st.DrawFn, odd_keys: tuple[str, ...] = LIGHT_KEYS) -> dict[str, object]:
    order: dict[str, object] = {
        "coin": draw(st.sampled_from(COINS)),
        "side": draw(st.sampled_from(["A", "B", "X"])),
        "limitPx": draw(numbers()),
        "sz": "1.0",
        "oid": draw(st.integers(0, 2**40)),
        "timestamp": 1767610800000,
        "triggerCondition": "N/A",
        "isTrigger": draw(st.booleans()),
        "triggerPx": "0.0",
        "children": [],
        "isPositionTpsl": False,
        "reduceOnly": False,
        "orderType": draw(st.sampled_from(["Limit", "Stop Market"])),
        "origSz": draw(numbers()),
        "tif": draw(st.sampled_from([None, "Gtc", "Alo"])),
        "cloid": draw(st.sampled_from([None, "0x01", 'a"b\\c', "ünï"])),
    }
    event: dict[str, object] = {
        "time": draw(st.sampled_from(TIMES)),
        "user": draw(st.sampled_from(USERS)),
        "hash": None,
        "builder": None,
        "status": draw(st.sampled_from(STATUSES)),
        "order": order,
    }
    # a child order (same keys, nested) now and then
    if draw(st.booleans()) and draw(st.booleans()):
        order["children"] = [dict(order, coin=draw(st.sampled_from(COINS)), children=[])]
    # keys missing, extra keys (some named like the ones the rules read, nested elsewhere)
    for key in draw(st.lists(st.sampled_from(["time", "user", "status", "hash"]), max_size=1)):
        event.pop(key, None)
    for key in draw(st.lists(st.sampled_from(["coin", "origSz", "oid", "side"]), max_size=1)):
        order.pop(key, None)
    if draw(st.booleans()):
        event["extra"] = {"status": "open", "coin": "BTC", "limitPx": "1e9"}
    # now and then a value of another JSON type, where the decoders could differ
    if draw(st.integers(0, 8)) == 0:
        key = draw(st.sampled_from(odd_keys))
        (event if key in ("time", "user", "status") else order)[key] = draw(ODD_VALUES)
    # keys in another order
    items = list(event.items())
    order_items = list(order.items())
    if draw(st.booleans()):
        items = draw(st.permutations(items))
        order_items = draw(st.permutations(order_items))
    event = dict(items)
    if "order" in event:
        event["order"] = dict(order_items)
    return event


@st.composite
def line(draw: st.DrawFn, variant: str, odd_keys: tuple[str, ...] = LIGHT_KEYS) -> bytes:
    ev = draw(order_event(odd_keys))
    if variant == "plain":
        text = json.dumps(ev, ensure_ascii=draw(st.booleans()), separators=draw(st.sampled_from(SEPARATORS)))
    else:
        env = {"local_time": "2026-01-05T11:00:00.1", "block_time": "2026-01-05T11:00:00.05",
               "block_number": 7,
               "events": [ev] + ([draw(order_event(odd_keys))] if draw(st.booleans()) else [])}
        if draw(st.integers(0, 30)) == 0:
            env["events"] = draw(st.sampled_from([None, "x", 5, {"a": 1}, [1, None]]))
        elif draw(st.integers(0, 30)) == 0:
            del env["events"]
        text = json.dumps(env, ensure_ascii=draw(st.booleans()))
    text = text.replace(json.dumps(BIG), draw(st.sampled_from(HUGE)))
    # now and then a broken line (a batch holding one is decoded whole)
    broken = (draw(st.sampled_from(["cut", "garbage", "array", "string", "number"]))
              if draw(st.integers(0, 60)) == 0 else "")
    # now and then what lax JSON readers take and Polars refuses, anywhere in the line: NaN,
    # Infinity, a trailing comma (the line then goes to Polars, and becomes a reject)
    if not broken and draw(st.integers(0, 30)) == 0:
        lax = draw(st.sampled_from(["NaN", "-Infinity", "inf", "nan", "[1,]", '{"a":1,}', "[1, ]"]))
        text = text[:-1] + ', "x": ' + lax + "}" if draw(st.booleans()) else text[:-1] + ",}"
    if broken == "cut":
        text = text[: draw(st.integers(1, max(1, len(text) - 1)))]
    elif broken == "garbage":
        text = "not json {"
    elif broken == "array":
        text = "[1, 2]"
    elif broken == "string":
        text = '"open"'
    elif broken == "number":
        text = "5"
    return text.encode("utf-8", "surrogatepass")  # a lone surrogate makes invalid UTF-8


@st.composite
def rules(draw: st.DrawFn) -> Rules:
    return Rules(
        coins=tuple(draw(st.lists(st.sampled_from(COINS + ODD_TEXTS), max_size=3, unique=True))),
        statuses=tuple(draw(st.lists(st.sampled_from(STATUSES + ODD_TEXTS), max_size=4, unique=True))),
        sides=tuple(draw(st.lists(st.sampled_from(["A", "B"]), max_size=1))),
        min_notional=draw(st.sampled_from([0.0, 10.0, 10_000.0])),
        min_notional_by_coin=draw(
            st.dictionaries(st.sampled_from(COINS), st.sampled_from([0.0, 5.0, 1e6]), max_size=2)),
        trigger=draw(st.sampled_from(["any", "only", "exclude"])),
        order_types=tuple(draw(st.lists(st.sampled_from(["Limit", "Stop Market"]), max_size=1))),
        watch_users=tuple(draw(st.lists(st.sampled_from(ADDRESSES), max_size=1))),
    )


def by_line(frame: pl.DataFrame) -> pl.DataFrame:
    return frame.sort("_line", maintain_order=True)


@pytest.mark.parametrize("variant", ["plain", "streaming"])
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_prefilter_keeps_exactly_what_full_decoding_keeps(variant: str, data: st.DataObject) -> None:
    """Values of other JSON types are drawn in the fields the light read reads under the drawn
    rules: a line with such a value elsewhere is a reject only when it passes the rules
    (etl/prefilter.py)."""
    r = data.draw(rules())
    read = light_fields(rule_columns(r))[1]
    lines = data.draw(st.lists(line(variant, tuple(LIGHT_JSON[c] for c in read)), min_size=1, max_size=30))
    buf = b"\n".join(lines) + b"\n"
    full = filter_parsed(parse("orders", variant, buf), r)
    fast = prefilter(variant, buf, r, min_lines=1)
    event("prefiltered" if fast is not None else "decoded whole")
    if fast is None:
        return
    assert by_line(fast.parsed.frame).equals(by_line(full.parsed.frame))
    assert fast.counts == full.counts
    assert fast.times.sort("_line", "time").equals(full.times.sort("_line", "time"))
    assert len(fast.parsed.starts) == len(full.parsed.starts)
    # every reject of the pre-filtered path is one of full decoding's, at the same offset
    assert {o for o, _, _ in fast.parsed.rejects} <= {o for o, _, _ in full.parsed.rejects}


POLARS_ONLY = 1 << 62  # scan_min_lines: never the byte scan


@pytest.mark.parametrize("variant", ["plain", "streaming"])
@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_parse_by_a_scan_gives_polars_rows_and_rejects(variant: str, data: st.DataObject) -> None:
    """A batch decoded whole is read by the byte scan, the lines it is not sure of by Polars: the
    same rows and rejects as Polars alone, block number and time included."""
    lines = data.draw(st.lists(line(variant), min_size=1, max_size=20))
    buf = b"\n".join(lines) + b"\n"
    polars = parse("orders", variant, buf, scan_min_lines=POLARS_ONLY)
    both = parse("orders", variant, buf, scan_min_lines=1)
    assert both.frame.schema == polars.frame.schema
    assert both.frame.equals(polars.frame)
    assert both.rejects == polars.rejects
    assert (both.starts == polars.starts).all()


@pytest.mark.parametrize("extra", [b'"x":1e400', b'"x":' + b"9" * 400, b'"x":' + b"[" * 1100 + b"]" * 1100])
@pytest.mark.parametrize("variant", ["plain", "streaming"])
def test_what_polars_refuses_in_a_key_nodetap_does_not_read_is_a_reject(extra: bytes, variant: str) -> None:
    """A number out of a double's range, or nesting deeper than 1,024, in a key nodetap does not
    read: Polars refuses the line, and the byte scan is not sure of it, so it is a reject either
    way (DuckDB's reader, used before, made it a row)."""
    def wrap(event: bytes) -> bytes:
        if variant == "plain":
            return event
        return (b'{"local_time":"2026-01-05T11:00:00.1","block_time":"2026-01-05T11:00:00.05",'
                b'"block_number":7,"events":[' + event + b"]}")

    good, bad = wrap(node_line()), wrap(node_line()[:-1] + b"," + extra + b"}")
    buf = b"\n".join([good, bad]) + b"\n"
    polars = parse("orders", variant, buf, scan_min_lines=POLARS_ONLY)
    both = parse("orders", variant, buf, scan_min_lines=1)
    assert [r.offset for r in polars.rejects] == [len(good) + 1]
    assert both.rejects == polars.rejects and both.frame.equals(polars.frame)


@pytest.mark.skipif(not SAMPLES.is_dir(), reason="needs ../shared/samples")
@pytest.mark.parametrize(("name", "variant"), [("node_order_statuses_streaming.jsonl", "streaming"),
                                               ("node_order_statuses_by_block__btc_filtered.jsonl", "block")])
def test_real_node_lines_decoded_whole_are_polars_rows(name: str, variant: str) -> None:
    """Every field of real node lines, block number and time included, as Polars reads them."""
    buf = (SAMPLES / name).read_bytes()
    polars = parse("orders", variant, buf, scan_min_lines=POLARS_ONLY)
    assert not polars.rejects and polars.frame.height > 0
    assert parse("orders", variant, buf, scan_min_lines=1).frame.equals(polars.frame)


def test_prefilter_decodes_only_candidates_and_maps_rejects_back() -> None:
    lines = [node_line("100", 1), node_line("90000", 2), node_line("5", 3),
             # kept by the rules, but its `reduceOnly` has the wrong type: a reject, at its own offset
             node_line("95000", 4).replace(b'"reduceOnly":false', b'"reduceOnly":"yes"'),
             node_line("99999", 5)]
    buf = b"\n".join(lines) + b"\n"
    out = prefilter("plain", buf, Rules(min_notional=50_000.0), min_lines=1)
    assert out is not None
    assert out.decoded == 3
    assert out.parsed.frame["oid"].to_list() == [2, 5]
    assert out.parsed.frame["_line"].to_list() == [1, 4]
    offset = buf.index(lines[3])
    assert [(o, why.split(":")[0]) for o, why, _ in out.parsed.rejects] == [(offset, "wrong shape")]
    assert out.counts == {"statuses": (4, 4), "min_notional": (4, 2), "total": (4, 2)}


def test_take_lines() -> None:
    buf = b"aa\nb\ncccc\n\ndd\n"

    starts, ends = line_bounds(buf)
    out, pos = take_lines(buf, starts, ends, np.array([0, 2, 4]))
    assert out == b"aa\ncccc\ndd\n"
    assert pos.tolist() == [0, 3, 8]


def test_filter_switches_to_whole_decoding_when_most_lines_pass() -> None:
    """A batch whose candidates pass the threshold is decoded whole, not its candidates one by
    one; the next batches are decoded whole without a light read, until a probe."""
    line = node_line() + b"\n"
    f = OrdersFilter(threshold=0.35, probe_every=3, min_lines=1)
    keep_most = Rules()  # the built-in statuses: every line here passes
    assert isinstance(prefilter("plain", line * 10, keep_most, min_lines=1, max_share=0.35), TooMany)
    shares = []
    for _ in range(5):
        out = f("plain", line * 10, keep_most, 1 << 20)
        assert out.parsed.frame.height == 10
        shares.append(f.share)
        f.share = 0.5  # what the filter believes unless a light read tells it otherwise
    # light-read (too many candidates, share 1.0) first, then decoded whole; three later, a probe
    assert shares == [1.0, 0.5, 0.5, 0.5, 1.0]
    assert (f.prefiltered, f.whole) == (0, 5)
    f.share = 0.0
    out = f("plain", line * 10, Rules(min_notional=1e9), 1 << 20)
    assert out.parsed.frame.height == 0 and out.decoded == 0


def test_a_filter_whose_batches_cannot_be_pre_filtered_says_so() -> None:
    """A batch too small (or with a blank line) is decoded whole: the filter then does not
    expect the next one to be pre-filtered, so that the lane does not parse two whole batches
    at once (etl/lanes.py); one that can be pre-filtered turns it back."""
    f = OrdersFilter()
    rules = Rules(min_notional=1e9)
    assert f.prefiltering(rules)
    f("plain", (node_line() + b"\n") * (MIN_LINES - 1), rules, 1 << 20)
    assert not f.prefiltering(rules)
    f("plain", (node_line() + b"\n") * MIN_LINES, rules, 1 << 20)
    assert f.prefiltering(rules)
    assert not f.prefiltering(Rules(keep_all=True))


def test_small_batches_are_decoded_whole() -> None:
    """Below MIN_LINES lines the pre-filter's fixed cost exceeds what it saves."""
    f = OrdersFilter()
    rules = Rules(min_notional=1e9)
    out = f("plain", (node_line() + b"\n") * (MIN_LINES - 1), rules, 1 << 20)
    assert (f.prefiltered, f.whole) == (0, 1)
    assert out.parsed.frame.height == 0 and out.decoded == MIN_LINES - 1
    out = f("plain", (node_line() + b"\n") * MIN_LINES, rules, 1 << 20)
    assert (f.prefiltered, f.whole) == (1, 1)
    assert out.parsed.frame.height == 0 and out.decoded == 0


@pytest.mark.skipif(not SAMPLES.is_dir(), reason="needs ../shared/samples")
def test_prefilter_on_real_node_lines() -> None:
    buf = (SAMPLES / "node_order_statuses_streaming.jsonl").read_bytes()
    r = load_rules(ROOT / "data" / "rules.toml")
    for rule_set in (r, Rules(coins=("BTC",), min_notional=100.0), Rules(statuses=("badAloPxRejected",))):
        fast = prefilter("streaming", buf, rule_set, min_lines=1)
        full = filter_parsed(parse("orders", "streaming", buf), rule_set)
        assert fast is not None
        assert fast.parsed.frame.equals(full.parsed.frame)
        assert fast.counts == full.counts


def odd_line(oid: int, **changes: object) -> bytes:
    """A node line with some fields' values replaced (`order.` for the order's)."""
    event = json.loads(node_line(oid=oid))
    for key, value in changes.items():
        where = event["order"] if key.startswith("order_") else event
        where[key.removeprefix("order_")] = value
    return json.dumps(event, separators=(",", ":")).encode()


def test_a_value_a_rule_compares_is_read_as_polars_reads_it() -> None:
    """A status written as the number 1e-07: a reader could render it "1e-07" where Polars writes
    "0.0000001", so the light read sends the line to Polars (etl/bytescan.py) and the rule sees
    Polars' value."""
    buf = b"\n".join([node_line(oid=1), odd_line(2, status=1e-7)]) + b"\n"
    for r in (Rules(statuses=("0.0000001",)), Rules(statuses=("1e-07",)), Rules(statuses=("open",))):
        fast = prefilter("plain", buf, r, min_lines=1)
        full = filter_parsed(parse("orders", "plain", buf), r)
        assert fast is not None
        assert fast.parsed.frame.equals(full.parsed.frame)
        assert fast.counts == full.counts
    assert full.parsed.frame["oid"].to_list() == [1]


def test_a_field_no_rule_reads_is_not_checked_unless_the_line_passes() -> None:
    """`isTrigger` of the wrong type makes a line a reject for Polars. When no rule reads it, a
    line the rules drop is counted and dropped (not read, not a reject); one they keep is
    decoded whole and rejected; when a rule reads it, the line is rejected either way."""
    lines = [node_line(oid=1), odd_line(2, order_isTrigger="yes"),
             odd_line(3, order_isTrigger="yes", order_limitPx="90000")]
    buf = b"\n".join(lines) + b"\n"
    offsets = [buf.index(line) for line in lines]
    out = prefilter("plain", buf, Rules(min_notional=50_000.0), min_lines=1)
    assert out is not None
    assert [o for o, _, _ in out.parsed.rejects] == [offsets[2]]
    assert out.counts["total"] == (2, 0)
    read = prefilter("plain", buf, Rules(min_notional=50_000.0, trigger="exclude"), min_lines=1)
    assert read is not None
    assert [o for o, _, _ in read.parsed.rejects] == offsets[1:]
    assert read.counts["total"] == (1, 0)


def test_a_required_text_no_rule_reads_missing_or_of_another_type_is_a_reject() -> None:
    """`user` and `side` are required but no rule here compares them: the scan only checks that
    they are strings (`Fields.checked`, no value made). A line without one, or with null there,
    is a reject whatever the rules say; one with a number or a list there is decoded whole, as
    full decoding reads it (Polars takes it as text): the same rejects and counts either way."""
    event = json.loads(node_line(oid=2))
    del event["user"]
    lines = [node_line(oid=1), json.dumps(event, separators=(",", ":")).encode(),
             odd_line(3, user=5), odd_line(4, order_side=None), odd_line(5, order_side=["B"])]
    buf = b"\n".join(lines) + b"\n"
    r = Rules(min_notional=50_000.0)
    fields = light_fields(rule_columns(r))[0]
    assert {"user", "order.side"} <= set(fields.checked)
    fast = prefilter("plain", buf, r, min_lines=1)
    full = filter_parsed(parse("orders", "plain", buf), r)
    assert fast is not None
    assert [o for o, _, _ in fast.parsed.rejects] == [o for o, _, _ in full.parsed.rejects] == [
        buf.index(lines[1]), buf.index(lines[3])]
    assert fast.counts == full.counts
    assert fast.decoded == 4  # every odd line decoded whole; only the good one read by the scan


@pytest.mark.parametrize("number", HUGE)
@pytest.mark.parametrize(("field", "rules"), [
    ('"limitPx":"1"', Rules(statuses=(), min_notional=10.0)),
    ('"side":"B"', Rules(statuses=(), sides=("A",))),
    ('"coin":"BTC"', Rules(statuses=(), coins=("ETH",))),
])
def test_a_number_out_of_range_is_a_reject_through_the_scan_as_through_polars(
        number: str, field: str, rules: Rules) -> None:
    """Polars refuses a line holding a number out of a double's range: the byte scan sends such a
    line to Polars, in a batch decoded whole as in a pre-filtered one (etl/bytescan.py)."""
    key = field.split(":")[0]
    odd = node_line(oid=2).replace(field.encode(), f"{key}:{number}".encode())
    buf = b"\n".join([node_line(oid=1), odd]) + b"\n"
    polars = parse("orders", "plain", buf, scan_min_lines=POLARS_ONLY)
    both = parse("orders", "plain", buf, scan_min_lines=1)
    assert polars.frame["oid"].to_list() == [1] and len(polars.rejects) == 1
    assert both.frame.equals(polars.frame) and both.rejects == polars.rejects
    fast = prefilter("plain", buf, rules, min_lines=1)
    full = filter_parsed(polars, rules)
    assert fast is not None
    assert fast.parsed.frame.equals(full.parsed.frame)
    assert fast.counts == full.counts
    assert fast.times.equals(full.times)
    assert [o for o, _, _ in fast.parsed.rejects] == [o for o, _, _ in full.parsed.rejects]
