"""Public data shipped with fabriek: GPU-cluster job traces and the Dutch grid's carbon intensity.

The files are gzip'd copies, byte for byte, of the published sets (README.md beside this file says
where each comes from, its licence and its SHA-256), installed with the package so that the
simulator, the planner, the facility's carbon series, the tests and the README's examples work on
any machine. A shipped set is named by a short name (`itp/cluster04`, `philly`, `nl-grid`); every
command that takes one of these files also takes a path to a file of one's own, gzip'd or not.
"""

from __future__ import annotations

import gzip
from dataclasses import dataclass
from importlib.resources import files
from pathlib import Path
from typing import IO

from fabriek.core.errors import InvalidRequest


@dataclass(frozen=True, slots=True)
class Shipped:
    name: str  # what a user types: itp/cluster04, philly, nl-grid
    kind: str  # "trace" or "grid"
    format: str  # the trace reader's format (itp, philly), or "electricitymaps" for a grid series
    file: str  # below this package
    about: str  # one line for listings

    def location(self) -> Path:
        """Where the file lies, installed or in a checkout."""
        return Path(str(files(__name__).joinpath(self.file)))


def _itp(n: int, jobs: int) -> Shipped:
    return Shipped(f"itp/cluster{n:02d}", "trace", "itp", f"traces/itp/cluster{n:02d}.csv.gz",
                   f"Microsoft ITP cluster {n:02d}, 2021, 60 days, {jobs:,} jobs (MIT)")  # fmt: skip


_SETS = (
    _itp(1, 1595), _itp(2, 5778), _itp(3, 3011), _itp(4, 15802), _itp(5, 3629), _itp(6, 2396),
    _itp(7, 12699),
    Shipped("philly", "trace", "philly", "traces/philly/philly.csv.gz",
            "Microsoft Philly, 2017, 82,247 jobs of 15 virtual clusters, sampled (Apache-2.0)"),
    Shipped("nl-grid", "grid", "electricitymaps", "grid/NL-2021-2023-hourly.csv.gz",
            "Dutch grid carbon intensity, hourly, 2021-2023 (Electricity Maps format, ned.nl)"),
)  # fmt: skip
SHIPPED: dict[str, Shipped] = {s.name: s for s in _SETS}
# Other names that mean the same set: the file names users see in the ITP and Philly releases.
ALIASES = {**{f"cluster{n:02d}": f"itp/cluster{n:02d}" for n in range(1, 8)},
           "philly.csv": "philly", "nl": "nl-grid", "nl-2021-2023": "nl-grid"}  # fmt: skip


def path(name: str) -> Path:
    """Where the shipped set `name` (or an alias) lies; InvalidRequest naming the sets if unknown."""
    found = lookup(name)
    if found is None:
        raise InvalidRequest(f"no shipped data set named {name!r}; {listing()}")
    return found.location()


def shipped_unless_file(name: str, kind: str) -> Shipped | None:
    """The shipped set of `kind` ("trace", "grid") a user means by `name`, unless a file of that
    name exists: a file of one's own wins over a shipped name."""
    if Path(name).exists():
        return None
    found = lookup(name)
    return found if found is not None and found.kind == kind else None


def lookup(name: str) -> Shipped | None:
    """The shipped set called `name` or one of its aliases (case does not matter), else None."""
    key = name.strip().lower()
    for suffix in (".csv.gz", ".csv"):
        if key.endswith(suffix) and key not in ALIASES:
            key = key.removesuffix(suffix)
    return SHIPPED.get(ALIASES.get(key, key))


def listing(kind: str | None = None) -> str:
    """One line naming the shipped sets (of `kind`), for error messages and help."""
    names = [s.name for s in SHIPPED.values() if kind is None or s.kind == kind]
    return f"shipped: {', '.join(names)}"


def label(file: Path) -> str:
    """How to name `file` to a user: a shipped set's short name, else the path as given."""
    for shipped in SHIPPED.values():
        if file == shipped.location():
            return shipped.name
    return str(file)


def default_grid() -> Path:
    """The Dutch 2021-2023 hourly series: the simulator's and planner's default."""
    return SHIPPED["nl-grid"].location()


def open_text(file: Path) -> IO[str]:
    """A CSV file for reading as text, gzip'd (`.gz`) or not; a byte-order mark is dropped."""
    if file.suffix == ".gz":
        return gzip.open(file, "rt", newline="", encoding="utf-8-sig")
    return open(file, newline="", encoding="utf-8-sig")


def read_text(file: Path) -> str:
    """The whole of a text file, gzip'd or not; InvalidRequest if it is not gzip after all or
    not UTF-8 text. OSError (missing, unreadable) is the caller's to word."""
    try:
        with open_text(file) as f:
            return f.read()
    except (gzip.BadGzipFile, EOFError) as exc:
        raise InvalidRequest(f"{file}: not a readable gzip file ({exc})") from None
    except UnicodeDecodeError as exc:
        raise InvalidRequest(f"{file}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
