"""services/workdirs.py: which uploaded archives are safe to unpack, links above all."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import pytest

from fabriek.core.errors import InvalidRequest, WorkdirTooLarge
from fabriek.core.workdir_archive import Limits
from fabriek.server.services.workdirs import inspect_archive
from tests.archives import file_entry, make_archive, make_many

SMALL = Limits(max_bytes=2**20, max_entries=1000)

# (name, link target or None for a file)
Entry = tuple[str, str | None]


def archive(tmp_path: Path, entries: list[Entry]) -> Path:
    path = tmp_path / "w.tar.gz"
    with tarfile.open(path, "w:gz") as tar:
        for name, target in entries:
            info = tarfile.TarInfo(name)
            if target is None:
                info.size = 1
                tar.addfile(info, io.BytesIO(b"x"))
            else:
                info.type, info.linkname = tarfile.SYMTYPE, target
                tar.addfile(info)
    return path


@pytest.mark.parametrize(
    "entries",
    [
        [("d/f", None), ("l", "d/f")],
        [("d/f", None), ("d/up", "..")],
        [("d/f", None), ("d/l", "../d/./f")],
        [("d/f", None), ("l", "d"), ("m", "l")],  # a chain whose last step is a link
    ],
)
def test_links_that_stay_inside_are_accepted(tmp_path: Path, entries: list[Entry]) -> None:
    inspect_archive(archive(tmp_path, entries), limits=SMALL)


@pytest.mark.parametrize(
    ("entries", "message"),
    [
        ([("l", "/etc/passwd")], "may leave"),
        ([("l", "../x")], "may leave"),
        ([("d/l", "../../x")], "may leave"),
        # Each lexically inside, but `a` is the top: a/../x is above it.
        ([("deep/a", ".."), ("deep/b", "a/../x")], "may leave"),
        ([("a", "."), ("b", "a/../../x")], "may leave"),
        ([("l", "d"), ("l/f", None)], "below the symbolic link"),
        ([("l", "."), ("f", None), ("f", None)], "twice"),
        ([("l", "."), ("l/../f", None)], "'..'"),
        # A leading / is stripped when unpacked: `/a` lands on `a` (found in review).
        ([("a", None), ("/a", None)], "is absolute"),
        ([("l", "d"), ("/l/f", None)], "is absolute"),
        ([("//l", "..")], "is absolute"),
        ([("", ".")], "names the top directory"),
        ([("./", "..")], "names the top directory"),
    ],
)
def test_links_that_could_leave_the_directory_are_refused(
    tmp_path: Path, entries: list[Entry], message: str
) -> None:
    with pytest.raises(InvalidRequest, match=message):
        inspect_archive(archive(tmp_path, entries), limits=SMALL)


def test_the_path_max_chain_through_slash_prefixed_links_is_refused(tmp_path: Path) -> None:
    """The escape a reviewer built (CVE-2025-4517 on Python 3.11.7's data filter): links named
    with a leading / hid from the checks, a chain of them past PATH_MAX, then a file written
    through it above the unpack directory. Refused before anything is unpacked."""
    path, long = tmp_path / "escape.tar.gz", "d" * 247
    with tarfile.open(path, "w:gz", format=tarfile.PAX_FORMAT) as tar:

        def add(name: str, kind: bytes, target: str = "", data: bytes | None = None) -> None:
            info = tarfile.TarInfo(name)
            info.type, info.linkname = kind, target
            info.size = len(data) if data is not None else 0
            tar.addfile(info, io.BytesIO(data) if data is not None else None)

        at = ""
        for step in "abcdefghijklmnop":
            add(f"{at}{long}", tarfile.DIRTYPE)
            add(f"/{at}{step}", tarfile.SYMTYPE, long)
            at = f"{at}{long}/"
        chain = "/".join("abcdefghijklmnop") + "/" + "l" * 254
        add("//" + chain, tarfile.SYMTYPE, "../" * 16)
        add("escape", tarfile.SYMTYPE, chain + "/..")
        add("/escape/PWNED", tarfile.REGTYPE, data=b"outside\n")
    with pytest.raises(InvalidRequest, match="is absolute"):
        inspect_archive(path, limits=SMALL)


@pytest.mark.parametrize(
    ("entries", "message"),
    [
        # Issue 21, item 3: a NUL in a PAX path was a ValueError out of the check (a 500).
        ([file_entry("a\x00b" + "c" * 200)], "control character"),
        # Item 7: accepted here, then the job failed "could not unpack".
        ([file_entry("a"), file_entry("a/b")], "below the file 'a'"),
        ([file_entry("n" * 2**20)], "longer than the limit of 1024"),
        ([file_entry(".")], "names the top directory"),
    ],
    ids=["nul-in-pax-path", "file-then-below-it", "one-mib-name", "dot"],
)
def test_what_the_job_could_not_unpack_is_refused_at_upload(
    tmp_path: Path, entries: list[tarfile.TarInfo], message: str
) -> None:
    archive = make_archive(tmp_path / "w.tar.gz", entries)
    with pytest.raises(InvalidRequest, match=message) as refused:
        inspect_archive(archive, limits=Limits(max_bytes=4 * 2**20, max_entries=10))
    assert not isinstance(refused.value, WorkdirTooLarge)


def test_too_many_entries_is_too_large(tmp_path: Path) -> None:
    """Item 5: an archive of many empty entries had no bound but its compressed size."""
    archive = make_many(tmp_path / "many.tar.gz", 2000)
    with pytest.raises(WorkdirTooLarge, match="more than the limit of 1000 entries"):
        inspect_archive(archive, limits=SMALL)
    with pytest.raises(WorkdirTooLarge, match="headers and data"):
        inspect_archive(archive, limits=Limits(max_bytes=2**19, max_entries=10_000))
