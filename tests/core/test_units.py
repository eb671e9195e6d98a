import pytest

from fabriek.core.errors import InvalidRequest
from fabriek.core.units import format_bytes, format_duration, parse_duration, parse_memory


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("512M", 512 * 2**20),
        ("2G", 2 * 2**30),
        ("2g", 2 * 2**30),
        ("1.5GiB", int(1.5 * 2**30)),
        ("1T", 2**40),
        ("1024", 1024),
        ("64K", 64 * 1024),
    ],
)
def test_parse_memory(text: str, expected: int) -> None:
    assert parse_memory(text) == expected


@pytest.mark.parametrize("text", ["", "lots", "-1G", "2X", "G"])
def test_parse_memory_rejects(text: str) -> None:
    with pytest.raises(InvalidRequest, match="memory size"):
        parse_memory(text)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("90s", 90),
        ("10m", 600),
        ("2h", 7200),
        ("1h30m", 5400),
        ("1d", 86400),
        ("30", 1800),  # a bare number is minutes, as in Slurm
        ("1:30:00", 5400),
        ("05:00", 300),
        ("2-00:00:00", 2 * 86400),
        ("0s", 0),
    ],
)
def test_parse_duration(text: str, expected: int) -> None:
    assert parse_duration(text) == expected


@pytest.mark.parametrize("text", ["", "soon", "10x", "1h-5", "1:2:3:4", "m10"])
def test_parse_duration_rejects(text: str) -> None:
    with pytest.raises(InvalidRequest):
        parse_duration(text)


def test_formatting() -> None:
    assert format_bytes(2 * 2**30) == "2.0G"
    assert format_bytes(300 * 2**20) == "300M"
    assert format_bytes(None) == "-"
    assert format_duration(59) == "59s"
    assert format_duration(3600 + 120) == "1h02m"
    assert format_duration(90061) == "1d01h"
