"""Ingest existing hour files (plain or `.lz4`, as in the public hourly archives), then stop.

Backfill moves the same per-file cursors as `ingest`/`serve` (etl/filecursors.py), in the
same transaction as the rows: an interrupted backfill resumes where it stopped, a file
ingested live is not read again, and a file backfilled first is where live ingestion
starts. A file whose bytes before the stored cursor differ (another copy of the hour, or a
rewritten file) is read from its start, its rows checked against the stored ones.

A file that cannot be read whole does not stop the run: an `.lz4` file cut short (a partial
download) or corrupt keeps the lines decoded before the cut, and what follows is an
`incomplete` gap; a plain file whose last line has no newline keeps that line for live
ingestion (the node may still be writing it). Both are named in the run's report.
"""

from __future__ import annotations

import difflib
import logging
import threading
from collections.abc import Iterator
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, BinaryIO

import lz4.frame
import polars as pl

from etl.columns import DEFAULT_LINE_BYTES
from etl.filecursors import BACKFILL_PREFIX, file_key
from etl.lanes import dedup_for, rewinds_for
from etl.nodefiles import FP_BYTES, fingerprint_of
from etl.pipeline import Shaping
from etl.shaping import shape
from etl.store import BatchResult, Store
from etl.tail import STREAM_DIRS, Batch, Cursor, Gap, Stream
from etl.units import Unit, unit_of

log = logging.getLogger("nodetap.backfill")


class BackfillError(ValueError):
    """A path given to backfill is not a node hour file we can place."""


def check_stream(name: str) -> None:
    """Refuse a `--stream` that names no stream dir, with the name it is most like."""
    if name in STREAM_DIRS:
        return
    close = difflib.get_close_matches(name, list(STREAM_DIRS), n=1, cutoff=0.6)
    hint = f" Did you mean {close[0]}?" if close else ""
    raise BackfillError(f"unknown stream {name!r} (--stream).{hint} Valid streams: {', '.join(STREAM_DIRS)}")


def stream_of(path: Path, override: str | None = None) -> Stream:
    """The stream a file belongs to: `override` (--stream), else the stream directory in its path."""
    if override:
        check_stream(override)
    name = override or next((p for p in reversed(path.parts) if p in STREAM_DIRS), None)
    if name is None:
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


class Lz4Reader:
    """An `.lz4` file decompressed as it is read. Where it stops decoding (cut short, as a
    partial download is, or corrupt), `read` returns b"" as at an end, after every byte decoded
    before, and `broken` says what is wrong. Frames one after another are read as one."""

    CHUNK = 1 << 20  # compressed bytes decoded at a time

    def __init__(self, path: Path) -> None:
        self._raw = open(path, "rb")  # noqa: SIM115 - closed by close()
        self._dec = lz4.frame.LZ4FrameDecompressor()
        self._in_frame = False  # the current frame got bytes and has not ended
        self._any = False  # the file had bytes at all
        self._buf = bytearray()
        self._done = False
        self.broken: str | None = None
        self.pos = 0  # decompressed bytes returned by `read`

    def read(self, n: int) -> bytes:
        while len(self._buf) < n and not self._done:
            self._fill()
        out = bytes(self._buf[:n])
        del self._buf[:n]
        self.pos += len(out)
        return out

    def _fill(self) -> None:
        data = self._raw.read(self.CHUNK)
        if not data:
            self._done = True
            if self._in_frame:
                self.broken = ("it ends before its end-of-stream marker (cut short: a partial download "
                               "or copy?)")
            elif not self._any:
                self.broken = "it is empty: no lz4 frame"
            return
        self._any = True
        while data:
            if self._dec.eof:  # the next frame
                self._dec = lz4.frame.LZ4FrameDecompressor()
            try:
                self._buf += self._dec.decompress(data)
            except RuntimeError as err:  # not lz4, or a corrupt block
                self.broken = f"it stops decoding as lz4 ({err})"
                self._done = True
                return
            self._in_frame = not self._dec.eof
            data = self._dec.unused_data if self._dec.eof else b""

    def close(self) -> None:
        self._raw.close()

    def __enter__(self) -> Lz4Reader:
        return self

    def __exit__(self, kind: type[BaseException] | None, err: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()


def _open_at(path: Path, start: int) -> tuple[BinaryIO | Lz4Reader, bytes, int]:
    """The file (decompressed for `.lz4`) positioned at `start`, the `FP_BYTES` before it,
    and the position reached (less than `start` when the file is shorter)."""
    if path.suffix == ".lz4":
        f = Lz4Reader(path)
        pos, window = 0, b""
        while pos < start:  # lz4 cannot seek: read and drop what is already stored
            got = f.read(min(1 << 20, start - pos))
            if not got:
                break
            pos += len(got)
            window = (window + got)[-FP_BYTES:]
        return f, window, pos
    plain = open(path, "rb")  # noqa: SIM115 - returned open
    lo = max(0, start - FP_BYTES)
    plain.seek(lo)
    window = plain.read(start - lo)
    return plain, window, lo + len(window)


def _chunks(f: BinaryIO | Lz4Reader, start: int, size: int,
            last_line_whole: bool) -> Iterator[tuple[int, bytes]]:
    """(offset, whole lines) from `start`, `size` bytes at a time. With `last_line_whole`
    (archives, which are complete) a last line without a newline is still a line, unless the
    archive stopped decoding there; otherwise it is left for live ingestion, like a line the
    node is still writing."""
    pos = start
    rest = b""
    while True:
        data = f.read(size)
        if not data:
            cut_short = isinstance(f, Lz4Reader) and f.broken is not None
            if rest and last_line_whole and not cut_short:
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


@dataclass
class Report:
    """What a backfill did: counts, and the files it could not read whole (one line each:
    the file, what is wrong, what was kept, what to do)."""

    totals: dict[str, int] = field(default_factory=lambda: {
        "files": 0, "lines": 0, "rows": 0, "rejects": 0, "skipped_files": 0, "incomplete_files": 0,
        "unterminated_files": 0})
    incomplete: list[str] = field(default_factory=list)  # read in part: the run failed
    unterminated: list[str] = field(default_factory=list)  # a last line without its newline


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
) -> Report:
    """Ingest `paths`; returns counts of files, lines, rows and rejects, and the files that
    could not be read whole (the others are read all the same). With `progress`, a progress bar
    on standard error, the log lines printed above it."""
    from tqdm.contrib.logging import logging_redirect_tqdm

    with logging_redirect_tqdm() if progress else nullcontext():
        return _backfill(paths, store, batch_max_bytes=batch_max_bytes, max_line_bytes=max_line_bytes,
                         stream=stream, stop=stop, progress=progress, shaping=shaping)


def _backfill(paths: list[Path], store: Store, *, batch_max_bytes: int, max_line_bytes: int,
              stream: str | None, stop: threading.Event | None, progress: bool,
              shaping: Shaping | None) -> Report:
    from tqdm import tqdm

    files = expand(paths)
    streams = {f: stream_of(f, stream) for f in files}
    report = Report()
    totals = report.totals
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
        size = f.stat().st_size
        if complete or (not compressed and not gaps and start >= size):
            totals["skipped_files"] += 1
            bar.update(size)
            continue
        inode = 0 if compressed else f.stat().st_ino
        handle, window, _ = _open_at(f, start)
        counters = Stream(BACKFILL_PREFIX + source, st.kind, st.variant, st.root)
        cursor = Cursor(rel, inode, start, fingerprint_of(window) if window else 0)
        lines = 0
        with handle:
            for off, data in _chunks(handle, start, batch_max_bytes, last_line_whole=compressed):
                if stop is not None and stop.is_set():
                    totals["lines"] += lines  # the batches committed before the stop
                    bar.close()
                    return report
                window = (window + data)[-FP_BYTES:]
                cursor = Cursor(rel, inode, off + len(data), fingerprint_of(window))
                if not data.endswith(b"\n"):
                    data += b"\n"
                unit = unit_of(Batch(st, rel, off, data, cursor, gaps), max_line_bytes)
                unit.stream = counters  # counted apart from live ingestion, same file cursors
                gaps = []
                result, frames, _ = commit_unit(store, unit, shaping)
                lines += result.lines
                totals["rows"] += sum(fr.height for fr in frames.values() if fr is not None)
                totals["rejects"] += result.new_rejects
                if not compressed:
                    bar.update(len(data))
            end = handle.pos if isinstance(handle, Lz4Reader) else handle.tell()
            broken = handle.broken if isinstance(handle, Lz4Reader) else None
        totals["lines"] += lines
        bar.update(size if compressed else 0)
        if broken is not None:
            _record_incomplete(store, counters, st, cursor, end, gaps, max_line_bytes, shaping)
            totals["incomplete_files"] += 1
            report.incomplete.append(
                f"{f}: {broken}. Its whole lines up to byte {cursor.offset} (decompressed) are stored; "
                f"the rest of the hour is not (gaps, reason incomplete). Download it again and rerun "
                f"backfill: it goes on from there")
            log.error("event=backfill_incomplete path=%s stream=%s file=%s offset=%d reason=%r (the lines "
                      "before offset are stored; download the file again and rerun backfill)",
                      f, source, rel, cursor.offset, broken)
            continue
        if compressed:  # archives are complete: a rerun skips them without decompressing
            store.mark_file_complete(source, rel)
        elif end > cursor.offset:
            totals["unterminated_files"] += 1
            report.unterminated.append(
                f"{f}: its last line is unterminated ({end - cursor.offset} bytes after byte "
                f"{cursor.offset} with no newline), so it is not stored. A file the node is still "
                "writing: `nodetap ingest` reads the line once it ends. A cut copy: copy it again "
                "and rerun backfill")
            log.warning("event=backfill_unterminated path=%s stream=%s file=%s offset=%d bytes=%d",
                        f, source, rel, cursor.offset, end - cursor.offset)
        totals["files"] += 1
        log.info("event=backfill_file path=%s stream=%s file=%s", f, source, rel)
    bar.close()
    return report


def _record_incomplete(store: Store, counters: Stream, st: Stream, cursor: Cursor, end: int,
                       pending: list[Gap], max_line_bytes: int, shaping: Shaping | None) -> None:
    """The part of a file after its last whole line, which did not decode whole: an
    `incomplete` gap from that line's start (where the file cursor stays) to the last byte
    decoded; the rest of the hour is missing beyond it. Recorded once, however often rerun.
    `pending`: gaps found before any line was read (a rewritten or overlapping file)."""
    seen = store.con.execute(
        'SELECT 1 FROM gaps WHERE stream = ? AND file = ? AND from_offset = ? AND reason = ?',
        [counters.name, cursor.file, cursor.offset, "incomplete"]).fetchall()
    gaps = pending if seen else [*pending, Gap(cursor.file, cursor.offset, end, "incomplete")]
    if gaps:
        unit = unit_of(Batch.move(st, cursor, gaps), max_line_bytes)
        unit.stream = counters
        commit_unit(store, unit, shaping)


def commit_unit(
    store: Store, unit: Unit, shaping: Shaping | None = None, line_bytes: float = DEFAULT_LINE_BYTES
) -> tuple[BatchResult, dict[str, Any], Any]:
    """Shape a unit's rows (orders by the rules; trades from fills; candles from trades), then
    commit them with the unit's rejects, gaps and cursor (one unit at a time, no lane)."""
    from etl.candles import merge as merge_candles

    shaping = shaping or Shaping()
    watermark = store.last_time(unit.stream.name)
    shaped = shape(unit, rules=shaping.rules, intervals=shaping.intervals,
                   stall_after_s=store.stall_after_s, watermark=watermark,
                   dedup=dedup_for(store, unit) or rewinds_for(store, unit, watermark))
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
