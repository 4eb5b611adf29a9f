"""The ingest loop: startup (`open`) -> lanes run (`run`, or `start` for a thread of its own)
-> shutdown (`stop`, the one shutdown order for `ingest`, `serve` and tests).

Each stream runs in its own lane (etl/lanes.py): tail, parse, shape, commit and publish on
a thread of its own, concurrently with the other streams. `watchfiles` (or polling) wakes
the lane whose files changed, and each wake-up checks the rules file; the lake's sealer runs
on a thread beside them and reports its health (`sealer_health`). `snapshot()` is every
stream's status (etl/status.py).
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import duckdb
import orjson
from watchfiles import watch

from etl.config import Settings, lake_root
from etl.diskspace import DiskAlarm
from etl.filters import RulesFile
from etl.gate import Gate
from etl.hourfiles import hour_files, size_of
from etl.identity import bind_node, claim_lake, default_lake
from etl.lake import Lake
from etl.lanes import Lane, Listener, Processed
from etl.nodefiles import wait_for_dir
from etl.prefilter import prepare
from etl.status import (
    LANE_DIED,
    ArrivalMeter,
    SealerHealth,
    StreamStatus,
    catching_up_bytes,
    lane_statuses,
    status_document,
    status_rows,
    stored_snapshot,
)
from etl.store import Store
from etl.tail import discover, initial_cursor, start_floor

log = logging.getLogger("nodetap.pipeline")

SHUTDOWN_TIMEOUT_S = 30.0  # for the lanes to commit their unit in flight and the sealer its hour

__all__ = ["Pipeline", "Processed", "Shaping", "rules_file_for"]  # Processed: what listeners get


@dataclass
class Shaping:
    """What happens to parsed rows before they are stored: the orders filter, the candles."""

    rules: RulesFile | None = None
    intervals: tuple[str, ...] = ()


@dataclass
class Pipeline:
    """startup (`open`) -> lanes run (`run`, or `start` for a thread of its own) -> shutdown
    (`stop`). Constructing one opens nothing and starts nothing."""

    settings: Settings
    store: Store
    listeners: list[Listener] = field(default_factory=list)
    clock: Callable[[], float] = time.monotonic  # intervals: rates, ages
    rules: RulesFile | None = None
    wall_clock: Callable[[], float] = time.time  # epoch seconds: lag behind events, archives

    def __post_init__(self) -> None:
        self.states: dict[str, Lane] = {}
        self.stop_event = threading.Event()
        self.disk_alarm = DiskAlarm()  # one disk_full error for all lanes
        self.gate = Gate()  # order statuses give way to fills and trades
        self._lake_root: Path | None = None
        self._lake: Lake | None = None
        self._open_lock = threading.Lock()
        self._last_status_write = float("-inf")
        self._meters: dict[str, ArrivalMeter] = {}
        self._thread: threading.Thread | None = None  # start()'s
        self._running = False  # the loop runs (or start() is starting it)
        self._lanes_started = False
        self._sealer: threading.Thread | None = None
        self._sealer_error: str | None = None
        self._last_sealed_hour: str | None = None
        self._close_lock = threading.Lock()
        self._closed = False
        self._clean = False  # every lane stopped in time
        self._stop_timeout = SHUTDOWN_TIMEOUT_S
        self._stopped = threading.Event()  # set when the shutdown is done
        # when the database first looked for streams, for one seen after that (initial_cursor)
        self._first_start: float | None = None
        self._first_from = self.settings.start_from  # that run's start_from

    # ------------------------------------------------------------ startup
    def open(self) -> None:
        """Check that the database is this node's and the lake this database's, create the
        history views, find the streams. Idempotent: `start`, `run`, `run_once` and `lake`
        call it."""
        with self._open_lock:
            if self._lake_root is None:
                if self.rules is None:
                    self.rules = rules_file_for(self.settings)
                s = self.settings
                bind_node(self.store.con, s.db, s.node_dir)  # refuses another node's database
                self._lake_root = claim_lake(self.store.con, s.db, lake_root(s) if str(s.lake_dir) not in (
                    "", ".") else default_lake(self.store.con, s.db))  # refuses another database's lake
        self.lake()  # history.* views exist from the first start
        self.refresh_streams()

    @property
    def lake_root(self) -> Path:
        """The lake this database claimed (opens the pipeline if it is not open yet)."""
        if self._lake_root is None:
            self.open()
        assert self._lake_root is not None
        return self._lake_root

    def refresh_streams(self) -> None:
        """Pick up stream directories that appeared since the last look (at every wake-up: the
        database is asked for cursors only when one did)."""
        s = self.settings
        if self._first_start is None:  # this run's first look
            self._first_start, self._first_from, fresh = self.store.first_start(self.wall_clock(),
                                                                               s.start_from)
            since = None if fresh else self._first_start
        else:
            since = self._first_start
        # a stream seen for the first time starts where the database's first run said (`--from`
        # is a first run's setting): with `end`, a stream seen after that run's first look at
        # its first file written to since (initial_cursor)
        start_from = self._first_from
        new = [stream for stream in discover(s.node_dir, s.streams) if stream.name not in self.states]
        stored = self.store.cursors() if new else {}
        for stream in new:
            cur = stored.get(stream.name)
            if cur is None:
                # kept at once: a run that stops before the stream's first commit resumes here
                cur = initial_cursor(stream, start_from, since)
                self.store.start_cursor(stream.name, stream.kind, cur)
            if stream.kind == "orders":
                prepare()  # the byte scan, loaded before the first batch
            # the floor: files before it are not read (`--from 20300101` skips every file before)
            floor = cur.file or start_floor(start_from)
            lane = Lane(stream, self.store.for_thread(), s, cur, rules=self.rules,
                        listeners=self.listeners, clock=self.clock,
                        index=self.store.file_index(stream.name, floor), alarm=self.disk_alarm,
                        gate=self.gate)
            self.states[stream.name] = lane
            log.info("event=stream_start stream=%s file=%s offset=%d resumed=%s workers=%d",
                     stream.name, cur.file, cur.offset, stream.name in stored, lane.workers)
            if stream.name not in stored and not cur.file and floor and hour_files(stream.root):
                log.info("event=start_after_files stream=%s from=%s files_before=%d (no hour file at or "
                         "after --from yet: none of these is read; the first one at or after it is)",
                         stream.name, floor, len(hour_files(stream.root)))
            if stream.name not in stored and start_from == "end" and cur.file and since is None:
                before = hour_files(stream.root)
                older = before[:before.index(cur.file)] if cur.file in before else []
                if older or cur.offset:
                    log.info("event=start_at_end stream=%s files_before=%d bytes_before=%d (a first "
                             "run reads new lines only, --from end by default: --from start reads "
                             "the files already there, or `nodetap backfill` them)", stream.name,
                             len(older), cur.offset + sum(size_of(stream.root / f) for f in older))
            if self._lanes_started:
                lane.start()

    # --------------------------------------------------------------- tick
    def run_once(self, max_batches: int = 1_000_000) -> int:
        """Drain every stream, the lanes side by side; returns the units committed."""
        self.open()
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

    def run_to_end(self) -> int:
        """`run_once`, then, while a stream waits on an unterminated last line of an hour file
        the node has left, wait out `rotate_grace_s` and run again: what `ingest --once` reads
        is then all a longer run would read of those files. Returns the units committed."""
        done = self.run_once()
        for _ in range(3):  # one round settles a wait; bounded whatever happens to the files meanwhile
            waits = [w for lane in self.states.values() if (w := lane.tailer.rotation_wait_s()) is not None]
            if not waits or self.stop_event.is_set():
                break
            self.stop_event.wait(max(waits) + 0.01)
            done += self.run_once()
        return done

    def flush(self) -> None:
        """Commit the rows held back for a whole row group (at shutdown)."""
        for lane in self.states.values():
            lane.flush()

    # --------------------------------------------------------------- loop
    def _wakeups(self) -> Iterator[set[tuple[Any, str]]]:
        s = self.settings
        if not wait_for_dir(s.node_dir, self.stop_event):
            return
        bind_node(self.store.con, s.db, s.node_dir)  # unbound while it did not exist
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

    def start(self) -> None:
        """Open, then run the lanes on a thread of the pipeline's own until `stop`."""
        if self._thread is not None:
            raise RuntimeError("the pipeline was started already; a stopped one cannot start again")
        self.open()
        self._running = True
        self._thread = threading.Thread(target=self.run, name="nodetap-pipeline", daemon=True)
        self._thread.start()

    @property
    def alive(self) -> bool:
        """True while the ingest loop runs (started and not stopped or crashed) and every lane
        with it."""
        return self._running and not self.dead_lanes()

    def dead_lanes(self) -> list[str]:
        """Streams whose lane thread ended of an unexpected error (logged as `event=lane_error`)
        while the pipeline runs: that stream is no longer read."""
        if not self._running:
            return []
        return sorted(name for name, lane in self.states.items()
                      if lane.thread is not None and not lane.thread.is_alive()
                      and not lane.stop_event.is_set())

    def run(self) -> None:
        """Run the lanes until `stop_event` is set, then shut down (`stop`'s order): each lane
        finishes and commits its unit in flight."""
        self._running = True
        try:
            self.open()
            if self._closed:  # stopped before it ran
                return
            log.info("event=pipeline_start node_dir=%s db=%s", self.settings.node_dir, self.settings.db)
            self.write_status_file(force=True)  # `nodetap status` works from the start
            self._sealer = threading.Thread(target=self._seal_loop, name="nodetap-seal", daemon=True)
            self._sealer.start()
            self._lanes_started = True
            for lane in list(self.states.values()):
                if lane.thread is None:
                    lane.start()
            for changes in self._wakeups():
                if self.stop_event.is_set():
                    break
                try:
                    self._tick(changes)
                except duckdb.OutOfMemoryException as err:  # SQL queries hold DuckDB's memory
                    log.warning("event=tick_out_of_memory error=%r (tried again at the next "
                                "wake-up; if this lasts, raise db_memory_limit)",
                                str(err).splitlines()[0][:200])
        except Exception:
            log.exception("event=pipeline_error (the lanes stop; /healthz says so)")
            raise
        finally:
            self._running = False
            self._shutdown(self._stop_timeout)

    def _tick(self, changes: set[tuple[Any, str]]) -> None:
        """One wake-up: new streams, a changed rules file, the lanes whose files changed."""
        if self.rules is not None:
            self.rules.check()  # a bad edit is reported now, not when the next order batch comes
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

    # ------------------------------------------------------------- shutdown
    def stop(self, timeout: float = SHUTDOWN_TIMEOUT_S) -> bool:
        """Stop the lanes and the sealer, commit the rows held back, stop the parse workers and
        write the status file; the one shutdown order, whoever runs the loop. A unit read but
        not committed is read again on the next start. True when all stopped within `timeout`
        seconds; the store stays open (its owner closes it)."""
        self._stop_timeout = timeout
        self._signal_stop()
        if self._thread is not None:
            self._thread.join(timeout)
            if self._thread.is_alive():
                log.warning("event=pipeline_stop_timeout timeout_s=%g", timeout)
                return False
        elif self._running and not self._stopped.wait(timeout):  # run() on a caller's thread
            log.warning("event=pipeline_stop_timeout timeout_s=%g", timeout)
            return False
        return self._shutdown(timeout)  # nothing left to do when run() has shut down

    def close(self) -> None:
        """`stop()` (for a pipeline used through `run_once`)."""
        self.stop()

    def _signal_stop(self) -> None:
        self.stop_event.set()
        for lane in list(self.states.values()):
            lane.stop_event.set()
            lane.wake.set()

    def _shutdown(self, timeout: float) -> bool:
        with self._close_lock:
            if not self._closed:
                try:
                    self._clean = self._shutdown_once(timeout)
                finally:
                    self._closed = True
                    self._stopped.set()
            return self._clean

    def _shutdown_once(self, timeout: float) -> bool:
        self._signal_stop()
        deadline = time.monotonic() + timeout
        lanes = list(self.states.values())
        for lane in lanes:
            if lane.thread is not None:
                lane.thread.join(max(0.0, deadline - time.monotonic()))
        if self._sealer is not None:
            self._sealer.join(max(0.0, deadline - time.monotonic()))
        clean = True
        for lane in lanes:
            if lane.thread is not None and lane.thread.is_alive():  # its unit is read again next start
                log.warning("event=lane_stop_timeout stream=%s timeout_s=%g", lane.stream.name, timeout)
                clean = False
                continue
            try:
                lane.flush()
            finally:
                lane.close()
        self.write_status_file(force=True)
        log.info("event=pipeline_stop clean=%s", clean)
        return clean

    # ---------------------------------------------------------------- lake
    def lake(self) -> Lake:
        """The Parquet lake, on a DuckDB cursor of its own (so it can work beside ingestion);
        made once, and again after a database error."""
        if self._lake is None:
            s = self.settings
            self._lake = Lake(self.store.con.cursor(), self.lake_root, grace_s=s.seal_grace_s,
                              retain_hours=s.retain_hours or None, writers=self.store.writers)
        return self._lake

    def _seal_loop(self) -> None:
        """Seal complete hours every `seal_interval_s`. A database or disk error is retried
        next round; anything else stops the sealer, visibly (`sealer_health`)."""
        try:
            with contextlib.suppress(duckdb.Error, OSError):
                self._last_sealed_hour = self._newest_sealed_hour()
            while not self.stop_event.wait(self.settings.seal_interval_s):
                try:
                    self.lake().seal()
                    self._last_sealed_hour = self._newest_sealed_hour()
                    self._sealer_error = None
                except (duckdb.Error, OSError) as err:  # a write conflict, a full disk: next round
                    self._lake = None  # on a fresh cursor (the database may have been reopened)
                    self._sealer_error = f"{type(err).__name__}: {err}"
                    log.warning("event=lake_seal_error error=%r", str(err))
        except Exception as err:  # a bug: say so everywhere instead of dying quietly
            self._sealer_error = f"{type(err).__name__}: {err}"
            log.exception("event=sealer_died error=%r (complete hours are no longer sealed into "
                          "the lake; restart nodetap)", self._sealer_error)

    def _newest_sealed_hour(self) -> str | None:
        # fetchall: a result left unread keeps its transaction open, and with it every row
        # version committed since (memory; checkpoints wait)
        ((hour,),) = self.lake().con.execute("SELECT max(hour) FROM lake_hours WHERE NOT dirty").fetchall()
        return hour.isoformat() if hour is not None else None

    def sealer_health(self) -> SealerHealth:
        return SealerHealth(alive=self._sealer is not None and self._sealer.is_alive(),
                            last_error=self._sealer_error, last_sealed_hour=self._last_sealed_hour)

    # ------------------------------------------------------------- status
    def snapshot(self) -> list[StreamStatus]:
        """Every stream's status now: its files are stat'ed, its counters read (etl/status.py)."""
        stored: dict[str, dict[str, Any]] = {str(r["stream"]): r for r in self.store.status()}
        lanes = sorted(dict(self.states).items())
        live = lane_statuses(lanes, stored, self._meters, now=self.clock(), wall=self.wall_clock(),
                             settings=self.settings)
        dead = set(self.dead_lanes())
        live = [replace(st, mode="stopped", stopped_reason=LANE_DIED) if st.stream in dead
                else st for st in live]
        # streams stored without a lane now (`backfill:*`, another variant read before)
        rest = [r for name, r in stored.items() if name not in self.states]
        return sorted(live + stored_snapshot(rest, self.settings.node_dir, self.wall_clock(),
                                             catching_up_bytes(self.settings)), key=lambda st: st.stream)

    def write_status_file(self, force: bool = False) -> None:
        """A JSON copy of `snapshot()` beside the DB, for `nodetap status` while we hold the lock."""
        now = self.clock()
        if not force and now - self._last_status_write < 1.0:
            return
        self._last_status_write = now
        path = status_file(self.settings.db)
        tmp = path.with_suffix(".tmp")
        try:
            doc = status_document(status_rows(self.snapshot()), self.wall_clock(), self.settings.node_dir)
            tmp.write_bytes(orjson.dumps(doc, option=orjson.OPT_INDENT_2))
            os.replace(tmp, path)
        except (OSError, duckdb.Error) as err:  # e.g. a full disk: the status file is a convenience
            log.debug("event=status_file_error error=%r", str(err))


def status_file(db: Path) -> Path:
    return db.with_name(db.name + ".status.json")


def rules_file_for(s: Settings) -> RulesFile:
    """The orders filter the settings ask for: a missing default rules file means the defaults
    until it is written (by `PUT /v1/rules`) or created; an empty setting, no file at all."""
    path: Path | None = s.rules_file if str(s.rules_file) not in ("", ".") else None
    if path is not None and not path.exists():
        if path != Settings().rules_file:
            raise FileNotFoundError(f"rules file {path} does not exist (setting rules_file)")
        log.warning("event=rules_default reason=missing_file path=%s (the bundled rules of data/rules.toml; "
                    "PUT /v1/rules writes this file)", path)
        return RulesFile(path, keep_all=s.keep_all, missing_ok=True)
    return RulesFile(path, keep_all=s.keep_all)
