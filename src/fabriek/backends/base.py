"""The contract between the controller and a backend (local processes, Slurm, ...)."""

from __future__ import annotations

import json
import os
import stat
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from itertools import pairwise
from pathlib import Path
from typing import Any, Literal, Protocol

from fabriek.core.identity import Identity, Network, NetworkPolicy
from fabriek.core.jobs import JobState, Resources


@dataclass(frozen=True, slots=True)
class Capacity:
    """What a backend offers: `nodes` alike nodes with `resources` each, the ids of the GPUs it
    hands out itself (the local machine's; empty where the backend's scheduler picks them, as
    Slurm does) and their type (e.g. `NVIDIA H100 80GB HBM3`; empty without GPUs)."""

    resources: Resources
    gpu_ids: tuple[int, ...] = ()
    gpu_type: str = ""
    nodes: int = 1
    billing_weight: float = 1.0  # GPU-hours charged per GPU-hour used here
    # What its jobs may reach: the operator's, from the partitions file. A backend reports the
    # default (host, host); the controller puts the operator's in (Controller.capacities).
    network: NetworkPolicy = field(default_factory=NetworkPolicy)


Handle = dict[str, Any]
"""What a backend needs to find a job again, after a restart too. JSON-serialisable; stored in the job row."""
LogStream = Literal["stdout", "stderr"]
LOG_INDEX = "log.index"  # in a job's directory: lines "unix-time stdout-bytes stderr-bytes"
JOB_FILE_MAX = 1 << 20  # bytes of a small file in a job's directory (a marker, a JSON record)
SAMPLES_MAX = 64 << 20  # bytes of a job's energy samples read (a sample a few seconds, months)


def read_job_file(path: Path, max_bytes: int = JOB_FILE_MAX) -> bytes | None:
    """A file in a job's directory, which the job can write: None where it is missing, is not a
    regular file, cannot be read or holds more than `max_bytes`. A link is not followed (to
    another tenant's files, or /dev/zero) and a FIFO is not read: opening one for reading
    blocked the controller, and every job with it, for ever."""
    flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
    try:
        fd = os.open(path, flags)
    except OSError:
        return None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_size > max_bytes:
            return None
        data = os.read(fd, max_bytes + 1)
    except OSError:
        return None
    finally:
        os.close(fd)
    return data if len(data) <= max_bytes else None


@dataclass(frozen=True, slots=True)
class LaunchSpec:
    job_id: int
    name: str
    argv: list[str]
    env: dict[str, str]
    resources: Resources
    gpu_ids: tuple[int, ...]
    time_limit_s: int
    workdir_archive: Path | None
    # Tells this job from one with the same id in another database (say, after a database was
    # reset under an existing home): a backend keys its files by id *and* instance.
    instance: str = ""
    nodes: int = 1  # `resources` on each
    # Who it runs as (its project's uid and gid, and the project's name); None: as the server.
    identity: Identity | None = None
    # What it may reach: what it asked for, else its partition's default lowered to its
    # project's lock (core.identity.job_network), decided when it is launched.
    network: Network = Network.HOST


@dataclass(frozen=True, slots=True)
class Usage:
    """What a job used, as measured by the operating system."""

    wall_s: float
    cpu_s: float
    max_rss_bytes: int


@dataclass(frozen=True, slots=True)
class EnergyReading:
    joules: float
    method: str  # in words: how it was measured, or how estimated
    measured: bool


@dataclass(frozen=True, slots=True)
class Energy:
    """What a job's run used: per component (gpu, cpu, dram) and per clock hour (IT energy)."""

    components: dict[str, EnergyReading]
    by_hour: dict[datetime, float]  # the hour's start (UTC) -> joules used in it

    @property
    def joules(self) -> float:
        return sum(r.joules for r in self.components.values())


def hourly(points: list[tuple[float, float]], total: float) -> dict[datetime, float]:
    """Spread cumulative samples (unix time, joules so far) over the clock hours they span, each
    interval's energy in proportion to its time in each hour. Energy the samples do not cover
    (e.g. after the last one a crash cut off) goes to the hour of the last sample."""
    points = sorted(points)
    result: dict[datetime, float] = {}

    def add(at: float, joules: float) -> None:
        hour = datetime.fromtimestamp(at - at % 3600, UTC)
        result[hour] = result.get(hour, 0.0) + joules

    for (t0, e0), (t1, e1) in pairwise(points):
        delta = max(0.0, e1 - e0)
        if t1 <= t0:
            if delta:
                add(t1, delta)
            continue
        t = t0
        while t < t1:
            end = min(t1, t - t % 3600 + 3600)
            add(t, delta * (end - t) / (t1 - t0))
            t = end
    covered = sum(result.values())
    if points and total > covered + 1e-9:
        add(points[-1][0], total - covered)
    return result


def energy_from(totals: object, samples: Path | None) -> Energy | None:
    """A job meter's totals (fabriek.metering: {"gpu": {"joules", "method", "measured"}, ...})
    and its samples file placed in the hours they fell in. Anything unreadable means no energy
    figure, never a wrong one."""
    if not isinstance(totals, dict) or not totals:
        return None
    readings: dict[str, EnergyReading] = {}
    for component, value in totals.items():
        if not (
            isinstance(value, dict)
            and isinstance(value.get("joules"), int | float)
            and isinstance(value.get("method"), str)
            and isinstance(value.get("measured"), bool)
        ):
            return None
        readings[component] = EnergyReading(
            float(value["joules"]), value["method"], value["measured"]
        )
    points: list[tuple[float, float]] = []
    if samples is not None:
        data = read_job_file(samples, SAMPLES_MAX)
        lines = data.decode(errors="replace").splitlines() if data else []
        for line in lines:
            try:
                sample = json.loads(line)
                points.append(
                    (float(sample["t"]), sum(float(sample.get(c, 0.0)) for c in readings))
                )
            except (ValueError, TypeError, KeyError):
                continue  # a line cut short by a crash
    total = sum(r.joules for r in readings.values())
    return Energy(readings, hourly(points, total))


def merge_energy(parts: list[Energy]) -> Energy | None:
    """One job's energy from its nodes' meters: joules and hours added up; a component is
    measured only where every node measured it."""
    if not parts:
        return None
    components: dict[str, EnergyReading] = {}
    by_hour: dict[datetime, float] = {}
    for part in parts:
        for name, reading in part.components.items():
            known = components.get(name)
            components[name] = (
                reading
                if known is None
                else EnergyReading(
                    known.joules + reading.joules,
                    known.method if known.method == reading.method else "mixed: " + known.method,
                    known.measured and reading.measured,
                )
            )
        for hour, joules in part.by_hour.items():
            by_hour[hour] = by_hour.get(hour, 0.0) + joules
    return Energy(components, by_hour)


class Phase(StrEnum):
    STARTING = "starting"  # accepted by the backend; the job's process has not started yet
    RUNNING = "running"
    FINISHED = "finished"
    LOST = "lost"  # the backend has no trace of a live job and no result: it will never report one


@dataclass(frozen=True, slots=True)
class Observation:
    phase: Phase
    started_at: datetime | None = None
    finished_at: datetime | None = None
    outcome: JobState | None = None  # a final state when phase is FINISHED
    exit_code: int | None = None
    signal: int | None = None
    reason: str | None = None
    usage: Usage | None = field(default=None)
    energy: Energy | None = None  # metered by the backend, where it meters


class Backend(Protocol):
    """Runs jobs somewhere. Every method returns quickly; none holds a database transaction."""

    name: str

    def capacity(self) -> Capacity:
        """What this backend offers the admission engine."""
        ...

    def submit(self, spec: LaunchSpec) -> Handle:
        """Start the job. Idempotent per job id: calling it again after a crash returns the handle of
        the first launch and never starts the job twice. Raises only when the job surely did not
        start; once it may have started, returns the handle and lets `poll` tell what happened."""
        ...

    def poll(self, handles: Mapping[int, Handle]) -> dict[int, Observation]:
        """Observe all the given jobs in one go. A job with no news yet is reported as STARTING."""
        ...

    def cancel(self, job_id: int, handle: Handle) -> None:
        """Ask the job to stop (SIGTERM, grace, SIGKILL). Idempotent; a finished job is left alone.
        Returns at once: the outcome is observed by a later poll."""
        ...

    def log_path(
        self, job_id: int, handle: Handle | None, stream: LogStream = "stdout"
    ) -> Path | None:
        """Where the job's stdout (or stderr) grows, if it has started; for a job run before
        the two were kept apart, its combined log as stdout and None as stderr. Beside it the
        backend may keep LOG_INDEX: lines `UNIX_TIME STDOUT_BYTES STDERR_BYTES`, each the
        logs' sizes at that time (every second or so while they grow), for `logs --since`."""
        ...

    def output_dir(self, job_id: int, handle: Handle | None) -> Path | None:
        """The directory the job wrote as $FABRIEK_OUTPUT_DIR."""
        ...


class LaunchRecord(Protocol):
    """Optional: whether a job was handed to the backend, without handing it again. Lets the
    controller stop a job whose launch went out before a crash lost its handle."""

    def was_launched(self, spec: LaunchSpec) -> bool: ...


WORK_DIR = "work"  # in a run's directory: the job's copy of its workdir, its working directory


class RunDirectories(Protocol):
    """Optional: where each run of a job keeps its files, for the retention policy
    (server/services/retention.py), which removes a run's WORK_DIR when the job ends and the
    whole directory when its outputs expire. A run's directory holds that run's logs, outputs
    and working copy, and nothing the backend needs once the job has ended."""

    def job_dir(self, job_id: int, instance: str = "") -> Path: ...
