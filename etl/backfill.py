"""Ingest existing hour files (plain or `.lz4`, as in the public hourly archives), then stop.

Each file gets its own cursor (`backfill:<path>`), committed with its rows, so an
interrupted backfill resumes where it stopped and a finished file is never read twice.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from pathlib import Path

import lz4.frame

from etl.pipeline import Shaping, commit_unit
from etl.store import Store
from etl.tail import STREAM_DIRS, Batch, Cursor, Stream
from etl.units import unit_of

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


def _chunks(path: Path, start: int, size: int) -> Iterator[tuple[int, bytes]]:
    """(offset, whole lines) of the decompressed file from `start`, `size` bytes at a time."""
    opener = lz4.frame.open if path.suffix == ".lz4" else open
    with opener(path, "rb") as f:
        pos = 0
        while pos < start:  # lz4 cannot seek: read and drop what is already stored
            got = f.read(min(size, start - pos))
            if not got:
                return
            pos += len(got)
        rest = b""
        while True:
            data = f.read(size)
            if not data:
                if rest:
                    yield pos, rest  # the file's last line lacks a newline: still a line
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
    done = store.cursors()
    totals = {"files": 0, "lines": 0, "rows": 0, "rejects": 0, "skipped_files": 0}
    bar = tqdm(
        total=sum(f.stat().st_size for f in files),
        unit="B",
        unit_scale=True,
        disable=not progress,
        desc="backfill",
    )
    for f in files:
        key = f"backfill:{f.resolve()}"
        cur = done.get(key)
        if cur is not None and cur.file == "done":
            totals["skipped_files"] += 1
            bar.update(f.stat().st_size)
            continue
        start = cur.offset if cur else 0
        st = streams[f]
        compressed = f.suffix == ".lz4"
        for off, data in _chunks(f, start, batch_max_bytes):
            if stop is not None and stop.is_set():
                bar.close()
                return totals
            if not data.endswith(b"\n"):
                data += b"\n"
            nxt = Cursor(f.name, 0, off + len(data))
            unit = unit_of(Batch(st, f.name, off, data, nxt), max_line_bytes)
            unit.stream = Stream(key, st.kind, st.variant, st.root)  # a cursor per file
            result, frames, _ = commit_unit(store, unit, shaping)
            totals["lines"] += result.lines
            totals["rows"] += sum(fr.height for fr in frames.values() if fr is not None)
            totals["rejects"] += len(result.rejects)
            if not compressed:
                bar.update(len(data))
        # mark the file complete, so a rerun skips it
        store.con.execute("UPDATE cursors SET file = 'done' WHERE stream = ?", [key])
        if compressed:
            bar.update(f.stat().st_size)
        totals["files"] += 1
        log.info("event=backfill_file path=%s stream=%s", f, st.name)
    bar.close()
    return totals
