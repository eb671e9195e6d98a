"""Pack a directory into a gzip'd tar for upload, honouring .gitignore and .fabriekignore.

The archive is deterministic (sorted entries, no owner names, gzip time zero), so packing the same
directory twice gives the same SHA-256 and the server is asked to store it only once.

What is left out (docs/jobs.md): `.git`; what the ignore files list; the folders of
DEFAULT_IGNORED (virtualenvs, caches, node_modules) unless an ignore file takes them back with
a `!` line (`!.venv/`); symbolic links that point outside the directory, and names the server
refuses (core.workdir_archive's rules: control characters, too long), one warning naming each
kind. Links that point inside it are kept as links. The walk stops as soon as what it has seen
passes the server's limits: the size (data and a tar header for each entry) or the entry count.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import stat
import tarfile
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import pathspec

from fabriek.core import workdir_archive
from fabriek.core.errors import InvalidRequest, WorkdirTooLarge
from fabriek.core.units import format_bytes

IGNORE_FILES = (".gitignore", ".fabriekignore")
ALWAYS_SKIPPED = {".git"}
# Folders no job needs from the user's machine: built for it, or caches. Left out unless an
# ignore file in the workdir takes one back (`!.venv/`).
DEFAULT_IGNORED = (
    ".venv/",
    "venv/",
    "__pycache__/",
    ".mypy_cache/",
    ".pytest_cache/",
    ".ruff_cache/",
    ".tox/",
    ".ipynb_checkpoints/",
    "node_modules/",
)
DEFAULT_LIMIT = workdir_archive.DEFAULT_LIMITS.max_bytes
DEFAULT_MAX_ENTRIES = workdir_archive.DEFAULT_LIMITS.max_entries
HEADER = 512  # a tar header: what every entry costs against the size limit, at least


class WorkdirWarning(UserWarning):
    """Something in the workdir was left out that the user may have meant to send."""


@dataclass(frozen=True, slots=True)
class PackedWorkdir:
    data: bytes
    digest: str
    files: int
    unpacked_bytes: int
    links_left_out: tuple[str, ...] = ()
    names_left_out: tuple[str, ...] = ()


@dataclass(slots=True)
class _Scan:
    """What a walk chose: entries (files, directories, links) relative to the root."""

    root: Path
    limit: int
    max_entries: int = DEFAULT_MAX_ENTRIES
    entries: list[Path] = field(default_factory=list)
    links: dict[Path, str] = field(default_factory=dict)  # kept link -> its target in the tree
    links_out: list[Path] = field(default_factory=list)
    names_out: list[str] = field(default_factory=list)  # shown as the server would quote them
    sizes: dict[Path, int] = field(default_factory=dict)
    total: int = 0  # the files' data
    stream: int = 0  # the tar stream's size, as the server counts it: headers and data

    def accepts(self, rel: Path) -> bool:
        """Whether the server takes this name; if not, it is left out (and, for a folder,
        everything in it), and one warning names it."""
        try:
            workdir_archive.check_name(rel.as_posix())
        except workdir_archive.Refused:
            self.names_out.append(workdir_archive.shown(rel.as_posix()))
            return False
        return True

    def add(self, rel: Path, size: int = 0) -> None:
        self.entries.append(rel)
        self.stream += HEADER + -(-size // HEADER) * HEADER
        if len(self.entries) > self.max_entries:  # stop: the rest is not worth walking
            raise WorkdirTooLarge(
                f"the workdir holds more than the limit of {self.max_entries} files, folders "
                f"and links ({_crowded(self.entries)}); list what the job does not need in "
                ".fabriekignore"
            )
        if self.stream > self.limit:
            biggest = sorted(self.sizes.items(), key=lambda kv: -kv[1])[:3]
            names = ", ".join(f"{p} ({format_bytes(s)})" for p, s in biggest)
            raise WorkdirTooLarge(
                f"the workdir holds more than the limit of {self.limit // 2**20} MiB, counting "
                f"{HEADER} bytes for each entry (largest: {names or 'none'}); list what the job "
                "does not need in .fabriekignore"
            )

    def add_file(self, rel: Path, size: int) -> None:
        self.sizes[rel] = size
        self.total += size
        self.add(rel, size)

    def add_link(self, rel: Path) -> None:
        target = _link_inside(self.root, rel)
        if target is None:
            self.links_out.append(rel)
            return
        try:
            workdir_archive.check_link(rel.as_posix(), target)
        except workdir_archive.Refused:
            self.names_out.append(workdir_archive.shown(f"{rel.as_posix()} -> {target}"))
            return
        self.links[rel] = target
        self.add(rel)


def _crowded(entries: list[Path]) -> str:
    """The top folders with the most entries, in words."""
    counts: dict[str, int] = {}
    for rel in entries:
        counts[rel.parts[0]] = counts.get(rel.parts[0], 0) + 1
    top = sorted(counts.items(), key=lambda kv: -kv[1])[:3]
    return "most in " + ", ".join(f"{name} ({n})" for name, n in top)


def _load_spec(directory: Path, defaults: tuple[str, ...] = ()) -> pathspec.PathSpec | None:
    lines: list[str] = list(defaults)
    for name in IGNORE_FILES:
        path = directory / name
        if path.is_file():
            lines += path.read_text(errors="replace").splitlines()
    return pathspec.GitIgnoreSpec.from_lines(lines) if lines else None


def _link_inside(root: Path, rel: Path) -> str | None:
    """The target of the link `rel` as a relative path from its directory, if it resolves to a
    place inside `root` (an absolute link into the tree is rewritten so); else None."""
    real_root = os.path.realpath(root)
    resolved = os.path.realpath(root / rel)
    if resolved != real_root and not resolved.startswith(real_root + os.sep):
        return None
    if os.path.realpath(root / rel.parent) != os.path.join(real_root, *rel.parent.parts):
        return None  # its directory is itself reached through a link: keep it simple
    return os.path.relpath(resolved, os.path.join(real_root, *rel.parent.parts))


def _scan(root: Path, limit: int, max_entries: int = DEFAULT_MAX_ENTRIES) -> _Scan:
    scan = _Scan(root, limit, max_entries)
    specs: list[tuple[Path, pathspec.PathSpec]] = []

    def ignored(path: Path, is_dir: bool) -> bool:
        # Each ignore file speaks about the paths below its own directory, relative to it.
        for base, spec in specs:
            if base == Path("."):
                rel = path.as_posix()
            elif base in path.parents:
                rel = path.relative_to(base).as_posix()
            else:
                continue
            if spec.match_file(rel + "/" if is_dir else rel):
                return True
        return False

    for current, dirs, files in os.walk(root):
        dirs.sort()
        rel_dir = Path(current).relative_to(root)
        spec = _load_spec(Path(current), DEFAULT_IGNORED if rel_dir == Path(".") else ())
        if spec is not None:
            specs.append((rel_dir, spec))
        keep_dirs = []
        for name in dirs:
            rel = rel_dir / name
            if name in ALWAYS_SKIPPED or ignored(rel, True) or not scan.accepts(rel):
                continue
            if (root / rel).is_symlink():  # os.walk lists links to directories here
                scan.add_link(rel)
                continue
            keep_dirs.append(name)
            scan.add(rel)
        dirs[:] = keep_dirs
        for name in sorted(files):
            rel = rel_dir / name
            if ignored(rel, False) or not scan.accepts(rel):
                continue
            mode = (root / rel).lstat()
            if stat.S_ISLNK(mode.st_mode):
                scan.add_link(rel)
            elif stat.S_ISREG(mode.st_mode):
                scan.add_file(rel, mode.st_size)
            # sockets, pipes and devices are left out
    return scan


def collect(
    root: Path, *, limit: int = DEFAULT_LIMIT, max_entries: int = DEFAULT_MAX_ENTRIES
) -> list[Path]:
    """The files, directories and kept links to pack, relative to `root`, sorted."""
    return sorted(_scan(root, limit, max_entries).entries)


def pack(
    root: Path, *, limit: int = DEFAULT_LIMIT, max_entries: int = DEFAULT_MAX_ENTRIES
) -> PackedWorkdir:
    """Pack `root`. Raises InvalidRequest for a missing directory, WorkdirTooLarge as soon as
    what it has seen passes `limit` (data and headers) or `max_entries`. Warns (WorkdirWarning)
    once for the links left out, once for the names left out."""
    if not root.is_dir():
        raise InvalidRequest(f"the workdir {str(root)!r} is not a directory")
    scan = _scan(root, limit, max_entries)
    if scan.names_out:
        warnings.warn(
            WorkdirWarning(
                f"left out {len(scan.names_out)} name{'s' if len(scan.names_out) > 1 else ''} "
                "the server does not accept (control characters, or longer than "
                f"{workdir_archive.MAX_PATH_BYTES} bytes or {workdir_archive.MAX_COMPONENT_BYTES} "
                f"a part): {', '.join(scan.names_out[:5])}"
                + (f" and {len(scan.names_out) - 5} more" if len(scan.names_out) > 5 else "")
            ),
            stacklevel=2,
        )
    if scan.links_out:
        names = ", ".join(str(p) for p in sorted(scan.links_out))
        warnings.warn(
            WorkdirWarning(
                f"left out {len(scan.links_out)} symbolic link"
                f"{'s' if len(scan.links_out) > 1 else ''} pointing outside the workdir: {names}"
            ),
            stacklevel=2,
        )
    buffer = io.BytesIO()
    with (
        gzip.GzipFile(fileobj=buffer, mode="wb", mtime=0, compresslevel=6) as gz,
        tarfile.open(fileobj=gz, mode="w", format=tarfile.PAX_FORMAT) as tar,
    ):
        for rel in sorted(scan.entries):
            tar.addfile(*_member(root, rel, scan.links.get(rel)))
            if tar.offset > limit:  # long names cost PAX headers the walk did not count
                raise WorkdirTooLarge(
                    f"the workdir's archive passes the limit of {limit // 2**20} MiB (data and "
                    "headers); list what the job does not need in .fabriekignore"
                )
    data = buffer.getvalue()
    return PackedWorkdir(
        data,
        hashlib.sha256(data).hexdigest(),
        len(scan.sizes),
        scan.total,
        tuple(str(p) for p in sorted(scan.links_out)),
        tuple(scan.names_out),
    )


def _member(root: Path, rel: Path, link: str | None) -> tuple[tarfile.TarInfo, io.BytesIO | None]:
    info = tarfile.TarInfo(rel.as_posix())
    st = (root / rel).lstat()
    info.mtime = int(st.st_mtime)
    info.mode = stat.S_IMODE(st.st_mode)
    if link is not None:
        info.type, info.linkname, info.mode = tarfile.SYMTYPE, link, 0o777
        return info, None
    if stat.S_ISDIR(st.st_mode):
        info.type = tarfile.DIRTYPE
        return info, None
    try:
        content = (root / rel).read_bytes()
    except OSError as exc:
        raise InvalidRequest(f"cannot read {rel} in the workdir: {exc.strerror}") from None
    info.size = len(content)
    return info, io.BytesIO(content)
