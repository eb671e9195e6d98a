"""client/packing.py on real directories: links, folders left out by default, the early stop."""

from __future__ import annotations

import io
import os
import tarfile
from pathlib import Path

import pytest

from fabriek.client import packing
from fabriek.client.packing import WorkdirWarning, pack
from fabriek.core.errors import WorkdirTooLarge
from fabriek.core.workdir_archive import DEFAULT_LIMITS, check_file, unpack
from fabriek.server.services.workdirs import inspect_archive


def members(data: bytes) -> dict[str, tarfile.TarInfo]:
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
        return {m.name: m for m in tar.getmembers()}


def test_links_inside_are_kept_and_links_outside_left_out_with_one_warning(
    tmp_path: Path,
) -> None:
    root = tmp_path / "proj"
    (root / "data").mkdir(parents=True)
    (root / "data" / "train.csv").write_text("x\n")
    (root / "latest.csv").symlink_to("data/train.csv")
    (root / "data" / "up").symlink_to("..")  # a link to a directory, not walked into
    (root / "absolute.csv").symlink_to(root / "data" / "train.csv")  # rewritten relative
    (root / "datasets").symlink_to("/usr/share")
    (root / "passwd").symlink_to("/etc/passwd")
    (root / "escape").symlink_to("../elsewhere")
    with pytest.warns(WorkdirWarning) as caught:
        packed = pack(root)
    assert len(caught) == 1
    assert str(caught[0].message) == (
        "left out 3 symbolic links pointing outside the workdir: datasets, escape, passwd"
    )
    found = members(packed.data)
    links = {name: m.linkname for name, m in found.items() if m.issym()}
    assert links == {
        "latest.csv": "data/train.csv",
        "absolute.csv": "data/train.csv",
        "data/up": "..",
    }
    assert packed.links_left_out == ("datasets", "escape", "passwd")
    archive = tmp_path / "w.tar.gz"
    archive.write_bytes(packed.data)
    checked = inspect_archive(archive, limits=DEFAULT_LIMITS)  # the server takes it
    assert (checked.unpacked_bytes, checked.files) == (2, 1)
    # Unpacked as the supervisor does, the links work and stay inside.
    (tmp_path / "job").mkdir()
    unpack(str(archive), str(tmp_path / "job"), DEFAULT_LIMITS)
    assert (tmp_path / "job" / "latest.csv").read_text() == "x\n"
    assert (tmp_path / "job" / "data" / "up" / "absolute.csv").read_text() == "x\n"
    with pytest.warns(WorkdirWarning):
        assert pack(root).digest == packed.digest  # still deterministic


def test_virtualenvs_and_caches_are_left_out_unless_taken_back(tmp_path: Path) -> None:
    root = tmp_path / "proj"
    for folder in (".venv/lib", "venv/bin", "src/__pycache__", ".mypy_cache", "node_modules/x"):
        (root / folder).mkdir(parents=True)
        (root / folder / "f").write_text("f")
    (root / "src" / "main.py").write_text("print()")
    names = set(members(pack(root).data))
    assert names == {"src", "src/main.py"}
    (root / ".fabriekignore").write_text("!.venv/\n")
    names = set(members(pack(root).data))
    assert {".venv", ".venv/lib/f"} <= names and "venv" not in names


def test_the_walk_stops_as_soon_as_the_limit_is_passed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = tmp_path / "big"
    (root / "a").mkdir(parents=True)
    (root / "a" / "weights.bin").write_bytes(b"\0" * 3000)
    for i in range(5):
        (root / f"b{i}").mkdir()
        (root / f"b{i}" / "small.txt").write_text("s")
    walked: list[str] = []
    real_walk = os.walk

    def recording_walk(top, *args, **kwargs):  # type: ignore[no-untyped-def]
        for current, dirs, files in real_walk(top, *args, **kwargs):
            walked.append(os.path.relpath(current, top))
            yield current, dirs, files

    monkeypatch.setattr(packing.os, "walk", recording_walk)
    with pytest.raises(WorkdirTooLarge, match=r"largest: a/weights.bin .*\.fabriekignore"):
        pack(root, limit=5000)  # the 6 folders' headers (3 KiB), then a/weights.bin's 3.5 KiB
    assert walked == [".", "a"]  # b0..b4 were never visited


def test_names_the_server_refuses_are_left_out_with_one_warning(tmp_path: Path) -> None:
    """Issue 21, item 7: the client and the server apply the same name rules, so what the client
    packs is accepted, and a file named with an escape sequence (or macOS's `Icon\\r`) does not
    make the whole upload fail."""
    root = tmp_path / "proj"
    deep = root / "deep" / "/".join(["d" * 200] * 6)  # the 6th folder is 1,210 bytes down
    deep.mkdir(parents=True)
    (deep / "f").write_text("x")
    (root / "Icon\r").write_text("")
    (root / "esc\x1b]0;title\x07").write_text("")
    (root / "main.py").write_text("print()")
    (root / "to-esc").symlink_to("esc\x1b]0;title\x07")
    with pytest.warns(WorkdirWarning) as caught:
        packed = pack(root)
    assert len(caught) == 1 and "left out 4 names the server does not accept" in str(
        caught[0].message
    )
    assert "'Icon\\r'" in str(caught[0].message)  # escaped, never printed raw
    assert set(members(packed.data)) == {"deep", "main.py"} | {
        "deep/" + "/".join(["d" * 200] * n) for n in range(1, 6)
    }
    archive = tmp_path / "w.tar.gz"
    archive.write_bytes(packed.data)
    check_file(str(archive), DEFAULT_LIMITS)  # the server takes it


def test_the_walk_stops_at_the_entry_limit(tmp_path: Path) -> None:
    root = tmp_path / "many"
    (root / "cache").mkdir(parents=True)
    for i in range(30):
        (root / "cache" / f"{i}.json").write_text("{}")
    with pytest.raises(WorkdirTooLarge, match=r"more than the limit of 10 .*most in cache \(11\)"):
        pack(root, max_entries=10)
    assert len(members(pack(root, max_entries=31).data)) == 31
