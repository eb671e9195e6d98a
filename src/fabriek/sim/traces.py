"""Job traces for the simulator: the public GPU-cluster traces, and any CSV with a column mapping.

Each reader returns `TraceJob`s sorted by submission, times in seconds from the trace's first
submission. A file that cannot be read as the format says raises InvalidRequest naming the file,
the row and the column; nothing is half-read.
"""

from __future__ import annotations

import csv
import gzip
import math
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import IO

from fabriek import data
from fabriek.core.errors import InvalidRequest
from fabriek.data import open_text


@dataclass(frozen=True, slots=True)
class TraceJob:
    id: str
    submit: float  # seconds from the trace's first submission
    duration: float  # seconds it ran (the simulator runs it exactly this long)
    gpus: int
    tenant: str | None = None  # who submitted it, where the trace says (Philly: virtual cluster)


FORMATS = ("itp", "philly", "csv")
# The generic CSV's columns: which of the file's columns holds what. `submit` is seconds, or a
# date and time (ISO 8601, UTC unless it says otherwise); `tenant` and `id` are optional.
MAPPING_KEYS = ("submit", "duration", "gpus", "tenant", "id")
KNOWN_COLUMNS = {
    "itp": {"submit": "submission_time", "duration": "duration", "gpus": "num_gpu", "id": "job_id"},
    "philly": {"submit": "timestamp", "duration": "duration", "gpus": "num_gpus",
               "tenant": "cluster"},
}  # fmt: skip


def read_trace(
    path: Path, *, kind: str, columns: Mapping[str, str] | None = None
) -> list[TraceJob]:
    """`kind`: itp (Microsoft ITP, 2021), philly (Microsoft Philly, 2017) or csv (with
    `columns`, e.g. {"submit": "arrival", "duration": "runtime", "gpus": "n_gpu"})."""
    if columns is not None and kind in ("itp", "philly"):
        raise InvalidRequest(f"--columns is for --format csv; {kind} has its own")
    if kind in KNOWN_COLUMNS:
        columns = KNOWN_COLUMNS[kind]
    elif kind != "csv":
        raise InvalidRequest(f"unknown trace format {kind!r}; use one of {', '.join(FORMATS)}")
    if not columns or not {"submit", "duration", "gpus"} <= set(columns):
        raise InvalidRequest("a CSV trace needs columns for submit, duration and gpus")
    unknown = set(columns) - set(MAPPING_KEYS)
    if unknown:
        raise InvalidRequest(f"unknown column role(s) {', '.join(sorted(unknown))}")
    with _csv_text(path) as f:
        return _read(path, csv.DictReader(f), columns, kind)


@contextmanager
def _csv_text(path: Path) -> Iterator[IO[str]]:
    """The file as text, gzip'd or not (a BOM, as Excel writes, dropped); what cannot be read
    as CSV text is an InvalidRequest naming the file."""
    try:
        with open_text(path) as f:
            yield f
    except OSError as exc:
        raise InvalidRequest(f"cannot read the trace {path}: {exc.strerror}") from None
    except (gzip.BadGzipFile, EOFError, UnicodeDecodeError, csv.Error) as exc:
        raise InvalidRequest(f"cannot read the trace {path} as CSV text: {exc}") from None


def resolve(trace: str, kind: str | None) -> tuple[Path, str]:
    """What a user named on the command line: a file (its format `kind`, or found from its header
    when None) or a shipped trace (`itp/cluster04`, `philly`: fabriek.data), with its format."""
    shipped = data.shipped_unless_file(trace, "trace")
    if shipped is not None:
        return shipped.location(), kind or shipped.format
    path = Path(trace)
    if not path.exists():
        raise InvalidRequest(f"no trace file {trace!r} (and no shipped trace of that name; "
                             f"{data.listing('trace')})")  # fmt: skip
    return path, kind or detect_format(path)


def detect_format(path: Path) -> str:
    """itp or philly, by the columns of the file's header; else InvalidRequest saying how to
    read it (a CSV of one's own needs --format csv and --columns)."""
    with _csv_text(path) as f:
        header = next(csv.reader(f), [])
    have = {h.strip() for h in header}
    for kind, columns in KNOWN_COLUMNS.items():
        if set(columns.values()) <= have:
            return kind
    raise InvalidRequest(
        f"{path}: its columns ({', '.join(header) or 'none'}) are not those of an ITP or Philly "
        "trace; for a CSV of your own give --format csv --columns "
        "submit=COL,duration=COL,gpus=COL"
    )


def _read(
    path: Path, rows: csv.DictReader[str], columns: Mapping[str, str], kind: str
) -> list[TraceJob]:
    missing = [c for c in columns.values() if c not in (rows.fieldnames or ())]
    if missing:
        have = set(rows.fieldnames or ())
        other = [k for k, c in KNOWN_COLUMNS.items() if k != kind and set(c.values()) <= have]
        raise InvalidRequest(
            f"{path}: no column {', '.join(map(repr, missing))} "
            f"(the header has {', '.join(rows.fieldnames or ())})"
            + (f"; it looks like a {other[0]} trace: add --format {other[0]}" if other else "")
        )
    raw: list[tuple[str, float, float, int, str | None]] = []
    for line, row in enumerate(rows, start=2):
        where = f"{path}, row {line}"
        if None in row.values():  # DictReader's filler for the fields a short row lacks
            raise InvalidRequest(f"{where}: fewer fields than the header names")
        submit = _time(row[columns["submit"]], f"{where}, column {columns['submit']}")
        duration = _number(row[columns["duration"]], f"{where}, column {columns['duration']}")
        gpus = _number(row[columns["gpus"]], f"{where}, column {columns['gpus']}")
        if duration < 0:
            raise InvalidRequest(f"{where}: a negative duration ({duration:g})")
        if gpus < 0 or gpus != int(gpus):
            raise InvalidRequest(f"{where}: {gpus:g} GPUs; a job has a whole number, 0 or more")
        tenant = row[columns["tenant"]] if "tenant" in columns else None
        job_id = row[columns["id"]] if "id" in columns else str(line - 1)
        raw.append((job_id, submit, duration, int(gpus), tenant or None))
    if not raw:
        raise InvalidRequest(f"{path}: no jobs in it")
    first = min(r[1] for r in raw)
    jobs = [TraceJob(i, s - first, d, g, t) for i, s, d, g, t in raw]
    jobs.sort(key=lambda j: (j.submit, j.id))
    return jobs


def _number(text: str, where: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise InvalidRequest(f"{where}: {text!r} is not a number") from None
    if not math.isfinite(value):
        raise InvalidRequest(f"{where}: {text!r} is not a finite number")
    return value


def _time(text: str, where: str) -> float:
    try:
        value = float(text)
    except ValueError:
        pass
    else:
        if not math.isfinite(value):
            raise InvalidRequest(f"{where}: {text!r} is not a finite number of seconds")
        return value
    try:
        at = datetime.fromisoformat(text.strip())
    except ValueError:
        raise InvalidRequest(f"{where}: {text!r} is neither seconds nor a date and time") from None
    return (at if at.tzinfo else at.replace(tzinfo=UTC)).timestamp()


def summary(jobs: Iterable[TraceJob]) -> dict[str, float]:
    """Jobs, span, GPU-hours and the largest job: what a trace asks of a machine."""
    listed = list(jobs)
    span = max((j.submit for j in listed), default=0.0)
    return {
        "jobs": len(listed),
        "span_days": span / 86400,
        "gpu_hours": sum(j.gpus * j.duration for j in listed) / 3600,
        "largest_gpus": max((j.gpus for j in listed), default=0),
    }
