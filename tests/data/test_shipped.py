"""The public data shipped with fabriek: complete, as published, found by name when installed."""

from __future__ import annotations

import gzip
import hashlib
import re
from pathlib import Path

import pytest

from fabriek import data
from fabriek.core.errors import InvalidRequest
from fabriek.sim.traces import detect_format, read_trace, resolve

README = Path(data.__file__).with_name("README.md")


def checksums() -> dict[str, str]:
    """The SHA-256 list in the data README: file (uncompressed name) -> digest."""
    found = re.findall(r"^([0-9a-f]{64})  (\S+)$", README.read_text(), flags=re.M)
    return {name: digest for digest, name in found}


def test_every_shipped_set_is_the_published_file_byte_for_byte() -> None:
    listed = checksums()
    assert len(listed) == len(data.SHIPPED) == 9
    for shipped in data.SHIPPED.values():
        text = gzip.decompress(data.path(shipped.name).read_bytes())
        assert hashlib.sha256(text).hexdigest() == listed[shipped.file.removesuffix(".gz")]


@pytest.mark.parametrize(
    ("name", "jobs", "fmt"),
    [("itp/cluster01", 1595, "itp"), ("cluster04", 15802, "itp"), ("philly", 82247, "philly"),
     ("ITP/Cluster07.csv", 12699, "itp"), ("philly.csv", 82247, "philly")],
)  # fmt: skip
def test_a_trace_named_by_its_short_name_is_read_whole_in_its_format(
    name: str, jobs: int, fmt: str
) -> None:
    path, kind = resolve(name, None)
    assert kind == fmt and path.suffix == ".gz"
    assert len(read_trace(path, kind=kind)) == jobs


def test_a_file_of_ones_own_wins_over_a_shipped_name_and_its_format_is_found_from_its_header(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    Path("philly").write_text("timestamp,duration,num_gpus,gpu_time,cluster\n0,60,1,60,a\n")
    path, kind = resolve("philly", None)
    assert path == Path("philly") and kind == "philly"
    assert [j.tenant for j in read_trace(path, kind=kind)] == ["a"]
    Path("mine.csv.gz").write_bytes(gzip.compress(b"job_id,submission_time,duration,num_gpu\n"
                                                  b"x,0,60,2\n"))  # fmt: skip
    assert detect_format(Path("mine.csv.gz")) == "itp"
    assert read_trace(Path("mine.csv.gz"), kind="itp")[0].gpus == 2


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"arrival,runtime,n\n1,2,3\n", "not those of an ITP or Philly trace; for a CSV of your own"),
        (b"\x1f\x8b\x08garbage", "cannot read the trace"),
        (b"\xff\xfe\x00bad", "cannot read the trace"),
    ],
)  # fmt: skip
def test_a_file_that_is_no_known_trace_says_how_to_read_it(
    tmp_path: Path, content: bytes, message: str
) -> None:
    name = "t.csv.gz" if content.startswith(b"\x1f\x8b") else "t.csv"
    (tmp_path / name).write_bytes(content)
    with pytest.raises(InvalidRequest, match=re.escape(message)):
        resolve(str(tmp_path / name), None)


def test_an_unknown_name_lists_what_is_shipped() -> None:
    with pytest.raises(InvalidRequest, match=r"no trace file 'cluster99'.*itp/cluster07, philly"):
        resolve("cluster99", None)
    with pytest.raises(InvalidRequest, match="no shipped data set named 'nope'"):
        data.path("nope")


def test_the_grid_series_is_the_simulators_default_and_covers_three_years() -> None:
    from fabriek.sim.green import Grid

    grid = Grid.read(data.default_grid())
    assert len(grid.values) == 26_280 and 0 < min(grid.values) < max(grid.values) < 1000
