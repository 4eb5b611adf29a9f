"""The ingest loop: startup -> (lanes run) -> shutdown.

Each stream runs in its own lane (etl/lanes.py): tail, parse, shape, commit and publish on
a thread of its own, concurrently with the other streams. `watchfiles` (or polling) wakes
the lane whose files changed; the lake's sealer runs on a thread beside them.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import duckdb
import orjson
from watchfiles import watch

from etl.config import Settings, lake_root
from etl.diskspace import DiskAlarm
from etl.filters import RulesFile
from etl.gate import Gate
from etl.identity import bind_node, claim_lake, default_lake
from etl.lake import Lake
from etl.lanes import Lane, Listener, Processed, dedup_for
from etl.nodefiles import wait_for_dir
from etl.shaping import find_silences, shape
from etl.store import BatchResult, Store, utcnow
from etl.tail import discover, initial_cursor
from etl.units import Unit

log = logging.getLogger("nodetap.pipeline")

__all__ = ["Pipeline", "Processed", "Shaping", "commit_unit", "find_silences", "rules_file_for"]


@dataclass
class Shaping:
    """What happens to parsed rows before they are stored: the orders filter, the candles."""

    rules: RulesFile | None = None
    intervals: tuple[str, ...] = ()


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
        s = self.settings
        bind_node(self.store.con, s.db, s.node_dir)  # refuses another node's database
        self.lake_root = claim_lake(self.store.con, s.db, lake_root(s) if str(s.lake_dir) not in (
            "", ".") else default_lake(self.store.con, s.db))  # refuses another database's lake
        self.lake().refresh_views()  # history.* views exist from the first start
        self.states: dict[str, Lane] = {}
        self.stop_event = threading.Event()
        self.disk_alarm = DiskAlarm()  # one disk_full error for all lanes
        self.gate = Gate()  # order statuses give way to fills and trades
        self._last_status_write = float("-inf")
        self._running = False
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
            lane = Lane(stream, self.store.for_thread(), s, cur, rules=self.rules,
                        listeners=self.listeners, clock=self.clock,
                        index=self.store.file_index(stream.name, cur.file), alarm=self.disk_alarm,
                        gate=self.gate)
            self.states[stream.name] = lane
            log.info("event=stream_start stream=%s file=%s offset=%d resumed=%s workers=%d",
                     stream.name, cur.file, cur.offset, stream.name in stored, lane.workers)
            if self._running:
                lane.start()

    # --------------------------------------------------------------- tick
    def run_once(self, max_batches: int = 1_000_000) -> int:
        """Drain every stream, the lanes side by side; returns the units committed."""
        self.refresh_streams()
        lanes = list(self.states.values())
        done = [0] * len(lanes)
        errors: list[BaseException] = []

        def drain(i: int, lane: Lane) -> None:
            try:
                done[i] = lane.drain(max_batches)
            except BaseException as err:  # re-raised on the calling thread
                errors.append(err)

        threads = [threading.Thread(target=drain, args=(i, lane), name=f"nodetap-drain-{lane.stream.name}")
                   for i, lane in enumerate(lanes)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        if errors:
            raise errors[0]
        self.write_status_file()
        return sum(done)

    def flush(self) -> None:
        """Commit the rows held back for a whole row group (at shutdown)."""
        for lane in self.states.values():
            lane.flush()

    # --------------------------------------------------------------- loop
    def _wakeups(self) -> Iterator[set[tuple[Any, str]]]:
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
        """Run the lanes until `stop_event` is set; each finishes and commits its unit in flight."""
        log.info("event=pipeline_start node_dir=%s db=%s", self.settings.node_dir, self.settings.db)
        self.write_status_file(force=True)  # `nodetap status` works from the start
        sealer = threading.Thread(target=self._seal_loop, name="nodetap-seal", daemon=True)
        sealer.start()
        self._running = True
        for lane in self.states.values():
            lane.start()
        roots = {}
        try:
            for changes in self._wakeups():
                if self.stop_event.is_set():
                    break
                try:
                    self.refresh_streams()
                except duckdb.Error as err:  # e.g. a full disk: the lanes pause, retry, reopen
                    log.debug("event=refresh_streams_error error=%r", str(err))
                roots = {str(lane.stream.root.parent): lane for lane in self.states.values()}
                woken = {lane for _, path in changes for root, lane in roots.items()
                         if path.startswith(root)} if changes else set(self.states.values())
                for lane in woken:
                    lane.wake.set()
                self.write_status_file()
        finally:
            self.stop()
            for lane in self.states.values():
                if lane.thread is not None:
                    lane.thread.join(timeout=30)
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
        for lane in self.states.values():
            lane.stop_event.set()
            lane.wake.set()

    def close(self) -> None:
        """Commit what is held back, then stop the parse workers; a unit read but not
        committed is read again on the next start."""
        self.stop()
        for lane in self.states.values():
            if lane.thread is not None and lane.thread.is_alive():
                lane.thread.join(timeout=30)
            lane.flush()
            lane.close()

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
    store: Store, unit: Unit, shaping: Shaping | None = None, line_bytes: float = 480.0
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
    candles = None
    if shaped.candles is not None and shaped.candles.height:
        candles = merge_candles(store.stored_candles(shaped.candles), shaped.candles)
    store.commit(result, shaped.rows, candles, shaped.trade_users)
    return result, shaped.rows, candles
