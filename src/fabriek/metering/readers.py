"""Readers of energy: each says how much its component used since it started, and how it knows.

- GPU: NVML's total-energy counter per GPU (`nvmlDeviceGetTotalEnergyConsumption`, millijoules
  since the driver loaded; Volta and later). A GPU without the counter is metered by integrating
  `nvmlDeviceGetPowerUsage` samples (trapezoids), and says so.
- CPU and DRAM: RAPL under /sys/class/powercap (`intel-rapl:N` package zones and their `dram`
  subzones; AMD's packages appear there too), each counter's wrap-around undone with its
  `max_energy_range_uj`. The machine's energy is split among jobs by their share of the busy CPU
  time in each interval.
- Fallback: rated power x measured use (CPU-seconds, GPU-seconds, memory held), always marked
  `measured = False` with the method in words.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

# Defaults of the estimates, per Green Algorithms (Lannelongue, Grealey and Inouye, "Green
# Algorithms: Quantifying the Carbon Footprint of Computation", Advanced Science 2021): 12 W per
# busy core when the CPU model is unknown, 0.3725 W per GB of memory held. GPUs: the rated board
# power of an H100 SXM (700 W, NVIDIA's datasheet), an upper bound for any smaller card.
CPU_WATTS_PER_CORE = 12.0
DRAM_WATTS_PER_GB = 0.3725
GPU_RATED_WATTS = 700.0


@dataclass(frozen=True, slots=True)
class Reading:
    """Energy of one component since metering began."""

    component: str  # gpu | cpu | dram
    joules: float
    method: str  # in words, e.g. "NVML energy counter" or "estimate: 12 W per busy core"
    measured: bool

    def to_json(self) -> dict[str, object]:
        return {"joules": self.joules, "method": self.method, "measured": self.measured}


# --- GPUs ---------------------------------------------------------------------------------------
class GpuSource(Protocol):
    """What a GPU tells about its energy. NVML on a real machine; a fake in tests."""

    def energy_mj(self, index: int) -> int | None:
        """The total-energy counter in millijoules, or None where the GPU has none."""
        ...

    def power_mw(self, index: int) -> int | None:
        """The board's power draw now, in milliwatts, or None where unknown."""
        ...


class NvmlSource:
    """NVML through nvidia-ml-py. Indices are NVML's (the local backend's GPU indices)."""

    def __init__(self) -> None:
        import pynvml

        self._nvml = pynvml
        pynvml.nvmlInit()
        self._handles: dict[int, object] = {}

    def _handle(self, index: int) -> object:
        handle = self._handles.get(index)
        if handle is None:
            handle = self._handles[index] = self._nvml.nvmlDeviceGetHandleByIndex(index)
        return handle

    def energy_mj(self, index: int) -> int | None:
        try:
            return int(self._nvml.nvmlDeviceGetTotalEnergyConsumption(self._handle(index)))
        except self._nvml.NVMLError:  # NOT_SUPPORTED on GPUs before Volta, and on some vGPUs
            return None

    def power_mw(self, index: int) -> int | None:
        try:
            return int(self._nvml.nvmlDeviceGetPowerUsage(self._handle(index)))
        except self._nvml.NVMLError:
            return None

    def close(self) -> None:
        self._nvml.nvmlShutdown()


class GpuMeter:
    """The energy of a job's GPUs: their counters' growth, or integrated power samples."""

    def __init__(
        self,
        source: GpuSource,
        indices: Sequence[int],
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.source, self.indices, self.clock = source, list(indices), clock
        self._start: dict[int, int] = {}  # counter at start, per GPU with a counter
        self._power: dict[int, tuple[float, float]] = {}  # last (time, watts) per GPU without
        self._integrated: dict[int, float] = {}  # joules so far, per GPU without a counter
        for index in self.indices:
            counter = source.energy_mj(index)
            if counter is not None:
                self._start[index] = counter
            else:
                self._integrated[index] = 0.0
                power = source.power_mw(index)
                if power is not None:
                    self._power[index] = (clock(), power / 1000)

    @property
    def needs_frequent_samples(self) -> bool:
        """Power integration is only as good as its samples: take them every second or so."""
        return bool(self._integrated)

    def read(self) -> Reading:
        now = self.clock()
        joules = 0.0
        for index, start in self._start.items():
            counter = self.source.energy_mj(index)
            if counter is not None and counter >= start:  # smaller: the driver was reloaded
                joules += (counter - start) / 1000
        for index in self._integrated:
            power = self.source.power_mw(index)
            if power is None:
                continue
            watts = power / 1000
            last = self._power.get(index)
            if last is not None:
                self._integrated[index] += (now - last[0]) * (last[1] + watts) / 2
            self._power[index] = (now, watts)
        joules += sum(self._integrated.values())
        if self._integrated and self._start:
            method = "NVML energy counters and power samples (integrated)"
        elif self._integrated:
            method = "NVML power samples (integrated)"
        else:
            method = "NVML energy counter"
        return Reading("gpu", joules, method, True)


class GpuEstimate:
    """No NVML (e.g. declared fake GPUs): rated power for as long as the GPUs were held."""

    def __init__(
        self,
        gpus: int,
        *,
        watts: float = GPU_RATED_WATTS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.gpus, self.watts, self.clock = gpus, watts, clock
        self.started = clock()

    needs_frequent_samples = False

    def read(self) -> Reading:
        seconds = self.clock() - self.started
        return Reading(
            "gpu",
            self.gpus * self.watts * seconds,
            f"estimate: rated {self.watts:.0f} W per GPU for as long as it was held (an upper bound)",
            False,
        )


# --- CPUs and memory ----------------------------------------------------------------------------
@dataclass(slots=True)
class _Zone:
    path: Path
    max_range: int
    last: int
    total: int = 0  # microjoules since start, wraps undone


class Rapl:
    """The machine's RAPL counters: package (CPU) and dram energy since start, in joules."""

    def __init__(self, root: str | Path = "/sys/class/powercap") -> None:
        self.zones: dict[str, list[_Zone]] = {"cpu": [], "dram": []}
        root = Path(root)
        if not root.is_dir():
            return
        for zone in sorted(root.glob("intel-rapl:*")):
            try:
                name = (zone / "name").read_text().strip()
                if name.startswith("package"):
                    kind = "cpu"
                elif name == "dram":
                    kind = "dram"
                else:
                    continue  # core and uncore are parts of the package: counted there
                max_range = int((zone / "max_energy_range_uj").read_text())
                energy = int((zone / "energy_uj").read_text())
            except (OSError, ValueError):  # unreadable (often root only): not this zone
                continue
            self.zones[kind].append(_Zone(zone / "energy_uj", max_range, energy))

    @property
    def available(self) -> bool:
        return bool(self.zones["cpu"])

    def read(self) -> dict[str, float]:
        """Joules per kind since start. Sample often enough that no counter wraps twice between
        two reads (about 4 minutes at 1 kW for a 262 kJ range; the meter samples every 15 s)."""
        result = {}
        for kind, zones in self.zones.items():
            for zone in zones:
                try:
                    value = int(zone.path.read_text())
                except (OSError, ValueError):
                    continue
                delta = value - zone.last
                if delta < 0:
                    delta += zone.max_range + 1
                zone.total += delta
                zone.last = value
            if zones:
                result[kind] = sum(z.total for z in zones) / 1e6
        return result


def machine_busy_seconds(stat: str | Path = "/proc/stat") -> float:
    """CPU-seconds the whole machine spent busy since boot (all but idle and iowait)."""
    with open(stat) as f:
        fields = f.readline().split()[1:]
    ticks = [int(v) for v in fields[:8]]  # user nice system idle iowait irq softirq steal
    busy = sum(ticks) - ticks[3] - ticks[4] - ticks[7]  # steal is another machine's work
    return busy / os.sysconf("SC_CLK_TCK")


def group_cpu_seconds(pgid: int, proc: str | Path = "/proc") -> float:
    """CPU-seconds of the live processes of a process group, with their reaped children's."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0
    for entry in os.scandir(proc):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"{entry.path}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2 :].split()
        if int(fields[2]) == pgid:  # field 5, the process group
            total += sum(int(v) for v in fields[11:15])  # utime stime cutime cstime
    return total / tick


class CpuMeter:
    """The job's share of the machine's CPU and DRAM energy (RAPL), by its share of the busy CPU
    time in each interval; without RAPL, an estimate from its CPU-seconds and memory."""

    def __init__(
        self,
        job_cpu_seconds: Callable[[], float],
        *,
        memory_bytes: int,
        rapl: Rapl | None = None,
        busy_seconds: Callable[[], float] = machine_busy_seconds,
        watts_per_core: float = CPU_WATTS_PER_CORE,
        dram_watts_per_gb: float = DRAM_WATTS_PER_GB,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.job_cpu_seconds, self.busy_seconds, self.clock = job_cpu_seconds, busy_seconds, clock
        self.rapl = rapl if rapl is not None and rapl.available else None
        self.memory_bytes = memory_bytes
        self.watts_per_core, self.dram_watts_per_gb = watts_per_core, dram_watts_per_gb
        self.started = clock()
        self.job_cpu = 0.0  # the job's CPU-seconds so far (kept: its processes may be gone)
        self._last_job = job_cpu_seconds()
        self._last_busy = busy_seconds() if self.rapl else 0.0
        self._last_rapl = self.rapl.read() if self.rapl else {}
        self.joules = {"cpu": 0.0, "dram": 0.0}

    def sample(self) -> None:
        job = self.job_cpu_seconds()
        job_delta = max(0.0, job - self._last_job)
        self._last_job = max(job, self._last_job)
        self.job_cpu += job_delta
        if self.rapl is None:
            return
        busy = self.busy_seconds()
        busy_delta, self._last_busy = busy - self._last_busy, busy
        energy = self.rapl.read()
        share = min(1.0, job_delta / busy_delta) if busy_delta > 0 else 0.0
        for kind in ("cpu", "dram"):
            if kind in energy:
                delta = energy[kind] - self._last_rapl.get(kind, 0.0)
                self.joules[kind] += share * delta
        self._last_rapl = energy

    def read(self, *, final_cpu_seconds: float | None = None) -> list[Reading]:
        """`final_cpu_seconds`: the job's CPU time from its reaped status, exact at the end."""
        if final_cpu_seconds is not None:
            self.job_cpu = max(self.job_cpu, final_cpu_seconds)
        held_s = self.clock() - self.started
        dram_estimate = Reading(
            "dram",
            self.memory_bytes / 1e9 * self.dram_watts_per_gb * held_s,
            f"estimate: {self.dram_watts_per_gb} W per GB of memory asked for, while it ran",
            False,
        )
        if self.rapl is None:
            return [
                Reading(
                    "cpu",
                    self.job_cpu * self.watts_per_core,
                    f"estimate: {self.watts_per_core:g} W per busy core x its CPU-seconds",
                    False,
                ),
                dram_estimate,
            ]
        share = "RAPL, its share of the busy CPU time"
        readings = [Reading("cpu", self.joules["cpu"], f"{share} (package)", True)]
        if self.rapl.zones["dram"]:
            readings.append(Reading("dram", self.joules["dram"], f"{share} (dram)", True))
        else:
            readings.append(dram_estimate)
        return readings
