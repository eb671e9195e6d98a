"""make_* helpers for workdir archives, hostile ones included (tests of core.workdir_archive, the
upload, the local supervisor and the Slurm wrapper)."""

from __future__ import annotations

import gzip
import io
import tarfile
from collections.abc import Iterable
from pathlib import Path


class _File(tarfile.TarInfo):
    """An entry that carries its data, for make_archive."""

    __slots__ = ("data",)


def file_entry(name: str, data: bytes = b"x", *, mode: int = 0o644) -> tarfile.TarInfo:
    info = _File(name)
    info.size, info.mode, info.data = len(data), mode, data
    return info


def dir_entry(name: str, *, mode: int = 0o755) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.mode = tarfile.DIRTYPE, mode
    return info


def link_entry(name: str, target: str, kind: bytes = tarfile.SYMTYPE) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, target
    return info


def special_entry(name: str, kind: bytes) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    return info


def make_archive(
    path: Path, entries: Iterable[tarfile.TarInfo], *, fmt: int = tarfile.PAX_FORMAT
) -> Path:
    """A gzip'd tar of `entries`, written header by header (so names tarfile's writer would
    refuse, NUL in a PAX path for one, go in as they are)."""
    with open(path, "wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", mtime=0) as gz:
        for info in entries:
            gz.write(info.tobuf(format=fmt, encoding="utf-8", errors="surrogateescape"))
            data = info.data if isinstance(info, _File) else b""
            if data:
                gz.write(data + b"\0" * (-len(data) % 512))
        gz.write(b"\0" * 1024)
    return path


def make_many(path: Path, count: int, *, prefix: str = "f") -> Path:
    """`count` empty files f0, f1, ... in a few MB: the upload that once took 44 s of a worker."""
    with open(path, "wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", mtime=0) as gz:
        info = tarfile.TarInfo()
        chunk = io.BytesIO()
        for i in range(count):
            info.name = f"{prefix}{i}"
            chunk.write(info.tobuf(format=tarfile.USTAR_FORMAT))
            if i % 4096 == 4095:
                gz.write(chunk.getvalue())
                chunk = io.BytesIO()
        gz.write(chunk.getvalue() + b"\0" * 1024)
    return path


def make_raw_ustar(path: Path, name: bytes, data: bytes = b"x") -> Path:
    """One file whose 100-byte ustar name field holds `name` as is (a NUL inside included)."""
    info = tarfile.TarInfo("placeholder")
    info.size = len(data)
    header = bytearray(info.tobuf(format=tarfile.USTAR_FORMAT))
    header[0:100] = name.ljust(100, b"\0")[:100]
    header[148:156] = b" " * 8
    header[148:156] = b"%06o\0 " % (sum(header) & 0o777777)
    with open(path, "wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", mtime=0) as gz:
        gz.write(bytes(header) + data + b"\0" * (-len(data) % 512) + b"\0" * 1024)
    return path
