"""Workdir archives: the one check of what a workdir's .tar.gz may hold, and the one way to unpack it.

The server runs `check_file` on every upload; the job's supervisor (local backend) and the Slurm
wrapper unpack with `unpack`, which runs the same check and then extracts exactly the entries it
checked. So an archive the server accepted unpacks, and one it would refuse is never unpacked.

An archive is accepted when, read from its start and stopping at the first thing wrong:

- it is a gzip'd tar whose entries are regular files, directories and symbolic links only;
- it has at most `Limits.max_entries` entries, and its uncompressed tar stream (each entry's
  headers, long names included, and its data) stays within `Limits.max_bytes`;
- every name is relative, made of components that are neither empty, `.` nor `..` (one leading
  `./`, as `tar -C dir .` writes, is allowed and dropped; the entry `./` itself, the top directory,
  is skipped), at most MAX_PATH_BYTES long in all and MAX_COMPONENT_BYTES per component (UTF-8),
  without control characters (C0, DEL, C1);
- no name is given twice, and nothing lies below a file or a symbolic link (`a` then `a/b`);
- a symbolic link's target is relative, goes up (`..`) only at its start and never above the top,
  and passes through no other link: so it stays inside however the entries are unpacked.

Standard library only, and plain enough for Python 3.9: the local supervisor imports it with
`python -I -S`, and the Slurm backend copies this file next to its wrapper on the cluster's shared
filesystem, where a node needs a Python, not fabriek. Its errors are its own (`Refused`); the
server maps them to its error hierarchy.
"""

from __future__ import annotations

import bisect
import contextlib
import copy
import gzip
import io
import itertools
import os
import re
import tarfile
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, BinaryIO

MAX_PATH_BYTES = 1024
"""Longest name (and symbolic link target) in bytes. Leaves room under Linux's PATH_MAX (4096) for
the job's directory the workdir is unpacked in, and bounds a tree's depth to 512 levels."""
MAX_COMPONENT_BYTES = 255  # NAME_MAX of Linux filesystems
TOO_LONG_SHOWN = 80  # characters of a refused name quoted in an error

_ALLOWED_TYPES = (tarfile.REGTYPE, tarfile.AREGTYPE, tarfile.DIRTYPE, tarfile.SYMTYPE)
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f]")  # C0, DEL and C1
_NOT_COMPONENTS = frozenset(("", ".", ".."))
_NOT_STEPS = frozenset(("", "."))  # of a link's target, skipped as a path lookup skips them


class Refused(ValueError):
    """The archive is not accepted. `too_large`: it passes a limit of size or entry count."""

    def __init__(self, message: str, *, too_large: bool = False) -> None:
        super().__init__(message)
        self.too_large = too_large


@dataclass(frozen=True)
class Limits:
    max_bytes: int  # of the uncompressed tar stream: headers and data
    max_entries: int


DEFAULT_LIMITS = Limits(max_bytes=100 * 2**20, max_entries=100_000)  # the settings' defaults


@dataclass(frozen=True)
class Checked:
    unpacked_bytes: int  # the files' data
    files: int
    entries: int
    tar_bytes: int  # the uncompressed stream read, headers included
    members: list[tarfile.TarInfo]  # what to extract, canonically named (only when kept)


def shown(text: str, limit: int = TOO_LONG_SHOWN) -> str:
    """`text` quoted for an error message, control characters escaped, at most `limit` characters."""
    quoted = repr(text[: limit + 1])
    return quoted if len(text) <= limit else quoted[:-1] + "…" + quoted[-1]


def _check_text(text: str, what: str) -> None:
    # Every test here is one C-level call (isprintable or a regular expression, encode, split,
    # max), not a loop in Python: a hostile archive's names cost their bytes, not their depth.
    if not text.isprintable() if text.isascii() else _CONTROL.search(text):
        raise Refused(
            f"the workdir archive holds an unsafe {what}: {shown(text)} has a control character"
        )
    encoded = text.encode("utf-8", "surrogateescape")
    if len(encoded) > MAX_PATH_BYTES:
        raise Refused(
            f"the workdir archive holds a {what} of {len(encoded)} bytes, longer than the limit "
            f"of {MAX_PATH_BYTES}: {shown(text)}"
        )
    if text.startswith("/"):
        raise Refused(f"the workdir archive holds an unsafe {what}: {shown(text)} is absolute")
    if (
        len(encoded) > MAX_COMPONENT_BYTES
        and max(map(len, encoded.split(b"/"))) > MAX_COMPONENT_BYTES
    ):
        raise Refused(
            f"the workdir archive holds an unsafe {what}: {shown(text)} has a component longer "
            f"than {MAX_COMPONENT_BYTES} bytes"
        )


def check_name(name: str) -> str:
    """The canonical form of an entry's name (a leading `./` dropped; `.` for the top itself), or
    Refused saying what is wrong with it."""
    _check_text(name, "name")
    canonical = name[2:] if name.startswith("./") else name
    if canonical in ("", "."):
        return "."
    if not _NOT_COMPONENTS.isdisjoint(canonical.split("/")):
        raise Refused(
            f"the workdir archive holds an unsafe name: {shown(name)} has an empty, '.' or '..' "
            "component"
        )
    return canonical


class _Bounded(io.RawIOBase):
    """The uncompressed stream, refusing to be read or sought past `limit` bytes: tarfile reads a
    long-name or PAX header whole, and a gzip'd run of zeros can claim gigabytes for one."""

    def __init__(self, inner: Any, limit: int) -> None:
        self.inner, self.limit, self.pos = inner, limit, 0

    def _refuse(self) -> Refused:
        return Refused(
            f"the workdir archive unpacks to more than the limit of {_mib(self.limit)} "
            "(headers and data); leave large data out with .fabriekignore",
            too_large=True,
        )

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:
        if size is None or size < 0:
            size = self.limit + 1 - self.pos
        if self.pos + size > self.limit:
            raise self._refuse()  # before reading: the archive says what follows is that long
        data: bytes = self.inner.read(size)
        self.pos += len(data)
        return data

    def seek(self, offset: int, whence: int = 0) -> int:
        target = offset if whence == 0 else self.pos + offset
        if whence not in (0, 1) or target > self.limit:
            raise self._refuse()
        self.pos = self.inner.seek(target)
        return self.pos

    def tell(self) -> int:
        return self.pos


def _mib(n: int) -> str:
    return f"{n / 2**20:g} MiB"


def _kind_refused(member: tarfile.TarInfo) -> Refused | None:
    if member.type in _ALLOWED_TYPES and member.sparse is None:
        return None
    return Refused(
        f"the workdir archive holds {shown(member.name)}, which is not a plain file, directory or "
        "symbolic link; hard links, sparse and special files are not accepted"
    )


# What os.utime takes on every platform we run on (a 64-bit time_t takes more, a float not all).
_LATEST_MTIME = 2**33


def _fields_refused(member: tarfile.TarInfo) -> Refused | None:
    """A PAX header may say anything: a negative size (which tarfile believes, and unpacking
    then fails on) or an mtime no file can have (1e999)."""
    if member.size < 0:
        return Refused(f"the workdir archive gives {shown(member.name)} a negative size")
    mtime = member.mtime
    if not isinstance(mtime, (int, float)) or not -_LATEST_MTIME < mtime < _LATEST_MTIME:
        return Refused(
            f"the workdir archive gives {shown(member.name)} a modification time no file can have"
        )
    return None


def check(
    tar: tarfile.TarFile,
    limits: Limits,
    *,
    keep: bool = False,
    progress: Callable[[], None] | None = None,
) -> Checked:
    """Read and check every entry of `tar` (opened on a stream bounded by limits.max_bytes, as
    `open_bounded` does), stopping at the first refusal. `keep`: return the entries to extract,
    renamed to their canonical names. `progress` is called before each entry; it may raise to stop."""
    data = files = entries = 0
    kinds = {}  # canonical name -> its tar type
    links = {}  # name -> where it points, relative to the top
    kept = []
    while True:
        if progress is not None:
            progress()
        member = tar.next()
        if member is None:
            break
        if not keep:  # tarfile keeps every entry it reads; the upload check needs none
            tar.members.clear()  # type: ignore[attr-defined]
        entries += 1
        if entries > limits.max_entries:
            raise Refused(
                f"the workdir archive holds more than the limit of {limits.max_entries} entries; "
                "leave what the job does not need out with .fabriekignore",
                too_large=True,
            )
        refused = _kind_refused(member) or _fields_refused(member)
        if refused is not None:
            raise refused
        name = check_name(member.name)
        if name == ".":
            if not member.isdir():
                raise Refused(
                    f"the workdir archive holds {shown(member.name)}, which names the top "
                    "directory itself"
                )
            continue  # the job's workdir is made by fabriek: its own mode, never the archive's
        if name in kinds:
            raise Refused(f"the workdir archive holds {shown(name)} twice")
        if member.issym():
            links[name] = check_link(name, member.linkname)
        kinds[name] = member.type
        data += member.size
        files += member.isfile()
        if keep:
            if name != member.name:
                member = copy.copy(member)
                member.name = name
            kept.append(member)
    _check_tree(kinds, links)
    return Checked(data, files, entries, tar.offset, kept)


def check_link(name: str, target: str) -> str:
    """Where the symbolic link `name` -> `target` points, relative to the top, or Refused: the
    target must be relative, without control characters, within the name lengths, with `..`
    only at its start and never above the top. (That it passes through no other link is
    `check`'s, which sees them all.)"""
    if not target or target.startswith("/"):
        raise Refused(
            "the workdir archive holds a symbolic link that may leave its directory: "
            f"{shown(name)} -> {shown(target)} (empty or absolute)"
        )
    _check_text(target, "symbolic link target")
    return _resolve_link(name, target)


def _check_tree(kinds: dict[str, bytes], resolved: dict[str, str]) -> None:
    """Nothing lies below a file or a link, and no link passes through another (see the module's
    docstring): sorted names put everything below `x` right after `x/`, so each question is one
    binary search, whatever the archive's depth."""
    names = sorted(set(kinds) | set(resolved.values()))
    for name, kind in kinds.items():
        if kind == tarfile.DIRTYPE:
            continue
        below = _first_below(names, name)
        if below is None:
            continue
        what = "symbolic link" if kind == tarfile.SYMTYPE else "file"
        if below in kinds:
            raise Refused(
                f"the workdir archive holds {shown(below)} below the {what} {shown(name)}"
            )
        link = next(k for k, v in resolved.items() if v == below)
        raise Refused(
            f"the workdir archive holds a symbolic link that may leave its directory: "
            f"{shown(link)} points through the {what} {shown(name)}"
        )


def _first_below(names: list[str], name: str) -> str | None:
    prefix = name + "/"
    at = bisect.bisect_left(names, prefix)
    return names[at] if at < len(names) and names[at].startswith(prefix) else None


def _resolve_link(name: str, target: str) -> str:
    """Where the link `name` -> `target` points, lexically, relative to the top: its `..` come
    first and stay inside. (In C-level steps: a target may have 512 of them.)"""
    steps = list(itertools.filterfalse(_NOT_STEPS.__contains__, target.split("/")))
    ups = len(list(itertools.takewhile("..".__eq__, steps)))
    at = name.split("/")[:-1]
    if ".." in steps[ups:] or ups > len(at):
        # `a/../b` may climb out through a link `a`: only leading `..` are accepted
        raise Refused(
            f"the workdir archive holds a symbolic link that may leave its directory: "
            f"{shown(name)} -> {shown(target)}"
        )
    return "/".join(at[: len(at) - ups] + steps[ups:]) or "."


@contextlib.contextmanager
def open_bounded(path: str | BinaryIO, limits: Limits) -> Iterator[tarfile.TarFile]:
    """`path` (or a file open for reading, left open), a gzip'd tar, opened for `check`: its
    uncompressed stream bounded by the limits."""
    raw_file: Any = open(path, "rb") if isinstance(path, str) else contextlib.nullcontext(path)  # noqa: SIM115
    # Nested, not parenthesised: this file must parse on Python 3.9 (a Slurm node's).
    with raw_file as raw, gzip.GzipFile(fileobj=raw, mode="rb") as gz:  # noqa: SIM117
        with tarfile.open(fileobj=_Bounded(gz, limits.max_bytes), mode="r:") as tar:
            yield tar


def _refused_reading(exc: BaseException) -> Refused:
    if isinstance(exc, RecursionError):  # tarfile follows chained extended headers recursively
        return Refused("the workdir archive chains too many extended headers")
    return Refused(f"the workdir is not a readable .tar.gz archive: {shown(str(exc), 200)}")


_READ_ERRORS = (tarfile.TarError, zlib.error, EOFError, OSError, ValueError, RecursionError)


def check_file(path: str, limits: Limits) -> Checked:
    """Check the archive at `path`; Refused at the first thing wrong (see the module's docstring).
    Its work is bounded by the limits: at most max_entries headers and max_bytes decompressed."""
    try:
        with open_bounded(path, limits) as tar:
            return check(tar, limits)
    except Refused:
        raise
    except _READ_ERRORS as exc:
        raise _refused_reading(exc) from exc


def unpack(
    path: str | BinaryIO,
    dest: str,
    limits: Limits,
    *,
    progress: Callable[[], None] | None = None,
) -> Checked:
    """Check the archive at `path` (or open as `path`: a supervisor opens it before it takes the
    job's identity to extract) as the upload did, then extract the entries it checked into the
    directory `dest` (which exists). `progress` is called before each entry is read and before each
    is extracted: raising there stops the unpacking at once (a cancel, a time limit)."""
    try:
        with open_bounded(path, limits) as tar:
            checked = check(tar, limits, keep=True, progress=progress)
            options = _extract_options()
            members = checked.members if options else [_plain(m) for m in checked.members]
            tar.extractall(dest, members=_each(members, progress), **options)
    except Refused:
        raise
    except _READ_ERRORS as exc:
        if isinstance(exc, OSError) and exc.filename is not None:
            raise  # writing the workdir failed (disk full, ...): not the archive's fault
        raise _refused_reading(exc) from exc
    return checked


def _each(members: list[tarfile.TarInfo], progress: Callable[[], None] | None) -> Any:
    for member in members:
        if progress is not None:
            progress()
        yield member


def _extract_options() -> dict[str, Any]:
    """tarfile's "data" filter where this Python has it (3.9.17, 3.10.12, 3.11.4 and later): a
    second guard behind `check`; it also drops owners and unsafe mode bits."""
    return {"filter": "data"} if hasattr(tarfile, "data_filter") else {}


def _plain(member: tarfile.TarInfo) -> tarfile.TarInfo:
    """What the data filter does to owners and modes, for a Python without it."""
    plain = copy.copy(member)
    plain.uid, plain.gid, plain.uname, plain.gname = os.getuid(), os.getgid(), "", ""
    if plain.isfile():
        plain.mode = 0o755 if plain.mode & 0o100 else 0o644
    elif plain.isdir():
        plain.mode = 0o755
    return plain
