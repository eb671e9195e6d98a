"""One job's meter: its GPU and CPU/DRAM readers, sampled over its life.

The job supervisor creates it once the job has started, calls `due()`/`sample()` from its loop
and `finish()` when the job has ended. Every `SAMPLE_EVERY_S` a line of cumulative joules goes to
`energy.jsonl` in the job's directory, so the backend can place energy in the hour it was used;
`finish()` returns the totals with each component's method.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fabriek.metering.readers import (
    CPU_WATTS_PER_CORE,
    DRAM_WATTS_PER_GB,
    GPU_RATED_WATTS,
    CpuMeter,
    GpuEstimate,
    GpuMeter,
    GpuSource,
    NvmlSource,
    Rapl,
    Reading,
    group_cpu_seconds,
)

log = logging.getLogger(__name__)

SAMPLE_EVERY_S = 15.0
POWER_SAMPLE_EVERY_S = 1.0  # where a GPU has no energy counter and its power is integrated


class JobMeter:
    def __init__(
        self,
        *,
        samples: Path,
        gpu: GpuMeter | GpuEstimate | None,
        cpu: CpuMeter,
        sample_every_s: float = SAMPLE_EVERY_S,
        wall: Callable[[], float] = time.time,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.samples, self.gpu, self.cpu = samples, gpu, cpu
        self.wall, self.clock = wall, clock
        self.every = (
            min(sample_every_s, POWER_SAMPLE_EVERY_S)
            if gpu is not None and gpu.needs_frequent_samples
            else sample_every_s
        )
        self.write_every = sample_every_s
        self._next = clock() + self.every
        self._next_write = clock() + self.write_every
        self._write(self._readings())

    def due(self) -> float:
        """Seconds until the next sample."""
        return max(0.0, self._next - self.clock())

    def sample(self) -> None:
        now = self.clock()
        if now < self._next:
            return
        self._next = now + self.every
        self.cpu.sample()
        readings = self._readings()
        if now >= self._next_write:
            self._next_write = now + self.write_every
            self._write(readings)

    def finish(self, *, cpu_seconds: float | None = None) -> dict[str, dict[str, object]]:
        """The last sample and the totals, e.g. {"gpu": {"joules": .., "method": .., "measured": ..}}."""
        self.cpu.sample()
        readings = self._readings(final_cpu_seconds=cpu_seconds)
        self._write(readings)
        return {r.component: r.to_json() for r in readings}

    def _readings(self, *, final_cpu_seconds: float | None = None) -> list[Reading]:
        readings = self.cpu.read(final_cpu_seconds=final_cpu_seconds)
        if self.gpu is not None:
            readings.insert(0, self.gpu.read())
        return readings

    def _write(self, readings: list[Reading]) -> None:
        line: dict[str, Any] = {"t": self.wall()}
        line.update({r.component: r.joules for r in readings})
        with open(self.samples, "a") as f:
            f.write(json.dumps(line) + "\n")


@dataclass(frozen=True, slots=True)
class Estimates:
    """The factors of the estimates, where nothing measures (operators may set their own)."""

    cpu_watts_per_core: float = CPU_WATTS_PER_CORE
    dram_watts_per_gb: float = DRAM_WATTS_PER_GB
    gpu_watts: float = GPU_RATED_WATTS


def job_meter(
    job_dir: str | Path,
    *,
    pgid: int,
    gpu_indices: Sequence[int],
    gpu_source: str,
    memory_bytes: int,
    rapl_root: str = "/sys/class/powercap",
    sample_every_s: float = SAMPLE_EVERY_S,
    estimates: Estimates | None = None,
    cpu_seconds: Callable[[], float] | None = None,
) -> JobMeter:
    """The meter the supervisor runs. `cpu_seconds`: the job's CPU time so far (its cgroup's,
    in a sandbox); default: its process group's, `pgid`. `gpu_source`: `nvml` (real GPUs), `estimate` (GPUs that
    NVML does not know, e.g. declared fake ones), or `fake-counter:WATTS` (tests: a counter
    that grows at WATTS per GPU, behind the same interface as NVML)."""
    gpu: GpuMeter | GpuEstimate | None = None
    source: GpuSource | None = None
    if gpu_indices:
        if gpu_source == "nvml":
            try:
                source = NvmlSource()
            except Exception as exc:  # no driver after all: say so, estimate instead
                log.warning("NVML unavailable (%s): GPU energy is estimated", exc)
        elif gpu_source.startswith("fake-counter:"):
            source = FakeCounter(float(gpu_source.split(":", 1)[1]))
    factors = estimates or Estimates()
    if gpu_indices:
        gpu = (
            GpuMeter(source, gpu_indices)
            if source is not None
            else GpuEstimate(len(gpu_indices), watts=factors.gpu_watts)
        )
    cpu = CpuMeter(
        cpu_seconds or (lambda: group_cpu_seconds(pgid)),
        memory_bytes=memory_bytes,
        rapl=Rapl(rapl_root),
        watts_per_core=factors.cpu_watts_per_core,
        dram_watts_per_gb=factors.dram_watts_per_gb,
    )
    return JobMeter(
        samples=Path(job_dir) / "energy.jsonl", gpu=gpu, cpu=cpu, sample_every_s=sample_every_s
    )


class FakeCounter:
    """A GPU energy counter that grows at `watts` per GPU: for tests, where no GPU exists. With
    `counter=False` it has only a power reading, like a GPU older than Volta."""

    def __init__(
        self,
        watts: float,
        *,
        counter: bool = True,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.watts, self.counter, self.clock = watts, counter, clock
        self.origin = clock()

    def energy_mj(self, index: int) -> int | None:
        if not self.counter:
            return None
        return int(1_000_000 + (self.clock() - self.origin) * self.watts * 1000)

    def power_mw(self, index: int) -> int | None:
        return int(self.watts * 1000)
