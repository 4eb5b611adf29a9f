"""What a stream's status says, built in one place: `/v1/status`, `/metrics`, `/readyz`,
`nodetap status` and the dashboard all read `StreamStatus`.

- `lag_bytes` is measured when the status is taken (a stat of the node's files after the
  cursor), not at the last commit.
- `arrival_lines_per_s` is how fast the node writes (file growth over the last ~10 s, over the
  mean bytes per line seen); `capacity_lines_per_s` is how fast nodetap processes (lines per
  second of lane busy time over the last batches). The two differ: a node writing 2 K lines/s
  to a pipeline that could take 20 K is caught up, not slow.
- `mode` is "archive" when everything is read and the stream's newest file has not grown for
  over an hour (a backfilled or stopped node): its `lag_seconds` is null, as the node is not
  writing and the age of its last event is not lag. A node writes the file of the current
  hour, so a newest file named for an hour that ended over an hour ago, not seen growing,
  also means an archive (old hour files copied just now have a fresh mtime). "Everything read"
  allows a last line without its line end (a stopped node's cut line: nodetap waits for the
  node to finish a line, and none will); `lag_bytes` still counts its bytes.
- `mode` is "stopped" when nothing reads the stream, and `stopped_reason` says why: its lane
  ended on an error while the process runs on (`LANE_DIED`, everywhere the status shows), or,
  in `nodetap status`, no ingest/serve runs on the database: it opens (the one that runs
  holds it), or the status file that one writes is left behind by a process that has exited,
  or was not rewritten for `STATUS_STALE_S` (`writer_stopped`).
"""

from __future__ import annotations

import dataclasses
import os
import socket
import threading
from collections import deque
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import orjson

from etl.columns import DEFAULT_LINE_BYTES
from etl.config import Settings
from etl.hourfiles import hour_files, hour_key, stat_or_none
from etl.tail import STREAM_DIRS, Cursor

if TYPE_CHECKING:
    from etl.lanes import Lane

Mode = Literal["live", "catching_up", "archive", "stopped"]

# a lane thread that ended on an unexpected error (Pipeline.dead_lanes): its stream's status
LANE_DIED = ("its lane stopped on an error (event=lane_error in the log): this stream is no longer "
             "read; restart nodetap")

ARCHIVE_AFTER_S = 3600.0  # a stream whose newest file is older than this, all read, is an archive
ARRIVAL_WINDOW_S = 10.0
# the status file is rewritten every second (at each wake-up, one at least every poll interval):
# one not rewritten for this long is left behind by a process that no longer runs
STATUS_STALE_S = 15.0


@dataclass(frozen=True)
class StreamStatus:
    """One stream's position, speeds and counters (docs: the module docstring)."""

    stream: str
    kind: str
    variant: str
    file: str
    offset: int
    mode: Mode
    lag_bytes: int  # in the node's files after the cursor, now
    lag_seconds: float | None  # wall clock minus the last event time; None in "archive" mode
    arrival_lines_per_s: float  # how fast the node writes
    capacity_lines_per_s: float  # how fast nodetap processes
    lines: int
    rows: int
    bytes: int
    rejects: int
    gaps: int
    skipped_bytes: int
    last_time: str | None  # ISO 8601, UTC
    updated_at: str | None  # ISO 8601, UTC: the last commit
    last_batch_age_s: float | None  # seconds since this process committed a batch of it
    stopped_reason: str | None = None  # why nothing reads it, in mode "stopped"

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class SealerHealth:
    """The lake sealer: whether it runs, its last error, the newest hour in the lake."""

    alive: bool
    last_error: str | None
    last_sealed_hour: str | None

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class FileScan:
    """A stat of a stream's hour files from the cursor's file on."""

    lag_bytes: int
    sizes: dict[str, int]  # hour file -> size, for the cursor's file and later ones
    newest_mtime: float | None  # of the stream's newest hour file
    newest_hour_end: float | None = None  # epoch seconds at the end of the hour it is named for
    # the unread bytes are the end of the newest file and hold no line end: a line the node has
    # not finished (or never will, in a copy of a stopped node's files)
    unterminated: bool = False


UNTERMINATED_PROBE = 1 << 20  # unread bytes looked at for a line end, at most


def scan_files(root: Path, cursor: Cursor, floor: str = "") -> FileScan:
    """`floor`: a cursor before its first file starts at the first file at or after it."""
    since = cursor.file or floor
    files = hour_files(root, since.split("/")[0] if since else "")
    later = [f for f in files if not since or hour_key(f) >= hour_key(since)]
    sizes: dict[str, int] = {}
    newest: float | None = None
    for f in later:
        st = stat_or_none(root / f)
        sizes[f] = st.st_size if st else 0
        if st is not None and f == files[-1]:
            newest = st.st_mtime
    if newest is None and files:
        st = stat_or_none(root / files[-1])
        newest = st.st_mtime if st else None
    lag = sum(max(0, size - cursor.offset) if f == cursor.file else size for f, size in sizes.items())
    unterminated = (0 < lag <= UNTERMINATED_PROBE and bool(files) and cursor.file == files[-1]
                    and not _has_line_end(root / cursor.file, cursor.offset, lag))
    return FileScan(lag, sizes, newest, _hour_end(files[-1]) if files else None, unterminated)


def _has_line_end(path: Path, offset: int, n: int) -> bool:
    """Whether the `n` bytes at `offset` hold a line end (True where they cannot be read)."""
    try:
        with path.open("rb") as f:
            f.seek(offset)
            return b"\n" in f.read(n)
    except OSError:
        return True


class ArrivalMeter:
    """How fast a stream's files grow: bytes appended between scans, over the last window."""

    def __init__(self, window_s: float = ARRIVAL_WINDOW_S) -> None:
        self.window_s = window_s
        self._lock = threading.Lock()
        self._sizes: dict[str, int] | None = None
        self._grown = 0  # bytes appended since the first scan
        self.grew_at: float | None = None  # when a scan last saw the files grow
        self._samples: deque[tuple[float, int]] = deque()

    def observe(self, now: float, sizes: dict[str, int]) -> float:
        """Record a scan taken at `now` (the pipeline's clock); returns bytes/s over the window."""
        with self._lock:
            if self._sizes is not None:
                # a file that is new since the last scan grew from nothing
                grown = sum(max(0, size - self._sizes.get(f, 0)) for f, size in sizes.items())
                self._grown += grown
                self.grew_at = now if grown else self.grew_at
            self._sizes = dict(sizes)
            self._samples.append((now, self._grown))
            while len(self._samples) > 2 and self._samples[1][0] <= now - self.window_s:
                self._samples.popleft()
            t0, grown0 = self._samples[0]
            return (self._grown - grown0) / (now - t0) if now > t0 else 0.0


def catching_up_bytes(s: Settings) -> int:
    """Unread bytes past which a stream is "catching_up": where its lane turns from
    publishing every row at once to reading whole row groups (etl/lanes.py)."""
    return s.batch_max_bytes // 4


def mode_of(lag_bytes: int, scan: FileScan, wall: float, grew_recently: bool,
            catching_up_bytes: int, stored_data: bool = False) -> Mode:
    """"archive" when everything is read (but a last line nothing finished) and the stream's
    files are old (or, with data stored, there is no file of it in the node dir: a backfill, an
    old DB); else by how much is unread."""
    old = [t for t in (scan.newest_mtime, scan.newest_hour_end)
           if t is not None and wall - t > ARCHIVE_AFTER_S]
    no_files = scan.newest_mtime is None and scan.newest_hour_end is None
    all_read = lag_bytes == 0 or scan.unterminated
    if all_read and not grew_recently and (old or (no_files and stored_data)):
        return "archive"
    return "catching_up" if lag_bytes > catching_up_bytes else "live"


def stream_status(*, stream: str, kind: str, variant: str, cursor: Cursor, scan: FileScan,
                  stored: dict[str, Any], arrival_bytes_per_s: float, capacity_lines_per_s: float,
                  wall: float, catching_up_bytes: int, last_batch_age_s: float | None,
                  grew_recently: bool = False) -> StreamStatus:
    """A stream's status from its cursor, a scan of its files and its stored counters."""
    last_time: datetime | None = stored.get("last_time")
    mode = mode_of(scan.lag_bytes, scan, wall, grew_recently, catching_up_bytes,
                   stored_data=last_time is not None)
    updated_at: datetime | None = stored.get("updated_at")
    lines, nbytes = int(stored.get("lines") or 0), int(stored.get("bytes") or 0)
    line_bytes = nbytes / lines if lines and nbytes else DEFAULT_LINE_BYTES
    now = datetime.fromtimestamp(wall, UTC).replace(tzinfo=None)
    lag_s = None if mode == "archive" or last_time is None else (now - last_time).total_seconds()
    return StreamStatus(
        stream=stream, kind=kind, variant=variant, file=cursor.file, offset=cursor.offset,
        mode=mode, lag_bytes=scan.lag_bytes, lag_seconds=lag_s,
        arrival_lines_per_s=round(arrival_bytes_per_s / line_bytes, 1),
        capacity_lines_per_s=round(capacity_lines_per_s, 1),
        lines=lines, rows=int(stored.get("rows") or 0), bytes=nbytes,
        rejects=int(stored.get("rejects") or 0), gaps=int(stored.get("gaps") or 0),
        skipped_bytes=int(stored.get("skipped_bytes") or 0),
        last_time=last_time.isoformat() if last_time else None,
        updated_at=updated_at.isoformat() if updated_at else None,
        last_batch_age_s=last_batch_age_s,
    )


def lane_statuses(lanes: list[tuple[str, Lane]], stored: dict[str, dict[str, Any]],
                  meters: dict[str, ArrivalMeter], *, now: float, wall: float,
                  settings: Settings) -> list[StreamStatus]:
    """The running lanes' status: `now` on the pipeline's interval clock, `wall` epoch seconds."""
    out = []
    for name, lane in lanes:
        cursor = lane.cursor
        scan = scan_files(lane.stream.root, cursor, lane.tailer.index.floor)
        meter = meters.setdefault(name, ArrivalMeter())
        arrival = meter.observe(now, scan.sizes)
        grew_recently = meter.grew_at is not None and now - meter.grew_at <= ARCHIVE_AFTER_S
        last = lane.last_batch_at
        out.append(stream_status(
            stream=name, kind=lane.stream.kind, variant=lane.stream.variant, cursor=cursor,
            scan=scan, stored=stored.get(name, {}), arrival_bytes_per_s=arrival,
            capacity_lines_per_s=lane.rate, wall=wall, catching_up_bytes=catching_up_bytes(settings),
            last_batch_age_s=round(now - last, 3) if last else None, grew_recently=grew_recently))
    return out


def status_rows(streams: list[StreamStatus]) -> list[dict[str, Any]]:
    """The JSON form (the status file, `nodetap status --json`, `/v1/status`'s `streams`)."""
    return [s.as_dict() for s in streams]


def _hour_end(rel: str) -> float:
    day, hour = hour_key(rel)
    return datetime.strptime(day, "%Y%m%d").replace(tzinfo=UTC).timestamp() + (hour + 1) * 3600.0


def stored_snapshot(rows: list[dict[str, Any]], node_dir: Path, wall: float,
                    catching_up_bytes: int) -> list[StreamStatus]:
    """Status from the stored cursors alone (no pipeline running): speeds are 0."""
    out = []
    for row in sorted(rows, key=lambda r: str(r["stream"])):
        name = str(row["stream"])
        kind, variant = STREAM_DIRS.get(name, (str(row.get("kind") or ""), ""))
        cursor = Cursor(str(row.get("file") or ""), int(row.get("inode") or 0), int(row.get("offset") or 0))
        out.append(stream_status(
            stream=name, kind=kind, variant=variant, cursor=cursor,
            scan=scan_files(node_dir / name / "hourly", cursor), stored=row,
            arrival_bytes_per_s=0.0, capacity_lines_per_s=0.0, wall=wall,
            catching_up_bytes=catching_up_bytes, last_batch_age_s=None))
    return out


# ------------------------------------------------------------------ the status file
def status_document(rows: list[dict[str, Any]], wall: float, node_dir: Path | None = None) -> dict[str, Any]:
    """The status file's content: the rows, when and by which process they were written, and
    the node dir it reads."""
    return {"written_at": _iso(wall), "pid": os.getpid(), "host": socket.gethostname(),
            "node_dir": None if node_dir is None else str(node_dir.resolve()), "streams": rows}


def read_status_document(data: bytes, mtime: float) -> dict[str, Any]:
    """A status file's content; one of an earlier version (the rows alone) is dated by its mtime."""
    doc = orjson.loads(data)
    return doc if isinstance(doc, dict) else {"written_at": _iso(mtime), "pid": None, "host": None,
                                              "streams": doc}


def writer_stopped(doc: dict[str, Any], wall: float) -> str | None:
    """Why the process that wrote the status document no longer runs; None while it may.
    Its pid is looked up on its own host only (another host's, or another container's, pids
    mean nothing here): elsewhere the document's age tells."""
    pid = doc.get("pid")
    if isinstance(pid, int) and doc.get("host") == socket.gethostname() and not _alive(pid):
        return f"its writer, pid {pid}, has exited"
    age = wall - datetime.fromisoformat(str(doc["written_at"])).timestamp()
    if age > STATUS_STALE_S:
        return f"not rewritten for {age:.0f} s, while a running ingest/serve rewrites it every second"
    return None


def stopped(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The rows with mode "stopped": no process reads the streams."""
    return [{**r, "mode": "stopped"} for r in rows]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def _iso(wall: float) -> str:
    return datetime.fromtimestamp(wall, UTC).isoformat()
