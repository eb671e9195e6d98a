"""A job's outputs as an archive made while it is sent: what a running, hostile job can do to
the tree meanwhile, and what other tools make of the archive."""

from __future__ import annotations

import io
import os
import subprocess
import tarfile
import tracemalloc
from datetime import UTC, datetime
from pathlib import Path

import pytest

from fabriek.backends.local.backend import LocalBackend
from fabriek.core.errors import Conflict, FilesRemoved, NotFound, OutputsTooLarge
from fabriek.core.jobs import Resources
from fabriek.server.services import filetree, job_files

LIMITS = {"max_bytes": 10**9, "max_entries": 1000}


@pytest.fixture
def backend(tmp_path: Path) -> LocalBackend:
    return LocalBackend(
        jobs_dir=tmp_path / "jobs",
        resources=Resources(1, 2**30, 0),
        gpus=[],
        kill_grace_seconds=1,
    )


@pytest.fixture
def output(backend: LocalBackend) -> Path:
    directory = backend.jobs_dir / "1-1" / "output"
    directory.mkdir(parents=True)
    return directory


def archive(backend: LocalBackend, output: Path, **limits: int) -> bytes:
    return b"".join(
        job_files.outputs_archive(
            backend,
            job_id=1,
            handle={"dir": str(output.parent)},
            removed_at=None,
            **{**LIMITS, **limits},
        )
    )


def names(data: bytes) -> dict[str, bytes | None]:
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
        return {
            m.name: (f.read() if (f := tar.extractfile(m)) is not None else None)
            for m in tar.getmembers()
        }


def test_a_directory_swapped_for_a_link_while_packed_never_sends_what_it_points_at(
    backend: LocalBackend, output: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A running job swaps `d` for a link to another tenant's files between the server's look
    at it and its step inside (tarfile's add looked, then listed the path: it followed the
    link). The race is made certain here: the swap happens right after each look at `d`."""
    secret = tmp_path / "other-tenant"
    secret.mkdir()
    (secret / "key").write_text("their-secret")
    (output / "d").mkdir()
    (output / "d" / "mine").write_text("mine")
    real_stat, real_lstat = os.stat, os.lstat
    swapped = []

    def swap(path: object) -> None:
        target = output / "d"
        if str(path) in ("d", str(target)) and not swapped:
            swapped.append(path)
            os.unlink(target / "mine")
            os.rmdir(target)
            os.symlink(secret, target)

    def stat_then_swap(path: object, *args: object, **kwargs: object) -> os.stat_result:
        result = real_stat(path, *args, **kwargs)  # type: ignore[arg-type]
        if kwargs.get("follow_symlinks") is False:
            swap(path)
        return result

    def lstat_then_swap(path: object, *args: object, **kwargs: object) -> os.stat_result:
        result = real_lstat(path, *args, **kwargs)  # type: ignore[arg-type]
        swap(path)
        return result

    sent = job_files.outputs_archive(  # checked (walked once), not yet sent
        backend, job_id=1, handle={"dir": str(output.parent)}, removed_at=None, **LIMITS
    )
    monkeypatch.setattr(os, "stat", stat_then_swap)
    monkeypatch.setattr(os, "lstat", lstat_then_swap)
    contents = names(b"".join(sent))
    assert swapped  # the swap happened
    assert b"their-secret" not in [v for v in contents.values() if v is not None]
    assert set(contents) == {".", "./d"}


def test_fifos_and_devices_are_left_out_and_never_block(
    backend: LocalBackend, output: Path
) -> None:
    os.mkfifo(output / "pipe")
    (output / "model.txt").write_text("weights")
    assert names(archive(backend, output)) == {".": None, "./model.txt": b"weights"}


def test_the_archive_is_one_gzip_stream_to_tar_and_gunzip(
    backend: LocalBackend, output: Path, tmp_path: Path
) -> None:
    """Incompressible data is stored, compressible data deflated: several gzip members, which
    GNU tar and gunzip read as one stream."""
    weights = os.urandom(3 * 2**20)
    (output / "weights.bin").write_bytes(weights)
    (output / "log.txt").write_text("epoch 1 loss 0.5\n" * 100_000)
    data = archive(backend, output)
    assert len(data) < len(weights) + 200_000  # the text compressed, the weights did not grow
    unpacked = tmp_path / "unpacked"
    unpacked.mkdir()
    subprocess.run(["tar", "-xzf", "-", "-C", str(unpacked)], input=data, check=True)
    assert (unpacked / "weights.bin").read_bytes() == weights
    assert (unpacked / "log.txt").read_text() == "epoch 1 loss 0.5\n" * 100_000
    gunzipped = subprocess.run(["gzip", "-dc"], input=data, capture_output=True, check=True)
    with tarfile.open(fileobj=io.BytesIO(gunzipped.stdout)) as tar:
        assert tar.getnames()[0] == "."


def test_limits_are_checked_before_a_byte_is_sent(backend: LocalBackend, output: Path) -> None:
    with open(output / "sparse", "wb") as f:
        f.truncate(2 * 10**9)
    with pytest.raises(OutputsTooLarge, match=r"1\.9G .*sparse ones too.* 954M"):
        archive(backend, output)
    (output / "sparse").unlink()
    for i in range(5):
        (output / str(i)).touch()
    with pytest.raises(OutputsTooLarge, match="more than 4 files"):
        archive(backend, output, max_entries=4)
    assert len(names(archive(backend, output, max_entries=5))) == 6


def test_removed_outputs_and_logs_say_when_and_why(backend: LocalBackend, output: Path) -> None:
    at = datetime(2026, 12, 25, 3, 4, tzinfo=UTC)
    with pytest.raises(FilesRemoved, match=r"removed on 2026-12-25 .* retention policy"):
        job_files.outputs_archive(backend, job_id=1, handle=None, removed_at=at, **LIMITS)
    with pytest.raises(FilesRemoved, match="job 1's logs were removed on 2026-12-25"):
        job_files.read_log(backend, job_id=1, handle=None, offset=0, limit=10, removed_at=at)
    with pytest.raises(NotFound, match="no outputs yet"):
        job_files.outputs_archive(
            backend, job_id=1, handle={"dir": str(output.parent / "2")}, removed_at=None, **LIMITS
        )


def test_a_sparse_files_holes_are_sent_without_being_read_or_deflated(
    backend: LocalBackend, output: Path
) -> None:
    """1 GB of holes cost 4-5 s of CPU per download (the kernel filling its cache with zeros,
    a new buffer per read, deflate); now each MiB of holes is one gzip member made once."""
    with open(output / "sparse", "wb") as f:
        f.truncate(200 * 2**20)
    data = os.urandom(100_000)
    with open(output / "holes", "wb") as f:  # data, a hole, data across a MiB, a hole, data
        f.write(data)
        f.seek(3 * 2**20 - 50)
        f.write(data)
        f.seek(6 * 2**20)
        f.write(b"end")
    packed = archive(backend, output)
    assert len(packed) < 200 * 1100 + 3 * 110_000  # level 1 made 880 KiB of the 200 MiB alone
    contents = names(packed)
    assert contents["./sparse"] == bytes(200 * 2**20)
    assert contents["./holes"] == (output / "holes").read_bytes()


def test_outputs_the_server_cannot_read_are_a_conflict_not_a_500(
    backend: LocalBackend, output: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A job that makes its output directory unreadable (a server not run as root then gets
    EACCES): a 409 that says so."""

    def refuse(root: Path) -> int:
        raise PermissionError(13, "Permission denied", str(root))

    monkeypatch.setattr(filetree, "open_root", refuse)
    with pytest.raises(Conflict, match="cannot be read: Permission denied"):
        archive(backend, output)


def _since(backend: LocalBackend, job_dir: Path, moment: float) -> bytes:
    data, _ = job_files.read_log(
        backend,
        job_id=1,
        handle={"dir": str(job_dir)},
        offset=0,
        limit=10**6,
        since=datetime.fromtimestamp(moment, UTC),
    )
    return data


def test_since_searches_the_log_index_and_reads_little_of_it(
    backend: LocalBackend, output: Path
) -> None:
    """The index is appended to a line a second while the logs grow: a month is 100 MB, and a
    job can write 300 MB without a newline, which was read whole on every request. The search
    finds the same line as reading it all would, reading a few KB."""
    job_dir = output.parent
    (job_dir / "stdout.log").write_bytes(b"".join(b"line %05d\n" % i for i in range(20_000)))
    (job_dir / "stderr.log").write_bytes(b"")
    with open(job_dir / "log.index", "w") as f:
        for i in range(20_000):
            f.write(f"{1000 + i}.000 {i * 11} 0\n")
    for moment, first in ((999.0, 0), (1000.0, 0), (1000.5, 0), (1001.0, 1), (15_432.2, 14_432)):
        assert _since(backend, job_dir, moment).startswith(b"line %05d\n" % first), moment
    assert _since(backend, job_dir, 10**9) == b"line 19999\n"  # the size the last line noted
    with open(job_dir / "log.index", "wb") as f:
        f.write(b"1" * 50_000_000)  # no newline at all
    tracemalloc.start()
    try:
        assert _since(backend, job_dir, 10**9).startswith(b"line 00000\n")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 2**20 + 300_000, peak  # the answer's buffer, not the index


def test_hard_links_are_sent_once_and_unpack_as_links(
    backend: LocalBackend, output: Path, tmp_path: Path
) -> None:
    """The measure counts a hard-linked file once; the archive sent every link in full (1 MiB
    and 1,999 links was 890 MB sent, 22 s of CPU). Now the second and later links are tar hard
    links to the first name, and `tar -xzf` makes them links again."""
    (output / "weights.bin").write_bytes(os.urandom(2**20))
    for i in range(500):
        os.link(output / "weights.bin", output / f"link{i:03}")
    assert filetree.measure(output, limit=1000).apparent_bytes == 2**20
    data = archive(backend, output)
    assert len(data) < 2**20 + 100_000, len(data)
    unpacked = tmp_path / "unpacked"
    unpacked.mkdir()
    subprocess.run(["tar", "-xzf", "-", "-C", str(unpacked)], input=data, check=True)
    inodes = {(unpacked / f"link{i:03}").stat().st_ino for i in range(500)}
    assert inodes == {(unpacked / "weights.bin").stat().st_ino}
    assert (unpacked / "link499").read_bytes() == (output / "weights.bin").read_bytes()
    assert (unpacked / "weights.bin").stat().st_nlink == 501


def test_a_tail_of_a_log_made_sparse_reads_a_bounded_stretch(
    backend: LocalBackend, output: Path
) -> None:
    """A job can ftruncate its own stdout to terabytes of holes without a newline: `logs
    --tail` then found no line start and read backwards through all of it, holding an API
    worker for hours. It reads at most TAIL_SCAN_MAX bytes, and answers from there."""
    job_dir, size = output.parent, 1 << 30  # a GiB of holes: the old scan read all of it
    with open(job_dir / "stdout.log", "wb") as f:
        f.write(b"first\n")
        f.truncate(size)

    def read_so_far() -> int:  # bytes this process has read, holes included
        for line in Path("/proc/self/io").read_text().splitlines():
            if line.startswith("rchar:"):
                return int(line.split()[1])
        raise AssertionError("no rchar in /proc/self/io")

    before = read_so_far()
    data, start = job_files.read_log(
        backend, job_id=1, handle={"dir": str(job_dir)}, offset=0, limit=100, tail=5
    )
    read = read_so_far() - before
    assert start == size - job_files.TAIL_SCAN_MAX and data == b"\0" * 100
    assert read <= job_files.TAIL_SCAN_MAX + (1 << 20), read
