"""A job's files, as its backend keeps them: its logs and its outputs. Read-only; tenancy is checked
by the caller through `jobs.job_row_for_files`."""

from __future__ import annotations

import errno
import logging
import os
import stat
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import BinaryIO

from fabriek.backends.base import LOG_INDEX, Backend, Handle, LogStream
from fabriek.core.errors import Conflict, FilesRemoved, NotFound, OutputsTooLarge
from fabriek.core.units import format_bytes_apart
from fabriek.server.services import filetree, tarstream

log = logging.getLogger(__name__)


def read_log(
    backend: Backend,
    *,
    job_id: int,
    handle: Handle | None,
    stream: LogStream = "stdout",
    offset: int,
    limit: int,
    tail: int | None = None,
    since: datetime | None = None,
    removed_at: datetime | None = None,
) -> tuple[bytes, int]:
    """Up to `limit` bytes of the job's stdout (or stderr) and the offset they start at: from
    byte `offset`, or later where `since` (the first line written after that time, as far as the
    backend's log index tells; the whole log without one) or `tail` (the last `tail` lines)
    start later. Raises FilesRemoved once the retention policy removed the job's files
    (`removed_at`)."""
    if removed_at is not None:
        raise FilesRemoved(_removed(job_id, removed_at, "logs"))
    path = backend.log_path(job_id, handle, stream)
    if path is None:
        return b"", offset
    try:
        fd = open_job_file(path)
    except FileNotFoundError:
        return b"", offset
    except NotARegularFile:
        raise Conflict(
            f"job {job_id}'s {stream} log is not a regular file (the job replaced it, e.g. with a "
            "link or a pipe): there is no log to read"
        ) from None
    with os.fdopen(fd, "rb") as f:
        end = f.seek(0, os.SEEK_END)
        if since is not None:  # the index is the job's to write: never past the end
            offset = max(offset, _line_start(f, min(_size_at(path.parent, stream, since), end)))
        if tail is not None:
            offset = max(offset, _tail_start(f, tail))
        if offset >= end:  # nothing there yet (seeking to 2**62 failed: a 500)
            return b"", offset
        f.seek(offset)
        return f.read(limit), offset


class NotARegularFile(OSError):
    """A file the job may write is something else now: a link, a pipe, a directory, a device."""


def open_job_file(path: Path) -> int:
    """`path`, a file in a job's directory that the job can write, open for reading, if it is a
    regular file: a link is not followed (to another tenant's files), a FIFO neither blocks the
    open (a request hanging for ever, until the server had no workers left) nor is read. Raises
    FileNotFoundError, NotARegularFile, or the OSError of the open."""
    try:
        fd = os.open(path, filetree.FILE)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise NotARegularFile(errno.ELOOP, "a link", str(path)) from None
        raise
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise NotARegularFile(errno.EINVAL, "not a regular file", str(path))
    os.set_blocking(fd, True)
    return fd


# log.index lines are `TIME STDOUT STDERR`, about 40 bytes; the job can write anything there.
_INDEX_LINE = 256  # longest line read as one
_INDEX_STEPS = 64  # reads of a binary search: 2**64 bytes is beyond any file


def _size_at(job_dir: Path, stream: LogStream, moment: datetime) -> int:
    """How many bytes the log had at `moment`, from the backend's LOG_INDEX (0 without one, or
    with one that is not a regular file). The index is appended to in time order, so it is
    searched, not read: a few hundred bytes per request whatever its size (reading it whole, a
    job's 300 MB index without a newline grew the server by 300 MB a request)."""
    column = 1 if stream == "stdout" else 2
    when = moment.timestamp()
    try:
        fd = open_job_file(job_dir / LOG_INDEX)
    except OSError:
        return 0
    try:
        size = os.fstat(fd).st_size
        lo, hi, found = 0, size, 0
        for _ in range(_INDEX_STEPS):  # the line after `lo` is at `when` or before, after `hi` not
            if hi - lo <= _INDEX_LINE:
                break
            mid = (lo + hi) // 2
            line = _index_line(os.pread(fd, 2 * _INDEX_LINE, mid), column)
            if line is not None and line[0] <= when:
                lo, found = mid, line[1]
            else:
                hi = mid
        return _scan_index(os.pread(fd, hi - lo + 2 * _INDEX_LINE, lo), lo > 0, column, when, found)
    except OSError:
        return 0
    finally:
        os.close(fd)


def _index_line(chunk: bytes, column: int) -> tuple[float, int] | None:
    """The first whole line of `chunk` after its first newline, as (time, size)."""
    start = chunk.find(b"\n") + 1
    end = chunk.find(b"\n", start)
    return _index_fields(chunk[start:end], column) if start and end > 0 else None


def _index_fields(line: bytes, column: int) -> tuple[float, int] | None:
    fields = line.split()
    if len(fields) != 3:
        return None  # a line being written, or not one of ours
    try:
        return float(fields[0]), max(0, int(fields[column]))
    except ValueError:
        return None


def _scan_index(chunk: bytes, partial: bool, column: int, when: float, found: int) -> int:
    """The size on the last line of `chunk` at `when` or before (`found` without one); its first
    line is cut short where `partial`."""
    lines = chunk.split(b"\n")[:-1]  # (the last piece has no newline yet)
    for line in lines[1:] if partial else lines:
        fields = _index_fields(line, column)
        if fields is None:
            continue
        if fields[0] > when:
            break
        found = fields[1]
    return found


def _line_start(f: BinaryIO, offset: int) -> int:
    """`offset`, moved on to the start of the next line unless a line starts there."""
    if offset == 0:
        return 0
    f.seek(offset - 1)
    rest = f.read(64 * 1024)
    newline = rest.find(b"\n")
    return offset + newline if newline >= 0 else offset - 1 + len(rest)


TAIL_SCAN_MAX = 64 << 20  # bytes read backwards looking for the last lines' start


def _tail_start(f: BinaryIO, lines: int) -> int:
    """Where the last `lines` lines start (a last line without its newline counts as one), as
    far as the last TAIL_SCAN_MAX bytes tell: a job can make its log a sparse file of terabytes
    without a newline (ftruncate), which an unbounded scan would read for hours."""
    end = f.seek(0, os.SEEK_END)
    if lines <= 0 or end == 0:
        return end
    position, wanted = end, lines
    f.seek(end - 1)
    if f.read(1) == b"\n":
        wanted += 1  # the newline that ends the file ends the last line, it does not start one
    floor = max(0, end - TAIL_SCAN_MAX)
    while position > floor:
        step = min(64 * 1024, position - floor)
        position -= step
        f.seek(position)
        chunk = f.read(step)
        index = len(chunk)
        while (index := chunk.rfind(b"\n", 0, index)) >= 0:
            wanted -= 1
            if wanted == 0:
                return position + index + 1
    return floor


def outputs_archive(
    backend: Backend,
    *,
    job_id: int,
    handle: Handle | None,
    removed_at: datetime | None,
    max_bytes: int,
    max_entries: int,
) -> Iterator[bytes]:
    """What the job wrote to $FABRIEK_OUTPUT_DIR, as a gzip'd tar made while it is sent (see
    tarstream). Checked before a byte goes out: the files' sizes (a sparse file counts at its
    full size: it is read as such) against `max_bytes` and their number against `max_entries`,
    so that a download too big to afford is refused with what to do instead.

    A running job's outputs are packed as they are at this moment.
    """
    if removed_at is not None:
        raise FilesRemoved(_removed(job_id, removed_at, "outputs"))
    directory = backend.output_dir(job_id, handle)
    if directory is None:
        raise NotFound(f"job {job_id} has no outputs yet")
    try:
        found = filetree.measure(directory, limit=max_entries)
    except FileNotFoundError:
        raise NotFound(f"job {job_id} has no outputs yet") from None
    except NotADirectoryError:
        raise NotFound(
            f"job {job_id} has no outputs: it replaced its output directory with a file or a link"
        ) from None
    except filetree.TooManyEntries:
        raise OutputsTooLarge(
            f"job {job_id}'s outputs hold more than {max_entries:,} files and directories, more "
            "than one download may pack (outputs_download_max_entries); have the job pack them "
            "into fewer files, e.g. one tar"
        ) from None
    except filetree.TreeChanged:
        raise Conflict(f"job {job_id}'s outputs changed while they were read; try again") from None
    except OSError as exc:  # e.g. a directory the job made unreadable
        raise Conflict(f"job {job_id}'s outputs cannot be read: {exc.strerror}") from None
    if found.apparent_bytes > max_bytes:
        size, limit = format_bytes_apart(found.apparent_bytes, max_bytes)
        raise OutputsTooLarge(
            f"job {job_id}'s outputs are {size} (files at their full size, sparse ones too), "
            f"more than the {limit} one download "
            "may send (outputs_download_max_bytes); have the job write less to "
            "$FABRIEK_OUTPUT_DIR, or put large results in a dataset"
        )
    if found.longest_path > tarstream.MAX_PATH_BYTES:
        raise OutputsTooLarge(
            f"job {job_id}'s outputs hold a path of {found.longest_path:,} bytes, longer than "
            f"the {tarstream.MAX_PATH_BYTES:,} one download may pack (directories nested too "
            "deep, or names too long); have the job write a shallower tree"
        )
    return _sent(directory, job_id=job_id, max_bytes=max_bytes, max_entries=max_entries)


def _sent(directory: Path, *, job_id: int, max_bytes: int, max_entries: int) -> Iterator[bytes]:
    """The archive's pieces; a tree that grew past the limits meanwhile ends the answer
    unfinished (logged), so that the receiver sees a broken download, never a short one."""
    try:
        yield from tarstream.tar_gz(directory, max_bytes=max_bytes, max_entries=max_entries)
    except (tarstream.OverBudget, filetree.TooManyEntries, filetree.TreeChanged) as exc:
        log.warning("job %s's outputs: download ended unfinished: %s", job_id, exc)
        raise


def _removed(job_id: int, at: datetime, what: str) -> str:
    return (
        f"job {job_id}'s {what} were removed on {at:%Y-%m-%d} (at {at:%H:%M} UTC) by the "
        "factory's retention policy, which keeps a job's files a number of days after it ends"
    )
