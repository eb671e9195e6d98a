"""Pack a directory into a gzip'd tar for upload, honouring .gitignore and .fabriekignore.

The archive is deterministic (sorted entries, no owner names, gzip time zero), so packing the same
directory twice gives the same SHA-256 and the server is asked to store it only once.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import stat
import tarfile
from dataclasses import dataclass
from pathlib import Path

import pathspec

from fabriek.core.errors import InvalidRequest, WorkdirTooLarge

IGNORE_FILES = (".gitignore", ".fabriekignore")
ALWAYS_SKIPPED = {".git"}
DEFAULT_LIMIT = 100 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class PackedWorkdir:
    data: bytes
    digest: str
    files: int
    unpacked_bytes: int


def _load_spec(directory: Path) -> pathspec.PathSpec | None:
    lines: list[str] = []
    for name in IGNORE_FILES:
        path = directory / name
        if path.is_file():
            lines += path.read_text(errors="replace").splitlines()
    return pathspec.GitIgnoreSpec.from_lines(lines) if lines else None


def collect(root: Path) -> list[Path]:
    """The files and directories to pack, relative to `root`, sorted; ignored ones left out."""
    specs: list[tuple[Path, pathspec.PathSpec]] = []
    chosen: list[Path] = []

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
        rel_dir = Path(current).relative_to(root)
        spec = _load_spec(Path(current))
        if spec is not None:
            specs.append((rel_dir, spec))
        keep_dirs = []
        for name in sorted(dirs):
            rel = rel_dir / name
            if name in ALWAYS_SKIPPED or ignored(rel, True):
                continue
            keep_dirs.append(name)
            chosen.append(rel)
        dirs[:] = keep_dirs
        for name in sorted(files):
            rel = rel_dir / name
            if not ignored(rel, False):
                chosen.append(rel)
    return sorted(chosen)


def pack(root: Path, *, limit: int = DEFAULT_LIMIT) -> PackedWorkdir:
    """Pack `root`. Raises InvalidRequest for a missing directory, WorkdirTooLarge beyond `limit`."""
    if not root.is_dir():
        raise InvalidRequest(f"the workdir {str(root)!r} is not a directory")
    entries = []
    for rel in collect(root):
        mode = (root / rel).lstat().st_mode
        if stat.S_ISLNK(mode):
            raise InvalidRequest(
                f"the workdir holds a symbolic link, {rel}; fabriek uploads no links: "
                "list it in .fabriekignore or replace it with what it points to"
            )
        if stat.S_ISREG(mode) or stat.S_ISDIR(mode):
            entries.append(rel)  # sockets, pipes and devices are left out
    sizes = {p: (root / p).lstat().st_size for p in entries if (root / p).is_file()}
    total = sum(sizes.values())
    if total > limit:
        biggest = sorted(sizes.items(), key=lambda kv: -kv[1])[:3]
        names = ", ".join(f"{p} ({s // 2**20} MiB)" for p, s in biggest)
        raise WorkdirTooLarge(
            f"the workdir holds {total // 2**20} MiB, over the limit of {limit // 2**20} MiB "
            f"(largest: {names}); list what the job does not need in .fabriekignore"
        )
    buffer = io.BytesIO()
    with (
        gzip.GzipFile(fileobj=buffer, mode="wb", mtime=0, compresslevel=6) as gz,
        tarfile.open(fileobj=gz, mode="w", format=tarfile.PAX_FORMAT) as tar,
    ):
        for rel in entries:
            info = tar.gettarinfo(str(root / rel), arcname=rel.as_posix())
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            if info.isfile():
                try:
                    with open(root / rel, "rb") as f:
                        tar.addfile(info, f)
                except OSError as exc:
                    raise InvalidRequest(
                        f"cannot read {rel} in the workdir: {exc.strerror}"
                    ) from None
            else:
                tar.addfile(info)
    data = buffer.getvalue()
    return PackedWorkdir(data, hashlib.sha256(data).hexdigest(), len(sizes), total)
