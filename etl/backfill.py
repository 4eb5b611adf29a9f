"""Ingest existing hour files (plain or `.lz4`, as in the public hourly archives), then stop.

Backfill moves the same per-file cursors as `ingest`/`serve` (etl/filecursors.py), in the
same transaction as the rows: an interrupted backfill resumes where it stopped, a file
ingested live is not read again, and a file backfilled first is where live ingestion
starts. A file whose bytes before the stored cursor differ (another copy of the hour, or a
rewritten file) is read from its start, its rows checked against the stored ones.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO

import lz4.frame
import polars as pl

from etl.columns import DEFAULT_LINE_BYTES
from etl.filecursors import BACKFILL_PREFIX, file_key
from etl.lanes import dedup_for
from etl.nodefiles import FP_BYTES, fingerprint_of
from etl.pipeline import Shaping
from etl.shaping import shape
from etl.store import BatchResult, Store
from etl.tail import STREAM_DIRS, Batch, Cursor, Gap, Stream
from etl.units import Unit, unit_of

log = logging.getLogger("nodetap.backfill")


class BackfillError(ValueError):
    """A path given to backfill is not a node hour file we can place."""


def stream_of(path: Path, override: str | None = None) -> Stream:
    """The stream a file belongs to, from the stream directory in its path."""
    name = override or next((p for p in reversed(path.parts) if p in STREAM_DIRS), None)
    if name is None or name not in STREAM_DIRS:
        raise BackfillError(
            f"{path}: cannot tell the stream; put it under a directory named like "
            f"{', '.join(STREAM_DIRS)} or pass --stream"
        )
    kind, variant = STREAM_DIRS[name]
    return Stream(name, kind, variant, path.parent)


def expand(paths: list[Path]) -> list[Path]:
    """Files named, plus the hour files under directories named, in hour order."""
    out: list[Path] = []
    for p in paths:
        if p.is_dir():
            out += sorted(
                (f for f in p.rglob("*") if f.is_file() and _hour_name(f.name)),
                key=lambda f: (str(f.parent), int(f.name.split(".")[0])),
            )
        elif p.is_file():
            out.append(p)
        else:
            raise BackfillError(f"{p}: no such file or directory")
    return out


def _hour_name(name: str) -> bool:
    base = name[:-4] if name.endswith(".lz4") else name
    return base.isdigit() and int(base) < 24


def _open_at(path: Path, start: int) -> tuple[BinaryIO, bytes, int]:
    """The file (decompressed for `.lz4`) positioned at `start`, the `FP_BYTES` before it,
    and the position reached (less than `start` when the file is shorter)."""
    if path.suffix == ".lz4":
        f: BinaryIO = lz4.frame.open(path, "rb")
        pos, window = 0, b""
        while pos < start:  # lz4 cannot seek: read and drop what is already stored
            got = f.read(min(1 << 20, start - pos))
            if not got:
                break
            pos += len(got)
            window = (window + got)[-FP_BYTES:]
        return f, window, pos
    f = open(path, "rb")  # noqa: SIM115 - returned open
    lo = max(0, start - FP_BYTES)
    f.seek(lo)
    window = f.read(start - lo)
    return f, window, lo + len(window)


def _chunks(f: BinaryIO, start: int, size: int, last_line_whole: bool) -> Iterator[tuple[int, bytes]]:
    """(offset, whole lines) from `start`, `size` bytes at a time. With `last_line_whole`
    (archives, which are complete) a last line without a newline is still a line; otherwise
    it is left for live ingestion, like a line the node is still writing."""
    pos = start
    rest = b""
    while True:
        data = f.read(size)
        if not data:
            if rest and last_line_whole:
                yield pos, rest
            return
        buf = rest + data
        cut = buf.rfind(b"\n") + 1
        if cut == 0 and len(buf) < 4 * size:
            rest = buf
            continue
        cut = cut or len(buf)
        yield pos, buf[:cut]
        pos += cut
        rest = buf[cut:]


def _resume(store: Store, source: str, rel: str, f: Path) -> tuple[int, list[Gap], bool]:
    """(offset to start at, gaps for the first batch, complete) for one file."""
    fc = store.files.get(source, rel)
    if fc is None:
        if store.files.other_variant_read(source, rel):
            return 0, [Gap(rel, 0, 0, "overlap")], False
        return 0, [], False
    if fc.complete:
        return fc.offset, [], True
    if fc.offset and fc.fp:
        handle, window, pos = _open_at(f, fc.offset)
        handle.close()
        if pos < fc.offset or fingerprint_of(window) != fc.fp:
            log.warning("event=file_rewritten path=%s offset=%d (not the bytes stored: read from "
                        "its start; rows already stored are not stored twice)", f, fc.offset)
            return 0, [Gap(rel, fc.offset, fc.offset, "rewritten")], False
    return fc.offset, [], False


def backfill(
    paths: list[Path],
    store: Store,
    *,
    batch_max_bytes: int,
    max_line_bytes: int,
    stream: str | None = None,
    stop: threading.Event | None = None,
    progress: bool = True,
    shaping: Shaping | None = None,
) -> dict[str, int]:
    """Ingest `paths`; returns counts of files, lines, rows and rejects."""
    from tqdm import tqdm

    files = expand(paths)
    streams = {f: stream_of(f, stream) for f in files}
    totals = {"files": 0, "lines": 0, "rows": 0, "rejects": 0, "skipped_files": 0}
    bar = tqdm(
        total=sum(f.stat().st_size for f in files),
        unit="B",
        unit_scale=True,
        disable=not progress,
        desc="backfill",
    )
    for f in files:
        st = streams[f]
        source, rel = file_key(f) or (st.name, str(f.resolve()))
        compressed = f.suffix == ".lz4"
        start, gaps, complete = _resume(store, source, rel, f)
        if complete or (not compressed and not gaps and start >= f.stat().st_size):
            totals["skipped_files"] += 1
            bar.update(f.stat().st_size)
            continue
        inode = 0 if compressed else f.stat().st_ino
        handle, window, _ = _open_at(f, start)
        counters = Stream(BACKFILL_PREFIX + source, st.kind, st.variant, st.root)
        with handle:
            for off, data in _chunks(handle, start, batch_max_bytes, last_line_whole=compressed):
                if stop is not None and stop.is_set():
                    bar.close()
                    return totals
                window = (window + data)[-FP_BYTES:]
                nxt = Cursor(rel, inode, off + len(data), fingerprint_of(window))
                if not data.endswith(b"\n"):
                    data += b"\n"
                unit = unit_of(Batch(st, rel, off, data, nxt, gaps), max_line_bytes)
                unit.stream = counters  # counted apart from live ingestion, same file cursors
                gaps = []
                result, frames, _ = commit_unit(store, unit, shaping)
                totals["lines"] += result.lines
                totals["rows"] += sum(fr.height for fr in frames.values() if fr is not None)
                totals["rejects"] += len(result.rejects)
                if not compressed:
                    bar.update(len(data))
        if compressed:  # archives are complete: a rerun skips them without decompressing
            store.mark_file_complete(source, rel)
            bar.update(f.stat().st_size)
        totals["files"] += 1
        log.info("event=backfill_file path=%s stream=%s file=%s", f, source, rel)
    bar.close()
    return totals


def commit_unit(
    store: Store, unit: Unit, shaping: Shaping | None = None, line_bytes: float = DEFAULT_LINE_BYTES
) -> tuple[BatchResult, dict[str, Any], Any]:
    """Shape a unit's rows (orders by the rules; trades from fills; candles from trades), then
    commit them with the unit's rejects, gaps and cursor (one unit at a time, no lane)."""
    from etl.candles import merge as merge_candles

    shaping = shaping or Shaping()
    watermark = store.last_time(unit.stream.name)
    shaped = shape(unit, rules=shaping.rules, intervals=shaping.intervals,
                   stall_after_s=store.stall_after_s, watermark=watermark, dedup=dedup_for(store, unit))
    result = BatchResult(
        stream=unit.stream.name, kind=unit.stream.kind, cursor=unit.cursor, file=unit.file,
        lines=unit.lines, nbytes=unit.bytes, rejects=unit.rejects, gaps=unit.gaps,
        est_line_bytes=line_bytes, last_time=shaped.last_time,
        first_time=shaped.first_time,
        stalls=shaped.stalls, watermark_before=watermark)
    merged: list[pl.DataFrame] = []
    new = shaped.candles

    def candles() -> pl.DataFrame:  # in the commit's transaction
        assert new is not None
        merged.append(merge_candles(store.stored_candles(new), new))
        return merged[-1]

    store.commit(result, shaped.rows, candles if new is not None and new.height else None, shaped.trade_users)
    return result, shaped.rows, merged[-1] if merged else None
