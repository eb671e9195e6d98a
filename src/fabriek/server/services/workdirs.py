"""Uploaded workdirs: gzip'd tar archives, checked, stored once by their SHA-256."""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from sqlalchemy import bindparam, select
from sqlalchemy.orm import Session

from fabriek.core import workdir_archive
from fabriek.core.errors import InvalidRequest, NotFound, WorkdirTooLarge
from fabriek.core.workdir_archive import Checked, Limits
from fabriek.server.db.models import WorkdirRow, WorkdirUserRow
from fabriek.server.services import audit
from fabriek.server.services.actors import Actor
from fabriek.settings import Settings


@dataclass(frozen=True, slots=True)
class Workdir:
    digest: str
    size_bytes: int
    unpacked_bytes: int
    files: int


def archive_path(store: Path, digest: str) -> Path:
    return store / f"{digest}.tar.gz"


def limits_of(settings: Settings) -> Limits:
    """The limits every workdir archive is held to, at upload and where a job unpacks it."""
    return Limits(max_bytes=settings.workdir_max_bytes, max_entries=settings.workdir_max_entries)


def inspect_archive(path: Path, *, limits: Limits) -> Checked:
    """Check that `path` is a gzip'd tar that unpacks safely within `limits`: the one check
    (core.workdir_archive) that the job's supervisor runs again before it unpacks. Its work is
    bounded by the limits, and it stops at the first thing wrong."""
    try:
        return workdir_archive.check_file(str(path), limits)
    except workdir_archive.Refused as exc:
        raise (WorkdirTooLarge if exc.too_large else InvalidRequest)(str(exc)) from None


def keep_archive(*, upload: Path, store: Path, limits: Limits) -> Workdir:
    """Check the uploaded archive at `upload` and move it into the store under its SHA-256.

    Slow for big archives, so it runs before the transaction that records it, not inside it.
    """
    checked = inspect_archive(upload, limits=limits)
    sha = hashlib.sha256()
    with open(upload, "rb") as f:
        while chunk := f.read(1 << 20):
            sha.update(chunk)
    digest = sha.hexdigest()
    size = upload.stat().st_size
    store.mkdir(parents=True, exist_ok=True)
    os.replace(upload, archive_path(store, digest))
    return Workdir(digest, size, checked.unpacked_bytes, checked.files)


def record_workdir(session: Session, *, actor: Actor, workdir: Workdir, now: datetime) -> Workdir:
    """Record that `actor` uploaded `workdir` (kept by keep_archive); once per user and archive."""
    digest, size, unpacked, files = (
        workdir.digest,
        workdir.size_bytes,
        workdir.unpacked_bytes,
        workdir.files,
    )
    stored = session.get(WorkdirRow, digest)
    if stored is None:
        session.add(
            WorkdirRow(
                digest=digest,
                size_bytes=size,
                unpacked_bytes=unpacked,
                files=files,
                created_by=actor.user_id,
                created_at=now,
            )
        )
    elif not _has_uploaders(session, digest):  # removed by retention: stored again from now
        stored.created_at = now
    session.flush()
    if session.get(WorkdirUserRow, (digest, actor.user_id)) is None:
        session.add(WorkdirUserRow(digest=digest, user_id=actor.user_id))
        audit.record(
            session,
            actor=actor,
            action="workdir.upload",
            target_type="workdir",
            target_id=digest,
            at=now,
            size_bytes=size,
            unpacked_bytes=unpacked,
            files=files,
        )
    return Workdir(digest, size, unpacked, files)


def _has_uploaders(session: Session, digest: str) -> bool:
    found = session.scalar(select(WorkdirUserRow.user_id).where(WorkdirUserRow.digest == digest))
    return found is not None


def check_workdir(session: Session, *, actor: Actor, digest: str) -> None:
    """That this user uploaded the workdir `digest` (one indexed read; see get_workdir)."""
    found = (
        session.connection()
        .execute(_UPLOADED_BY, {"digest": digest, "user_id": actor.user_id})
        .first()
    )
    if found is None:
        raise NotFound(f"no workdir {digest} uploaded by you; upload it first")


_UPLOADED_BY = select(WorkdirUserRow.__table__.c.digest).where(
    WorkdirUserRow.__table__.c.digest == bindparam("digest"),
    WorkdirUserRow.__table__.c.user_id == bindparam("user_id"),
)


def get_workdir(session: Session, *, actor: Actor, digest: str) -> Workdir:
    """A workdir this user uploaded. Another user's archive is reported as absent, never shown."""
    row = session.get(WorkdirRow, digest)
    if row is None or session.get(WorkdirUserRow, (digest, actor.user_id)) is None:
        raise NotFound(f"no workdir {digest} uploaded by you; upload it first")
    return Workdir(row.digest, row.size_bytes, row.unpacked_bytes, row.files)
