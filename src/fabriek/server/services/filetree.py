"""Walking, measuring and removing a directory tree that a job wrote, without trusting it.

A job owns what it writes and may change it while the server reads it: it may leave links (to
/etc/passwd, to another tenant's job), swap a directory for a link between the server's look
and its step inside, nest directories thousands deep or put millions of entries in one. So:

- every step opens the next directory relative to the one before, with O_NOFOLLOW, and checks
  that it is the directory the listing showed (device and inode): no link, and no directory
  swapped for one, leads outside the tree; a link is reported as a link, never followed;
- the walk is a loop with a stack of names, not recursion, and keeps one directory open at a
  time, going back up through `..` (checked the same way): any depth costs neither Python's
  recursion limit nor a file descriptor per level; each level holds its own name alone (an
  entry's path is made when asked for), so memory grows with the depth, not its square (a
  path per level, 2,000 levels of 250-character names, held a GB);
- a walk reads at most `limit` entries and says so when there are more.
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Iterator
from dataclasses import dataclass, field
from itertools import islice
from pathlib import Path

DIRECTORY = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
# A regular file, opened where a link or a FIFO may have been swapped in: O_NOFOLLOW refuses the
# link, O_NONBLOCK keeps a FIFO from blocking the open (fstat then shows it is not a file).
FILE = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
_REMOVE_BATCH = 10_000  # names a removal reads from one directory at a time
_SWAPPED = (errno.ELOOP, errno.ENOTDIR, errno.ENOENT)  # replaced by a link or a file, or gone


class TooManyEntries(Exception):
    """The tree holds more entries than the walk may read."""


class TreeChanged(Exception):
    """The tree moved under the walk in a way it cannot follow (a directory it stood in was
    moved elsewhere)."""


@dataclass(slots=True)
class _Frame:
    """One directory on the walk's way down: its name in its parent (`parent`), its stat, and
    the names still to visit in it, last first. `path_bytes`: the length of its relative
    path with a trailing '/' (0 at the root)."""

    name: str
    stat: os.stat_result
    parent: _Frame | None
    path_bytes: int
    pending: list[str] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class Entry:
    """One entry of the tree: its `name` in the open directory `dir_fd` (valid until the walk
    moves on), its `lstat`, and the directory holding it (`parent`); `path_bytes` is the length
    of its relative path in bytes, `path` that path ('/'-separated), made when asked for."""

    name: str
    stat: os.stat_result
    dir_fd: int
    parent: _Frame
    path_bytes: int

    @property
    def path(self) -> str:
        names = [self.name]
        frame: _Frame | None = self.parent
        while frame is not None and frame.parent is not None:  # (the root has no name here)
            names.append(frame.name)
            frame = frame.parent
        return "/".join(reversed(names))

    @property
    def is_dir(self) -> bool:
        return stat.S_ISDIR(self.stat.st_mode)

    @property
    def is_file(self) -> bool:
        return stat.S_ISREG(self.stat.st_mode)

    @property
    def is_link(self) -> bool:
        return stat.S_ISLNK(self.stat.st_mode)


def _same(a: os.stat_result, b: os.stat_result) -> bool:
    return (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino)


def open_root(root: Path) -> int:
    """`root` as an open directory; FileNotFoundError if it is missing, NotADirectoryError if it
    is a file or a link (a job may replace its output directory by a link)."""
    try:
        return os.open(root, DIRECTORY)
    except OSError as exc:
        if exc.errno in (errno.ELOOP, errno.ENOTDIR):
            raise NotADirectoryError(errno.ENOTDIR, "not a directory", str(root)) from exc
        raise


def _open_child(parent: int, name: str, seen: os.stat_result) -> int | None:
    """The directory `name` in `parent`, if it is still the one `seen` describes."""
    try:
        fd = os.open(name, DIRECTORY, dir_fd=parent)
    except PermissionError:
        return None
    except OSError as exc:
        if exc.errno in _SWAPPED:
            return None
        raise
    if not _same(os.fstat(fd), seen):
        os.close(fd)
        return None
    return fd


def _up(fd: int, expected: os.stat_result) -> int:
    """The parent of the open directory `fd`, which must be `expected`; closes `fd`."""
    try:
        parent = os.open("..", DIRECTORY, dir_fd=fd)
    finally:
        os.close(fd)
    if not _same(os.fstat(parent), expected):
        os.close(parent)
        raise TreeChanged("a directory was moved while the tree was read")
    return parent


def walk(root: Path, *, limit: int) -> Iterator[Entry]:
    """Every entry below `root` (not `root` itself), each directory before what it holds, names
    in sorted order, links as links. Entries that vanish or change type while the walk reads
    them are left out; unreadable directories are listed, not entered. Raises TooManyEntries
    once more than `limit` entries are found, and what `open_root` raises."""
    fd = open_root(root)
    try:
        stack = [_Frame("", os.fstat(fd), None, 0)]
        budget = [limit]
        stack[0].pending = _listing(fd, budget)
        while stack:
            frame = stack[-1]
            if not frame.pending:
                stack.pop()
                if stack:
                    fd, below = -1, fd
                    fd = _up(below, stack[-1].stat)
                continue
            name = frame.pending.pop()
            try:
                seen = os.stat(name, dir_fd=fd, follow_symlinks=False)
            except FileNotFoundError:
                continue
            path_bytes = frame.path_bytes + len(os.fsencode(name))
            yield Entry(name, seen, fd, frame, path_bytes)
            if stat.S_ISDIR(seen.st_mode):
                child = _open_child(fd, name, seen)
                if child is None:
                    continue
                try:
                    pending = _listing(child, budget)
                except BaseException:
                    os.close(child)
                    raise
                os.close(fd)
                fd = child
                stack.append(_Frame(name, seen, frame, path_bytes + 1, pending))
    finally:
        if fd >= 0:
            os.close(fd)


def _listing(fd: int, budget: list[int]) -> list[str]:
    """The names in directory `fd`, sorted, last first; counted against `budget[0]`."""
    with os.scandir(fd) as entries:
        names = [entry.name for entry in islice(entries, budget[0] + 1)]
    if len(names) > budget[0]:
        raise TooManyEntries(f"more than {budget[0] + len(names) - 1} entries")
    budget[0] -= len(names)
    names.sort(reverse=True)
    return names


@dataclass(frozen=True, slots=True)
class Measure:
    """What a tree holds on disk: `disk_bytes` (allocated blocks, a hard-linked file once),
    `apparent_bytes` (files' sizes, a sparse file at its full size, a hard-linked file once:
    what a download sends of them) and `entries`; `complete`
    is false where the walk stopped at its limit (the figures then are lower bounds).
    `longest_path`: the longest relative path's length in bytes (a download refuses one too
    long to pack)."""

    disk_bytes: int
    apparent_bytes: int
    entries: int
    complete: bool = True
    longest_path: int = 0


def measure(root: Path, *, limit: int, partial: bool = False) -> Measure:
    """What `root` holds, reading at most `limit` entries. Raises what `walk` raises; with
    `partial`, a missing root holds nothing and a walk cut short gives what it counted so
    far, as a lower bound (`complete` false)."""
    disk = apparent = entries = longest = 0
    linked: set[tuple[int, int]] = set()
    try:
        for entry in walk(root, limit=limit):
            entries += 1
            longest = max(longest, entry.path_bytes)
            st = entry.stat
            if st.st_nlink > 1 and not entry.is_dir:
                if (st.st_dev, st.st_ino) in linked:
                    continue
                linked.add((st.st_dev, st.st_ino))
            disk += st.st_blocks * 512
            if entry.is_file:
                apparent += st.st_size
    except (FileNotFoundError, NotADirectoryError):
        if not partial:
            raise
        return Measure(0, 0, 0)
    except (TooManyEntries, TreeChanged):
        if not partial:
            raise
        return Measure(disk, apparent, entries, complete=False, longest_path=longest)
    return Measure(disk, apparent, entries, longest_path=longest)


def remove_tree(path: Path) -> int:
    """Remove `path` and all below it; how many entries went. `path`'s parent is trusted (the
    server made it); from `path` down nothing is followed: a link is removed, not its target.
    Directories the job made unreadable are opened up first. Entries that cannot be removed
    are left (and counted out); a missing `path` is nothing to do."""
    try:
        top = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except FileNotFoundError:
        return 0
    try:
        return _remove(top, path.name)
    finally:
        os.close(top)


def _remove(top: int, name: str) -> int:
    try:
        seen = os.stat(name, dir_fd=top, follow_symlinks=False)
    except FileNotFoundError:
        return 0
    if not stat.S_ISDIR(seen.st_mode):
        os.unlink(name, dir_fd=top)
        return 1
    fd = _open_for_removal(top, name, seen)
    if fd is None:
        return 0
    removed = 0
    kept: set[tuple[int, int]] = set()  # entries that would not go: never listed again
    # Each level: its name, its stat, the subdirectories still to remove, whether its last
    # listing stopped at the batch size (then it is read again once those are gone).
    stack: list[tuple[str, os.stat_result, list[tuple[str, os.stat_result]], bool]] = [
        (name, seen, [], True)
    ]
    try:
        while True:
            here, here_seen, subdirs, more = stack[-1]
            if not subdirs and more:
                gone, subdirs, more = _clear_files(fd, kept)
                removed += gone
                stack[-1] = (here, here_seen, subdirs, more)
                continue
            if subdirs:
                child_name, child_seen = subdirs.pop()
                child = _open_for_removal(fd, child_name, child_seen)
                if child is None:
                    kept.add((child_seen.st_dev, child_seen.st_ino))
                    continue
                os.close(fd)
                fd = child
                stack.append((child_name, child_seen, [], True))
                continue
            stack.pop()
            if stack:
                fd, below = -1, fd
                fd = parent = _up(below, stack[-1][1])
            else:
                os.close(fd)
                fd = -1
                parent = top
            try:
                os.rmdir(here, dir_fd=parent)
                removed += 1
            except FileNotFoundError:
                pass
            except OSError:
                kept.add((here_seen.st_dev, here_seen.st_ino))
            if not stack:
                return removed
    finally:
        if fd >= 0:
            os.close(fd)


def _open_for_removal(parent: int, name: str, seen: os.stat_result) -> int | None:
    fd = _open_child(parent, name, seen)
    if fd is None and stat.S_IMODE(seen.st_mode) & 0o700 != 0o700:
        # Made unreadable by the job: ours to open up. Linux cannot chmod without following a
        # link, so a link swapped in this instant would have its target opened up (to us alone);
        # what it leads to is then refused as we enter, by the check against `seen`.
        try:
            os.chmod(name, 0o700, dir_fd=parent)
        except OSError:
            return None
        fd = _open_child(parent, name, seen)
    return fd


def _clear_files(
    fd: int, kept: set[tuple[int, int]]
) -> tuple[int, list[tuple[str, os.stat_result]], bool]:
    """Remove up to a batch of non-directories from `fd`; the subdirectories it saw, and
    whether there may be more."""
    removed, subdirs, read = 0, [], 0
    with os.scandir(fd) as entries:
        names = [e.name for e in islice(entries, _REMOVE_BATCH)]
    for name in names:
        try:
            seen = os.stat(name, dir_fd=fd, follow_symlinks=False)
        except FileNotFoundError:
            continue
        if (seen.st_dev, seen.st_ino) in kept:
            continue
        read += 1
        if stat.S_ISDIR(seen.st_mode):
            subdirs.append((name, seen))
            continue
        try:
            os.unlink(name, dir_fd=fd)
            removed += 1
        except FileNotFoundError:
            pass
        except OSError:
            kept.add((seen.st_dev, seen.st_ino))
    return removed, subdirs, len(names) == _REMOVE_BATCH and read > 0
