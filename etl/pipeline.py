"""The ingest loop: startup -> tick (tail, parse, commit) -> shutdown.

One thread owns the DuckDB writer. Each tick drains every stream in bounded
batches; `watchfiles` (or polling) wakes the loop when the node writes.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import orjson
import polars as pl
from watchfiles import watch

from etl.config import Settings
from etl.parse import Parsed, parse, trades_from_fills
from etl.store import BatchResult, Store, utcnow
from etl.tail import Batch, Cursor, Stream, Tailer, discover, initial_cursor

log = logging.getLogger("nodetap.pipeline")

DEFAULT_LINE_BYTES = 480.0


@dataclass
class StreamState:
    stream: Stream
    tailer: Tailer
    cursor: Cursor
    line_bytes: float = DEFAULT_LINE_BYTES  # running mean, to estimate skipped lines
    lines: int = 0
    bytes: int = 0
    rejects: int = 0
    skipped_bytes: int = 0
    unread: int = 0
    last_batch_at: float = 0.0
    rate: float = 0.0  # lines/s over recent batches
    pending: Future[Prepared | None] | None = None  # the next batch, being prepared


@dataclass
class Prepared:
    """A batch read and parsed, not yet committed."""

    batch: Batch
    result: BatchResult
    frames: dict[str, pl.DataFrame]
    seconds: float


@dataclass
class Processed:
    """One committed batch, as handed to subscribers (the API's live feed)."""

    stream: Stream
    frames: dict[str, pl.DataFrame]
    result: BatchResult
    seconds: float


Listener = Callable[[Processed], None]


@dataclass
class Pipeline:
    settings: Settings
    store: Store
    listeners: list[Listener] = field(default_factory=list)
    clock: Callable[[], float] = time.monotonic

    def __post_init__(self) -> None:
        self.states: dict[str, StreamState] = {}
        self.stop_event = threading.Event()
        self._last_status_write = 0.0
        # one worker: at most one batch parsing while one commits, so memory stays bounded
        self._worker = ThreadPoolExecutor(1, thread_name_prefix="nodetap-parse")
        self.refresh_streams()

    # ------------------------------------------------------------ startup
    def refresh_streams(self) -> None:
        """Pick up stream directories that appeared since the last look."""
        stored = self.store.cursors()
        s = self.settings
        for stream in discover(s.node_dir, s.streams):
            if stream.name in self.states:
                continue
            cur = stored.get(stream.name) or initial_cursor(stream, s.start_from)
            tailer = Tailer(
                stream,
                batch_max_bytes=s.batch_max_bytes,
                max_backlog_bytes=s.max_backlog_bytes if s.backlog == "drop" else None,
                rotate_grace_s=s.rotate_grace_s,
                clock=self.clock,
            )
            self.states[stream.name] = StreamState(stream, tailer, cur)
            log.info(
                "event=stream_start stream=%s file=%s offset=%d resumed=%s",
                stream.name,
                cur.file,
                cur.offset,
                stream.name in stored,
            )

    # --------------------------------------------------------------- tick
    def run_once(self, max_batches: int = 1_000_000) -> int:
        """Drain every stream (round robin, one batch each per turn); returns batches done."""
        done = 0
        active = list(self.states.values())
        while active and done < max_batches and not self.stop_event.is_set():
            still = []
            for st in active:
                # a few batches per stream per turn: fair, and the prefetch stays useful
                for _ in range(8):
                    if self.stop_event.is_set() or not self.step(st):
                        break
                    done += 1
                else:
                    still.append(st)
            active = still
        self.write_status_file()
        return done

    def _prepare(self, st: StreamState, cur: Cursor) -> Prepared | None:
        t0 = time.perf_counter()
        batch = st.tailer.next_batch(cur)
        if batch is None:
            return None
        result, frames = process_batch(batch, st.line_bytes, self.settings.max_line_bytes)
        return Prepared(batch, result, frames, time.perf_counter() - t0)

    def step(self, st: StreamState) -> bool:
        """Commit one batch of one stream; False when it had nothing.

        The next batch is read and parsed on the worker thread while this one commits
        (DuckDB and Polars both release the GIL), so the two stages overlap on two cores.
        Batches still commit one at a time, in order, each with its own cursor."""
        prepared = st.pending.result() if st.pending is not None else None
        st.pending = None
        if prepared is None:  # nothing prefetched, or the prefetch found nothing then: look now
            prepared = self._prepare(st, st.cursor)
        if prepared is None:
            st.unread = 0
            return False
        batch, result, frames = prepared.batch, prepared.result, prepared.frames
        if not self.stop_event.is_set():
            st.pending = self._worker.submit(self._prepare, st, batch.cursor)
        t0 = time.perf_counter()
        self.store.commit(result, frames)
        seconds = prepared.seconds + time.perf_counter() - t0
        st.cursor = batch.cursor
        st.lines += result.lines
        st.bytes += result.bytes
        st.rejects += len(result.rejects)
        st.skipped_bytes += sum(g.end - g.start for g in result.gaps)
        st.unread = batch.unread
        now = self.clock()
        if result.lines:
            inst = result.lines / max(seconds, 1e-6)
            st.rate = inst if not st.rate else 0.8 * st.rate + 0.2 * inst
            st.line_bytes = 0.9 * st.line_bytes + 0.1 * (result.bytes / result.lines)
        st.last_batch_at = now
        if result.rejects:
            log.warning(
                "event=rejects stream=%s file=%s count=%d first_reason=%r",
                st.stream.name,
                batch.file,
                len(result.rejects),
                result.rejects[0][2],
            )
        for g in result.gaps:
            log.warning(
                "event=gap stream=%s file=%s from=%d to=%d reason=%s",
                st.stream.name,
                g.file,
                g.start,
                g.end,
                g.reason,
            )
        processed = Processed(st.stream, frames, result, seconds)
        for listener in self.listeners:
            try:
                listener(processed)
            except Exception:  # a broken subscriber must not stop ingestion
                log.exception("event=listener_error stream=%s", st.stream.name)
        return True

    # --------------------------------------------------------------- loop
    def _wakeups(self) -> Iterator[object]:
        s = self.settings
        if not s.node_dir.exists():
            raise FileNotFoundError(f"node dir {s.node_dir} does not exist (setting node_dir)")
        yield from watch(
            s.node_dir,
            debounce=s.debounce_ms,
            step=max(1, min(50, s.debounce_ms)),
            rust_timeout=s.poll_interval_ms,
            yield_on_timeout=True,
            stop_event=self.stop_event,
            force_polling=s.poll,
            poll_delay_ms=s.poll_interval_ms,
            recursive=True,
            ignore_permission_denied=True,
        )

    def run(self) -> None:
        """Run until `stop_event` is set; the batch in flight is finished and committed."""
        log.info("event=pipeline_start node_dir=%s db=%s", self.settings.node_dir, self.settings.db)
        self.run_once()
        for _ in self._wakeups():
            if self.stop_event.is_set():
                break
            self.refresh_streams()
            self.run_once()
        log.info("event=pipeline_stop")

    def stop(self) -> None:
        self.stop_event.set()

    def close(self) -> None:
        """Wait for the worker; a prefetched batch is not committed and is read again later."""
        self.stop_event.set()
        self._worker.shutdown(wait=True, cancel_futures=True)
        for st in self.states.values():
            st.pending = None

    # ------------------------------------------------------------- status
    def status(self) -> list[dict[str, object]]:
        """Per-stream position and counters, as served by `status` and the API."""
        stored = {r["stream"]: r for r in self.store.status()}
        out = []
        now_wall = utcnow()
        for name, st in sorted(self.states.items()):
            row = stored.get(name, {})
            last_time = row.get("last_time")
            out.append(
                {
                    "stream": name,
                    "kind": st.stream.kind,
                    "variant": st.stream.variant,
                    "file": st.cursor.file,
                    "offset": st.cursor.offset,
                    "lag_bytes": st.unread,
                    "lag_seconds": (now_wall - last_time).total_seconds() if last_time else None,
                    "lines_per_s": round(st.rate, 1),
                    "lines": row.get("lines", 0),
                    "rows": row.get("rows", 0),
                    "rejects": row.get("rejects", 0),
                    "gaps": row.get("gaps", 0),
                    "skipped_bytes": row.get("skipped_bytes", 0),
                    "last_time": last_time.isoformat() if last_time else None,
                    "updated_at": row["updated_at"].isoformat() if row.get("updated_at") else None,
                }
            )
        return out

    def write_status_file(self, force: bool = False) -> None:
        """A JSON copy of `status()` beside the DB, for `nodetap status` while we hold the lock."""
        now = self.clock()
        if not force and now - self._last_status_write < 1.0:
            return
        self._last_status_write = now
        path = status_file(self.settings.db)
        tmp = path.with_suffix(".tmp")
        tmp.write_bytes(orjson.dumps(self.status(), option=orjson.OPT_INDENT_2))
        os.replace(tmp, path)


def status_file(db: Path) -> Path:
    return db.with_name(db.name + ".status.json")


def process_batch(
    batch: Batch, line_bytes: float, max_line_bytes: int
) -> tuple[BatchResult, dict[str, pl.DataFrame]]:
    """Parse one batch into its frames (orders | fills + trades | trades) and its record."""
    stream = batch.stream
    frames: dict[str, pl.DataFrame] = {}
    rejects: list[tuple[str, int, str, bytes]] = []
    lines = 0
    first = last = None
    if batch.data:
        parsed: Parsed = parse(stream.kind, stream.variant, batch.data, max_line_bytes)
        lines = parsed.lines
        rejects = [(batch.file, batch.start + off, reason, head) for off, reason, head in parsed.rejects]
        frame = parsed.frame.drop("_line")
        frames[stream.kind] = frame
        if stream.kind == "fills":
            frames["trades"] = trades_from_fills(frame)
        if frame.height:
            first, last = frame["time"].min(), frame["time"].max()
    if batch.dropped:
        rejects.append((batch.file, batch.start, batch.dropped_reason, batch.dropped))
        lines += 1
    result = BatchResult(
        stream=stream.name,
        cursor=batch.cursor,
        file=batch.file,
        lines=lines,
        bytes=len(batch.data),
        rejects=rejects,
        gaps=batch.gaps,
        est_line_bytes=line_bytes,
        last_time=last,  # type: ignore[arg-type]
        first_time=first,  # type: ignore[arg-type]
    )
    return result, frames
