"""Uploaded workdirs: gzip'd tar archives, checked, stored once by their SHA-256."""

from __future__ import annotations

import hashlib
import os
import posixpath
import tarfile
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from sqlalchemy import bindparam, select
from sqlalchemy.orm import Session

from fabriek.core.errors import InvalidRequest, NotFound, WorkdirTooLarge
from fabriek.server.db.models import WorkdirRow, WorkdirUserRow
from fabriek.server.services import audit
from fabriek.server.services.actors import Actor


@dataclass(frozen=True, slots=True)
class Workdir:
    digest: str
    size_bytes: int
    unpacked_bytes: int
    files: int


def archive_path(store: Path, digest: str) -> Path:
    return store / f"{digest}.tar.gz"


def inspect_archive(path: Path, *, max_unpacked: int) -> tuple[int, int]:
    """Check that `path` is a gzip'd tar that unpacks safely within `max_unpacked` bytes.

    Returns (unpacked bytes, number of files). Rejects absolute paths, `..`, device files, hard
    links, a name given twice, and symbolic links unless each stays inside the directory
    (`_check_links`); the job's supervisor unpacks with tarfile's "data" filter as well.
    """
    total = files = 0
    dest = "/nonexistent-fabriek-check"
    names: set[str] = set()
    links: dict[str, str] = {}
    try:
        with tarfile.open(path, "r:gz") as tar:
            for member in tar:
                if not (member.isfile() or member.isdir() or member.issym()):
                    raise InvalidRequest(
                        f"the workdir archive holds {member.name!r}, which is not a plain file, "
                        "directory or symbolic link; hard links and special files are not accepted"
                    )
                if member.name.startswith("/") or (
                    _normal(member.name) == "." and not member.isdir()
                ):
                    # tarfile's filter strips a leading /, so `/a` would unpack as `a` and pass
                    # every check below under another name than it lands at (found in review)
                    raise InvalidRequest(
                        f"the workdir archive holds an unsafe entry: {member.name!r} is absolute "
                        "or names the top directory itself"
                    )
                try:
                    tarfile.data_filter(member, dest)
                except tarfile.FilterError as exc:
                    raise InvalidRequest(
                        f"the workdir archive holds an unsafe entry: {exc}"
                    ) from exc
                if ".." in member.name.split("/"):  # resolved on disk, `..` may follow a link
                    raise InvalidRequest(
                        f"the workdir archive holds an unsafe entry: {member.name!r} has '..'"
                    )
                name = _normal(member.name)
                if name in names:
                    raise InvalidRequest(f"the workdir archive holds {name!r} twice")
                names.add(name)
                if member.issym():
                    links[name] = member.linkname
                total += member.size
                files += member.isfile()
                if total > max_unpacked:
                    raise WorkdirTooLarge(
                        f"the workdir unpacks to more than the limit of {max_unpacked // 2**20} MiB; "
                        "leave large data out with .fabriekignore"
                    )
    except (tarfile.TarError, EOFError, OSError) as exc:
        raise InvalidRequest(f"the workdir is not a readable .tar.gz archive: {exc}") from exc
    _check_links(names, links)
    return total, files


def _normal(name: str) -> str:
    return posixpath.normpath(name).removeprefix("./")  # "" and "./" become "."


def _check_links(names: set[str], links: dict[str, str]) -> None:
    """Every symbolic link must resolve inside the directory whatever order the entries are
    unpacked in: its target is relative and, followed from the link's directory, never goes
    above the top and passes through no other link (only its last step may be one, itself
    checked so); and no entry lies below a link (unpacking it would write through the link).
    Followed lexically, then, each step is a real directory of the archive, so the lexical
    answer is the true one. tarfile's data filter alone is not trusted with links: Pythons
    before 3.11.13 and 3.12.11 could be led outside through chains of them."""
    for name in names:
        parts = name.split("/")
        for depth in range(1, len(parts)):
            if "/".join(parts[:depth]) in links:
                raise InvalidRequest(
                    f"the workdir archive holds {name!r} below the symbolic link "
                    f"{'/'.join(parts[:depth])!r}"
                )
    for name, target in links.items():
        unsafe = InvalidRequest(
            f"the workdir archive holds a symbolic link that may leave its directory: "
            f"{name!r} -> {target!r}"
        )
        if not target or target.startswith("/"):
            raise unsafe
        steps = [s for s in target.split("/") if s not in ("", ".")]
        at = name.split("/")[:-1]
        for i, step in enumerate(steps):
            if step == "..":
                if not at:
                    raise unsafe
                at.pop()
                continue
            at.append(step)
            if i < len(steps) - 1 and "/".join(at) in links:
                raise unsafe


def keep_archive(*, upload: Path, store: Path, max_unpacked: int) -> Workdir:
    """Check the uploaded archive at `upload` and move it into the store under its SHA-256.

    Slow for big archives, so it runs before the transaction that records it, not inside it.
    """
    unpacked, files = inspect_archive(upload, max_unpacked=max_unpacked)
    sha = hashlib.sha256()
    with open(upload, "rb") as f:
        while chunk := f.read(1 << 20):
            sha.update(chunk)
    digest = sha.hexdigest()
    size = upload.stat().st_size
    store.mkdir(parents=True, exist_ok=True)
    os.replace(upload, archive_path(store, digest))
    return Workdir(digest, size, unpacked, files)


def record_workdir(session: Session, *, actor: Actor, workdir: Workdir, now: datetime) -> Workdir:
    """Record that `actor` uploaded `workdir` (kept by keep_archive); once per user and archive."""
    digest, size, unpacked, files = (
        workdir.digest,
        workdir.size_bytes,
        workdir.unpacked_bytes,
        workdir.files,
    )
    if session.get(WorkdirRow, digest) is None:
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
