"""services/workdirs.py: which uploaded archives are safe to unpack, links above all."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import pytest

from fabriek.core.errors import InvalidRequest
from fabriek.server.services.workdirs import inspect_archive

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
    inspect_archive(archive(tmp_path, entries), max_unpacked=2**20)


@pytest.mark.parametrize(
    ("entries", "message"),
    [
        ([("l", "/etc/passwd")], "unsafe"),
        ([("l", "../x")], "unsafe"),
        ([("d/l", "../../x")], "unsafe"),
        # Each lexically inside, but `a` is the top: a/../x is above it.
        ([("deep/a", ".."), ("deep/b", "a/../x")], "may leave"),
        ([("a", "."), ("b", "a/../../x")], "unsafe"),
        ([("l", "d"), ("l/f", None)], "below the symbolic link"),
        ([("l", "."), ("f", None), ("f", None)], "twice"),
        ([("l", "."), ("l/../f", None)], "'..'"),
    ],
)
def test_links_that_could_leave_the_directory_are_refused(
    tmp_path: Path, entries: list[Entry], message: str
) -> None:
    with pytest.raises(InvalidRequest, match=message):
        inspect_archive(archive(tmp_path, entries), max_unpacked=2**20)
