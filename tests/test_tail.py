"""The tailer on real files: partial lines, rotation, truncation, replacement, backlog skip."""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import pytest

from etl.hourfiles import HourListing
from etl.tail import Cursor, Stream, Tailer, discover, hour_files, initial_cursor, start_floor


class FakeClock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def stream(tmp_path: Path, name: str = "node_order_statuses") -> Stream:
    root = tmp_path / name / "hourly"
    root.mkdir(parents=True, exist_ok=True)
    return Stream(name, "orders", "plain", root)


def write(st: Stream, rel: str, data: bytes, mode: str = "ab") -> Path:
    p = st.root / rel
    p.parent.mkdir(parents=True, exist_ok=True)
    with open(p, mode) as f:
        f.write(data)
    return p


def drain(t: Tailer, cur: Cursor) -> tuple[list[bytes], Cursor, list]:
    out, gaps, dropped = [], [], []
    while (b := t.next_batch(cur)) is not None:
        if b.data:
            out.append(b.data)
        gaps += b.gaps
        if b.dropped:
            dropped.append((b.file, b.start, b.dropped_reason, b.dropped))
        cur = b.cursor
    return out, cur, gaps + dropped


def tailer(st: Stream, clock: FakeClock | None = None, **kw: object) -> Tailer:
    args: dict[str, object] = {"batch_max_bytes": 1 << 20, "max_backlog_bytes": None,
                               "rotate_grace_s": 5.0}
    args.update(kw)
    return Tailer(st, clock=clock or FakeClock(), **args)  # type: ignore[arg-type]


def test_partial_line_waits_for_its_newline(tmp_path: Path) -> None:
    st = stream(tmp_path)
    write(st, "20260105/9", b"a1\na2\na3-part")
    t = tailer(st)
    got, cur, _ = drain(t, Cursor("", 0, 0))
    assert got == [b"a1\na2\n"]
    assert cur.offset == 6
    write(st, "20260105/9", b"ial\na4")
    got, cur, _ = drain(t, cur)
    assert got == [b"a3-partial\n"]
    assert cur.offset == 17


def test_hour_files_sort_numerically_across_days(tmp_path: Path) -> None:
    st = stream(tmp_path)
    for rel in ["20260105/10", "20260105/9", "20260106/0", "20260105/23", "20260105/x"]:
        write(st, rel, b"")
    assert hour_files(st.root) == ["20260105/9", "20260105/10", "20260105/23", "20260106/0"]


def test_hour_listing_sees_every_change_while_listing_only_what_moved(tmp_path: Path) -> None:
    st = stream(tmp_path)
    now = [time.time_ns()]
    listing = HourListing(st.root, clock_ns=lambda: now[0])
    hour_ago = now[0] // 1_000_000_000 - 3600
    for day in ("20260101", "20260102", "20260103", "20260104"):
        for h in range(0, 24, 6):
            write(st, f"{day}/{h}", b"")
        os.utime(st.root / day, (hour_ago, hour_ago))
    assert listing.refresh() == hour_files(st.root)
    version = listing.version
    assert listing.refresh() == hour_files(st.root) and listing.version == version

    # in the newest days, a file is seen at once, a second one within the same tick too
    write(st, "20260104/19", b"")
    assert listing.refresh()[-1] == "20260104/19"
    tick = (st.root / "20260104").stat().st_mtime_ns
    write(st, "20260104/20", b"")
    os.utime(st.root / "20260104", ns=(tick, tick))  # a file system with coarse timestamps
    assert listing.refresh()[-2:] == ["20260104/19", "20260104/20"]
    write(st, "20260105/0", b"")  # a new day, and a late file in the day before it
    write(st, "20260104/21", b"")
    assert listing.refresh()[-3:] == ["20260104/20", "20260104/21", "20260105/0"]
    assert listing.keys == [(f.split("/")[0], int(f.split("/")[1])) for f in listing.files]

    # in an older day, within a second
    write(st, "20260101/7", b"")
    (st.root / "20260102" / "6").unlink()
    assert "20260101/7" not in listing.refresh()
    now[0] += 1_000_000_000
    assert listing.refresh() == hour_files(st.root)
    assert "20260101/7" in listing.files and "20260102/6" not in listing.files

    shutil.rmtree(st.root / "20260105")  # a day removed
    assert listing.refresh() == hour_files(st.root)
    shutil.rmtree(st.root)  # everything removed
    assert listing.refresh() == [] and listing.keys == []
    write(st, "20260106/3", b"")
    assert listing.refresh() == ["20260106/3"]


def test_rotation_reads_old_tail_then_next_file_and_never_skips(tmp_path: Path) -> None:
    st = stream(tmp_path)
    write(st, "20260105/22", b"h22-1\n")
    t = tailer(st)
    got, cur, _ = drain(t, Cursor("", 0, 0))
    assert got == [b"h22-1\n"]
    # the node finishes hour 22, opens 23, and a later day's file too
    write(st, "20260105/22", b"h22-2\n")
    write(st, "20260105/23", b"h23-1\n")
    write(st, "20260106/0", b"d2-0\n")
    got, cur, gaps = drain(t, cur)
    assert got == [b"h22-2\n", b"h23-1\n", b"d2-0\n"]
    assert gaps == []
    assert cur.file == "20260106/0"


def test_unterminated_tail_of_rotated_file_waits_then_is_rejected(tmp_path: Path) -> None:
    st = stream(tmp_path)
    clock = FakeClock()
    write(st, "20260105/22", b"x1\nx2-unterminated")
    write(st, "20260105/23", b"y1\n")
    t = tailer(st, clock)
    got, cur, dropped = drain(t, Cursor("", 0, 0))
    assert got == [b"x1\n"] and dropped == []  # within the grace period: wait
    clock.t += 2
    write(st, "20260105/22", b"-now\n")  # the node flushed the rest: nothing lost
    got, cur, dropped = drain(t, cur)
    assert got == [b"x2-unterminated-now\n", b"y1\n"] and dropped == []

    write(st, "20260105/23", b"y2-partial")
    write(st, "20260106/0", b"z1\n")
    got, cur, dropped = drain(t, cur)
    assert got == [] and dropped == []
    clock.t += 6
    got, cur, dropped = drain(t, cur)
    assert got == [b"z1\n"]
    assert dropped == [("20260105/23", 3, "unterminated last line of a rotated file", b"y2-partial")]


def test_truncated_file_is_detected_and_read_from_start(tmp_path: Path) -> None:
    st = stream(tmp_path)
    write(st, "20260105/9", b"old-1\nold-2\n")
    t = tailer(st)
    _, cur, _ = drain(t, Cursor("", 0, 0))
    write(st, "20260105/9", b"new\n", mode="r+b")  # same inode, rewritten shorter
    os.truncate(st.root / "20260105/9", 4)
    got, cur, gaps = drain(t, cur)
    assert got == [b"new\n"]
    assert [(g.file, g.start, g.end, g.reason) for g in gaps] == [("20260105/9", 12, 12, "truncated")]


def test_replaced_file_is_detected_by_inode(tmp_path: Path) -> None:
    st = stream(tmp_path)
    p = write(st, "20260105/9", b"old-1\n")
    t = tailer(st)
    _, cur, _ = drain(t, Cursor("", 0, 0))
    tmp = p.with_name("tmp")
    tmp.write_bytes(b"replacement-1\nreplacement-2\n")
    keep = p.with_name("keep")
    os.rename(p, keep)  # keep the old inode alive so the new file cannot reuse it
    os.rename(tmp, p)
    got, cur, gaps = drain(t, cur)
    assert got == [b"replacement-1\nreplacement-2\n"]
    assert [(g.reason, g.start) for g in gaps] == [("replaced", 6)]


def test_batches_are_capped_and_line_aligned(tmp_path: Path) -> None:
    st = stream(tmp_path)
    lines = [f"line-{i:04d}".encode() + b"\n" for i in range(1000)]
    write(st, "20260105/9", b"".join(lines))
    t = tailer(st, batch_max_bytes=1000)
    got, cur, _ = drain(t, Cursor("", 0, 0))
    assert all(len(b) <= 1000 and b.endswith(b"\n") for b in got)
    assert b"".join(got) == b"".join(lines)


def test_line_longer_than_a_batch_is_skipped_as_a_reject(tmp_path: Path) -> None:
    st = stream(tmp_path)
    write(st, "20260105/9", b"ok-1\n" + b"L" * 5000 + b"\nok-2\n")
    t = tailer(st, batch_max_bytes=1000)
    got, cur, dropped = drain(t, Cursor("", 0, 0))
    assert got == [b"ok-1\n", b"ok-2\n"]
    assert [(d[1], d[2]) for d in dropped] == [(5, "line over batch_max_bytes (1000)")]


def test_backlog_over_limit_skips_to_recent_data_and_records_ranges(tmp_path: Path) -> None:
    st = stream(tmp_path)
    line = b"x" * 99 + b"\n"
    write(st, "20260105/8", line * 100)  # 10_000 bytes
    write(st, "20260105/9", line * 100)
    write(st, "20260105/10", line * 50)
    t = tailer(st, batch_max_bytes=1000, max_backlog_bytes=5000)
    got, cur, gaps = drain(t, Cursor("20260105/8", os.stat(st.root / "20260105/8").st_ino, 0))
    assert [(g.file, g.start, g.end, g.reason) for g in gaps] == [
        ("20260105/8", 0, 10_000, "backlog"),
        ("20260105/9", 0, 10_000, "backlog"),
        ("20260105/10", 0, 4_000, "backlog"),
    ]
    assert b"".join(got) == line * 10  # the newest 1000 bytes
    assert cur == Cursor("20260105/10", os.stat(st.root / "20260105/10").st_ino, 5000)


def test_backlog_keep_reads_everything(tmp_path: Path) -> None:
    st = stream(tmp_path)
    line = b"y" * 99 + b"\n"
    write(st, "20260105/8", line * 100)
    t = tailer(st, batch_max_bytes=1000, max_backlog_bytes=None)
    got, _, gaps = drain(t, Cursor("", 0, 0))
    assert b"".join(got) == line * 100 and gaps == []


def test_initial_cursor_modes(tmp_path: Path) -> None:
    st = stream(tmp_path)
    write(st, "20260105/8", b"a\n")
    write(st, "20260105/9", b"b\nc\npartial")
    assert initial_cursor(st, "start").file == "20260105/8"
    end = initial_cursor(st, "end")
    assert (end.file, end.offset) == ("20260105/9", 4)  # after the last whole line
    assert initial_cursor(st, "20260105/9").file == "20260105/9"
    assert initial_cursor(st, "20260105").file == "20260105/8"
    # later than every file: before the first file at or after its floor, none of these
    assert initial_cursor(st, "20300101") == Cursor("", 0, 0)
    assert [start_floor(s) for s in ("20300101", "20260105/9", "start", "end")] == [
        "20300101/0", "20260105/9", "", ""]
    with pytest.raises(ValueError, match="YYYYMMDD"):
        initial_cursor(st, "yesterday")


def test_discover_picks_one_variant_per_kind(tmp_path: Path) -> None:
    for name in ["node_order_statuses", "node_order_statuses_streaming", "node_fills_by_block",
                 "node_trades", "unrelated"]:
        (tmp_path / name / "hourly").mkdir(parents=True)
    assert [s.name for s in discover(tmp_path)] == [
        "node_order_statuses_streaming", "node_fills_by_block"]
    assert [s.name for s in discover(tmp_path, ("node_trades",))] == ["node_trades"]
    with pytest.raises(ValueError, match="unknown stream"):
        discover(tmp_path, ("node_bogus",))


def _lines(n: int, width: int = 120) -> bytes:
    return b"".join(f"line-{i:07d}-".encode().ljust(width, b"x") + b"\n" for i in range(n))


def _open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="counts open files in /proc")
def test_deferred_reads_give_the_same_batches_and_close_their_files(tmp_path: Path) -> None:
    """A lane behind leaves a batch's bytes to its parse worker (`defer_reads`): the batches,
    cursors (fingerprints included) and gaps are those of reading at once, across the 64 KiB
    probe's edge cases (a line across the probe, a batch of one probe or less)."""
    st = stream(tmp_path)
    write(st, "20260105/9", _lines(20_000))  # 2.4 MB
    write(st, "20260105/10", _lines(300, width=700))  # lines over the probe's share of a batch
    for max_bytes in (1 << 20, (64 << 10) + 1, 64 << 10, 200_000, 4096):
        eager, lazy = tailer(st, batch_max_bytes=max_bytes), tailer(st, batch_max_bytes=max_bytes)
        lazy.defer_reads = True
        cur_e = cur_l = Cursor("", 0, 0)
        fds = _open_fds()
        while (a := eager.next_batch(cur_e)) is not None:
            b = lazy.next_batch(cur_l)
            assert b is not None
            loaded = b.loaded()
            assert loaded.pending is None and loaded.data == a.data and b.has_lines == bool(a.data)
            assert (b.file, b.start, b.cursor, b.cursor.fp, b.gaps, b.unread) == \
                (a.file, a.start, a.cursor, a.cursor.fp, a.gaps, a.unread)
            cur_e, cur_l = a.cursor, b.cursor
        assert lazy.next_batch(cur_l) is None
        assert _open_fds() == fds
        assert (lazy.deferred_reads > 0) == (max_bytes > 64 << 10)
    # a batch dropped unread (a lane stopping) closes its file too
    lazy = tailer(st, batch_max_bytes=1 << 20)
    lazy.defer_reads = True
    fds = _open_fds()
    unread = lazy.next_batch(Cursor("", 0, 0))
    assert unread is not None and unread.pending is not None and _open_fds() == fds + 1
    del unread
    assert _open_fds() == fds


def test_a_file_truncated_before_its_deferred_read_is_a_gap_then_read_again(tmp_path: Path) -> None:
    """The file is cut between finding where a batch's lines end and reading them: the lines
    left are the batch, the rest a `truncated` gap, and the next batch reads the file again
    from its start, as for any truncation (rows stored already are not stored twice)."""
    st = stream(tmp_path)
    data = _lines(20_000)
    p = write(st, "20260105/9", data)
    t = tailer(st, batch_max_bytes=1 << 20)
    t.defer_reads = True
    b = t.next_batch(Cursor("", 0, 0))
    assert b is not None and b.pending is not None
    end = b.cursor.offset
    os.truncate(p, 50_000)  # mid-line
    got = b.loaded()
    cut = data[:50_000].rfind(b"\n") + 1
    assert got.data == data[:cut]
    assert [(g.file, g.start, g.end, g.reason) for g in got.gaps] == [("20260105/9", cut, end, "truncated")]
    write(st, "20260105/9", b"more\n")
    t.defer_reads = False
    again = t.next_batch(got.cursor)
    assert again is not None and again.start == 0 and again.data == data[:50_000] + b"more\n"
    assert [(g.start, g.reason) for g in again.gaps] == [(end, "truncated")]
