"""A compiled scan of the raw bytes of a batch of order statuses: the pre-filter's light read,
and the read of a batch decoded whole.

One pass over each line, compiled by numba and run on every core without the GIL, checks that
the line is JSON as the node writes it and reads the fields asked (`etl.fields.Fields`): the
few the rules and the watermark need (etl/prefilter.py), or every field of a row
(`etl.fields.FULL`, etl/parse.py). It builds no tree of the line: the light read costs ~43 ms of
CPU a 64 MiB batch, every field ~100 ms with the frame, against ~140 and ~250 ms for DuckDB's
JSON reader, which it replaced, and more for Polars' decoder (docs/benchmarks.md). The text
fields come out as Arrow string views (a string longer than 12 bytes copied next to the others
while the line is in the CPU's cache); in block envelopes, each row gets its block's number and
time.

The node writes every event with the same keys in the same order. The batch's first event that
can be read so gives the *layout* (`_layout`): the bytes between its values, `{"time":`,
`,"user":`, ..., `}}`. A line whose events are laid out alike is read by `_scan_laid_out`, which
compares those bytes eight at a time and reads each value with the general scan's own functions,
with no key lookup and no state machine (~36 against ~66 ms a batch on one core); any other
line (keys missing, added or in another order, a value that is an object or a list with
something in it, anything malformed) by the general scan, `_scan`, which decides. Both read a
line alike: tests/test_bytescan.py compares them on every one-byte edit of a node line and on
drawn lines. A string's end is looked for eight bytes at a time.

numba compiles the scan at first use (~13 s on 2 cores, ~18 s with the general scan; `warm`
compiles both at start) and caches it (loaded in ~1.3 s): in `NUMBA_CACHE_DIR`, else next to
this file, else in the user's cache directory, whichever is writable (the Docker image sets
`NUMBA_CACHE_DIR` and fills it at build time). Where none is, it compiles at every start.

A line is *sure* only when its fields are what Polars' decoder (`etl.parse.parse`) makes of
it; every other line is returned as unsure and decoded whole by Polars, which decides whether
it is a row or a reject. Unsure are:

- a line that is not one JSON object, or one this scan does not take: whitespace between
  tokens, a byte outside printable ASCII or a backslash in a string, nesting deeper than 64,
  an integer of 19 digits or more, a number that may be out of a double's range (an
  exponent of three digits, 300 digits, more than 300 digits before the point counting a
  positive exponent), and what strict JSON refuses (NaN, trailing commas, leading zeros, a
  truncated line);
- a field it reads (`Fields`) present twice, or of another JSON type than the node writes:
  a string field holding a number, an object or an array; an integer field (`oid`) holding
  anything but an integer of at most 18 digits; a boolean field anything but true or false
  (null is null everywhere); an `order` that is not an object;
- in block envelopes: `events` missing or not a list of objects, a `block_number` that is
  not an integer of at most 18 digits, a `block_time` that is not a string, either twice;
- a `children` (with `Fields.children`) that is not `[]` or null.

The fields it does not read are only checked for being JSON: with the light read, a line whose
other fields have the wrong type is a reject when it passes the rules, and counted and dropped
otherwise (etl/prefilter.py). A key it does not read may hold anything JSON, as in Polars.
"""

from __future__ import annotations

import ctypes
import ctypes.util
from collections.abc import Callable
from functools import cache
from typing import Any, TypeVar, cast

import numba
import numpy as np
import orjson
import polars as pl
import pyarrow as pa
from llvmlite import ir
from numba import types as nt
from numba.cpython.unsafe.numbers import trailing_zeros as _trailing_zeros
from numba.extending import intrinsic

from etl.fields import Fields
from etl.parse import cores, pool
from etl.parse import line_bounds as numpy_line_bounds

F = TypeVar("F", bound=Callable[..., Any])
# an event's layout, then its envelope's, as `_layout` makes them: each (the bytes between values,
# their offsets, as words, word masks, word offsets, the field of each value)
Layout = tuple[np.ndarray, ...]


def _jit(fn: F) -> F:
    """Compiled without bounds checks, the GIL released (slices of a batch scan on every core),
    and cached where numba finds a writable directory (the module's docstring)."""
    try:
        return cast(F, numba.njit(cache=True, nogil=True, boundscheck=False)(fn))
    except RuntimeError:  # "cannot cache function ...: no locator available"
        return cast(F, numba.njit(nogil=True, boundscheck=False)(fn))


# what a row holds in a field: `_kinds`
MISSING, STRING, NULL, TRUE, FALSE, INT, OTHER = range(7)
# the JSON types a field may hold and stay sure, by the field's type
_ALLOWED = {"string": (MISSING, STRING, NULL), "int": (MISSING, INT, NULL),
            "bool": (MISSING, TRUE, FALSE, NULL), "list": (MISSING, OTHER, NULL)}
_MAX_DEPTH = 64
_KEY_BYTES = 32  # a field read has a shorter name
_LINES_PER_SLICE = 8192  # a slice of a batch scans on one core
_LINES_PER_CHECKPOINT = 16384  # lines scanned between two checkpoints (`scan_orders`)

# byte classes: a byte a string may hold as it is (printable ASCII but `"` and `\`)
_PLAIN = np.zeros(256, np.bool_)
_PLAIN[32:127] = True
_PLAIN[ord('"')] = _PLAIN[ord("\\")] = False
_DIGIT = np.zeros(256, np.bool_)
_DIGIT[ord("0"):ord("9") + 1] = True


@intrinsic
def _load_word(typingctx: Any, arr: Any, idx: Any) -> Any:
    """The 8 bytes of `arr` from `idx` on as one little-endian integer (an unaligned load; the
    caller keeps `idx + 8` within the array)."""
    sig = nt.uint64(arr, idx)

    def codegen(context: Any, builder: Any, signature: Any, args: Any) -> Any:
        data = context.make_array(signature.args[0])(context, builder, args[0]).data
        word = builder.bitcast(builder.gep(data, [args[1]]), ir.IntType(64).as_pointer())
        return builder.load(word, align=1)

    return sig, codegen


_load_u64 = cast(Callable[[np.ndarray, int], int], _load_word)
trailing_zeros = cast(Callable[[Any], Any], _trailing_zeros)

# eight bytes at a time: a byte's high bit set in `_zero_bytes(x ^ _EVERY * c)` where it is `c`
# (the lowest one exactly: a borrow only marks bytes above a true one)
_EVERY = np.uint64(0x0101010101010101)
_HIGH = np.uint64(0x8080808080808080)
_QUOTES = _EVERY * np.uint64(ord('"'))
_BACKSLASHES = _EVERY * np.uint64(ord("\\"))
_DELETES = _EVERY * np.uint64(127)
_SPACES = _EVERY * np.uint64(32)


@_jit
def _zero_bytes(x: Any) -> Any:
    return (x - _EVERY) & ~x


@_jit
def _string_end(b: np.ndarray, i: int, e: int) -> int:
    """The index of the quote that closes the string opening at `i`, or -1 (an escape, a byte
    outside printable ASCII, the line's end). Eight bytes at a time: the first byte in them that
    is a quote, a backslash, a control byte (under 32), 127 or 128 and over ends the search."""
    i += 1
    while i + 8 <= e:
        x = _load_u64(b, i)
        stop = (_zero_bytes(x ^ _QUOTES) | _zero_bytes(x ^ _BACKSLASHES) | _zero_bytes(x ^ _DELETES)
                | ((x - _SPACES) & ~x) | x) & _HIGH
        if stop:
            k = i + int(trailing_zeros(stop) >> np.uint64(3))
            return k if b[k] == 34 else -1
        i += 8
    while i < e:
        c = b[i]
        if not _PLAIN[c]:
            return i if c == 34 else -1
        i += 1
    return -1


@_jit
def _number_end(b: np.ndarray, i: int, e: int) -> tuple[int, int, int]:
    """The JSON number at `i`: its end, then INT (an integer of at most 18 digits, whose value
    is the third item), OTHER (another number Polars reads), or -1 (not a number this scan
    takes: not JSON, an integer of 19 digits or more, which Polars refuses from 2^128 on and
    in an integer column from 2^63 on, or a number that may be out of a double's range)."""
    s = i
    if b[i] == 45:
        i += 1
    d = i
    if i < e and b[i] == 48:
        i += 1
    else:
        while i < e and _DIGIT[b[i]]:
            i += 1
        if i == d:
            return i, -1, 0
    whole = i - d  # digits before the point
    digits = whole
    kind = INT
    if i < e and b[i] == 46:
        kind = OTHER
        i += 1
        f = i
        while i < e and _DIGIT[b[i]]:
            i += 1
        if i == f:
            return i, -1, 0
        digits += i - f
    if i < e and (b[i] == 101 or b[i] == 69):
        kind = OTHER
        i += 1
        negative = i < e and b[i] == 45
        if i < e and (b[i] == 43 or b[i] == 45):
            i += 1
        x = i
        exponent = 0
        while i < e and _DIGIT[b[i]]:
            exponent = exponent * 10 + (b[i] - 48)
            i += 1
        if i == x or i - x >= 3:
            return i, -1, 0
        if not negative and whole + exponent > 300:  # a double ends near 1.8e308
            return i, -1, 0
    if digits >= 300 or (kind == INT and digits > 18):
        return i, -1, 0
    value = 0
    if kind == INT:
        for j in range(d, i):
            value = value * 10 + (b[j] - 48)
        if s != d:
            value = -value
    return i, kind, value


@_jit
def _literal(b: np.ndarray, i: int, e: int, word: bytes) -> bool:
    n = len(word)
    if i + n > e:
        return False
    for k in range(n):  # noqa: SIM110 - a loop numba compiles
        if b[i + k] != word[k]:
            return False
    return True


@_jit
def _new_row(row: int, line: int, row_line: np.ndarray, kinds: np.ndarray, words: np.ndarray,
             slots: int) -> int:
    """Row `row` started for an event of `line`, every field missing and its views zero; -1
    when there is no room for it."""
    cap = len(row_line)
    if row >= cap:
        return -1
    row_line[row] = line
    kinds[row, :] = MISSING
    for k in range(slots):
        w = (k * cap + row) * 4
        words[w] = words[w + 1] = words[w + 2] = words[w + 3] = 0
    return row


@_jit
def _scan_laid_out(b: np.ndarray, starts: np.ndarray, ends: np.ndarray, lo: int, hi: int, envelope: bool,
                   layout: Layout, slot: np.ndarray, pslot: np.ndarray, row_line: np.ndarray, pos: np.ndarray,
                   kinds: np.ndarray,
                   views: np.ndarray, words: np.ndarray, data: np.ndarray, again: np.ndarray,
                   blocks: np.ndarray) -> tuple[int, int]:
    """Lines `lo`..`hi` whose events are laid out as the batch's first (`_layout`: the same keys in
    the same order, in an envelope laid out as its first): their rows, as `_scan` writes them,
    with no key lookup, the keys compared eight bytes at a time. A line laid out otherwise is
    flagged in `again` (for `_scan`), its rows undone. Returns (rows, bytes of `data` used).

    Each value is read by the scan's own functions, so a line read here is read as `_scan` reads
    it. The keys are compared in place, twice (the envelope's, the event's): a compiled function
    that takes arrays costs ~100 ns a call where LLVM does not inline it (numba's own inlining
    was slower still), and a call per key made this scan 3.5 times slower (docs/benchmarks.md)."""
    lit, lit_at, lit_words, lit_masks, word_at, field_at = layout[:6]
    env, env_at, env_words, env_masks, env_word_at, env_field_at = layout[6:]
    cap = len(row_line)
    slots = views.shape[0] // (16 * cap) if cap else 0
    values = len(field_at)
    nb = len(b)
    rows = 0
    used = 0
    for li in range(lo, hi):
        s, e = starts[li], ends[li]
        first_row, first_used = rows, used
        ok = True
        i = s
        if envelope:  # the envelope's values up to `"events":[`, then each event
            for t in range(len(env_field_at) + 1):
                a0, a1 = env_at[t], env_at[t + 1]
                if i + (a1 - a0) > e:
                    ok = False
                    break
                w0, w1 = env_word_at[t], env_word_at[t + 1]
                if i + 8 * (w1 - w0) <= nb:
                    for k in range(w1 - w0):
                        if (_load_u64(b, i + 8 * k) ^ env_words[w0 + k]) & env_masks[w0 + k]:
                            ok = False
                            break
                else:
                    for k in range(a1 - a0):
                        if b[i + k] != env[a0 + k]:
                            ok = False
                            break
                if not ok:
                    break
                i += a1 - a0
                if t == len(env_field_at):
                    break
                c = b[i] if i < e else 0
                kind = OTHER
                value = 0
                start = i + 1
                if c == 34:
                    q = _string_end(b, i, e)
                    kind, i, value = (STRING, q + 1, q) if q >= 0 else (-1, i, 0)
                elif c == 110 and _literal(b, i, e, b"null"):
                    kind, i = NULL, i + 4
                elif c == 45 or 48 <= c <= 57:
                    i, kind, value = _number_end(b, i, e)
                else:
                    kind = -1
                code = env_field_at[t]  # -2: block_number, an integer; -3: block_time, a string
                if kind < 0 or (code == -2 and kind != INT and kind != NULL) or (
                        code == -3 and kind != STRING and kind != NULL):
                    ok = False
                    break
                if code == -2:
                    blocks[li - lo, 0], blocks[li - lo, 1] = kind, value
                elif code == -3:
                    blocks[li - lo, 2], blocks[li - lo, 3], blocks[li - lo, 4] = kind, start, value
        more = True  # an event to read
        if envelope and ok and i < e and b[i] == 93:  # no events
            i += 1
            more = False
        while ok and more:
            if envelope and not (i < e and b[i] == 123):
                ok = False
                break
            row = _new_row(rows, li, row_line, kinds, words, slots)
            if row < 0:
                ok = False
                break
            rows += 1
            for t in range(values + 1):
                a0, a1 = lit_at[t], lit_at[t + 1]
                if i + (a1 - a0) > e:
                    ok = False
                    break
                w0, w1 = word_at[t], word_at[t + 1]
                if i + 8 * (w1 - w0) <= nb:
                    for k in range(w1 - w0):
                        if (_load_u64(b, i + 8 * k) ^ lit_words[w0 + k]) & lit_masks[w0 + k]:
                            ok = False
                            break
                else:
                    for k in range(a1 - a0):
                        if b[i + k] != lit[a0 + k]:
                            ok = False
                            break
                if not ok:
                    break
                i += a1 - a0
                if t == values:
                    break
                field = field_at[t]
                c = b[i] if i < e else 0
                value = 0
                if c == 34:
                    q = _string_end(b, i, e)
                    if q < 0:
                        ok = False
                        break
                    kind = STRING
                    if field >= 0 and slot[field] >= 0:
                        n = q - i - 1
                        w = (slot[field] * cap + row) * 4
                        words[w] = n
                        for k in range(min(n, 12) if n <= 12 else 4):
                            views[w * 4 + 4 + k] = b[i + 1 + k]
                        if n > 12:
                            words[w + 3] = used
                            data[used:used + n] = b[i + 1:q]
                            used += n
                    i = q + 1
                elif c == 110 and _literal(b, i, e, b"null"):
                    kind, i = NULL, i + 4
                elif c == 116 and _literal(b, i, e, b"true"):
                    kind, i = TRUE, i + 4
                elif c == 102 and _literal(b, i, e, b"false"):
                    kind, i = FALSE, i + 5
                elif c == 91 and i + 1 < e and b[i + 1] == 93:  # an empty list, at `i` (as `_scan`)
                    kind, value, i = OTHER, i, i + 2
                elif c == 45 or 48 <= c <= 57:
                    i, kind, value = _number_end(b, i, e)
                    if kind < 0:
                        ok = False
                        break
                else:  # an object, a list holding something, not JSON: the general scan's
                    ok = False
                    break
                if field >= 0:
                    kinds[row, field] = kind
                    if pslot[field] >= 0:
                        pos[row, pslot[field]] = value
            if not envelope or not ok:
                break
            if i < e and b[i] == 44:  # another event
                i += 1
            elif i < e and b[i] == 93:
                i += 1
                more = False
            else:
                ok = False
        if ok and envelope:
            ok = i < e and b[i] == 125
            i += 1
        if not ok or i != e:
            again[li - lo] = True
            rows, used = first_row, first_used
            blocks[li - lo, :] = MISSING  # read again by `_scan`
    return rows, used


# containers on the scan's stack
_OTHER_OBJECT, _TOP, _EVENT, _ORDER, _ARRAY, _EVENTS = range(6)


@_jit
def _scan(b: np.ndarray, starts: np.ndarray, ends: np.ndarray, lo: int, hi: int, envelope: bool,
          names: np.ndarray, name_at: np.ndarray, level: np.ndarray, lookup: np.ndarray, slot: np.ndarray,
          row_line: np.ndarray,
          pslot: np.ndarray, pos: np.ndarray, kinds: np.ndarray, views: np.ndarray, words: np.ndarray,
          data: np.ndarray,
          unsure: np.ndarray, again: np.ndarray, rows: int, used: int, blocks: np.ndarray
          ) -> tuple[int, int]:
    """Scans lines `lo`..`hi`; writes one row per event (`row_line`, and per field `kinds`; an
    integer's value, or where a list opens, in `pos` at the field's `pslot`; a string's Arrow
    view in `views` at the field's `slot`) and flags
    unsure lines (`unsure[line - lo]`). Returns the rows written, or -1 when they do not fit.

    A view is 16 bytes: the length, then the string when it fits in 12 bytes, else its first 4
    bytes, buffer 0 and its offset in `data`, where a string longer than 12 bytes is copied;
    `words` is `views` seen as int32. Both are written while the line is in the CPU's cache, and
    the strings read afterwards lie together. With `again` (one flag a line), only the lines
    flagged, after `rows` rows and `used` bytes of `data` (`_scan_laid_out` read the others).
    In block envelopes, `blocks[line - lo]` gets the block's number (its kind, its value) and
    time (its kind, where its bytes start and end); a line with either twice is unsure.
    Returns (rows, bytes of `data` used); rows -1 when they do not fit."""
    nf = len(level)
    cap = len(row_line)
    slots = views.shape[0] // (16 * cap) if cap else 0
    stack = np.empty(_MAX_DEPTH + 1, np.int8)
    only = len(again) > 0
    for li in range(lo, hi):
        if only and not again[li - lo]:
            continue
        s, e = starts[li], ends[li]
        first_row, first_used = rows, used
        row = -1
        if not envelope:
            row = _new_row(rows, li, row_line, kinds, words, slots)
            if row < 0:
                return -1, used
            rows += 1
        i = s
        ok = False
        if i < e and b[i] == 123:
            depth = 0
            stack[0] = _TOP if envelope else _EVENT
            i += 1
            state = 0  # 0: a key or `}`, 1: a key, 2: a value, 3: after a value, 4: a value or `]`
            field = -1
            key_order = key_events = False
            seen_order = seen_events = False
            block_bad = False
            while i < e:
                c = b[i]
                if state <= 1:
                    if c == 125 and state == 0:
                        depth -= 1
                        i += 1
                        state = 3
                        if depth < 0:
                            break
                        continue
                    if c != 34:
                        break
                    q = _string_end(b, i, e)
                    if q < 0 or q + 1 >= e or b[q + 1] != 58:
                        break
                    ks, kl = i + 1, q - i - 1
                    i = q + 2
                    field = -1
                    key_order = key_events = False
                    ctx = stack[depth]
                    if ctx in (_EVENT, _ORDER):
                        lv = 1 if ctx == _EVENT else 2
                        # the one field of this level, length and first byte that it may be;
                        # or -1 where there are several (then each is compared)
                        f = lookup[lv, kl, b[ks]] - 1 if 0 < kl < _KEY_BYTES else -1
                        for g in range(nf) if f == -2 else range(f, f + 1):
                            if g < 0:
                                break
                            n0 = name_at[g]
                            if level[g] == lv and name_at[g + 1] - n0 == kl:
                                same = True
                                for k in range(kl):
                                    if names[n0 + k] != b[ks + k]:
                                        same = False
                                        break
                                if same:
                                    field = g
                                    break
                        if field >= 0 and kinds[row, field] != MISSING:
                            break  # a duplicate key
                        key_order = ctx == _EVENT and kl == 5 and _literal(b, ks, q, b"order")
                    elif ctx == _TOP:
                        if kl == 6 and _literal(b, ks, q, b"events"):
                            key_events = True
                        elif kl == 12 and _literal(b, ks, q, b"block_number"):
                            field = -2
                        elif kl == 10 and _literal(b, ks, q, b"block_time"):
                            field = -3
                    state = 2
                    continue
                if state == 3:
                    in_list = stack[depth] in (_ARRAY, _EVENTS)
                    if c == 44:
                        i += 1
                        state = 2 if in_list else 1
                        field = -1
                        key_order = key_events = False
                        continue
                    if c == (93 if in_list else 125):
                        depth -= 1
                        i += 1
                        if depth < 0:
                            break
                        continue
                    break
                # a value (state 2), or a value or `]` (state 4)
                if c == 93 and state == 4:
                    depth -= 1
                    i += 1
                    state = 3
                    continue
                in_events = stack[depth] == _EVENTS
                if in_events and c != 123:
                    break  # an event that is not an object
                if c == 123 or c == 91:
                    if key_order and c == 123 and not seen_order:
                        seen_order = True
                        ctx = _ORDER
                    elif key_events and c == 91 and not seen_events:
                        seen_events = True
                        ctx = _EVENTS
                    elif key_order or key_events:
                        break  # not an object, not a list, or twice
                    elif in_events:
                        row = _new_row(rows, li, row_line, kinds, words, slots)
                        if row < 0:
                            return -1, used
                        rows += 1
                        seen_order = False
                        ctx = _EVENT
                    else:
                        ctx = _OTHER_OBJECT if c == 123 else _ARRAY
                        if field >= 0:
                            kinds[row, field] = OTHER
                            if pslot[field] >= 0:  # where it opens: a list field is kept as `[]` only
                                pos[row, pslot[field]] = i
                        elif field < -1:
                            block_bad = True
                    depth += 1
                    if depth > _MAX_DEPTH:
                        break
                    stack[depth] = ctx
                    state = 0 if c == 123 else 4
                    field = -1
                    key_order = key_events = False
                    i += 1
                    continue
                if key_order or key_events:
                    break
                kind = OTHER
                value = 0
                q_start = q_end = 0  # a string value's bytes
                if c == 34:
                    q = _string_end(b, i, e)
                    if q < 0:
                        break
                    kind = STRING
                    q_start, q_end = i + 1, q
                    if field >= 0 and slot[field] >= 0:
                        n = q - i - 1
                        w = (slot[field] * cap + row) * 4
                        words[w] = n
                        for k in range(min(n, 12) if n <= 12 else 4):
                            views[w * 4 + 4 + k] = b[i + 1 + k]
                        if n > 12:
                            words[w + 3] = used
                            data[used:used + n] = b[i + 1:q]
                            used += n
                    i = q + 1
                elif c == 116 and _literal(b, i, e, b"true"):
                    kind, i = TRUE, i + 4
                elif c == 102 and _literal(b, i, e, b"false"):
                    kind, i = FALSE, i + 5
                elif c == 110 and _literal(b, i, e, b"null"):
                    kind, i = NULL, i + 4
                else:
                    i, kind, value = _number_end(b, i, e)
                    if kind < 0:
                        break
                if field >= 0:
                    kinds[row, field] = kind
                    if pslot[field] >= 0:
                        pos[row, pslot[field]] = value  # an integer's value
                elif field == -2:  # the block's number: once, an integer or null
                    block_bad |= blocks[li - lo, 0] != MISSING or (kind != INT and kind != NULL)
                    blocks[li - lo, 0], blocks[li - lo, 1] = kind, value
                elif field == -3:  # the block's time: once, a string or null
                    block_bad |= blocks[li - lo, 2] != MISSING or (kind != STRING and kind != NULL)
                    blocks[li - lo, 2], blocks[li - lo, 3], blocks[li - lo, 4] = kind, q_start, q_end
                field = -1
                state = 3
            ok = depth < 0 and i == e and (not envelope or (seen_events and not block_bad))
        if not ok:
            unsure[li - lo] = True
            if envelope:
                rows, used = first_row, first_used  # the line is decoded whole: no light rows
    return rows, used


@cache
def _names(fields: Fields) -> tuple[tuple[str, ...], tuple[str, ...], np.ndarray, np.ndarray, np.ndarray,
                                    np.ndarray]:
    """The fields read (columns of the raw frame: the event's, then the order's), each one's type
    ("string", "int", "bool", "list": `children`, kept only as `[]`), and the scan's key table:
    names, offsets, levels (1 the event's, 2 the order's), and by level, length and first byte
    the field + 1 a key may be (-1: several)."""
    event = fields.strings
    lists = ("children",) if fields.children else ()
    order = fields.order_strings + fields.order_ints + fields.order_bools + lists
    types = (("string",) * len(event + fields.order_strings) + ("int",) * len(fields.order_ints)
             + ("bool",) * len(fields.order_bools) + ("list",) * len(lists))
    keys = [k.encode() for k in event + order]
    names = np.frombuffer(b"".join(keys), np.uint8).copy()
    name_at = np.zeros(len(keys) + 1, np.int64)
    name_at[1:] = np.cumsum([len(k) for k in keys])
    level = np.array([1] * len(event) + [2] * len(order), np.int8)
    lookup = np.zeros((3, _KEY_BYTES, 256), np.int8)
    for f, key in enumerate(keys):
        assert 0 < len(key) < _KEY_BYTES
        at = (level[f], len(key), key[0])
        lookup[at] = f + 1 if lookup[at] == 0 else -1
    return event + order, types, names, name_at, level, lookup


# an event's keys in order, the order's keys with them: (("time", None), ..., ("order", ("coin", ...)))
Keys = tuple[tuple[str, tuple[str, ...] | None], ...]
_LAYOUT_PROBES = 8  # lines tried for the layout of a batch's events


def _keys_of(event: object) -> Keys | None:
    """The keys of an event, where the layout can read it: every value a scalar or a list but the
    order, an object of such values; every key printable ASCII without a quote or a backslash."""
    if not isinstance(event, dict):
        return None
    keys: list[tuple[str, tuple[str, ...] | None]] = []
    for key, value in event.items():
        if isinstance(value, dict):
            if key != "order" or not value or any(isinstance(v, dict) for v in value.values()):
                return None
            keys.append((key, tuple(value)))
        else:
            keys.append((key, None))
    names = [k for k, _ in keys] + [k for _, sub in keys for k in sub or ()]
    return tuple(keys) if all(_plain_key(name) for name in names) else None


def _envelope_keys(line: object) -> tuple[str, ...] | None:
    """The keys of a block envelope before its events (last), where the layout can read it: every
    other value a scalar."""
    if not isinstance(line, dict) or list(line)[-1:] != ["events"]:
        return None
    keys = tuple(line)[:-1]
    if any(isinstance(line[k], dict | list) for k in keys) or not all(_plain_key(k) for k in keys):
        return None
    return keys


def _plain_key(name: str) -> bool:
    return name.isascii() and name.isprintable() and '"' not in name and "\\" not in name


def _first_keys(buf: bytes, starts: np.ndarray, ends: np.ndarray, lo: int, hi: int,
                envelope: bool) -> tuple[tuple[str, ...] | None, Keys] | None:
    """The layout of the first of the lines `lo`.. (up to `_LAYOUT_PROBES` of them) that has one
    the layout can read: its envelope's keys (None for plain lines) and its first event's. Taken
    once a batch, for every slice of it."""
    for li in range(lo, min(hi, lo + _LAYOUT_PROBES)):
        try:
            line = orjson.loads(buf[starts[li]:ends[li]])
        except orjson.JSONDecodeError:
            continue
        head = None
        if envelope:
            head = _envelope_keys(line)
            events = line.get("events") if head is not None else None
            line = events[0] if isinstance(events, list) and events else None
        keys = _keys_of(line)
        if keys is not None and (head is not None or not envelope):
            return head, keys
    return None


def _as_words(between: list[bytes], field_at: list[int]) -> tuple[np.ndarray, ...]:
    """The bytes between values, their offsets, as 8-byte words with masks, the words' offsets,
    and the field of each value (`_scan_laid_out`)."""
    words: list[int] = []
    masks: list[int] = []
    word_at = [0]
    for part in between:
        for at in range(0, len(part), 8):
            chunk = part[at:at + 8]
            words.append(int.from_bytes(chunk.ljust(8, b"\0"), "little"))
            masks.append(int.from_bytes(b"\xff" * len(chunk) + b"\0" * (8 - len(chunk)), "little"))
        word_at.append(len(words))
    return (np.frombuffer(b"".join(between), np.uint8).copy(),
            np.cumsum([0] + [len(p) for p in between], dtype=np.int64),
            np.array(words, np.uint64), np.array(masks, np.uint64), np.array(word_at, np.int64),
            np.array(field_at, np.int64))


@cache
def _layout(head: tuple[str, ...] | None, keys: Keys, fields: Fields) -> Layout:
    """What `_scan_laid_out` compares and writes for events with these keys, in envelopes with
    the keys `head` before their events (None: plain lines): the bytes between two values
    (`{"time":`, then `,"user":`, ..., `,"order":{"coin":`, ..., and `}}` after the last), each
    also as 8-byte words with masks, and the field each value is (-1: not read); then the same
    for the envelope, up to its `"events":[` (-2: `block_number`, -3: `block_time`)."""
    columns, _, _, _, level, _ = _names(fields)
    field = {(int(level[f]), name): f for f, name in enumerate(columns)}
    between: list[bytes] = []
    field_at: list[int] = []
    text = b"{"
    for k, (key, sub) in enumerate(keys):
        text += (b"," if k else b"") + b'"' + key.encode() + b'":'
        if sub is None:
            between.append(text)
            field_at.append(field.get((1, key), -1))
            text = b""
            continue
        text += b"{"
        for j, name in enumerate(sub):
            between.append(text + (b"," if j else b"") + b'"' + name.encode() + b'":')
            field_at.append(field.get((2, name), -1))
            text = b""
        text = b"}"
    between.append(text + b"}")
    codes = {"block_number": -2, "block_time": -3}
    outer = [b"{" + b",".join(b'"' + k.encode() + b'":' for k in head[:1])] if head else []
    outer += [b',"' + k.encode() + b'":' for k in (head or ())[1:]]
    outer.append((b"," if head else b"{") + b'"events":[')
    outer_at = [codes.get(k, -1) for k in head or ()]
    event, envelope = _as_words(between, field_at), _as_words(outer, outer_at)
    return cast(Layout, (*event, *envelope))


def _bits(mask: np.ndarray) -> pa.Buffer:
    return pa.py_buffer(np.packbits(mask, bitorder="little"))


def _scan_slice(buf: bytes, starts: np.ndarray, ends: np.ndarray, lo: int, hi: int, envelope: bool,
                fields: Fields, layout: Layout | None) -> tuple[pl.DataFrame, np.ndarray]:
    """Lines `lo`..`hi` scanned: their raw frame and the unsure ones (`scan_orders`); those laid out
    as `layout` says by `_scan_laid_out`."""
    columns, types, names, name_at, level, lookup = _names(fields)
    b = np.frombuffer(buf, np.uint8)
    nf = len(level)
    cap = hi - lo
    if envelope and hi > lo:
        cap = max(cap, int(ends[hi - 1] - starts[lo]) // 256)
    unsure = np.zeros(hi - lo, np.bool_)
    # a string's view in `views` at its slot; a string only checked (`Fields.checked`) has none
    paths = [*fields.strings, *(f"order.{k}" for k in columns[len(fields.strings):])]
    viewed = [t == "string" and p not in fields.checked for t, p in zip(types, paths, strict=True)]
    slot = np.cumsum(viewed) - 1
    slot[[not v for v in viewed]] = -1
    strings = int(np.count_nonzero(slot >= 0))
    # an integer's value, where a list opens: room for those fields only
    positioned = [t in ("int", "list") for t in types]
    pslot = np.cumsum(positioned) - 1
    pslot[[not p for p in positioned]] = -1
    while True:
        row_line = np.empty(cap, np.uint32)
        pos = np.empty((cap, max(1, int(np.count_nonzero(pslot >= 0)))), np.int64)
        kinds = np.empty((cap, nf), np.int8)
        views = np.empty(strings * cap * 16, np.uint8)
        # long strings: at most the slice's bytes
        data = np.empty(int(ends[hi - 1] - starts[lo]) if hi > lo else 0, np.uint8)
        words = views.view(np.int32)
        blocks = np.zeros((hi - lo, 5), np.int64)  # a line's block number and time (`_scan`)
        rows = used = 0
        again = np.zeros(0, np.bool_)  # no layout: every line by `_scan`
        if layout is not None:
            again = np.zeros(hi - lo, np.bool_)
            rows, used = _scan_laid_out(b, starts, ends, lo, hi, envelope, layout, slot, pslot, row_line, pos,
                                        kinds, views, words, data, again, blocks)
        laid_rows = rows
        if layout is None or again.any():
            rows, used = _scan(b, starts, ends, lo, hi, envelope, names, name_at, level, lookup, slot,
                               row_line, pslot, pos, kinds, views, words, data, unsure, again, rows, used,
                               blocks)
        if rows >= 0:
            break
        # more events than room: twice the room (not one row per `{`, which strings may hold)
        unsure[:] = False
        cap *= 2
    if 0 < laid_rows < rows:  # rows of lines read by `_scan` after the others: in line order
        by_line = np.argsort(row_line[:rows], kind="stable")
        row_line[:rows], pos[:rows], kinds[:rows] = row_line[by_line], pos[by_line], kinds[by_line]
        by_slot = views.reshape(strings, cap, 16)
        by_slot[:, :rows] = by_slot[:, by_line]
    row_line, pos, kinds = row_line[:rows], pos[:rows], kinds[:rows]
    wrong = np.zeros(rows, np.bool_)
    empty = np.zeros(rows, np.bool_)  # a list field's `[]`
    for f, kind in enumerate(types):
        wrong |= ~np.isin(kinds[:, f], _ALLOWED[kind])
        if kind == "list":
            opens = np.where(kinds[:, f] == OTHER, pos[:, pslot[f]], 0)  # where the list opens
            empty = (kinds[:, f] == OTHER) & (b[opens] == 91) & (b[np.minimum(opens + 1, len(b) - 1)] == 93)
            wrong |= (kinds[:, f] == OTHER) & ~empty
    # the rows hold on to their strings while their unit commits: those bytes only, not room for
    # every byte of the slice (the batch's size again), nor views for every row there was room for
    long = pa.py_buffer(data[:used].copy())
    del data
    if rows < cap:
        views = np.ascontiguousarray(views.reshape(strings, cap, 16)[:, :rows]).reshape(-1)
        cap = rows
    series: dict[str, pl.Series] = {}
    for f, (c, t) in enumerate(zip(columns, types, strict=True)):
        k = kinds[:, f]
        if t == "string":
            valid = k == STRING
            at = int(slot[f]) * cap * 16
            # a checked string's value is "" (zero-length views)
            view = np.zeros(rows * 16, np.uint8) if slot[f] < 0 else views[at:at + rows * 16]
            buffers = [_bits(valid), pa.py_buffer(view), long]
            nulls = rows - int(np.count_nonzero(valid))
            array = pa.Array.from_buffers(pa.string_view(), rows, buffers, nulls)
        elif t == "int":
            array = pa.array(pos[:, pslot[f]], pa.int64(), mask=k != INT)
        elif t == "list":
            array = pa.DictionaryArray.from_arrays(pa.array(np.zeros(rows, np.int32), mask=~empty),
                                                   pa.array(["[]"])).cast(pa.string())
        else:
            array = pa.array(k == TRUE, pa.bool_(), mask=(k != TRUE) & (k != FALSE))
        series[c] = pl.Series(c, array)
    order = [series[c] for c in columns if c not in fields.strings]
    if envelope and fields.blocks:
        series.update(_block_columns(b, blocks, row_line.astype(np.int64) - lo))
    envelope_columns = [series[c] for c in ("block_time", "block_number") if c in series]
    frame = pl.DataFrame([pl.Series("_line", row_line), *envelope_columns,
                          *(series[c] for c in fields.strings)])
    frame = frame.with_columns(pl.DataFrame(order).to_struct("order"))
    return frame, np.union1d(np.flatnonzero(unsure) + lo, row_line[wrong]).astype(np.uint32)


def _block_columns(b: np.ndarray, blocks: np.ndarray, line: np.ndarray) -> dict[str, pl.Series]:
    """Each row's block number and time (`blocks` of its line: `_scan`), as the raw frame's
    `block_number` and `block_time` columns."""
    number = pa.array(blocks[line, 1], pa.int64(), mask=blocks[line, 0] != INT)
    timed = blocks[:, 2] == STRING
    start, length = blocks[:, 3], np.where(timed, blocks[:, 4] - blocks[:, 3], 0)
    offsets = np.zeros(len(blocks) + 1, np.int64)
    np.cumsum(length, out=offsets[1:])
    text = b[np.repeat(start - offsets[:-1], length) + np.arange(offsets[-1])]  # each line's time
    times = pa.Array.from_buffers(pa.large_string(), len(blocks), [
        _bits(timed), pa.py_buffer(offsets), pa.py_buffer(text)], len(blocks) - int(np.count_nonzero(timed)))
    return {"block_number": pl.Series("block_number", number),
            "block_time": pl.Series("block_time", times.take(pa.array(line)).cast(pa.string()))}


def scan_orders(variant: str, buf: bytes, starts: np.ndarray, ends: np.ndarray, fields: Fields,
                checkpoint: Callable[[], None] | None = None, laid_out: bool = True
                ) -> tuple[pl.DataFrame, np.ndarray]:
    """Every order-status event of the batch with `fields`, shaped as `etl.parse`'s raw frame
    (`_line`, the event's fields and an `order` struct), and the sorted indexes of the lines to
    decode with Polars (the module's docstring). The rows of those lines may hold part of their
    values (plain lines) or be absent (block envelopes): drop them. `buf` must be under 2 GiB.

    With a `checkpoint`, each core scans its part `_LINES_PER_CHECKPOINT` lines at a time and
    calls it before each (~5 ms of CPU apart): a bulk lane's scan gives way there to an urgent
    lane (etl/gate.py), at the cost of ~3 % more CPU for the scan. `laid_out=False` reads every
    event with the general scan (the tests compare both readings)."""
    if len(buf) >= 1 << 31:
        raise ValueError("a batch of 2 GiB or more cannot be scanned: lower batch_max_bytes")
    n = len(starts)
    parts = max(1, min(cores(), -(-n // _LINES_PER_SLICE)))
    cuts = [n * k // parts for k in range(parts + 1)]
    jobs = [(lo, hi) for lo, hi in zip(cuts, cuts[1:], strict=False) if hi > lo]
    envelope = variant != "plain"
    found = _first_keys(buf, starts, ends, 0, n, envelope) if laid_out else None
    layout = _layout(*found, fields) if found is not None else None
    if not jobs:
        return _scan_slice(buf, starts, ends, 0, 0, envelope, fields, layout)
    step = _LINES_PER_CHECKPOINT if checkpoint is not None else n

    def part(lo: int, hi: int) -> list[tuple[pl.DataFrame, np.ndarray]]:
        out = []
        for at in range(lo, hi, step):
            if checkpoint is not None:
                checkpoint()
            out.append(_scan_slice(buf, starts, ends, at, min(hi, at + step), envelope, fields, layout))
        return out

    futures = [pool().submit(part, lo, hi) for lo, hi in jobs[1:]]
    done = part(*jobs[0])
    for f in futures:
        done += f.result()
    frame = pl.concat([d[0] for d in done], rechunk=False) if len(done) > 1 else done[0][0]
    return frame, np.concatenate([d[1] for d in done])


def _libc_memchr() -> Any:
    """libc's `memchr` (SIMD), as ctypes sees it; None where there is no such libc."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        memchr = libc.memchr
    except (OSError, AttributeError):
        return None
    memchr.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_size_t]
    memchr.restype = ctypes.c_void_p
    return memchr


_MEMCHR = _libc_memchr()


@_jit
def _newlines(memchr: Any, base: int, n: int, ends: np.ndarray, k: int, p: int) -> tuple[int, int]:
    """The newlines of the `n` bytes at address `base` from offset `p` on, written to `ends` from
    `k` on until it is full; returns (newlines written in all, offset to go on from). `memchr`
    is an argument, not a global, so that numba caches this function."""
    while p < n and k < len(ends):
        q = memchr(base + p, 10, n - p)
        if q == 0:
            return k, n
        ends[k] = q - base
        k += 1
        p = q - base + 1
    return k, p


def line_bounds(buf: bytes) -> tuple[np.ndarray, np.ndarray]:
    """`etl.parse.line_bounds`, each newline found by libc's `memchr` from compiled code: 2.6
    against 11.5 ms for a 64 MiB batch of order statuses on one core (numpy compares every byte,
    then gathers the matches), so the pre-filter runs it on its own thread. Where there is no
    libc `memchr`, numpy's on every core."""
    if _MEMCHR is None:
        return numpy_line_bounds(buf, cores())
    arr = np.frombuffer(buf, np.uint8)
    n = len(arr)
    ends = np.empty(max(1024, n // 256), np.int64)
    k, p = _newlines(_MEMCHR, arr.ctypes.data, n, ends, 0, 0)
    while p < n:  # more lines than room (short lines): twice the room
        ends = np.concatenate([ends, np.empty(len(ends), np.int64)])
        k, p = _newlines(_MEMCHR, arr.ctypes.data, n, ends, k, p)
    ends = ends[:k]
    starts = np.empty_like(ends)
    if k:
        starts[0] = 0
        starts[1:] = ends[:-1] + 1
    return starts, ends


def warm() -> None:
    """Compile every part of the scan now (or load it from numba's cache), e.g. when building an
    image: the laid-out scan and, with a second line whose keys come in another order, the
    general one. A part compiled later would be compiled by the first batch that needs it, which
    waits for it (~5 s on 2 cores for `_scan`; numba compiles one function at a time)."""
    line = b'{"time":"2026-01-05T11:00:00","order":{"oid":1}}\n'
    other = b'{"order":{"oid":2},"time":"2026-01-05T11:00:00"}\n'
    fields = Fields(("time",), (), ("oid",), ())
    for variant, buf in (("plain", line + other),
                         ("by_block", b'{"events":[' + line[:-1] + b"," + other[:-1] + b"]}\n")):
        starts, ends = line_bounds(buf)
        scan_orders(variant, buf, starts, ends, fields)
