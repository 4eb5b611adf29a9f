"""The pre-filter's byte scan (etl/bytescan.py): every line it reads as sure is read as Polars'
decoder reads it, and every line it is not sure of is returned for a full decode."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import cast

import numpy as np
import polars as pl
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from test_prefilter import SAMPLES, by_line, line, node_line, order_event

from etl.bytescan import scan_orders
from etl.columns import ORDERS_REQUIRED
from etl.fields import FULL
from etl.flatten import orders_flat
from etl.parse import line_bounds, parse
from etl.prefilter import LIGHT_COLUMNS, light_fields

EVERY = light_fields(frozenset(LIGHT_COLUMNS))  # every field the light read may read
REQUIRED = light_fields(frozenset())


def scan(variant: str, lines: list[bytes], fields: tuple[object, tuple[str, ...]] = EVERY
         ) -> tuple[pl.DataFrame, set[int]]:
    buf = b"\n".join(lines) + b"\n"
    starts, ends = line_bounds(buf)
    events, unsure = scan_orders(variant, buf, starts, ends, fields[0])  # type: ignore[arg-type]
    assert np.all(np.diff(unsure.astype(np.int64)) > 0)  # sorted, once each
    return orders_flat(events, False, fields[1]).with_columns(events["_line"]), set(unsure.tolist())


def envelope(*events: object, **extra: object) -> bytes:
    return json.dumps({"local_time": "2026-01-05T11:00:00.1", "block_time": "2026-01-05T11:00:00.05",
                       "block_number": 7, "events": list(events), **extra},
                      separators=(",", ":")).encode("utf-8", "surrogatepass")


GOOD = node_line(limit_px="97000.5", oid=42)
GOOD_EVENT = json.loads(GOOD)


def test_a_node_line_is_read_as_polars_reads_it() -> None:
    light, unsure = scan("plain", [GOOD])
    assert not unsure
    full = parse("orders", "plain", GOOD + b"\n").frame
    assert light.drop("_line").equals(full.select(EVERY[1]))


def edit(old: bytes, new: bytes) -> bytes:
    assert old in GOOD
    return GOOD.replace(old, new, 1)


UNSURE = {
    "whitespace between tokens": edit(b'"user":', b'"user": '),
    "an escape in a string": edit(b'"tif":null', b'"tif":"a\\"b"'),
    "a byte outside printable ASCII": edit(b'"tif":null', 'tif":"é'.join(['"', '"']).encode()),
    "a control byte in a string": edit(b'"tif":null', b'"tif":"a\tb"'),
    "nesting deeper than 64": edit(b'"tif":null', b'"tif":' + b"[" * 70 + b"]" * 70),
    "an exponent of three digits": edit(b'"timestamp":1', b'"timestamp":1e400'),
    "300 digits": edit(b'"timestamp":1', b'"timestamp":' + b"9" * 300),
    "NaN": edit(b'"timestamp":1', b'"timestamp":NaN'),
    "a trailing comma": GOOD[:-2] + b",}}",
    "a leading zero": edit(b'"timestamp":1', b'"timestamp":01'),
    "a truncated line": GOOD[:-1],
    "text after the object": GOOD + b"x",
    "a field read twice": edit(b'"status":"open"', b'"status":"open","status":"open"'),
    "a string field holding a number": edit(b'"status":"open"', b'"status":5'),
    "a string field holding an object": edit(b'"coin":"BTC"', b'"coin":{"a":1}'),
    "a decimal holding a number": edit(b'"limitPx":"97000.5"', b'"limitPx":97000.5'),
    "an integer field holding a string": edit(b'"oid":42', b'"oid":"42"'),
    "an integer field holding a float": edit(b'"oid":42', b'"oid":42.0'),
    "an integer of 19 digits": edit(b'"oid":42', b'"oid":1234567890123456789'),
    # Polars refuses an integer from 2^128 on, and a double past ~1.8e308, in any key
    "an unread integer of 39 digits": edit(b'"timestamp":1', b'"timestamp":' + str(2**128).encode()),
    "an unread integer past int64": edit(b'"timestamp":1', b'"timestamp":9223372036854775808'),
    "an unread number past a double's range": edit(b'"triggerPx":"0"', b'"triggerPx":1' + b"0" * 210
                                                   + b"e99"),
    "a boolean field holding a string": edit(b'"isTrigger":false', b'"isTrigger":"false"'),
    "order null": GOOD[:GOOD.index(b'"order":')] + b'"order":null}',
    "order twice": GOOD[:-1] + b',"order":{}}',
    "not an object": b"[1,2]",
    "not JSON": b"not json {",
}


@pytest.mark.parametrize("name", list(UNSURE))
def test_what_the_scan_is_not_sure_of_is_decoded_whole(name: str) -> None:
    _, unsure = scan("plain", [GOOD, UNSURE[name], GOOD])
    assert unsure == {1}


@pytest.mark.parametrize("byte", [b"\\n", b"\x01", b"\x1f", b"\x7f", b"\x80", "é".encode(), b"\xff"])
def test_a_byte_a_string_may_not_hold_is_found_wherever_it_lies(byte: bytes) -> None:
    """The scan looks for a string's end eight bytes at a time: an escape (here one that is not a
    quote), a control byte, 127 or a byte over 127 is found at every place in those eight, and in
    the bytes after the last eight."""
    for at in range(12):
        text = b"0123456789ab"[:at] + byte + b"0123456789ab"[at:]
        _, unsure = scan("plain", [GOOD, edit(b'"tif":null', b'"tif":"' + text + b'"'), GOOD])
        assert unsure == {1}, (byte, at)


SURE = {
    "keys in another order": json.dumps(dict(reversed(list(GOOD_EVENT.items()))), separators=(",", ":")),
    "an extra key, nested": GOOD[:-1].decode() + ',"extra":{"order":{"coin":"ETH"},"x":[1,{"y":null}]}}',
    "a missing key": json.dumps({k: v for k, v in GOOD_EVENT.items() if k != "user"}, separators=(",", ":")),
    "an unread field of another type": edit(b'"tif":null', b'"tif":[1,2.5e-3,true]').decode(),
    "an unread key twice": edit(b'"tif":null', b'"tif":null,"tif":5').decode(),
    "null in a read field": edit(b'"status":"open"', b'"status":null').decode(),
    "a negative integer": edit(b'"oid":42', b'"oid":-42').decode(),
    "strings of 12 and 13 bytes (views inline them up to 12)":
        edit(b'"user":"0xa"', b'"user":"0x0123456789"').replace(b'"BTC"', b'"0123456789abc"').decode(),
    "empty strings": edit(b'"status":"open"', b'"status":""').decode(),
    "numbers a double holds":
        edit(b'"tif":null', b'"tif":[-0,1E5,1e-99,0.5e+99,' + b"9" * 200 + b"e99]").decode(),
}


@pytest.mark.parametrize("name", list(SURE))
def test_what_the_scan_reads_as_polars_reads_it(name: str) -> None:
    """A sure line missing a required field is one full decoding rejects; the others' values
    are the same."""
    lines = [GOOD, SURE[name].encode()]
    light, unsure = scan("plain", lines)
    assert not unsure
    buf = b"\n".join(lines) + b"\n"
    full = parse("orders", "plain", buf)
    whole = pl.all_horizontal(pl.col(c).is_not_null() for c in ORDERS_REQUIRED)
    starts, _ = line_bounds(buf)
    rejected = {int(np.searchsorted(starts, r.offset)) for r in full.rejects}
    assert rejected == set(light.filter(~whole)["_line"])
    assert by_line(light.filter(whole)).equals(by_line(full.frame.select(*EVERY[1], "_line")))


def test_block_envelopes() -> None:
    ok = envelope(GOOD_EVENT, GOOD_EVENT)
    lines = [
        ok,
        envelope(),  # an empty block: no rows, sure
        ok.replace(b'"events":[', b'"events":[5,'),  # an event that is not an object
        ok.replace(b'"block_number":7', b'"block_number":"7"'),
        ok.replace(b'"block_number":7', b'"block_number":1234567890123456789'),
        ok.replace(b'"block_time":"2026-01-05T11:00:00.05"', b'"block_time":5'),
        json.dumps({"block_number": 7}).encode(),  # no events
        ok.replace(b'"events":[', b'"events":{"a":[').replace(b"}]}", b"}]}}"),
        ok.replace(b'"block_number":7', b'"block_number":null'),
        GOOD,  # an event outside an envelope
    ]
    light, unsure = scan("streaming", lines)
    assert unsure == {2, 3, 4, 5, 6, 7, 9}
    assert light["_line"].to_list() == [0, 0, 8, 8]
    full = parse("orders", "streaming", envelope(GOOD_EVENT) + b"\n").frame
    assert light.drop("_line").head(1).equals(full.select(EVERY[1]))


def test_a_block_with_more_events_than_room_is_read_again() -> None:
    """The rows are first given room for one event per 256 bytes; a block of tiny events (each
    `{}`, a row missing every field) holds more, and the slice is scanned again with twice the
    room until they fit (a string full of `{` counts for nothing)."""
    lines = [envelope(*([{}] * 5000)), envelope(GOOD_EVENT), envelope(*([{}] * 300), x="{" * 100_000)]
    light, unsure = scan("by_block", lines)
    assert not unsure
    assert light.height == 5301
    assert light["_line"].to_list() == [0] * 5000 + [1] + [2] * 300
    assert light.filter(pl.col("_line") == 1)["oid"].to_list() == [42]


def test_a_large_batch_is_scanned_in_slices_in_order() -> None:
    """Over 8,192 lines the batch is cut into a slice per core; rows and unsure lines keep their
    line numbers."""
    lines = [node_line(oid=i) for i in range(30_000)]
    for i in (0, 8191, 8192, 15_000, 29_999):
        lines[i] = lines[i].replace(b'"status":"open"', b'"status":5')
    light, unsure = scan("plain", lines, REQUIRED)
    assert unsure == {0, 8191, 8192, 15_000, 29_999}
    assert light["_line"].to_list() == list(range(30_000))
    assert light["oid"].to_list() == list(range(30_000))


def test_with_a_checkpoint_a_batch_is_scanned_in_smaller_slices_with_the_same_result() -> None:
    """A bulk lane's scan calls its checkpoint every 16,384 lines of each core's part (etl/gate.py)
    and returns what one slice per core returns."""
    lines = [node_line(oid=i) for i in range(40_000)]
    lines[20_001] = lines[20_001].replace(b'"status":"open"', b'"status":5')
    buf = b"\n".join(lines) + b"\n"
    starts, ends = line_bounds(buf)
    calls = []
    events, unsure = scan_orders("plain", buf, starts, ends, EVERY[0], lambda: calls.append(1))  # type: ignore[arg-type]
    whole, whole_unsure = scan_orders("plain", buf, starts, ends, EVERY[0])  # type: ignore[arg-type]
    assert len(calls) >= 3  # 40,000 lines: at least three slices
    assert events.equals(whole) and unsure.tolist() == whole_unsure.tolist() == [20_001]
    assert events["_line"].to_list() == list(range(40_000))


@st.composite
def compact_line(draw: st.DrawFn, variant: str) -> bytes:
    """A line as the node writes it (compact JSON), from `order_event`'s drawn events: keys in
    other orders, missing and extra keys, values of other JSON types, exponents; now and then
    one of `line`'s lines, which are mostly not compact."""
    if draw(st.integers(0, 4)) == 0:
        return draw(line(variant))
    events = draw(st.lists(order_event(), min_size=1, max_size=1 if variant == "plain" else 3))
    for ev in events:  # most values as the node writes them, so that most lines are sure
        order = ev.get("order")
        if draw(st.integers(0, 3)) and isinstance(order, dict):
            ev["user"] = draw(st.sampled_from(["0xaa", "0xbb"]))
            order.update(coin=draw(st.sampled_from(["BTC", "ETH", "@107", "km:USTECH"])), cloid=None,
                         limitPx=draw(st.sampled_from(["97000.5", "1e5", "0.001"])), origSz="2.5")
    if variant == "plain":
        return json.dumps(events[0], separators=(",", ":")).encode("utf-8", "surrogatepass")
    return envelope(*events)


@pytest.mark.parametrize("variant", ["plain", "streaming"])
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_byte_scan_agrees_with_full_decoding(variant: str, data: st.DataObject) -> None:
    """Every line the scan reads as sure, with its required fields, is a good line of full
    decoding with the same values in every field the light read may read."""
    lines = data.draw(st.lists(compact_line(variant), min_size=1, max_size=20))
    light, unsure = scan(variant, lines)
    whole = pl.all_horizontal(pl.col(c).is_not_null() for c in ORDERS_REQUIRED)
    sure = set(range(len(lines))) - unsure - set(light.filter(~whole)["_line"].to_list())
    event(f"sure lines: {'some' if sure else 'none'}")
    buf = b"\n".join(lines) + b"\n"
    starts, _ = line_bounds(buf)
    full = parse("orders", variant, buf)
    rejected = {int(np.searchsorted(starts, r.offset)) for r in full.rejects}
    assert not sure & rejected
    got = by_line(light.filter(pl.col("_line").is_in(sorted(sure))))
    want = by_line(full.frame.filter(pl.col("_line").is_in(sorted(sure))).select(*EVERY[1], "_line"))
    assert got.equals(want)


@pytest.mark.skipif(not SAMPLES.is_dir(), reason="needs ../shared/samples")
@pytest.mark.parametrize(("name", "variant"), [
    ("node_order_statuses_streaming.jsonl", "streaming"),
    ("node_order_statuses_by_block__testnet.jsonl", "by_block"),
    ("node_order_statuses_by_block__btc_filtered.jsonl", "by_block")])
def test_real_node_lines_are_all_sure(name: str, variant: str) -> None:
    buf = (SAMPLES / name).read_bytes()
    light, unsure = scan(variant, buf.rstrip(b"\n").split(b"\n"))
    assert not unsure
    full = parse("orders", variant, buf).frame
    assert light.drop("_line").equals(full.select(EVERY[1]))
    assert light.height == full.height > 0


def test_the_scan_compiles_without_a_cache_directory() -> None:
    """Where numba finds no directory it can write its cache to (a read-only install, a user
    without a home), the scan is compiled at each start instead of failing to import."""
    code = ("from numba.core import caching\n"
            "caching.CacheImpl._locator_classes = []  # no directory numba could write to\n"
            "import etl.bytescan as scan\n"
            "scan.warm()\n"
            "print('compiled')\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                         cwd=Path(__file__).resolve().parent.parent)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "compiled"


@settings(max_examples=150, deadline=None)
@given(st.lists(st.sampled_from([b"", b"a", b"{}", b'{"x":"yz"}', b"\xff", b"0123456789" * 30]),
                max_size=400))
def test_line_bounds_by_memchr_are_numpys(parts: list[bytes]) -> None:
    """The pre-filter finds its lines with libc's memchr (`bytescan.line_bounds`): the same
    starts and ends as numpy's search, for blank lines, short lines (more than the first guess
    of room) and a last line without its newline."""
    from etl.bytescan import line_bounds as by_memchr

    buf = b"\n".join(parts)
    for data in (buf, buf + b"\n"):
        got, want = by_memchr(data), line_bounds(data)
        assert got[0].tolist() == want[0].tolist() and got[1].tolist() == want[1].tolist()


def test_line_bounds_by_memchr_grow_past_their_first_guess() -> None:
    from etl.bytescan import line_bounds as by_memchr

    buf = b"\n" * 5000 + b"x\n" * 3000  # 8,000 lines in 11,000 bytes: room for 1,024 at first
    starts, ends = by_memchr(buf)
    want = line_bounds(buf)
    assert len(ends) == 8000 and ends.tolist() == want[1].tolist() and starts.tolist() == want[0].tolist()


# values a field may hold in a line laid out as the batch's first: what the node writes, and what
# it does not (other JSON types, escapes, bytes outside printable ASCII, numbers out of range)
LAID_OUT_VALUES = st.one_of(
    st.sampled_from([None, True, False, 0, -3, 42, 2**63, 2**128, 1.5, 1e-7, 1.5e300, [], [1], {},
                     {"a": [1]}, "", "open", "0x0123456789ab", "0x0123456789abc", "BTC", "a\"b", "a\\b",
                     "tab\there", "ünï", "\x7f", "97000.5", "1e5"]),
    st.text(max_size=40), st.integers(), st.floats(allow_nan=False))
# bytes a mutation puts in a line: JSON's own, whitespace, a control byte, bytes outside ASCII
MUTATION_BYTES = st.sampled_from([b" ", b'"', b"\\", b",", b":", b"{", b"}", b"[", b"]", b"0", b"e", b"-",
                                  b"\x00", b"\x7f", b"\xc3\xa9", b"\xff", b"null", b"x"])


@st.composite
def laid_out_event(draw: st.DrawFn) -> dict[str, object]:
    """GOOD's keys in GOOD's order, each value drawn now and then."""
    event: dict[str, object] = json.loads(GOOD)
    order = cast(dict[str, object], event["order"])
    for part in (event, order):
        for key in part:
            if key != "order" and draw(st.integers(0, 5)) == 0:
                part[key] = draw(LAID_OUT_VALUES)
    return event


@st.composite
def mutated(draw: st.DrawFn, line: bytes) -> bytes:
    """The line, or the line with a few bytes put in, taken out or replaced, or cut short: half
    the time at one of JSON's own bytes (a quote, a bracket, a comma, a colon)."""
    for _ in range(draw(st.integers(0, 2))):
        marks = [i for i, c in enumerate(line) if c in b'"{}[],:']
        at = draw(st.sampled_from(marks) if marks and draw(st.booleans()) else st.integers(0, len(line)))
        how = draw(st.sampled_from(["insert", "delete", "replace", "cut"]))
        if how == "cut":
            line = line[:at]
        elif how == "delete":
            line = line[:at] + line[at + 1:]
        else:
            line = line[:at] + draw(MUTATION_BYTES) + line[at + (how == "replace"):]
    return line.replace(b"\n", b" ")


def compact(value: object) -> bytes:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode("utf-8", "surrogatepass")


@pytest.mark.parametrize("variant", ["plain", "streaming", "by_block"])
@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_lines_laid_out_as_the_first_are_read_as_the_general_scan_reads_them(variant: str,
                                                                            data: st.DataObject) -> None:
    """The scan reads a line whose events have the batch's first event's keys in its order without
    a key lookup (`_scan_laid_out`), and every other line with the general scan. Both readings
    agree: the same rows, values and unsure lines as the general scan alone, for any values and
    any mutation of the bytes."""
    lines = [GOOD if variant == "plain" else envelope(GOOD_EVENT)]
    for _ in range(data.draw(st.integers(1, 12))):
        events = data.draw(st.lists(laid_out_event(), min_size=1 if variant != "by_block" else 0,
                                    max_size=1 if variant != "by_block" else 3))
        head: dict[str, object] = {}
        if variant != "plain" and data.draw(st.integers(0, 4)) == 0:
            head = {"block_number": data.draw(LAID_OUT_VALUES), "block_time": data.draw(LAID_OUT_VALUES)}
        line = compact(events[0]) if variant == "plain" else envelope(*events, **head)
        lines.append(data.draw(mutated(line)))
    buf = b"\n".join(lines) + b"\n"
    starts, ends = line_bounds(buf)
    fields = data.draw(st.sampled_from([EVERY[0], REQUIRED[0], FULL]))
    laid, laid_unsure = scan_orders(variant, buf, starts, ends, fields)  # type: ignore[arg-type]
    general, general_unsure = scan_orders(variant, buf, starts, ends, fields, laid_out=False)  # type: ignore[arg-type]
    assert laid_unsure.tolist() == general_unsure.tolist()
    sure = ~pl.col("_line").is_in(general_unsure.tolist())  # rows of unsure lines are dropped
    assert laid.filter(sure).equals(general.filter(sure))


def test_node_lines_are_read_laid_out() -> None:
    """Lines with the first's keys in its order are read by `_scan_laid_out`, in plain files and
    in block envelopes; a line laid out otherwise (here a key missing) by the general scan."""
    from etl.bytescan import _first_keys, _layout, _names, _scan_laid_out

    other = json.dumps({k: v for k, v in GOOD_EVENT.items() if k != "hash"}, separators=(",", ":")).encode()
    blocks = [envelope(GOOD_EVENT, GOOD_EVENT), envelope(), envelope(json.loads(other))]
    for variant, lines in (("plain", [GOOD, GOOD, other]), ("by_block", blocks)):
        buf = b"\n".join(lines) + b"\n"
        starts, ends = line_bounds(buf)
        envelope_ = variant != "plain"
        found = _first_keys(buf, starts, ends, 0, 3, envelope_)
        assert found is not None
        fields = REQUIRED[0]
        layout = _layout(*found, fields)  # type: ignore[arg-type]
        nf = len(_names(fields)[4])  # type: ignore[arg-type]
        cap = 8
        again = np.zeros(3, np.bool_)
        views = np.zeros(16 * cap * 4, np.uint8)
        rows, _ = _scan_laid_out(np.frombuffer(buf, np.uint8), starts, ends, 0, 3, envelope_, layout,
                                 np.full(nf, -1), np.full(nf, -1), np.zeros(cap, np.uint32),
                                 np.zeros((cap, 1), np.int64),
                                 np.zeros((cap, nf), np.int8), views, views.view(np.int32),
                                 np.zeros(len(buf), np.uint8), again, np.zeros((3, 5), np.int64))
        assert again.tolist() == [False, False, True]
        assert rows == 2


@pytest.mark.parametrize("fields", [EVERY[0], FULL], ids=["light", "full"])
@pytest.mark.parametrize("variant", ["plain", "by_block"])
def test_every_one_byte_edit_of_a_node_line_is_read_as_the_general_scan_reads_it(variant: str,
                                                                                 fields: object) -> None:
    """Each byte of a node line (an envelope of two events) taken out, and replaced by or preceded
    with each of JSON's own bytes and a few others: one batch of every such line, after one as
    the node writes it, is read alike with and without the layout."""
    good = GOOD if variant == "plain" else envelope(GOOD_EVENT, GOOD_EVENT)
    lines = [good]
    for at in range(len(good) + 1):
        lines.append(good[:at] + good[at + 1:])
        for byte in (b'"', b"\\", b",", b":", b"{", b"}", b"[", b"]", b"0", b"-", b"e", b" ", b"n", b"\x01",
                     b"\xff"):
            lines += [good[:at] + byte + good[at + 1:], good[:at] + byte + good[at:]]
    buf = b"\n".join(line.replace(b"\n", b" ") for line in lines) + b"\n"
    starts, ends = line_bounds(buf)
    laid, laid_unsure = scan_orders(variant, buf, starts, ends, fields)  # type: ignore[arg-type]
    general, general_unsure = scan_orders(variant, buf, starts, ends, fields, laid_out=False)  # type: ignore[arg-type]
    assert laid_unsure.tolist() == general_unsure.tolist()
    sure = ~pl.col("_line").is_in(general_unsure.tolist())
    assert laid.filter(sure).equals(general.filter(sure))
    assert 0 < len(general_unsure) < len(lines)
