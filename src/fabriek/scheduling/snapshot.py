"""The admission engine's input and output: plain, immutable data, no database and no clock calls."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

from fabriek.core.jobs import Resources


@dataclass(frozen=True, slots=True)
class Capacity:
    """What one machine (partition) offers: its resources and the ids of its GPUs."""

    resources: Resources
    gpu_ids: tuple[int, ...] = ()


@dataclass(frozen=True, slots=True)
class RunningJob:
    job_id: int
    resources: Resources
    gpu_ids: tuple[int, ...] = ()


@dataclass(frozen=True, slots=True)
class PendingJob:
    job_id: int
    resources: Resources
    submitted_at: datetime


@dataclass(frozen=True, slots=True)
class Snapshot:
    """Everything the engine may look at. `pending` is in queue order (oldest first)."""

    capacity: Capacity
    running: tuple[RunningJob, ...]
    pending: tuple[PendingJob, ...]
    now: datetime


@dataclass(frozen=True, slots=True)
class Admission:
    job_id: int
    gpu_ids: tuple[int, ...] = ()


@dataclass(slots=True)
class Decisions:
    """The engine's answer: which jobs start now, and why each other pending job waits."""

    admissions: list[Admission] = field(default_factory=list)
    reasons: dict[int, str] = field(default_factory=dict)
