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
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import duckdb
import orjson
import polars as pl
from watchfiles import watch

from etl.candles import candles_multi
from etl.config import Settings, lake_root
from etl.dedup import drop_stored
from etl.diskspace import DiskFullError, DiskGuard
from etl.filters import RulesFile, apply_rules
from etl.identity import bind_node, claim_lake, default_lake
from etl.lake import Lake
from etl.nodefiles import wait_for_dir
from etl.parse import trades_from_fills
from etl.store import BatchResult, Store, utcnow
from etl.tail import REREAD, Cursor, Stream, Tailer, discover, initial_cursor
from etl.units import Unit, can_merge, merge, split_whole_row_groups, unit_of

log = logging.getLogger("nodetap.pipeline")

DEFAULT_LINE_BYTES = 480.0


@dataclass
class StreamState:
    stream: Stream
    tailer: Tailer
    cursor: Cursor  # committed: the first line not in the store
    read_cursor: Cursor  # where the next read starts (ahead of `cursor` by `carry`)
    line_bytes: float = DEFAULT_LINE_BYTES  # running mean, to estimate skipped lines
    lines: int = 0  # committed since start
    unread: int = 0
    last_batch_at: float = 0.0
    rate: float = 0.0  # lines/s over recent batches
    pending: Future[Unit | None] | None = None  # the next unit, being read and parsed
    carry: Unit | None = None  # rows read but held back to fill a whole row group


@dataclass
class Processed:
    """One committed unit, as handed to subscribers (the API's live feed)."""

    stream: Stream
    frames: dict[str, pl.DataFrame]  # orders (kept by the rules) | fills + trades | trades
    candles: pl.DataFrame | None  # the new state of every candle the unit touched
    result: BatchResult
    seconds: float


@dataclass
class Shaping:
    """What happens to parsed rows before they are stored: the orders filter, the candles."""

    rules: RulesFile | None = None
    intervals: tuple[str, ...] = ()


Listener = Callable[[Processed], None]


@dataclass
class Pipeline:
    settings: Settings
    store: Store
    listeners: list[Listener] = field(default_factory=list)
    clock: Callable[[], float] = time.monotonic
    rules: RulesFile | None = None

    def __post_init__(self) -> None:
        if self.rules is None:
            self.rules = rules_file_for(self.settings)
        self.shaping = Shaping(self.rules, self.settings.candle_intervals)
        s = self.settings
        bind_node(self.store.con, s.db, s.node_dir)  # refuses another node's database
        self.lake_root = claim_lake(self.store.con, s.db, lake_root(s) if str(s.lake_dir) not in (
            "", ".") else default_lake(self.store.con, s.db))  # refuses another database's lake
        self.lake().refresh_views()  # history.* views exist from the first start
        self.states: dict[str, StreamState] = {}
        self.stop_event = threading.Event()
        # a full disk pauses commits (etl/diskspace.py); after a failed commit, no later
        # unit may commit (its rows would pass the failed one's)
        self.disk = DiskGuard(self.store, self.stop_event)
        self._halted = False
        self._last_status_write = float("-inf")
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
                index=self.store.file_index(stream.name, cur.file),
            )
            self.states[stream.name] = StreamState(stream, tailer, cur, cur)
            log.info("event=stream_start stream=%s file=%s offset=%d resumed=%s",
                     stream.name, cur.file, cur.offset, stream.name in stored)

    # --------------------------------------------------------------- tick
    def run_once(self, max_batches: int = 1_000_000) -> int:
        """Drain every stream (round robin, a few batches each per turn); returns batches done."""
        done = 0
        self.refresh_streams()
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

    def _read(self, st: StreamState, cur: Cursor) -> Unit | None:
        batch = st.tailer.next_batch(cur)
        return None if batch is None else unit_of(batch, self.settings.max_line_bytes)

    def step(self, st: StreamState) -> bool:
        """Commit the next unit of one stream; False when it had nothing.

        The next batch is read and parsed on the worker thread while this one commits
        (DuckDB and Polars both release the GIL), so the two stages overlap on two cores.
        Units still commit one at a time, in order, each with its own cursor."""
        t0 = time.perf_counter()
        unit = st.pending.result() if st.pending is not None else None
        st.pending = None
        if unit is None:  # nothing prefetched, or the prefetch found nothing then: look now
            unit = self._read(st, st.read_cursor)
        if unit is None:
            st.unread = 0
            if st.carry is not None:
                self._commit(st, st.carry, t0)
                st.carry = None
                return True
            return False
        st.read_cursor = unit.cursor
        if not self.stop_event.is_set():
            st.pending = self._worker.submit(self._read, st, unit.cursor)
        if st.carry is not None:
            if can_merge(st.carry, unit):
                unit = merge(st.carry, unit)
            else:
                self._commit(st, st.carry, t0)
            st.carry = None
        if unit.unread > self.settings.batch_max_bytes // 4 and not self.stop_event.is_set():
            # behind (over a quarter batch unread): throughput first, whole row groups;
            # otherwise every row is committed and published at once, for latency
            unit, st.carry = split_whole_row_groups(unit)
        self._commit(st, unit, t0)
        return True

    def flush(self) -> None:
        """Commit the rows held back for a whole row group (at shutdown)."""
        for st in self.states.values():
            if st.carry is not None:
                self._commit(st, st.carry, time.perf_counter())
                st.carry = None

    def _commit(self, st: StreamState, unit: Unit, t0: float) -> None:
        if self._halted:
            return
        try:
            result, frames, candles = self.disk.run(
                lambda: commit_unit(self.store, unit, self.shaping, st.line_bytes))
        except BaseException as err:
            self._halted = True
            st.carry = None
            if isinstance(err, DiskFullError):  # stopped while paused: read again next start
                log.warning("event=stop_while_disk_full stream=%s file=%s", st.stream.name, unit.file)
                return
            raise
        seconds = time.perf_counter() - t0
        st.cursor = unit.cursor
        st.lines += result.lines
        st.unread = unit.unread
        if result.lines:
            inst = result.lines / max(seconds, 1e-6)
            st.rate = inst if not st.rate else 0.8 * st.rate + 0.2 * inst
            st.line_bytes = 0.9 * st.line_bytes + 0.1 * (result.nbytes / result.lines)
        st.last_batch_at = self.clock()
        if result.rejects:
            log.warning("event=rejects stream=%s file=%s count=%d first_reason=%r",
                        st.stream.name, unit.file, len(result.rejects), result.rejects[0][2])
        for g in result.gaps:
            log.warning("event=gap stream=%s file=%s from=%d to=%d reason=%s",
                        st.stream.name, g.file, g.start, g.end, g.reason)
        processed = Processed(st.stream, frames, candles, result, seconds)
        for listener in self.listeners:
            try:
                listener(processed)
            except Exception:  # a broken subscriber must not stop ingestion
                log.exception("event=listener_error stream=%s", st.stream.name)

    # --------------------------------------------------------------- loop
    def _wakeups(self) -> Iterator[object]:
        s = self.settings
        if not wait_for_dir(s.node_dir, self.stop_event):
            return
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
        sealer = threading.Thread(target=self._seal_loop, name="nodetap-seal", daemon=True)
        sealer.start()
        self.run_once()
        for _ in self._wakeups():
            if self.stop_event.is_set():
                break
            self.run_once()
        sealer.join(timeout=30)
        log.info("event=pipeline_stop")

    def lake(self) -> Lake:
        """The Parquet lake, on its own DuckDB cursor (so it can work beside ingestion)."""
        s = self.settings
        return Lake(self.store.con.cursor(), self.lake_root, grace_s=s.seal_grace_s,
                    retain_hours=s.retain_hours or None)

    def _seal_loop(self) -> None:
        lake: Lake | None = None
        while not self.stop_event.wait(self.settings.seal_interval_s):
            try:
                lake = lake or self.lake()
                lake.seal()
            except (duckdb.Error, OSError) as err:  # a write conflict, a full disk: next round
                lake = None  # on a fresh cursor (the database may have been reopened)
                log.warning("event=lake_seal_error error=%r", str(err))

    def stop(self) -> None:
        self.stop_event.set()

    def close(self) -> None:
        """Commit what is held back, then stop the worker; a prefetched batch is not
        committed and is read again on the next start."""
        self.stop_event.set()
        self.flush()
        self._worker.shutdown(wait=True, cancel_futures=True)
        for st in self.states.values():
            st.pending = None

    # ------------------------------------------------------------- status
    def status(self) -> list[dict[str, object]]:
        """Per-stream position and counters, as served by `status` and the API."""
        stored: dict[str, dict[str, Any]] = {str(r["stream"]): r for r in self.store.status()}
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
        try:
            tmp.write_bytes(orjson.dumps(self.status(), option=orjson.OPT_INDENT_2))
            os.replace(tmp, path)
        except (OSError, duckdb.Error) as err:  # e.g. a full disk: the status file is a convenience
            log.debug("event=status_file_error error=%r", str(err))


def status_file(db: Path) -> Path:
    return db.with_name(db.name + ".status.json")


def rules_file_for(s: Settings) -> RulesFile:
    """The orders filter the settings ask for (a missing default rules file means defaults)."""
    path: Path | None = s.rules_file if str(s.rules_file) not in ("", ".") else None
    if path is not None and not path.exists():
        if path == Settings().rules_file:
            log.warning("event=rules_default reason=missing_file path=%s", path)
            path = None
        else:
            raise FileNotFoundError(f"rules file {path} does not exist (setting rules_file)")
    return RulesFile(path, keep_all=s.keep_all)


def commit_unit(
    store: Store, unit: Unit, shaping: Shaping | None = None, line_bytes: float = DEFAULT_LINE_BYTES
) -> tuple[BatchResult, dict[str, pl.DataFrame], pl.DataFrame | None]:
    """Filter and shape a unit's rows (orders by the rules; trades from fills; candles from
    trades), then commit them with the unit's rejects, gaps and cursor."""
    shaping = shaping or Shaping()
    frames: dict[str, pl.DataFrame] = {}
    first = last = None
    candle_rows = None
    silences: list[tuple[datetime, datetime]] = []
    # a file read again: rows stored before are dropped by identity key (etl/dedup.py)
    recheck = (any(g.reason in REREAD for g in unit.gaps)
               or store.files.rechecking(unit.stream.name, unit.file))
    if unit.frame is not None:
        frame = unit.frame.drop("_offset")
        if recheck:
            frame = drop_stored(store.con, unit.stream.kind, frame)
        if frame.height:
            # the watermark counts every event, kept or not
            first, last = frame["time"].min(), frame["time"].max()
            silences = find_silences(frame["time"], store.stall_after_s)
        if unit.stream.kind == "orders" and shaping.rules is not None:
            shaping.rules.check()
            frame, counts = apply_rules(frame, shaping.rules.rules)
            shaping.rules.record(counts)
        frames[unit.stream.kind] = frame
        if unit.stream.kind == "fills":
            frames["trades"] = trades_from_fills(frame)
        elif unit.stream.kind == "trades":
            # older nodes write a trade once per side (same hash, same orders): keep one
            frames["trades"] = frame.unique("tid", keep="first", maintain_order=True)
        if recheck and "trades" in frames:
            frames["trades"] = drop_stored(store.con, "trades", frames["trades"])
        if "trades" in frames and shaping.intervals:
            candle_rows = candles_multi(frames["trades"], shaping.intervals)
    result = BatchResult(
        stream=unit.stream.name,
        kind=unit.stream.kind,
        cursor=unit.cursor,
        file=unit.file,
        lines=unit.lines,
        nbytes=unit.bytes,
        rejects=unit.rejects,
        gaps=unit.gaps,
        est_line_bytes=line_bytes,
        last_time=last,  # type: ignore[arg-type]
        first_time=first,  # type: ignore[arg-type]
        silences=silences,
    )
    merged = store.commit(result, frames, candle_rows)
    return result, frames, merged


def find_silences(times: pl.Series, stall_after_s: float) -> list[tuple[datetime, datetime]]:
    """(before, after) pairs of consecutive event times further apart than `stall_after_s`."""
    t = times.drop_nulls().sort()
    if t.len() < 2:
        return []
    frame = pl.DataFrame({"to": t}).with_columns(pl.col("to").shift(1).alias("from"))
    far = frame.filter((pl.col("to") - pl.col("from")) > timedelta(seconds=stall_after_s))
    return list(zip(far["from"].to_list(), far["to"].to_list(), strict=True))
