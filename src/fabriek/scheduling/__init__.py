"""The admission engine: pure functions from a snapshot of the factory to decisions."""

from fabriek.scheduling.firstfit import admit
from fabriek.scheduling.snapshot import (
    Admission,
    Capacity,
    Decisions,
    PendingJob,
    RunningJob,
    Snapshot,
)

__all__ = ["Admission", "Capacity", "Decisions", "PendingJob", "RunningJob", "Snapshot", "admit"]
