"""Parsing and formatting of the quantities users type: memory sizes and durations."""

from __future__ import annotations

import re

from fabriek.core.errors import InvalidRequest

_MEM_UNITS = {"": 1, "K": 1024, "M": 1024**2, "G": 1024**3, "T": 1024**4}
_MEM_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMGT]?)(?:i?B)?\s*$", re.IGNORECASE)
_DUR_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
_DUR_PART_RE = re.compile(r"(\d+(?:\.\d+)?)([smhd])")


def parse_memory(text: str) -> int:
    """Parse `512M`, `2G`, `1.5GiB` or a plain byte count into bytes (binary units, as Slurm)."""
    match = _MEM_RE.match(text)
    if not match:
        raise InvalidRequest(f"cannot read memory size {text!r}; use e.g. 512M, 2G or 1T")
    number, unit = match.groups()
    return int(float(number) * _MEM_UNITS[unit.upper()])


def parse_duration(text: str) -> int:
    """Parse `90s`, `10m`, `1h30m`, `2d`, Slurm's `HH:MM:SS`, `MM:SS` or `D-HH:MM:SS`, into seconds."""
    raw = text.strip()
    if not raw:
        raise InvalidRequest("empty duration; use e.g. 10m, 2h or 1:30:00")
    if re.fullmatch(r"\d+", raw):
        return int(raw) * 60  # a bare number is minutes, as in Slurm's --time
    if ":" in raw or "-" in raw:
        return _parse_clock(raw, text)
    parts = _DUR_PART_RE.findall(raw.lower())
    if not parts or "".join(n + u for n, u in parts) != raw.lower():
        raise InvalidRequest(f"cannot read duration {text!r}; use e.g. 90s, 10m, 2h, 1d or 1:30:00")
    return int(sum(float(n) * _DUR_UNITS[u] for n, u in parts))


def _parse_clock(raw: str, text: str) -> int:
    days = 0
    if "-" in raw:
        day_text, _, raw = raw.partition("-")
        if not day_text.isdigit():
            raise InvalidRequest(f"cannot read duration {text!r}")
        days = int(day_text)
    fields = raw.split(":")
    if len(fields) > 3 or not all(f.isdigit() for f in fields):
        raise InvalidRequest(f"cannot read duration {text!r}; use e.g. 1:30:00")
    numbers = [int(f) for f in fields]
    while len(numbers) < 3:
        numbers.insert(0, 0)
    hours, minutes, seconds = numbers
    return days * 86400 + hours * 3600 + minutes * 60 + seconds


def format_bytes(n: int | None) -> str:
    if n is None:
        return "-"
    value = float(n)
    for unit in ("B", "K", "M", "G", "T"):
        if value < 1024 or unit == "T":
            return f"{value:.0f}{unit}" if unit == "B" or value >= 10 else f"{value:.1f}{unit}"
        value /= 1024
    raise AssertionError("unreachable")


def format_bytes_apart(a: int, b: int) -> tuple[str, str]:
    """`a` and `b` as format_bytes writes them, unless that hides their difference (2048M and
    2000M are both 2.0G): then both in MiB, or in bytes if even MiB hide it."""
    shown = format_bytes(a), format_bytes(b)
    if a == b or shown[0] != shown[1]:
        return shown
    if a // 2**20 != b // 2**20:
        return f"{a // 2**20}M", f"{b // 2**20}M"
    return f"{a}B", f"{b}B"


def format_duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    s = round(seconds)
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    if s < 86400:
        return f"{s // 3600}h{(s % 3600) // 60:02d}m"
    return f"{s // 86400}d{(s % 86400) // 3600:02d}h"
