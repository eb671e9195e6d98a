"""A job's files, as its backend keeps them: its logs and its outputs. Read-only; tenancy is checked
by the caller through `jobs.job_row_for_files`."""

from __future__ import annotations

import os
import tarfile
import tempfile
from datetime import datetime
from pathlib import Path
from typing import BinaryIO

from fabriek.backends.base import LOG_INDEX, Backend, Handle, LogStream
from fabriek.core.errors import Conflict, NotFound


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
) -> tuple[bytes, int]:
    """Up to `limit` bytes of the job's stdout (or stderr) and the offset they start at: from
    byte `offset`, or later where `since` (the first line written after that time, as far as the
    backend's log index tells; the whole log without one) or `tail` (the last `tail` lines)
    start later."""
    path = backend.log_path(job_id, handle, stream)
    if path is None:
        return b"", offset
    try:
        with open(path, "rb") as f:
            end = f.seek(0, os.SEEK_END)
            if since is not None:  # the index is the job's to write: never past the end
                offset = max(offset, _line_start(f, min(_size_at(path.parent, stream, since), end)))
            if tail is not None:
                offset = max(offset, _tail_start(f, tail))
            if offset >= end:  # nothing there yet (seeking to 2**62 failed: a 500)
                return b"", offset
            f.seek(offset)
            return f.read(limit), offset
    except FileNotFoundError:
        return b"", offset


def _size_at(job_dir: Path, stream: LogStream, moment: datetime) -> int:
    """How many bytes the log had at `moment`, from the backend's LOG_INDEX (0 without one)."""
    column = 1 if stream == "stdout" else 2
    when, size = moment.timestamp(), 0
    try:
        with open(job_dir / LOG_INDEX) as f:
            for line in f:
                fields = line.split()
                if len(fields) != 3:
                    continue  # a line being written
                if float(fields[0]) > when:
                    break
                size = max(0, int(fields[column]))
    except (OSError, ValueError):
        return 0
    return size


def _line_start(f: BinaryIO, offset: int) -> int:
    """`offset`, moved on to the start of the next line unless a line starts there."""
    if offset == 0:
        return 0
    f.seek(offset - 1)
    rest = f.read(64 * 1024)
    newline = rest.find(b"\n")
    return offset + newline if newline >= 0 else offset - 1 + len(rest)


def _tail_start(f: BinaryIO, lines: int) -> int:
    """Where the last `lines` lines start (a last line without its newline counts as one)."""
    end = f.seek(0, os.SEEK_END)
    if lines <= 0 or end == 0:
        return end
    position, wanted = end, lines
    f.seek(end - 1)
    if f.read(1) == b"\n":
        wanted += 1  # the newline that ends the file ends the last line, it does not start one
    while position > 0:
        step = min(64 * 1024, position)
        position -= step
        f.seek(position)
        chunk = f.read(step)
        index = len(chunk)
        while (index := chunk.rfind(b"\n", 0, index)) >= 0:
            wanted -= 1
            if wanted == 0:
                return position + index + 1
    return 0


def pack_outputs(backend: Backend, *, job_id: int, handle: Handle | None, scratch: Path) -> Path:
    """A gzip'd tar of what the job wrote to $FABRIEK_OUTPUT_DIR, in `scratch`; the caller deletes it.

    A running job's outputs are packed as they are at this moment.
    """
    directory = backend.output_dir(job_id, handle)
    if directory is None or not directory.is_dir():
        raise NotFound(f"job {job_id} has no outputs yet")
    scratch.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(suffix=".tar.gz", dir=scratch)
    try:
        with os.fdopen(fd, "wb") as f, tarfile.open(fileobj=f, mode="w:gz") as tar:
            tar.add(directory, arcname=".")
    except OSError as exc:  # e.g. a file vanished while a running job rewrote its outputs
        os.unlink(name)
        raise Conflict(
            f"job {job_id}'s outputs changed while they were packed; try again ({exc})"
        ) from exc
    return Path(name)
