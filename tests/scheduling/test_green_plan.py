"""The green plan's capacity over the forecast (`_GreenPlan`): its fast add, fits and pour give
exactly what the plain slot-by-slot definition gives, also off the hour and at the horizon."""

from __future__ import annotations

import random
from types import SimpleNamespace

import pytest

from fabriek.scheduling.green import _GreenPlan

SLOT = _GreenPlan.SLOT


class PlainPlan:
    """The definition, slot by slot: a job counts in every slot it touches; work poured starts at
    the first slot from now whose whole span (to the horizon) has room."""

    def __init__(self, start: float, now: float, slots: int, total: int, busy: list[int]) -> None:
        self.start, self.now, self.slots, self.total, self.busy = start, now, slots, total, busy

    def span(self, at: float, seconds: float) -> range:
        first = int((max(at, self.start) - self.start) // SLOT)
        last = int((at + max(seconds, 1.0) - 1e-6 - self.start) // SLOT)
        return range(first, last + 1)

    def fits(self, at: float, seconds: float, gpus: int) -> bool:
        span = self.span(at, seconds)
        if span.start >= self.slots:
            return False
        return all(self.busy[i] + gpus <= self.total for i in span if i < self.slots)

    def add(self, at: float, seconds: float, gpus: int) -> None:
        for i in self.span(at, seconds):
            if i < self.slots and gpus > 0:
                self.busy[i] += gpus

    def pour(self, seconds: float, gpus: int) -> float | None:
        if gpus <= 0:
            return self.now
        for i in range(int((self.now - self.start) // SLOT), self.slots):
            at = max(self.now, self.start + i * SLOT)
            if self.fits(at, seconds, gpus):
                self.add(at, seconds, gpus)
                return at
        return None


def make_plan(start: float, now: float, hours: int, total: int, running: list[tuple[float, int]]):  # type: ignore[no-untyped-def]
    """A _GreenPlan over `hours` of forecast from `start`, with running jobs (seconds left, GPUs)
    on one GPU type."""
    running_jobs = [
        SimpleNamespace(placement=SimpleNamespace(partition="p"), ends_by=now + left,
                        request=SimpleNamespace(gpus=gpus))
        for left, gpus in running
    ]  # fmt: skip
    state = SimpleNamespace(
        snapshot=SimpleNamespace(forecast_start=start, forecast=[0.0] * hours, running=running_jobs),
        now=now, total={"h100": total}, type_of=lambda partition: "h100",
    )  # fmt: skip
    return _GreenPlan(state)  # type: ignore[arg-type]


@pytest.mark.parametrize("seed", range(40))
def test_the_plan_pours_and_fits_as_the_slot_by_slot_definition(seed: int) -> None:
    rng = random.Random(seed)
    # Starts on the hour (the controller's) and off it (fractional: its spans round near edges).
    start = rng.choice([1_700_000_000.0, 3600.0 * rng.randrange(1, 10**6), rng.uniform(0, 1e9)])
    now = start + rng.uniform(0, 2 * SLOT)
    hours, total = rng.randint(1, 30), rng.randint(1, 16)
    running = [
        (rng.uniform(-100, hours * 4000), rng.randint(0, total)) for _ in range(rng.randint(0, 12))
    ]
    fast = make_plan(start, now, hours, total, running)
    plain = PlainPlan(start, now, fast.slots, total, [0] * fast.slots)
    for left, gpus in running:
        plain.add(now, now + left - now, gpus)
    assert fast.busy["h100"] == plain.busy
    for _ in range(30):
        seconds, gpus = (
            rng.choice([rng.uniform(0, 3 * SLOT), rng.uniform(0, hours * 3600)]),
            rng.randint(0, total),
        )
        at = now + rng.uniform(-SLOT, hours * 3600)
        assert fast.fits("h100", at, seconds=seconds, gpus=gpus) == plain.fits(at, seconds, gpus)
        assert fast.pour("h100", seconds, gpus) == plain.pour(seconds, gpus)
        assert fast.busy["h100"] == plain.busy


def test_a_start_off_the_hour_whose_span_rounds_onto_a_full_slot_still_ends() -> None:
    """Found in review: (start + 110 x 300) - start is 32999.99999999999 here, so the span of
    slot 110 began at the full slot 109, and the pour tried slot 110 again forever."""
    start = 65383.27527238505
    fast = make_plan(start, start, 12, 1, [])
    fast.busy["h100"] = [1] * 110 + [0] * (fast.slots - 110)
    plain = PlainPlan(start, start, fast.slots, 1, list(fast.busy["h100"]))
    assert fast.pour("h100", 300, 1) == plain.pour(300, 1) is not None
