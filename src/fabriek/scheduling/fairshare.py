"""Fair share with memory: each project's recent GPU use, decayed with a half-life.

Usage from `half_life` ago counts half, from twice that a quarter, and so on (Slurm's
PriorityDecayHalfLife works the same way). A job that ran from `start` to `end` contributes the
integral of its GPUs times the decay over that interval, so a long job counts mostly for its
recent hours. The engine divides the result by the size of the project's allocation.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

DEFAULT_HALF_LIFE_S = 7 * 86400.0


@dataclass(frozen=True, slots=True)
class Use:
    project: str
    gpus: int
    start: float
    end: float  # `now` for a job still running


def decayed_usage(
    uses: Iterable[Use], *, now: float, half_life_s: float = DEFAULT_HALF_LIFE_S
) -> dict[str, float]:
    """GPU-seconds per project, each second weighted by 2 ** (-age / half_life)."""
    if half_life_s <= 0:
        raise ValueError("the half-life must be positive")
    rate = math.log(2) / half_life_s
    totals: dict[str, float] = {}
    for use in uses:
        start, end = min(use.start, now), min(use.end, now)
        if end <= start or use.gpus <= 0:
            continue
        # The integral of exp(-rate * (now - t)) dt from start to end.
        weight = (math.exp(-rate * (now - end)) - math.exp(-rate * (now - start))) / rate
        totals[use.project] = totals.get(use.project, 0.0) + use.gpus * weight
    return totals
