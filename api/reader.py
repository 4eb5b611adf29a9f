"""Every read of DuckDB by the API goes through here: off the event loop, on a read-only
connection, within a time limit.

- the thread hop: `read(state, query)` runs `query(con)` in a worker thread;
- read-only: `con` is a cursor of the store's database inside `BEGIN TRANSACTION READ ONLY`
  (`api.readonly.sql_cursor`), so no route can write, whatever its SQL;
- the time limit (`sql_timeout_s`): a timer interrupts the connection at the limit
  (`TimeLimit`), and the answer (408) goes out within `ANSWER_GRACE_S` of it even while DuckDB
  finishes the call it is in (`in_thread`).

Routes take it as a dependency (`api.deps.Read`); code shared by HTTP and the WebSocket calls
`read(state, query)`. `POST /v1/sql` runs on the same pieces (`run_limited`, `in_thread`) with
its own error messages, row cap and concurrency limit. Streamed results (exports) use
`Reader.batches`: each batch is fetched within the limit, so a slow query is stopped while a
long, steady export is not.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable, Iterator
from types import TracebackType
from typing import TYPE_CHECKING, Any, TypeVar

import duckdb
import pyarrow as pa

from api.errors import ReadTimeout, ServerBusy
from api.readonly import memory_busy, sql_cursor

if TYPE_CHECKING:
    from api.state import AppState

T = TypeVar("T")
Con = duckdb.DuckDBPyConnection
log = logging.getLogger("nodetap.reader")

# how long past the limit an answer may wait for DuckDB to return from an interrupt
ANSWER_GRACE_S = 0.8


def read_timeout(limit_s: float) -> ReadTimeout:
    return ReadTimeout(f"reading the database took over {limit_s:g} s and was interrupted "
                       "(setting sql_timeout_s); ask for a shorter time range or fewer rows")


class ActiveReads:
    """The API's reads running now (their `TimeLimit`s), so that ingestion can stop them when a
    commit runs out of DuckDB memory (`Store.relieve_memory`): ingestion comes first."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._limits: set[TimeLimit] = set()

    def add(self, limit: TimeLimit) -> None:
        with self._lock:
            self._limits.add(limit)

    def discard(self, limit: TimeLimit) -> None:
        with self._lock:
            self._limits.discard(limit)

    def running(self) -> int:
        with self._lock:
            return len(self._limits)

    def relieve(self) -> int:
        """Interrupt every read running now; returns how many."""
        with self._lock:
            limits = list(self._limits)
        done = sum(limit.relieve() for limit in limits)
        if done:
            log.warning("event=reads_interrupted_for_ingest count=%d", done)
        return done


def ingest_first() -> ServerBusy:
    return ServerBusy("the query was stopped: ingestion needed the server's database memory "
                      "(setting db_memory_limit); retry in a moment")


def busy_or_none(err: BaseException, limit: TimeLimit) -> ServerBusy | None:
    """The 503 for a read that ingestion stopped, or that found no memory; None otherwise."""
    if limit.relieved:
        return ingest_first()
    if isinstance(err, duckdb.OutOfMemoryException):
        return memory_busy()
    return None


class TimeLimit:
    """Interrupts `con` once `seconds` have passed inside the `with` block; `fired` tells
    whether it did (DuckDB then raises an InterruptException, or an error of the call it was in).
    Registered in `reads` while it runs, where ingestion can interrupt it (`relieved`)."""

    def __init__(self, con: Con, seconds: float, reads: ActiveReads | None = None) -> None:
        self.con = con
        self.fired = False
        self.relieved = False
        self.reads = reads
        self._done = False
        self._lock = threading.Lock()
        self._timer = threading.Timer(seconds, self._interrupt)
        self._timer.daemon = True

    def _interrupt(self) -> None:
        with self._lock:
            if not self._done:
                self.fired = True
                self.con.interrupt()

    def interrupt(self) -> None:
        """Interrupt now, for another reason than time (e.g. the SQL memory watch)."""
        with self._lock:
            if not self._done:
                self.con.interrupt()

    def relieve(self) -> bool:
        """Interrupt now because ingestion needs the memory; False if the read was done."""
        with self._lock:
            if self._done:
                return False
            self.relieved = True
            self.con.interrupt()
            return True

    def __enter__(self) -> TimeLimit:
        if self.reads is not None:
            self.reads.add(self)
        self._timer.start()
        return self

    def __exit__(self, kind: type[BaseException] | None, err: BaseException | None,
                 tb: TracebackType | None) -> None:
        with self._lock:
            self._done = True
        self._timer.cancel()
        if self.reads is not None:
            self.reads.discard(self)


def _retrieve(task: asyncio.Future[Any]) -> None:
    # an abandoned read's error is read here, so it is not reported as never retrieved
    if not task.cancelled() and task.exception() is not None:
        log.debug("event=read_failed_after_answer error=%r", str(task.exception()))


async def in_thread(work: Callable[[], T], limit_s: float, timeout: Callable[[], Exception],
                    on_done: Callable[[asyncio.Future[T]], None] | None = None) -> T:
    """`work()` in a worker thread; raises `timeout()` at `limit_s + ANSWER_GRACE_S` if it has
    not returned by then (its thread then finishes on its own)."""
    task = asyncio.ensure_future(asyncio.to_thread(work))
    task.add_done_callback(on_done or _retrieve)
    try:
        return await asyncio.wait_for(asyncio.shield(task), limit_s + ANSWER_GRACE_S)
    except TimeoutError:
        raise timeout() from None


def run_limited(state: AppState, work: Callable[[Con, TimeLimit], T]) -> T:
    """`work(con, limit)` in this thread, on a read-only connection that `limit` interrupts at
    `sql_timeout_s`; `work` maps DuckDB's errors (`limit.fired`: they are the interrupt's)."""
    con = sql_cursor(state.store)
    try:
        with TimeLimit(con, state.settings.sql_timeout_s, state.reads) as limit:
            return work(con, limit)
    finally:
        con.close()


def read_now(state: AppState, query: Callable[[Con], T]) -> T:
    """`query(con)` in this thread, on a read-only connection, interrupted at the limit (408)."""
    limit_s = state.settings.sql_timeout_s

    def work(con: Con, limit: TimeLimit) -> T:
        try:
            return query(con)
        except (duckdb.Error, pa.ArrowException) as err:
            busy = busy_or_none(err, limit)
            if busy is not None:
                raise busy from None
            if limit.fired or isinstance(err, duckdb.InterruptException):
                raise read_timeout(limit_s) from None
            raise

    return run_limited(state, work)


async def read(state: AppState, query: Callable[[Con], T]) -> T:
    """`query(con)` in a worker thread, on a read-only connection, within `sql_timeout_s`."""
    limit_s = state.settings.sql_timeout_s
    return await in_thread(lambda: read_now(state, query), limit_s, lambda: read_timeout(limit_s))


class Reader:
    """The reader dependency of one request: `await reader(query)`."""

    def __init__(self, state: AppState) -> None:
        self.state = state

    async def __call__(self, query: Callable[[Con], T]) -> T:
        return await read(self.state, query)

    async def batches(self, sql: str, params: list[object], rows: int) -> Batches:
        """A streamed result of `sql`, `rows` rows per Arrow batch (see `Batches`)."""
        return await open_batches(self.state, sql, params, rows)


class Batches:
    """The record batches of one query, fetched one at a time (in the thread that iterates),
    each within the time limit. Iterating to the end, or `close`, ends the read."""

    def __init__(self, con: Con, reader: pa.RecordBatchReader, limit_s: float,
                 reads: ActiveReads | None = None) -> None:
        self.con, self.reader, self.limit_s, self.reads = con, reader, limit_s, reads
        self.schema = reader.schema

    def __iter__(self) -> Iterator[pa.RecordBatch]:
        try:
            while True:
                with TimeLimit(self.con, self.limit_s, self.reads) as limit:
                    try:
                        batch = self.reader.read_next_batch()
                    except StopIteration:
                        return
                    except (duckdb.Error, pa.ArrowException) as err:
                        busy = busy_or_none(err, limit)
                        if busy is not None:
                            log.warning("event=stream_interrupted reason=%r", busy.message)
                            raise busy from None
                        if limit.fired or isinstance(err, duckdb.InterruptException):
                            log.warning("event=stream_interrupted limit_s=%s (setting sql_timeout_s)",
                                        self.limit_s)
                            raise read_timeout(self.limit_s) from None
                        raise
                yield batch
        finally:
            self.close()

    def close(self) -> None:
        self.reader.close()
        self.con.close()


async def open_batches(state: AppState, sql: str, params: list[object], rows: int) -> Batches:
    """Start `sql` on a read-only connection of its own, within the time limit; the caller
    iterates (or closes) the result."""
    limit_s = state.settings.sql_timeout_s

    def start() -> Batches:
        con = sql_cursor(state.store)
        try:
            with TimeLimit(con, limit_s, state.reads) as limit:
                try:
                    reader = con.sql(sql, params=params or None).to_arrow_reader(rows)
                except (duckdb.Error, pa.ArrowException) as err:
                    busy = busy_or_none(err, limit)
                    if busy is not None:
                        raise busy from None
                    if limit.fired or isinstance(err, duckdb.InterruptException):
                        raise read_timeout(limit_s) from None
                    raise
        except BaseException:
            con.close()
            raise
        return Batches(con, reader, limit_s, state.reads)

    abandoned = False

    def drop(task: asyncio.Future[Batches]) -> None:
        # started after its answer was given up: nobody will read it
        if not task.cancelled() and task.exception() is None and abandoned:
            task.result().close()

    try:
        return await in_thread(start, limit_s, lambda: read_timeout(limit_s), on_done=drop)
    except ReadTimeout:
        abandoned = True
        raise
