"""Parsing: every real sample line, exact values against an independent decoder, and bad lines."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

import numpy as np
import orjson
import polars as pl
import pytest

from etl.parse import _NEWLINE_SLICE, line_bounds, parse
from etl.shaping import trades_from_fills

SAMPLE_STREAMS = {
    "node_fills_by_block.jsonl": ("fills", "by_block"),
    "node_fills_by_block__btc_filtered.jsonl": ("fills", "by_block"),
    "node_fills_by_block__testnet_empty.jsonl": ("fills", "by_block"),
    "node_fills_streaming.jsonl": ("fills", "streaming"),
    "node_fills_streaming__liquidation.jsonl": ("fills", "streaming"),
    "node_order_statuses_by_block__btc_filtered.jsonl": ("orders", "by_block"),
    "node_order_statuses_by_block__testnet.jsonl": ("orders", "by_block"),
    "node_order_statuses_streaming.jsonl": ("orders", "streaming"),
    "node_trades.jsonl": ("trades", "plain"),
    "node_trades_2024.jsonl": ("trades", "plain"),
}


def _read(path: Path) -> bytes:
    data = path.read_bytes()
    return data if data.endswith(b"\n") else data + b"\n"


def _events(kind: str, variant: str, data: bytes) -> list:
    """The events of a file, decoded line by line with orjson: the oracle."""
    out = []
    for line in data.splitlines():
        v = orjson.loads(line)
        out += v["events"] if variant != "plain" else [v]
    return out


def _ts(iso: str) -> datetime:
    head, _, frac = iso.partition(".")
    return datetime.fromisoformat(f"{head}.{(frac + '000000')[:6]}")


@pytest.mark.parametrize("name", sorted(SAMPLE_STREAMS))
def test_every_sample_line_parses_to_exact_values(samples: Path, name: str) -> None:
    kind, variant = SAMPLE_STREAMS[name]
    data = _read(samples / name)
    parsed = parse(kind, variant, data)
    events = _events(kind, variant, data)
    assert parsed.rejects == []
    assert parsed.lines == data.count(b"\n")
    frame = parsed.frame
    assert frame.height == len(events)
    for row, ev in zip(frame.iter_rows(named=True), events, strict=True):
        if kind == "orders":
            o = ev["order"]
            assert row["time"] == _ts(ev["time"])
            assert (row["user"], row["status"], row["coin"], row["side"]) == (
                ev["user"], ev["status"], o["coin"], o["side"])
            assert (row["limit_px"], row["sz"], row["orig_sz"]) == (
                float(o["limitPx"]), float(o["sz"]), float(o["origSz"]))
            assert (row["oid"], row["tif"], row["cloid"], row["order_type"]) == (
                o["oid"], o["tif"], o["cloid"], o["orderType"])
            assert row["order_time"].timestamp() * 1000 == pytest.approx(o["timestamp"], abs=0.5)
            assert orjson.loads(row["children"]) == o["children"]
        elif kind == "fills":
            user, f = ev
            assert (row["user"], row["coin"], row["side"], row["tid"], row["oid"]) == (
                user, f["coin"], f["side"], f["tid"], f["oid"])
            assert (row["px"], row["sz"], row["fee"], row["crossed"]) == (
                float(f["px"]), float(f["sz"]), float(f["fee"]), f["crossed"])
            assert row["time"].timestamp() * 1000 == pytest.approx(f["time"], abs=0.5)
            assert row["twap_id"] == f["twapId"]
            liq = f.get("liquidation")
            assert row["liquidated_user"] == (liq["liquidatedUser"] if liq else None)
        else:
            assert (row["coin"], row["side"], row["px"], row["sz"], row["hash"]) == (
                ev["coin"], ev["side"], float(ev["px"]), float(ev["sz"]), ev["hash"])
            assert row["time"] == _ts(ev["time"])
            assert (row["buyer"], row["seller"]) == (
                ev["side_info"][0]["user"], ev["side_info"][1]["user"])


def test_block_rows_carry_block_number_and_time(samples: Path) -> None:
    data = _read(samples / "node_order_statuses_by_block__testnet.jsonl")
    row = parse("orders", "by_block", data).frame.row(0, named=True)
    assert row["block_number"] == 463290001
    assert row["block_time"] == datetime(2025, 11, 16, 8, 45, 47, 219983)
    assert row["time"] == datetime(2025, 11, 16, 8, 45, 47, 219983)


def test_liquidation_fill(samples: Path) -> None:
    data = _read(samples / "node_fills_streaming__liquidation.jsonl")
    row = parse("fills", "streaming", data).frame.row(0, named=True)
    assert row["liquidated_user"] == "0x5ef843ccf26810073ee689a954f6d05f5b48fccb"
    assert row["liquidation_mark_px"] == 72.149
    assert row["liquidation_method"] == "market"
    assert row["cloid"] == "0x00000000000000000000019f08a8bdd8"


def test_trades_from_fills_one_per_tid_with_taker_side(samples: Path) -> None:
    data = _read(samples / "node_fills_by_block.jsonl")
    fills = parse("fills", "by_block", data).frame
    trades = trades_from_fills(fills)
    events = [e for line in data.splitlines() for e in orjson.loads(line)["events"]]
    by_tid: dict[int, list] = {}
    for user, f in events:
        by_tid.setdefault(f["tid"], []).append((user, f))
    expected = {}
    for tid, pair in by_tid.items():
        if tid == 0:  # spot dust conversions: one-sided fills, not trades
            continue
        takers = [(u, f) for u, f in pair if f["crossed"]]
        if not takers:
            continue
        user, f = takers[0]
        makers = [u for u, g in pair if not g["crossed"]]
        other = makers[0] if makers else None
        buyer, seller = (user, other) if f["side"] == "B" else (other, user)
        expected[tid] = (f["coin"], f["side"], float(f["px"]), float(f["sz"]), buyer, seller)
    got = {r["tid"]: (r["coin"], r["side"], r["px"], r["sz"], r["buyer"], r["seller"])
           for r in trades.iter_rows(named=True)}
    assert trades["tid"].n_unique() == trades.height
    assert got == expected
    assert 0 not in got and len(got) == 45


def test_plain_fills_lines_are_top_level_arrays(samples: Path) -> None:
    # the plain variant writes each event `[user, {...}]` as its own line
    blocks = _read(samples / "node_fills_streaming.jsonl").splitlines()
    plain = b"".join(orjson.dumps(orjson.loads(b)["events"][0]) + b"\n" for b in blocks)
    a = parse("fills", "plain", plain).frame
    b = parse("fills", "streaming", b"\n".join(blocks) + b"\n").frame
    assert a.drop("block_number", "block_time").equals(b.drop("block_number", "block_time"))


GOOD = (b'{"time":"2026-01-05T11:00:00.5","user":"0xu","hash":null,"builder":null,"status":"open",'
        b'"order":{"coin":"BTC","side":"B","limitPx":"100.5","sz":"2","oid":OID,"timestamp":1,'
        b'"triggerCondition":"N/A","isTrigger":false,"triggerPx":"0.0","children":[],'
        b'"isPositionTpsl":false,"reduceOnly":false,"orderType":"Limit","origSz":"2",'
        b'"tif":"Gtc","cloid":null}}')


def good(oid: int) -> bytes:
    return GOOD.replace(b"OID", str(oid).encode())


@pytest.mark.parametrize(
    ("bad", "reason"),
    [
        (b'{"time":"2026-01-05T11:00:00","user":', "invalid JSON"),
        (b"\xff\xfe\x00garbage", "invalid JSON"),
        (b"[1, 2, 3]", "expected a JSON dict"),
        (b'{"time":"x"}', "missing or out-of-range required fields: time, user, status, order.coin, "
                          "order.side, order.limitPx, order.oid"),
        # a time no node's clock writes (Python cannot hold year 10000)
        (good(9).replace(b"2026-01-05", b"1999-12-31"), "missing or out-of-range required field: time"),
        (good(9).replace(b"2026-01-05", b"0000-01-01"), "missing or out-of-range required field: time"),
        (good(9).replace(b'"limitPx":"100.5",', b""),
         "missing or out-of-range required field: order.limitPx"),
        (good(9).replace(b'"oid":9', b'"oid":"nine"'), "wrong shape"),
        (b'{"status":"open","order":5}', "wrong shape"),
        # whitespace only: the decoder skips it, which would shift the next rows' line numbers
        (b"   ", "invalid JSON"),
        (b"\t", "invalid JSON"),
        # what DuckDB's reader takes and Polars' refuses
        (good(9)[:-1] + b',"x":NaN}', "invalid JSON"),
        (good(9)[:-1] + b",}", "invalid JSON"),
    ],
)
@pytest.mark.parametrize("scan_min_lines", [1, 1 << 62], ids=["duckdb", "polars"])
def test_bad_line_is_rejected_and_neighbours_kept(bad: bytes, reason: str, scan_min_lines: int) -> None:
    lines = [good(1), good(2), bad, good(3)]
    buf = b"\n".join(lines) + b"\n"
    parsed = parse("orders", "plain", buf, scan_min_lines=scan_min_lines)
    assert parsed.frame["oid"].to_list() == [1, 2, 3]
    assert parsed.frame["_line"].to_list() == [0, 1, 3]
    assert len(parsed.rejects) == 1
    offset, why, head = parsed.rejects[0]
    assert offset == len(good(1)) + len(good(2)) + 2
    assert why == reason or why.startswith(reason + ": "), why
    assert head == bad[:512]
    assert parsed.lines == 4


def test_line_over_max_line_bytes_is_rejected() -> None:
    long = good(5).replace(b'"cloid":null', b'"cloid":"' + b"a" * 3000 + b'"')
    buf = good(1) + b"\n" + long + b"\n" + good(2) + b"\n"
    parsed = parse("orders", "plain", buf, max_line_bytes=1000)
    assert parsed.frame["oid"].to_list() == [1, 2]
    assert [(o, r) for o, r, _ in parsed.rejects] == [
        (len(good(1)) + 1, f"line of {len(long)} bytes over max_line_bytes")]


def test_blank_lines_are_skipped_not_rejected() -> None:
    buf = good(1) + b"\n\n" + good(2) + b"\n"
    parsed = parse("orders", "plain", buf)
    assert parsed.frame["oid"].to_list() == [1, 2]
    assert parsed.rejects == []


def test_many_bad_lines_in_one_batch() -> None:
    lines = []
    for i in range(3000):
        lines.append(good(i) if i % 7 else good(i)[: 40 + i % 50])
    parsed = parse("orders", "plain", b"\n".join(lines) + b"\n")
    assert parsed.frame["oid"].to_list() == [i for i in range(3000) if i % 7]
    assert len(parsed.rejects) == len([i for i in range(3000) if not i % 7])


def test_block_line_with_one_bad_event_rejects_the_line(samples: Path) -> None:
    lines = _read(samples / "node_fills_streaming.jsonl").splitlines()
    broken = lines[3].replace(b'"tid":', b'"tid":"x",  "_":')
    buf = b"\n".join(lines[:3] + [broken] + lines[4:]) + b"\n"
    parsed = parse("fills", "streaming", buf)
    assert parsed.frame.height == len(lines) - 1
    assert [r[0] for r in parsed.rejects] == [sum(len(x) + 1 for x in lines[:3])]


def test_empty_buffer() -> None:
    parsed = parse("fills", "by_block", b"")
    assert parsed.frame.height == 0 and parsed.lines == 0
    assert isinstance(parsed.frame, pl.DataFrame)


def test_line_bounds_across_the_slices_it_searches() -> None:
    """Newlines are searched a slice at a time, and in parts at once: lines that cross a slice's
    or a part's end, a newline at its last byte or its first, and a last line without a newline
    come out as one search."""
    rng = np.random.default_rng(7)
    n = 3 * _NEWLINE_SLICE + 123
    buf = bytearray(rng.integers(32, 127, n, dtype=np.uint8).tobytes())
    for at in [0, 5, _NEWLINE_SLICE - 1, _NEWLINE_SLICE, 2 * _NEWLINE_SLICE + 1, n - 2]:
        buf[at] = 10
    for at in rng.integers(0, n, 4000):
        buf[at] = 10
    # the parts searched at once are cut at n * k // parts: a newline there too
    for parts in (2, 3):
        for k in range(1, parts):
            buf[n * k // parts] = buf[n * k // parts - 1] = 10
    data = bytes(buf)
    want = np.array([i for i, b in enumerate(data) if b == 10])
    for parts in (1, 2, 3):
        starts, ends = line_bounds(data, parts)
        assert (ends == want).all()
        assert starts[0] == 0 and (starts[1:] == want[:-1] + 1).all()


def test_a_time_out_of_range_is_a_reject_or_left_empty() -> None:
    """A fill's required `time` of 1e16 ms (year 318857) makes its line a reject; an order's
    `timestamp` out of range, which no row needs, is left empty (etl/flatten.py)."""
    def fill(tid: int, ms: int) -> bytes:
        return orjson.dumps(["0xu", {"coin": "BTC", "px": "1.0", "sz": "1.0", "side": "B", "time": ms,
                                     "startPosition": "0.0", "dir": "Open Long", "closedPnl": "0.0",
                                     "hash": "0x02", "oid": tid, "crossed": True, "fee": "0.0", "tid": tid,
                                     "feeToken": "USDC", "twapId": None}])
    t = 1767607200000
    for huge in (10**16, 10**18, -(10**16), 2**63 - 1, 0):
        buf = b"\n".join([fill(1, t), fill(2, huge), fill(3, t + 1)]) + b"\n"
        parsed = parse("fills", "plain", buf)
        assert parsed.frame["tid"].to_list() == [1, 3]
        assert [r.reason for r in parsed.rejects] == ["missing or out-of-range required field: time"]
    late = good(2).replace(b'"timestamp":1', b'"timestamp":10000000000000000')
    orders = b"\n".join([good(1), late]) + b"\n"
    for scan_min_lines in (1, 1 << 62):
        frame = parse("orders", "plain", orders, scan_min_lines=scan_min_lines).frame
        assert frame["oid"].to_list() == [1, 2]
        assert frame["order_time"].null_count() == 2  # `timestamp` 1 (1970) is out of range too


def fill_pair(tid: int, coin: str = "BTC") -> list[object]:
    return ["0x" + "1" * 40, {"coin": coin, "px": "1.0", "sz": "1.0", "side": "B",
                              "time": 1767607200000 + tid, "startPosition": "0.0", "dir": "Open Long",
                              "closedPnl": "0.0", "hash": "0x02", "oid": tid, "crossed": True, "fee": "0.0",
                              "tid": tid, "feeToken": "USDC", "twapId": None}]


@pytest.mark.parametrize("n", [1, 2, 3, 4])
def test_plain_fills_take_the_fast_path_whatever_their_number(n: int) -> None:
    """pyarrow 26 failed to slice an even number of lines without a stop: such batches went to
    the generic decode."""
    from etl.parse import _decode_plain_fills

    buf = b"".join(orjson.dumps(fill_pair(i)) + b"\n" for i in range(n))
    raw = _decode_plain_fills(buf, *line_bounds(buf))
    assert raw is not None and raw.height == n


@pytest.mark.parametrize("variant", ["plain", "streaming"])
def test_fills_with_escapes_beside_a_bad_line_are_kept(variant: str) -> None:
    """A bad line sends the batch to the generic decode, which once rendered the fill as text and
    decoded it again: an escape in a string (`\\`, a tab, a control character) made a good line a
    reject."""
    coins = ["BTC", "BTC\\x", "BTC\tx", "BTC\u0001x", 'B"C', "ETH"]
    lines = []
    for tid, coin in enumerate(coins, 1):
        pair = fill_pair(tid, coin)
        lines.append(orjson.dumps(pair if variant == "plain" else {
            "local_time": "2026-01-05T10:00:00.1", "block_time": "2026-01-05T10:00:00.05",
            "block_number": tid, "events": [pair]}))
    lines.insert(3, b'["0xu", 5]' if variant == "plain" else b'{"block_number":1,"events":5}')
    buf = b"\n".join(lines) + b"\n"
    parsed = parse("fills", variant, buf)
    assert parsed.frame["coin"].to_list() == coins
    assert [r.offset for r in parsed.rejects] == [buf.index(lines[3])]


BLOCK_ORDER = orjson.dumps({"local_time": "2026-01-05T11:00:00.1", "block_time": "2026-01-05T11:00:00.05",
                            "block_number": 7, "events": [orjson.loads(good(1))]})


def test_a_reject_for_a_missing_field_names_the_fields_of_every_event_of_its_line_and_keeps_the_others(
) -> None:
    no_oid = orjson.loads(good(2).replace(b'"oid":2', b'"oid":null'))
    no_coin = orjson.loads(good(3).replace(b'"coin":"BTC",', b""))
    block = orjson.dumps({**orjson.loads(BLOCK_ORDER), "events": [orjson.loads(good(4)), no_oid, no_coin]})
    buf = BLOCK_ORDER + b"\n" + block + b"\n"
    parsed = parse("orders", "by_block", buf)
    assert parsed.frame["oid"].to_list() == [1, 4]  # the block's whole events are stored
    assert [(r.offset, r.reason) for r in parsed.rejects] == [
        (len(BLOCK_ORDER) + 1, "missing or out-of-range required fields: order.coin, order.oid, in 2 of "
                               "the block's 3 events (the other 1 stored)")]
    every = orjson.dumps({**orjson.loads(BLOCK_ORDER), "events": [no_oid, no_coin]})
    assert [r.reason for r in parse("orders", "by_block", every + b"\n").rejects] == [
        "missing or out-of-range required fields: order.coin, order.oid, in every one of the block's 2 "
        "events"]
    fill = orjson.dumps(["0xu", {"coin": "BTC", "sz": "1.0", "side": "B", "time": 1767607200000, "tid": 5}])
    assert [r.reason for r in parse("fills", "plain", fill + b"\n").rejects] == [
        "missing or out-of-range required field: px"]


@pytest.mark.parametrize(("bad", "reason"), [
    (b"{}", "a block line without an `events` list"),
    (b'{"hello":"world"}', "a block line without an `events` list"),
    (b'{"block_number":1,"events":null}', "a block line without an `events` list"),
    (b'{"block_number":{"a":1},"events":[]}', "cannot parse"),
    (b'{"block_number":"x","events":[]}', "cannot parse"),
    (b'{"block_number":9223372036854775808,"events":[]}', "cannot parse"),
    (b'{"block_number" : 9223372036854775808,"events":[]}', "cannot parse"),
    (b'{"block_time":1e400,"block_number":7,"events":[]}', "invalid JSON"),
    (BLOCK_ORDER.replace(b'"block_time":"2026-01-05T11:00:00.05"', b'"block_time":1e400'), "invalid JSON"),
])
@pytest.mark.parametrize("scan_min_lines", [1, 1 << 62], ids=["duckdb", "polars"])
def test_a_block_line_that_is_no_block_is_a_reject(bad: bytes, reason: str, scan_min_lines: int) -> None:
    """A block line leaves a row per event or a reject, whichever reader takes the batch: such
    lines once left nothing (found by fuzzing). An empty block (`"events":[]`) is no reject."""
    empty = b'{"block_number":8,"events":[]}'
    buf = b"\n".join([BLOCK_ORDER, bad, empty, BLOCK_ORDER]) + b"\n"
    parsed = parse("orders", "streaming", buf, scan_min_lines=scan_min_lines)
    assert parsed.frame["_line"].to_list() == [0, 3]
    assert [(r.offset, reason in r.reason) for r in parsed.rejects] == [(len(BLOCK_ORDER) + 1, True)]
    fills = b'{"block_number":8,"events":[]}\n{}\n'
    assert [r.reason for r in parse("fills", "streaming", fills).rejects] == [
        "wrong shape: a block line without an `events` list"]


def test_a_fill_line_with_a_carriage_return_is_read_beside_a_bad_line() -> None:
    r"""A lone \r is JSON whitespace: the generic decode, taken when a neighbour is bad, once
    split lines on it too and made the line a reject (found by review)."""
    line = orjson.dumps(fill_pair(1)).replace(b'"coin":', b'"coin":\r')
    buf = b"\n".join([line, b'["0xu", 5]']) + b"\n"
    parsed = parse("fills", "plain", buf)
    assert parsed.frame["tid"].to_list() == [1]
    assert [r.offset for r in parsed.rejects] == [len(line) + 1]


@pytest.mark.parametrize("cloid", ["a}]]b", 'a],["b', "a[[\"b", 'x",{"y'])
def test_a_block_fill_string_holding_the_pairs_punctuation_is_read_as_written(cloid: str) -> None:
    """The fast path rewrites `[["`, `],["`, `",{"` and `}]]` around the pairs: inside a string it
    changed the value (found by review); such a batch is decoded the generic way."""
    pair = fill_pair(1)
    pair[1]["cloid"] = cloid  # type: ignore[index]
    line = orjson.dumps({"block_time": "2026-01-05T10:00:00.05", "block_number": 1, "events": [pair]})
    alone = parse("fills", "streaming", line + b"\n").frame
    beside = parse("fills", "streaming", b"{not json\n" + line + b"\n").frame
    assert alone["cloid"].to_list() == beside["cloid"].to_list() == [cloid]
