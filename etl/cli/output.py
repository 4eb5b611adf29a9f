"""Printing rows: aligned plain-text tables with plain decimals and ISO times, or CSV, JSON,
Parquet."""

from __future__ import annotations

import contextlib
import os
import stat
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import date, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any, BinaryIO

import orjson
import polars as pl

from etl.cli.common import CliError

FORMATS = ("table", "csv", "json", "ndjson", "parquet")
BY_EXTENSION = {".parquet": "parquet", ".csv": "csv", ".json": "json", ".ndjson": "ndjson"}


def cell(value: Any) -> str:
    """A value as a table shows it: `17810207.0` not `1.7810207e7`, `3.56208` not
    `3.5620800000000004`, ISO times, `-` for null."""
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        if value != value or value in (float("inf"), float("-inf")):
            return str(value)
        # 15 significant digits: all a double holds, without its binary noise; no exponent
        text = format(Decimal(format(value, ".15g")), "f")
        return text if "." in text else text + ".0"
    if isinstance(value, datetime):
        return value.isoformat(timespec="milliseconds" if value.microsecond % 1000 == 0
                               and value.microsecond else "auto")
    if isinstance(value, date):
        return value.isoformat()
    return str(value)


def table(columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """Columns padded to their widest cell; numbers right-aligned."""
    shown = [[cell(v) for v in r] for r in rows]
    widths = [max([len(c)] + [len(r[i]) for r in shown]) for i, c in enumerate(columns)]
    numeric = [bool(rows) and all(isinstance(r[i], int | float) and not isinstance(r[i], bool)
                                  for r in rows if r[i] is not None) for i in range(len(columns))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(columns, widths, strict=True)).rstrip()]
    for r in shown:
        lines.append("  ".join(v.rjust(w) if num else v.ljust(w)
                               for v, w, num in zip(r, widths, numeric, strict=True)).rstrip())
    return "\n".join(lines)


def output_format(fmt: str | None, out: str | None) -> str:
    """The format to write: `--format`, else the `-o` file's extension (BY_EXTENSION), else a
    table. A `--format` the extension contradicts (`--format csv -o x.parquet`) is refused."""
    by_name = BY_EXTENSION.get(Path(out).suffix.lower()) if out else None
    if fmt is None:
        return by_name or "table"
    if by_name is not None and by_name != fmt:
        raise CliError(f"--format {fmt} but -o {out} names a {by_name} file: drop --format (the "
                       f"extension says {by_name}), or name the file for {fmt}")
    return fmt


def check_output(out: str, flag: str = "-o") -> Path:
    """Refuse, before any work, an output path that cannot be a file: a directory, or one in
    a directory that does not exist."""
    path = Path(out)
    if path.is_dir():
        raise CliError(f"{flag} {out} is a directory: name a file in it, e.g. {path / ('out' + path.suffix)}")
    parent = path.parent
    if not parent.exists():
        raise CliError(f"{flag} {out}: directory {parent} does not exist; create it first "
                       f"(mkdir -p {parent}) or write elsewhere")
    if not parent.is_dir():
        raise CliError(f"{flag} {out}: {parent} is not a directory")
    return path


@contextmanager
def output_file(out: str, flag: str = "-o") -> Iterator[BinaryIO]:
    """A file to write `out` through: it gets its name only once it is whole, so a failed
    write leaves no partial file behind (nor replaces a good one). Anything at `out` but a
    regular file (a pipe, `/dev/stdout`, a link) is written through, not replaced."""
    path = check_output(out, flag)
    try:
        regular = stat.S_ISREG(os.lstat(path).st_mode)
    except FileNotFoundError:
        regular = True
    if not regular:
        try:
            with open(path, "wb") as f:
                yield f
        except OSError as err:
            raise CliError(f"cannot write {flag} {out}: {err.strerror or err}") from err
        return
    partial = path.with_name(f".{path.name}.{os.getpid()}.partial")
    try:
        with open(partial, "wb") as f:
            yield f
        os.replace(partial, path)
    except OSError as err:
        raise CliError(f"cannot write {flag} {out}: {err.strerror or err}") from err
    finally:
        # a file system that refused the write refuses this too (EROFS): the error to say is the first
        with contextlib.suppress(OSError):
            partial.unlink(missing_ok=True)


def write_frame(frame: pl.DataFrame, fmt: str, out: str | None) -> None:
    """`frame` to `out` (standard output when None) in one of FORMATS."""
    if fmt == "parquet":
        if not out:
            raise CliError("--format parquet needs -o FILE")
        with output_file(out) as f:
            frame.write_parquet(f, compression="zstd")
        return
    if fmt == "csv":
        text = frame.write_csv()
    elif fmt == "json":
        text = orjson.dumps(frame.to_dicts(), default=str, option=orjson.OPT_INDENT_2).decode() + "\n"
    elif fmt == "ndjson":
        text = "".join(orjson.dumps(row, default=str).decode() + "\n" for row in frame.iter_rows(named=True))
    else:
        text = table(frame.columns, frame.rows()) + "\n"
    if out:
        with output_file(out) as f:
            f.write(text.encode())
    else:
        sys.stdout.write(text)
