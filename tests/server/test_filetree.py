"""Walking, measuring and removing trees a job wrote, as a hostile job would write them."""

from __future__ import annotations

import os
import tracemalloc
from pathlib import Path

import pytest

from fabriek.server.services import filetree


def deep(root: Path, depth: int) -> Path:
    """`depth` nested directories below `root`, made through a descriptor (a path 1,100 levels
    deep is near PATH_MAX); returns the relative path of the file at the bottom."""
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    try:
        for _ in range(depth):
            os.mkdir("d", dir_fd=fd)
            below = os.open("d", os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
            os.close(fd)
            fd = below
        with open(os.open("bottom.txt", os.O_WRONLY | os.O_CREAT, 0o600, dir_fd=fd), "wb") as f:
            f.write(b"deep\n")
    finally:
        os.close(fd)
    return Path("/".join(["d"] * depth + ["bottom.txt"]))


def test_a_tree_1100_deep_is_walked_without_recursion_or_a_descriptor_per_level(
    tmp_path: Path,
) -> None:
    bottom = deep(tmp_path, 1100)
    before = len(os.listdir("/proc/self/fd"))
    seen = []
    for entry in filetree.walk(tmp_path, limit=10_000):
        seen.append(entry.path)
        assert len(os.listdir("/proc/self/fd")) <= before + 2
    assert len(seen) == 1101 and seen[-1] == str(bottom)
    assert filetree.remove_tree(tmp_path / "d") == 1101
    assert os.listdir(tmp_path) == []


def test_links_are_reported_as_links_never_followed(tmp_path: Path) -> None:
    secret = tmp_path / "other-tenant"
    secret.mkdir()
    (secret / "model.bin").write_bytes(b"theirs")
    out = tmp_path / "out"
    out.mkdir()
    (out / "passwd").symlink_to("/etc/passwd")
    (out / "theirs").symlink_to(secret)
    entries = {e.path: e for e in filetree.walk(out, limit=100)}
    assert set(entries) == {"passwd", "theirs"}
    assert all(e.is_link for e in entries.values())
    assert filetree.measure(out, limit=100).apparent_bytes == 0
    # A root that is itself a link is refused, not followed
    (tmp_path / "link").symlink_to(secret)
    with pytest.raises(NotADirectoryError):
        list(filetree.walk(tmp_path / "link", limit=100))
    assert filetree.remove_tree(out) == 3 and filetree.remove_tree(tmp_path / "link") == 1
    assert (secret / "model.bin").read_bytes() == b"theirs"


def test_a_directory_swapped_for_a_link_mid_walk_is_not_entered(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The race a running job can win: `d` is a directory when looked at, a link to another
    tenant's files when entered. Made certain here by swapping right after the look."""
    secret = tmp_path / "secret"
    secret.mkdir()
    (secret / "key").write_text("theirs")
    out = tmp_path / "out"
    (out / "d").mkdir(parents=True)
    real_stat = os.stat

    def stat_then_swap(path: object, *args: object, **kwargs: object) -> os.stat_result:
        result = real_stat(path, *args, **kwargs)  # type: ignore[arg-type]
        if path == "d" and (out / "d").is_dir() and not (out / "d").is_symlink():
            (out / "d").rmdir()
            (out / "d").symlink_to(secret)
        return result

    monkeypatch.setattr(os, "stat", stat_then_swap)
    assert [e.path for e in filetree.walk(out, limit=100)] == ["d"]


def test_the_walk_stops_at_its_limit(tmp_path: Path) -> None:
    for i in range(50):
        (tmp_path / f"f{i}").touch()
    with pytest.raises(filetree.TooManyEntries):
        list(filetree.walk(tmp_path, limit=49))
    assert len(list(filetree.walk(tmp_path, limit=50))) == 50
    partial = filetree.measure(tmp_path, limit=10, partial=True)
    assert not partial.complete


def test_measure_counts_sparse_files_at_their_size_and_on_disk_as_allocated(
    tmp_path: Path,
) -> None:
    with open(tmp_path / "sparse", "wb") as f:
        f.truncate(10**9)
    (tmp_path / "data").write_bytes(b"x" * 100_000)
    os.link(tmp_path / "data", tmp_path / "again")  # one file's blocks, counted once
    found = filetree.measure(tmp_path, limit=100)
    assert found.apparent_bytes == 10**9 + 100_000  # the link is not a second file's bytes
    assert 100_000 <= found.disk_bytes < 1_000_000 and found.complete and found.entries == 3


def test_removal_opens_up_what_the_job_locked_and_spares_link_targets(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(filetree, "_REMOVE_BATCH", 100)
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "keep").write_text("x")
    work = tmp_path / "work"
    (work / "a" / "b").mkdir(parents=True)
    (work / "a" / "b" / "f").write_text("x")
    (work / "a" / "to-victim").symlink_to(victim)
    (work / "a" / "b").chmod(0)
    (work / "a").chmod(0o500)
    for i in range(250):  # past one listing batch
        (work / f"e{i}").touch()
    assert filetree.remove_tree(work) == 250 + 5
    assert not work.exists() and (victim / "keep").exists()
    assert filetree.remove_tree(work) == 0  # nothing left: nothing to do


def test_memory_grows_with_depth_not_its_square(tmp_path: Path) -> None:
    """A job nests directories of 250-character names: holding a path per level (as the walk
    once did) took depth² memory, a GB at 2,000 levels, in the server's own process. Twice the
    depth must cost about twice the memory, and little of it."""
    name = "n" * 250

    def peak(depth: int) -> int:
        root = tmp_path / f"deep{depth}"
        root.mkdir()
        fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
        try:
            for _ in range(depth):
                os.mkdir(name, dir_fd=fd)
                below = os.open(name, os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
                os.close(fd)
                fd = below
        finally:
            os.close(fd)
        try:
            tracemalloc.start()
            found = filetree.measure(root, limit=10_000)
            _, top = tracemalloc.get_traced_memory()
            tracemalloc.stop()
            assert found.entries == depth and found.longest_path == depth * 251 - 1
            return top
        finally:
            filetree.remove_tree(root)  # (pytest's own cleanup recurses, and fails this deep)

    shallow, deeper = peak(400), peak(800)
    assert deeper < 2.6 * shallow, (shallow, deeper)
    assert deeper < 4 * 1024 * 1024, deeper
