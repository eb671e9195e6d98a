"""A job's files, as its backend keeps them: the log and the outputs. Read-only; tenancy is checked
by the caller through `jobs.job_row_for_files`."""

from __future__ import annotations

import os
import tarfile
import tempfile
from pathlib import Path

from fabriek.backends.base import Backend, Handle
from fabriek.core.errors import Conflict, NotFound


def read_log(
    backend: Backend, *, job_id: int, handle: Handle | None, offset: int, limit: int
) -> bytes:
    """Up to `limit` bytes of the job's combined stdout and stderr from byte `offset`."""
    path = backend.log_path(job_id, handle)
    if path is None:
        return b""
    try:
        with open(path, "rb") as f:
            f.seek(offset)
            return f.read(limit)
    except FileNotFoundError:
        return b""


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
