"""One lane per stream: tail -> parse -> shape -> commit -> publish, on a thread of its own.

Lanes run concurrently, each on its own DuckDB connection, so trades never wait behind order
statuses and no stream starves another. Within a lane, units commit one at a time and in
order, each with the cursor just after its last line: exactly-once holds per lane.

Memory is bounded by construction: a lane holds at most `parse_workers` units being parsed,
`commit_units` being committed (one, unless order statuses commit side by side, below) and one
`carry` (rows held back to fill a whole row group), each from at most `batch_max_bytes` of the
node's files. An order-status lane on more than one core whose
rules pre-filter parses `PREFILTER_UNITS` (2) at once when `parse_workers` is left to its
default: each such unit holds its batch and the rows the rules keep, not a whole decoded batch,
and no more than `parse_workers` units decode a batch whole at once (`OrdersFilter`).

Batching is latency-first. A lane that is caught up reads what is new, capped at what it can
process in `live_batch_ms`, and publishes each unit as soon as it has committed it. A lane
that is behind reads `batch_max_bytes` at a time, parses several units in parallel where
there are cores for it, and commits whole DuckDB row groups. Its units decoded whole (keep-all,
or rules that do not pre-filter) commit many rows, which keeps the lane's thread busy: it then
only finds where a batch's lines end, and the parse worker reads the bytes (`Batch.loaded`;
each batch read ahead holds its file open until then). Keep-all on 2 cores, seven alternating
pairs: a median of 638K against 582K lines/s (518–644K against 546–658K; five pairs of seven).

An order-status lane that is behind commits up to `commit_units` whole row groups side by side
(`SideBySide`), each in a transaction of its own on a connection of its own: DuckDB compresses
a row group on one thread, which bounds a lane that commits one unit at a time to ~0.9 M rows/s
whatever the cores. Each transaction commits only once the one before it has, so a unit is
never stored without those before it; its cursor goes to `cursor_log` (two transactions that
update the one `cursors` row conflict in DuckDB even one after the other), folded into
`cursors` and `file_cursors` once it committed, and on the next start after a stop. A unit that
fails side by side, and those after it, roll back and commit again alone, in order.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime

import duckdb
import polars as pl

from etl import priority
from etl.candles import LatestCandles
from etl.candles import merge as merge_candles
from etl.columns import DEFAULT_LINE_BYTES
from etl.config import Settings
from etl.dedup import Rewinds, drop_stored
from etl.diskspace import DiskAlarm, DiskFullError, DiskGuard
from etl.faults import fault_point
from etl.filecursors import FileCursor
from etl.filters import Rules, RulesFile
from etl.gate import Gate
from etl.malloc import relieve
from etl.nodefiles import FileIndex
from etl.parse import cores
from etl.prefilter import OrdersFilter
from etl.rejectlog import RejectsLog
from etl.shaping import MAKER_MEMORY, Shaped, TradeMatcher, shape
from etl.status import catching_up_bytes
from etl.store import BatchResult, Store
from etl.tail import REREAD, Batch, Cursor, Stream, Tailer
from etl.units import ROW_GROUP, Unit, can_merge, merge, split_whole_row_groups, unit_of

log = logging.getLogger("nodetap.lanes")

MIN_LIVE_BATCH = 256 << 10
MAX_MOVES_AHEAD = 8  # batches without lines read ahead beyond the parse limit
# with the default `parse_workers`, an order-status lane that pre-filters parses at least this
# many units at once while behind: such a unit holds its batch and the few rows the rules keep,
# a fraction of a decoded unit's memory, and a second one uses the core the first leaves idle
# (2 cores: 1.19–1.29M against 1.07–1.16M lines/s, peak RSS ~720 against ~600 MB)
PREFILTER_UNITS = 2
# an order-status unit of at least this many rows commits side by side with the ones before it
# (`commit_units`): DuckDB compresses a whole row group while the rows are inserted, on a thread
# of its own; a smaller unit goes through the write-ahead log at COMMIT, which runs in order
SIDE_BY_SIDE_ROWS = ROW_GROUP
COMMIT_RETRIES = 20  # a commit that conflicts with the lake's sealer is tried again
CANDLES_HELD_MS = 24 * 3_600_000  # `LatestCandles` starts from the candles of the last day


@dataclass
class Processed:
    """One committed unit, as handed to subscribers (the API's live feed)."""

    stream: Stream
    frames: dict[str, pl.DataFrame]  # orders (kept by the rules) | fills + trades | trades
    candles: pl.DataFrame | None  # the new state of every candle the unit touched
    result: BatchResult | None  # None for trades released after waiting for their maker
    seconds: float


Listener = Callable[[Processed], None]


def default_parse_workers() -> int:
    """Units parsed at once by a lane that is behind: one per two cores, at least one."""
    return max(1, min(8, cores() // 2))


def default_commit_units() -> int:
    """Units an order-status lane commits side by side while behind: one per four cores, at
    least one (DuckDB compresses a unit's row group on one thread; `db_threads` per four
    cores as well, since a side-by-side commit needs a second DuckDB thread to compress on)."""
    return max(1, min(8, cores() // 4))


@dataclass
class SideBySide:
    """A unit committed side by side with the ones before it, on a connection of its own: its
    transaction commits only once the one before it has (`before`), so that a unit is never
    stored without all the units before it, and fails when that one failed."""

    unit: Unit
    result: BatchResult
    shaped: Shaped
    t0: float
    seq: int
    view: Store
    before: SideBySide | None
    done: threading.Event
    future: Future[None] | None = None
    committed: bool = False  # stored (or found stored already) and its cursor in `cursor_log`
    stored: bool = False  # its transaction wrote a `cursor_log` entry
    error: BaseException | None = None


def dedup_for(store: Store, unit: Unit) -> Callable[[str, pl.DataFrame], pl.DataFrame] | None:
    """For a file read again, the function dropping rows stored before (by identity key,
    etl/dedup.py); None for a file read once."""
    if (any(g.reason in REREAD for g in unit.gaps)
            or store.files.rechecking(unit.stream.name, unit.file)):
        return lambda table, frame: drop_stored(store.con, table, frame)
    return None


def rewinds_for(store: Store, unit: Unit, watermark: datetime | None
                ) -> Callable[[str, pl.DataFrame], pl.DataFrame]:
    """For a unit read outside a lane (backfill), the function dropping its rows at or before
    `watermark` that are stored already (`Rewinds`, asking the store each time): an archive
    older than what ingestion stored, or one holding events a restarted node wrote again."""
    rewinds = Rewinds(unit.stream.name, unit.stream.kind, watermark, log_rewinds=False)
    return lambda table, frame: rewinds.drop(store.con, table, frame, watermark)


class MemoryFullError(RuntimeError):
    """Ingestion stopped while waiting for DuckDB memory; the unit is read again on the next start."""


class MemoryWait:
    """A commit that ran out of DuckDB's memory (`db_memory_limit`, which SQL queries and
    exports share) waits and is tried again, instead of ending the lane: the transaction
    stored nothing, so the same unit commits later, exactly once. Before each wait the store
    asks the API to interrupt its reads (`Store.relieve_memory`): ingestion comes first, and
    a reader gets a 503 that says so. One warning says what happened; one more every
    `LOG_EVERY_S` while it lasts (a `db_memory_limit` too small for one batch never passes:
    the warning names the settings), and one when the commit went through."""

    LOG_EVERY_S = 60.0
    MAX_PAUSE_S = 1.0

    def __init__(self, lane: Lane) -> None:
        self.lane = lane
        self.tries = 0
        self.started = 0.0
        self.logged = float("-inf")

    def wait(self, err: duckdb.OutOfMemoryException) -> None:
        lane = self.lane
        now = time.monotonic()
        if not self.tries:
            self.started = now
        self.tries += 1
        lane.memory_waits += 1
        relieved = lane.store.relieve_memory()
        if now - self.logged >= self.LOG_EVERY_S:
            self.logged = now
            log.warning(
                "event=commit_out_of_memory stream=%s tries=%d waited_s=%.1f reads_interrupted=%d "
                "error=%r (nothing lost: the batch is committed again once memory is free; if this "
                "lasts, raise db_memory_limit or lower batch_max_bytes)", lane.stream.name,
                self.tries, now - self.started, relieved, str(err).splitlines()[0][:200])
        if lane.stop_event.wait(min(self.MAX_PAUSE_S, 0.05 * 2 ** min(self.tries - 1, 5))):
            raise MemoryFullError(f"stopped while {lane.stream.name} waited for memory") from err

    def done(self) -> None:
        if self.tries:
            log.warning("event=commit_memory_back stream=%s tries=%d waited_s=%.1f",
                        self.lane.stream.name, self.tries, time.monotonic() - self.started)


class Lane:
    """A stream's lane. `drain` commits until the stream has nothing new; `run` drains on
    every wake-up until `stop` is set."""

    def __init__(self, stream: Stream, store: Store, settings: Settings, cursor: Cursor, *,
                 rules: RulesFile | None, listeners: list[Listener],
                 clock: Callable[[], float] = time.monotonic, index: FileIndex | None = None,
                 alarm: DiskAlarm | None = None, gate: Gate | None = None) -> None:
        s = settings
        self.stream = stream
        self.store = store  # this lane's own connection
        self.settings = settings
        self.rules = rules if stream.kind == "orders" else None
        self.listeners = listeners
        self.clock = clock
        self.urgent = stream.kind != "orders"
        self.tailer = Tailer(stream, batch_max_bytes=s.batch_max_bytes,
                             max_backlog_bytes=s.max_backlog_bytes if s.backlog == "drop" else None,
                             rotate_grace_s=s.rotate_grace_s, clock=clock, index=index)
        self.cursor = cursor  # committed: the first line not in the store
        self.read_cursor = cursor  # where the next read starts
        self._unread_after_read = 0  # bytes left behind the last batch read
        self.workers = s.parse_workers or default_parse_workers()
        # order statuses come last when the cores are short (etl/priority.py)
        self.nice = 0 if self.urgent else s.bulk_nice
        self._pool = ThreadPoolExecutor(self.workers, thread_name_prefix=f"nodetap-parse-{stream.kind}",
                                        initializer=priority.lower, initargs=(self.nice,))
        # more units in flight only where they can pre-filter on a core the first leaves idle,
        # on threads of their own (a batch decoded whole stays on `_pool`'s: a thread's
        # allocator keeps what it freed); the filter lets `workers` of them at most decode a
        # batch whole at once
        self.prefilter_units = (max(self.workers, PREFILTER_UNITS)
                                if stream.kind == "orders" and not s.parse_workers and cores() > 1
                                else self.workers)
        self._prefilter_pool = (ThreadPoolExecutor(self.prefilter_units,
                                                   thread_name_prefix=f"nodetap-prefilter-{stream.kind}",
                                                   initializer=priority.lower, initargs=(self.nice,))
                                if self.prefilter_units > self.workers else None)
        self._pending: deque[Future[Unit]] = deque()
        self._empty: set[Future[Unit]] = set()  # pending units of batches without lines
        self.carry: Unit | None = None  # rows read but held back to fill a whole row group
        # whole row groups of order statuses committed side by side while behind (SideBySide)
        self.commit_units = ((s.commit_units or default_commit_units()) if stream.kind == "orders" else 1)
        side = self.commit_units > 1
        self._committers: deque[Store] = deque(store.for_thread()
                                               for _ in range(self.commit_units if side else 0))
        self._commit_pool = (ThreadPoolExecutor(self.commit_units,
                                                thread_name_prefix=f"nodetap-commit-{stream.kind}",
                                                initializer=priority.lower, initargs=(self.nice,))
                             if side else None)
        self._inflight: deque[SideBySide] = deque()
        self._seq = 0
        self.orders_filter = OrdersFilter(whole_at_once=self.workers)
        self.watermark: datetime | None = store.last_time(stream.name)  # committed
        self._shaped_watermark = self.watermark  # with the units committing side by side
        self.rewinds = Rewinds(stream.name, stream.kind, self.watermark)
        self.matcher: TradeMatcher | None = None
        if stream.kind == "fills":
            self.matcher = TradeMatcher(clock=clock)
            if self.watermark is not None:
                self.matcher.seed(store.unmatched_makers(self.watermark - MAKER_MEMORY))
        self.wake = threading.Event()
        self.stop_event = threading.Event()
        # a full disk pauses commits (etl/diskspace.py); after a failed commit, no later unit
        # of this lane may commit (its rows would pass the failed one's)
        self.disk = DiskGuard(store, self.stop_event, alarm=alarm)
        # order statuses give way to fills and trades (etl/gate.py)
        self.gate = gate or Gate()
        if self.urgent:
            self.gate.urgent_lanes += 1
        self.halted = False
        self.thread: threading.Thread | None = None
        # counters, for status
        self.line_bytes = DEFAULT_LINE_BYTES  # running mean, to estimate skipped lines
        self.last_batch_at = 0.0
        self.rejects_log = RejectsLog(stream.name, clock)
        self.rate = 0.0  # lines/s while processing (capacity)
        self.bytes_per_s = 0.0  # bytes/s while processing
        self.behind = False
        self.memory_waits = 0  # commits that ran out of DuckDB memory and were tried again
        # the latest stored candle of each (coin, interval), for a lane that writes candles
        self.latest_candles: LatestCandles | None = None

    # ------------------------------------------------------------ reading
    def _live_batch_bytes(self) -> int:
        """What this lane can parse and commit in about `live_batch_ms`."""
        if not self.bytes_per_s:
            return self.settings.batch_max_bytes
        cap = int(self.bytes_per_s * self.settings.live_batch_ms / 1000)
        return max(MIN_LIVE_BATCH, min(self.settings.batch_max_bytes, cap))

    def _read_ahead(self) -> None:
        """Read the next batches (byte ranges, cheap) and hand them to the parse workers.

        A batch without lines (the cursor moving to the next hour file, past a gap) does not
        count against the limit: reading goes on past it, so that the parse workers do not wait
        for its commit at every new file (~50 ms a file on 2 cores, docs/benchmarks.md).

        Several units are parsed at once while behind, and also while a whole live batch more
        waits behind the last one read: the end of a backlog (the last 4 live batches, up to
        256 MiB) parses as fast as the rest of it."""
        waiting = self.behind or self._unread_after_read >= self._live_batch_bytes()
        limit = self._parse_limit() if waiting else 1
        # with more to read, a unit decoded whole keeps this thread busy committing its rows:
        # its bytes are read on the parse worker (while rules pre-filter, this thread has time
        # to spare: reading on the worker there gave 1,662–1,695K against 1,714–1,796K lines/s)
        self.tailer.defer_reads = waiting and not self._prefiltering()
        pool = self._prefilter_pool if limit > self.workers and self._prefilter_pool else self._pool
        with_lines = sum(1 for f in self._pending if f not in self._empty)
        while (with_lines < limit and len(self._pending) < limit + MAX_MOVES_AHEAD
               and not self.stop_event.is_set()):
            self.tailer.batch_max_bytes = (self.settings.batch_max_bytes if self.behind
                                           else self._live_batch_bytes())
            batch = self.tailer.next_batch(self.read_cursor)
            if batch is None:
                return
            self.read_cursor = batch.cursor
            self._unread_after_read = batch.unread
            rules = self.rules.rules if self.rules is not None else None
            future = pool.submit(self._parse, batch, rules)
            self._pending.append(future)
            if batch.has_lines:
                with_lines += 1
            else:
                self._empty.add(future)

    def _parse_limit(self) -> int:
        """Units parsed at once while behind: `workers`, or `prefilter_units` while the rules
        pre-filter (etl/prefilter.py)."""
        if self.prefilter_units > self.workers and self._prefiltering():
            return self.prefilter_units
        return self.workers

    def _prefiltering(self) -> bool:
        return self.rules is not None and self.orders_filter.prefiltering(self.rules.rules)

    def _parse(self, batch: Batch, rules: Rules | None) -> Unit:
        batch = batch.loaded()
        if self.urgent:
            unit = unit_of(batch, self.settings.max_line_bytes, rules, self.orders_filter)
        else:
            self.gate.give_way()
            unit = unit_of(batch, self.settings.max_line_bytes, rules, self.orders_filter, self.gate.budget())
        relieve()  # the batch's scratch buffers are free now (etl/malloc.py)
        return unit

    # --------------------------------------------------------------- tick
    def step(self) -> bool:
        """Commit the next unit; False when the stream had nothing new."""
        t0 = time.perf_counter()
        if self.rules is not None:
            self.rules.check()
        if not self._pending:
            self._read_ahead()
        if not self._pending:
            self.behind = False
            self._settle()
            if self.carry is not None:
                self._commit(self.carry, t0)
                self.carry = None
                return True
            return False
        future = self._pending.popleft()
        self._empty.discard(future)
        self._read_ahead()  # the next units parse while this one commits
        unit = future.result()
        if not self.urgent:
            self.gate.give_way()
        if self.carry is not None:
            if can_merge(self.carry, unit):
                unit = merge(self.carry, unit)
            else:
                self._commit(self.carry, t0)
            self.carry = None
        self.behind = unit.unread > 4 * self._live_batch_bytes()
        if unit.unread > catching_up_bytes(self.settings) and not self.stop_event.is_set():
            # behind: throughput first, whole row groups; otherwise publish every row at once
            unit, self.carry = split_whole_row_groups(unit)
        self._commit(unit, t0)
        return True

    def drain(self, max_batches: int = 1_000_000) -> int:
        """Commit until the stream has nothing new (or `stop`); returns the units committed."""
        done = 0
        while done < max_batches and not self.stop_event.is_set():
            if self.urgent and not self.behind:  # caught up: the order-status lane gives way
                with self.gate.urgent():
                    more = self.step()
            else:
                more = self.step()
            if not more:
                break
            done += 1
        self._settle()
        return done

    def _commit(self, unit: Unit, t0: float) -> None:
        if self.halted:
            return
        fault_point(f"lane_commit_{self.stream.kind}")
        dedup = dedup_for(self.store, unit)
        before = self._shaped_watermark

        def rewound(table: str, frame: pl.DataFrame) -> pl.DataFrame:
            return self.rewinds.drop(self.store.con, table, frame, before)

        shaped = shape(unit, rules=self.rules, intervals=self.settings.candle_intervals,
                       stall_after_s=self.settings.stall_after_s, watermark=before,
                       matcher=self.matcher, dedup=dedup or rewound)
        result = BatchResult(
            stream=unit.stream.name, kind=unit.stream.kind, cursor=unit.cursor, file=unit.file,
            lines=unit.lines, nbytes=unit.bytes, rejects=unit.rejects, gaps=unit.gaps,
            est_line_bytes=self.line_bytes, last_time=shaped.last_time,
            first_time=shaped.first_time,
            stalls=shaped.stalls, watermark_before=self._shaped_watermark)
        if shaped.last_time is not None and (self._shaped_watermark is None
                                             or shaped.last_time > self._shaped_watermark):
            self._shaped_watermark = shaped.last_time
        self.rewinds.remember(shaped.rows.get(self.stream.kind), self._shaped_watermark)
        if (self._commit_pool is not None and dedup is None and not unit.gaps and shaped.candles is None
                and shaped.trade_users is None and unit.unread > catching_up_bytes(self.settings)
                and sum(f.height for f in shaped.rows.values()) >= SIDE_BY_SIDE_ROWS):
            self._side_by_side(unit, result, shaped, t0)
            return
        self._settle()  # the units before this one commit first
        if not self.halted:
            self._commit_alone(unit, result, shaped, t0)

    def _commit_alone(self, unit: Unit, result: BatchResult, shaped: Shaped, t0: float) -> None:
        """Store a unit in a transaction of the lane's own, then publish it."""
        try:
            candles = self.disk.run(lambda: self._store(result, shaped))
        except BaseException as err:
            self._halt(unit, err)
            return
        self._committed(unit, result, shaped, candles, t0)

    def _halt(self, unit: Unit, err: BaseException) -> None:
        """No later unit of this lane may commit: its rows would pass the failed one's."""
        self.halted = True
        self.carry = None
        if isinstance(err, DiskFullError | MemoryFullError):  # stopped while paused: read again
            log.warning("event=stop_while_paused stream=%s file=%s reason=%r",
                        self.stream.name, unit.file, str(err))
            return
        raise err

    # ------------------------------------------------------ side by side
    def _side_by_side(self, unit: Unit, result: BatchResult, shaped: Shaped, t0: float) -> None:
        """Commit a whole row group of order statuses on a connection of its own while the units
        before it still commit: DuckDB compresses each transaction's row group on a thread of
        its own (`python -m etl.bench.appends`). At most `commit_units` at once."""
        assert self._commit_pool is not None
        while len(self._inflight) >= self.commit_units:
            self._settle_oldest()
        if self.halted:
            return
        view = self._committers.popleft()
        if view.generation != view._root.generation:  # the database was reopened since
            view.reconnect()
        self._seq += 1
        job = SideBySide(unit, result, shaped, t0, self._seq, view,
                         self._inflight[-1] if self._inflight else None, threading.Event())
        self._inflight.append(job)
        job.future = self._commit_pool.submit(self._side_commit, job)

    @staticmethod
    def _side_commit(job: SideBySide) -> None:
        """On a commit thread: write the unit, wait for the unit before it, then commit; roll
        back if that one did not commit or this one failed."""
        staged: dict[tuple[str, str], FileCursor] | None = None
        try:
            staged = job.view.stage(job.result, job.shaped.rows, job.seq)
            fault_point("side_by_side_staged")
            before, job.before = job.before, None  # no chain of units kept alive
            if before is not None:
                before.done.wait()
                if not before.committed:
                    raise RuntimeError(f"unit {before.seq} before this one did not commit")
            if staged is not None:
                job.view.finish()  # its file cursors are remembered by the fold (`_settle_oldest`)
                job.stored = True
            job.committed = True
        except BaseException as err:  # the lane commits it again alone, in order
            if staged is not None and not job.committed:
                job.view.abandon()
            job.error = err
        finally:
            job.done.set()

    def _settle_oldest(self) -> None:
        """Wait for the oldest unit committing side by side; publish it, or, when it failed,
        commit it and every unit after it again, alone and in order."""
        job = self._inflight.popleft()
        assert job.future is not None
        job.future.result()
        self._committers.append(job.view)
        if job.committed:
            if job.stored:  # its cursor into `cursors`, before any unit commits alone
                try:
                    self.disk.run(lambda: self.store.fold(self.stream.name))
                except BaseException as err:
                    self._halt(job.unit, err)
                    return
            self._committed(job.unit, job.result, job.shaped, None, job.t0)
            return
        if not isinstance(job.error, duckdb.TransactionException | duckdb.OutOfMemoryException):
            log.warning("event=side_by_side_failed stream=%s seq=%d error=%s: %r (committed again alone)",
                        self.stream.name, job.seq, type(job.error).__name__,
                        str(job.error).splitlines()[0][:200])
        # the units after it roll back (they wait for it): let them, then commit all alone
        rest = [job, *self._inflight]
        for later in self._inflight:
            assert later.future is not None
            later.future.result()
            self._committers.append(later.view)
        self._inflight.clear()
        for unit_job in rest:
            if self.halted:
                return
            if unit_job.committed:  # found stored already: nothing to write
                self._committed(unit_job.unit, unit_job.result, unit_job.shaped, None, unit_job.t0)
            else:
                self._commit_alone(unit_job.unit, unit_job.result, unit_job.shaped, unit_job.t0)

    def _settle(self) -> None:
        """Every unit committing side by side committed and published (or committed again)."""
        while self._inflight:
            self._settle_oldest()

    def _committed(self, unit: Unit, result: BatchResult, shaped: Shaped, candles: pl.DataFrame | None,
                   t0: float) -> None:
        """A unit is stored: move the lane on and publish it."""
        seconds = time.perf_counter() - t0
        self.cursor = unit.cursor
        if shaped.last_time is not None and (self.watermark is None or shaped.last_time > self.watermark):
            self.watermark = shaped.last_time
        self._account(result, unit, seconds)
        frames = dict(shaped.rows)
        if shaped.live_trades is not None:
            frames["trades"] = shaped.live_trades
        self._publish(Processed(self.stream, frames, candles, result, seconds))

    def _store(self, result: BatchResult, shaped: Shaped) -> pl.DataFrame | None:
        """Merge the unit's candles with the stored ones and commit everything, retrying a
        transaction that conflicts with the lake's sealer or another lane writing candles, and
        one that ran out of memory."""
        conflicts = 0
        memory = MemoryWait(self)
        new = shaped.candles if shaped.candles is not None and shaped.candles.height else None
        merged: list[pl.DataFrame] = []

        def candles_in_commit() -> pl.DataFrame:  # read and written in one transaction
            assert new is not None
            merged.append(merge_candles(self._stored_candles(new), new))
            return merged[-1]

        while True:
            merged.clear()
            try:
                written = self.store.commit(result, shaped.rows, None if new is None else candles_in_commit,
                                            shaped.trade_users)
            except (duckdb.TransactionException, duckdb.ConstraintException) as err:
                # a conflict with the sealer or another candle lane; or that lane stored a
                # candle this unit read as new (its key taken: a constraint error)
                conflicts += 1
                if conflicts == COMMIT_RETRIES:
                    raise
                log.info("event=commit_conflict stream=%s attempt=%d error=%r",
                         self.stream.name, conflicts, str(err))
                self.stop_event.wait(0.01 * conflicts)
                continue
            except duckdb.OutOfMemoryException as err:
                memory.wait(err)  # nothing was stored: the same unit is committed again
                continue
            memory.done()
            candles = merged[-1] if merged else None
            if self.latest_candles is not None and not written:
                # stored already by an attempt reported failed (disk full after its COMMIT),
                # whose candles were not taken in here: read them again
                self.latest_candles = None
            elif self.latest_candles is not None and candles is not None:
                self.latest_candles.committed(candles)
            return candles

    def _stored_candles(self, keys: pl.DataFrame) -> pl.DataFrame:
        """The stored candles with the keys of `keys`, mostly from `latest_candles`, which is
        read from the database at the first unit with candles: the candles of the last day
        (of the stream's watermark) or, with no watermark yet, all of them; only those closing
        after the latest hour the lake pruned (a pair's newest candle may be in the lake only).

        Held candles stand for the stored ones only while this lane is the one writer of
        candles: with a fills and a trades lane (both chosen in `streams`, or a second variant
        of fills found while running; each registers with the gate as urgent), every unit
        asks the database, as before candles were held."""
        if self.gate.urgent_lanes > 1:
            self.latest_candles = None
            return self.store.stored_candles(keys)
        if self.latest_candles is None:
            bounds = [self.store.pruned_candles_until_ms()]
            if self.watermark is not None:
                bounds.append(_epoch_ms(self.watermark) - CANDLES_HELD_MS)
            since = max((b for b in bounds if b is not None), default=None)
            self.latest_candles = LatestCandles(self.store.latest_candles(since), since)
        return self.latest_candles.stored(keys, self.store.stored_candles)

    def _account(self, result: BatchResult, unit: Unit, seconds: float) -> None:
        if result.lines and seconds > 0:
            inst, inst_b = result.lines / seconds, result.nbytes / seconds
            self.rate = inst if not self.rate else 0.8 * self.rate + 0.2 * inst
            self.bytes_per_s = inst_b if not self.bytes_per_s else 0.8 * self.bytes_per_s + 0.2 * inst_b
            self.line_bytes = 0.9 * self.line_bytes + 0.1 * (result.nbytes / result.lines)
        self.last_batch_at = self.clock()
        if result.rejects:
            self.rejects_log.add(str(unit.file), len(result.rejects), result.rejects[0].reason)
        for g in result.gaps:
            log.warning("event=gap stream=%s file=%s from=%d to=%d reason=%s",
                        self.stream.name, g.file, g.start, g.end, g.reason)

    def _publish(self, processed: Processed) -> None:
        for listener in self.listeners:
            try:
                listener(processed)
            except Exception:  # a broken subscriber must not stop ingestion
                log.exception("event=listener_error stream=%s", self.stream.name)

    def release_held(self) -> None:
        """Publish trades that waited long enough for their maker's fill (when idle)."""
        if self.matcher is None:
            return
        ready = self.matcher.release()
        if ready is not None:
            self._publish(Processed(self.stream, {"trades": ready}, None, None, 0.0))

    # --------------------------------------------------------------- loop
    def run(self) -> None:
        """Drain on every wake-up (and every `poll_interval_ms`) until `stop_event`."""
        idle = self.settings.poll_interval_ms / 1000
        priority.lower(self.nice)
        try:
            while not self.stop_event.is_set():
                self.drain()
                self.release_held()
                if self.wake.wait(min(idle, self.matcher.hold_s if self.matcher else idle)):
                    self.wake.clear()
        except Exception:  # the thread ends; the pipeline reports the lane dead (dead_lanes)
            log.exception("event=lane_error stream=%s (this stream is no longer read; restart "
                          "nodetap)", self.stream.name)

    def start(self) -> None:
        thread = threading.Thread(target=self.run, name=f"nodetap-lane-{self.stream.name}", daemon=True)
        thread.start()
        # set once it runs: a thread made but not yet started would count as a dead lane
        # (Pipeline.dead_lanes), and /healthz would say so for an instant
        self.thread = thread

    def flush(self) -> None:
        """Commit the rows held back for a whole row group (at shutdown)."""
        self._settle()
        if self.carry is not None:
            self._commit(self.carry, time.perf_counter())
            self.carry = None

    def close(self) -> None:
        """Stop the parse workers; a unit read but not committed is read again on the next
        start (its cursor was never committed)."""
        self.stop_event.set()
        self.wake.set()
        self._pool.shutdown(wait=True, cancel_futures=True)
        if self._commit_pool is not None:  # a unit still committing commits (or rolls back)
            self._commit_pool.shutdown(wait=True)
        if self._prefilter_pool is not None:
            self._prefilter_pool.shutdown(wait=True, cancel_futures=True)
        self._pending.clear()
        self._empty.clear()
        self.rejects_log.flush()


def _epoch_ms(t: datetime) -> int:
    """A naive-UTC time as epoch milliseconds."""
    return int(t.replace(tzinfo=UTC).timestamp() * 1000)
