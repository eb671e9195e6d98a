"""A directory tree as a gzip'd tar, made while it is sent: no temporary file, little memory.

The tree is read through `filetree.walk` (no link followed, any depth). The gzip stream is a
series of members (RFC 1952 allows it; gunzip, tar and Python's gzip module read them as one):
level 1 for what compresses, stored (level 0) for what does not, such as a checkpoint's
weights: deflating those costs about 20 ms of CPU per MiB for nothing, storing them 1.5. A MiB
of zeros (a sparse file's holes) is one member made once, about 1 KiB: deflating them again for
every download cost 1.3 ms per MiB, a second per GB.
"""

from __future__ import annotations

import errno
import os
import stat
import tarfile
import zlib
from collections.abc import Generator, Iterator
from functools import cache
from pathlib import Path

from fabriek.server.services import filetree

CHUNK = 1024 * 1024
# The longest relative path a download packs (bytes; Linux's PATH_MAX): a deeper tree is
# refused before a byte goes out. Unbounded, a name 2,000 levels deep is a 500 KB header, and
# the names of one such tree together are the depth's square.
MAX_PATH_BYTES = 4096
_SEND_AT = 256 * 1024  # bytes of output gathered before they are handed on
_PROBE = 8 * 1024  # what is tried at level 1, thrice, to see whether a chunk compresses
_GZIP = 31  # zlib's wbits for a gzip member


class OverBudget(Exception):
    """The tree grew past its budget while it was sent (a running job kept writing)."""


@cache
def _zeros() -> tuple[bytes, bytes]:
    """CHUNK zero bytes, and the gzip member that holds them."""
    zeros = bytes(CHUNK)
    deflate = zlib.compressobj(9, zlib.DEFLATED, _GZIP)
    return zeros, deflate.compress(zeros) + deflate.flush()


class _Gzip:
    """Gzip members one after another, a new one where the level changes."""

    def __init__(self) -> None:
        self._level = -1
        self._deflate: zlib._Compress | None = None
        self._out: list[bytes] = []
        self.pending = 0

    def write(self, data: bytes | memoryview, *, level: int = 1) -> None:
        if level != self._level:
            if self._deflate is not None:
                self._keep(self._deflate.flush())
            self._deflate = zlib.compressobj(level, zlib.DEFLATED, _GZIP)
            self._level = level
        assert self._deflate is not None
        self._keep(self._deflate.compress(data))

    def member(self, member: bytes) -> None:
        """A whole gzip member, made before: the one under way ends first."""
        if self._deflate is not None:
            self._keep(self._deflate.flush())
        self._deflate, self._level = None, -1
        self._keep(member)

    def _keep(self, data: bytes) -> None:
        if data:
            self._out.append(data)
            self.pending += len(data)

    def take(self) -> bytes:
        data = b"".join(self._out)
        self._out, self.pending = [], 0
        return data

    def finish(self) -> bytes:
        if self._deflate is not None:
            self._keep(self._deflate.flush())
        self._deflate = None
        return self.take()


def _level(chunk: bytes | memoryview) -> int:
    """0 (stored) where samples from the start, middle and end of `chunk` all fail to
    compress by a tenth (weights), else 1."""
    if len(chunk) < 8 * _PROBE:
        return 1
    for start in (0, len(chunk) // 2, len(chunk) - _PROBE):
        sample = chunk[start : start + _PROBE]
        if len(zlib.compress(sample, 1)) < 0.9 * _PROBE:
            return 1
    return 0


def _hole(fd: int, at: int) -> bool:
    """Whether the CHUNK bytes from `at` lie in a hole (where the file system says)."""
    try:
        return os.lseek(fd, at, os.SEEK_DATA) >= at + CHUNK
    except OSError as exc:  # ENXIO: no data from `at` on (a hole to the end, or past it)
        return exc.errno == errno.ENXIO


def _info(name: str, seen: os.stat_result, kind: bytes) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.mode = stat.S_IMODE(seen.st_mode) & 0o777  # no setuid bits: none belong in outputs
    info.mtime = int(seen.st_mtime)
    return info


def _header(info: tarfile.TarInfo) -> bytes:
    return info.tobuf(tarfile.PAX_FORMAT, "utf-8", "surrogateescape")


def tar_gz(
    root: Path, *, max_bytes: int, max_entries: int, max_path: int = MAX_PATH_BYTES
) -> Iterator[bytes]:
    """`root` as a gzip'd tar, entries named `./...`, in pieces of about 256 KiB. Directories,
    regular files and links (as links, with their target's name) are packed, a file's second
    and later hard links as tar hard links to its first name; FIFOs, sockets
    and devices left out. A file is packed at the size it had when the walk reached it: a
    running job's file that shrinks meanwhile is padded with zeros. Raises OverBudget (ending
    the answer unfinished, so that the receiver sees it broken, not short) once the files
    reach more than `max_bytes` or a path longer than `max_path` bytes, and
    filetree.TooManyEntries past `max_entries` entries."""
    out = _Gzip()
    total = 0
    # A file with more than one name is sent once, under the first; the others are tar hard
    # links to it (1 MiB and 1,999 links to it was 2 GB of tar, 890 MB sent, where the measure
    # counted 1 MiB). Held: each such file's first entry, at most `max_entries` of them.
    packed: dict[tuple[int, int], filetree.Entry] = {}
    out.write(_header(_info(".", os.stat(root, follow_symlinks=False), tarfile.DIRTYPE)))
    for entry in filetree.walk(root, limit=max_entries):
        if entry.path_bytes > max_path:
            raise OverBudget(f"the outputs grew a path longer than {max_path} bytes")
        name = "./" + entry.path
        if entry.is_dir:
            out.write(_header(_info(name, entry.stat, tarfile.DIRTYPE)))
        elif entry.is_link:
            try:
                target = os.readlink(entry.name, dir_fd=entry.dir_fd)
            except OSError:
                continue  # gone, or no longer a link
            info = _info(name, entry.stat, tarfile.SYMTYPE)
            info.linkname = target
            out.write(_header(info))
        elif entry.is_file:
            inode = (entry.stat.st_dev, entry.stat.st_ino)
            if (first := packed.get(inode)) is not None:
                info = _info(name, entry.stat, tarfile.LNKTYPE)
                info.linkname = "./" + first.path
                out.write(_header(info))
                continue
            total += entry.stat.st_size
            if total > max_bytes:
                raise OverBudget(f"the outputs grew past {max_bytes} bytes while they were sent")
            if (yield from _file(out, entry, name)) and entry.stat.st_nlink > 1:
                packed[inode] = entry
        if out.pending >= _SEND_AT:
            yield out.take()
    out.write(b"\0" * (2 * tarfile.BLOCKSIZE))  # the end of the archive
    yield out.finish()


def _file(out: _Gzip, entry: filetree.Entry, name: str) -> Generator[bytes, None, bool]:
    """One regular file: its header and content, read from the file the walk saw (opened
    without following a link, and checked to be that file). Whether it was packed."""
    try:
        fd = os.open(entry.name, filetree.FILE, dir_fd=entry.dir_fd)
    except OSError:
        return False  # gone, made unreadable, or swapped for a link: left out
    try:
        now = os.fstat(fd)
        if not stat.S_ISREG(now.st_mode) or (now.st_dev, now.st_ino) != (
            entry.stat.st_dev,
            entry.stat.st_ino,
        ):
            return False  # swapped for something else (a FIFO, another file) since it was seen
        size = entry.stat.st_size
        info = _info(name, entry.stat, tarfile.REGTYPE)
        info.size = size
        out.write(_header(info))
        # One buffer read into again and again: a new 1 MiB bytes per read (os.read) cost
        # 2.3 ms of CPU per MiB in allocation and page faults, more than all the rest. A MiB
        # that lies in a hole of a sparse file is not read at all (reading a hole the first
        # time costs the kernel 2.4 ms per MiB to fill the page cache with zeros).
        buffer = bytearray(CHUNK)
        view = memoryview(buffer)
        zeros, zeros_member = _zeros()
        at = 0
        while at < size:
            want = min(CHUNK, size - at)
            if want == CHUNK and _hole(fd, at):
                out.member(zeros_member)
                at += CHUNK
            else:
                got = os.preadv(fd, [view[:want]], at)
                at += got or want
                if got == CHUNK and buffer == zeros:  # bytearray == bytes: one memcmp
                    out.member(zeros_member)
                else:  # (a file that shrank since it was seen is sent padded with zeros)
                    chunk = view[:got] if got else memoryview(zeros)[:want]
                    out.write(chunk, level=_level(chunk))
            if out.pending >= _SEND_AT:
                yield out.take()
        if size % tarfile.BLOCKSIZE:
            out.write(b"\0" * (tarfile.BLOCKSIZE - size % tarfile.BLOCKSIZE))
    finally:
        os.close(fd)
    return True
