"""The energy readers against counters whose truth is known: a fake NVML source behind the same
interface (CI has no GPU), a RAPL tree in a temporary directory (the real reader reads it), and
the machine's real /proc."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest

from fabriek.backends.base import hourly
from fabriek.metering.meter import FakeCounter, JobMeter
from fabriek.metering.readers import CpuMeter, GpuEstimate, GpuMeter, Rapl, group_cpu_seconds


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_gpu_energy_comes_from_the_counters_of_the_jobs_gpus() -> None:
    clock = Clock()
    meter = GpuMeter(FakeCounter(250.0, clock=clock), [0, 1], clock=clock)
    clock.now += 10
    reading = meter.read()
    assert reading.joules == pytest.approx(2 * 250 * 10)
    assert reading.measured and reading.method == "NVML energy counter"
    assert not meter.needs_frequent_samples


def test_a_gpu_without_a_counter_is_metered_by_integrating_power_and_says_so() -> None:
    clock = Clock()
    source = FakeCounter(300.0, counter=False, clock=clock)
    meter = GpuMeter(source, [0], clock=clock)
    assert meter.needs_frequent_samples
    for _ in range(10):
        clock.now += 1
        reading = meter.read()
    assert reading.joules == pytest.approx(300 * 10)
    assert reading.measured and reading.method == "NVML power samples (integrated)"


def test_gpus_nvml_does_not_know_are_estimated_from_rated_power() -> None:
    clock = Clock()
    estimate = GpuEstimate(2, watts=400, clock=clock)
    clock.now += 3
    reading = estimate.read()
    assert reading.joules == pytest.approx(2 * 400 * 3) and not reading.measured
    assert reading.method.startswith("estimate: rated 400 W per GPU")


def _zone(root: Path, name: str, label: str, energy: int, max_range: int) -> Path:
    zone = root / name
    zone.mkdir(parents=True)
    (zone / "name").write_text(label + "\n")
    (zone / "energy_uj").write_text(f"{energy}\n")
    (zone / "max_energy_range_uj").write_text(f"{max_range}\n")
    return zone


def test_rapl_counters_are_read_per_package_and_dram_with_wrap_around(tmp_path: Path) -> None:
    package = _zone(tmp_path, "intel-rapl:0", "package-0", 900_000, 999_999)
    dram = _zone(tmp_path, "intel-rapl:0:0", "dram", 10, 999_999)
    _zone(tmp_path, "intel-rapl:0:1", "core", 5, 999_999)  # part of the package: not counted
    rapl = Rapl(tmp_path)
    assert rapl.available
    (package / "energy_uj").write_text("100000\n")  # wrapped: 99,999 + 1 + 100,000 uJ later
    (dram / "energy_uj").write_text("500010\n")
    assert rapl.read() == {"cpu": pytest.approx(0.2), "dram": pytest.approx(0.5)}
    (package / "energy_uj").write_text("400000\n")
    assert rapl.read()["cpu"] == pytest.approx(0.5)
    assert not Rapl(tmp_path / "absent").available


def test_cpu_energy_is_the_jobs_share_of_the_busy_cpu_time(tmp_path: Path) -> None:
    package = _zone(tmp_path, "intel-rapl:0", "package-0", 0, 10**12)
    job, busy = [0.0], [0.0]
    meter = CpuMeter(
        lambda: job[0], memory_bytes=2 * 10**9, rapl=Rapl(tmp_path), busy_seconds=lambda: busy[0]
    )
    # The machine was busy 8 CPU-seconds, 2 of them the job's, and used 400 J: 100 J are its.
    job[0], busy[0] = 2.0, 8.0
    (package / "energy_uj").write_text(f"{400 * 10**6}\n")
    meter.sample()
    cpu, dram = meter.read()
    assert cpu.joules == pytest.approx(100.0) and cpu.measured
    assert cpu.method == "RAPL, its share of the busy CPU time (package)"
    assert not dram.measured and dram.method.startswith("estimate:")  # no dram zone here


def test_without_rapl_cpu_energy_is_estimated_from_cpu_seconds() -> None:
    clock = Clock()
    meter = CpuMeter(lambda: 0.0, memory_bytes=10**9, rapl=None, clock=clock)
    clock.now += 100
    cpu, dram = meter.read(final_cpu_seconds=50.0)
    assert cpu.joules == pytest.approx(50 * 12) and not cpu.measured
    assert dram.joules == pytest.approx(1 * 0.3725 * 100) and not dram.measured


def test_a_process_groups_cpu_time_is_read_from_proc() -> None:
    burn = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import time\nend = time.time() + 0.6\nwhile time.time() < end: pass",
        ],
        process_group=0,
    )
    try:
        time.sleep(0.4)
        assert group_cpu_seconds(burn.pid) >= 0.2
    finally:
        burn.wait()
    assert group_cpu_seconds(os.getpid() + 10**7) == 0.0  # no such group


def test_energy_is_placed_in_the_hours_it_was_used() -> None:
    hour = datetime(2026, 11, 26, 9, tzinfo=UTC).timestamp()
    # 30 minutes before 10:00 and 30 after, at a steady rate; 50 J after the last sample.
    points = [(hour + 1800, 0.0), (hour + 3600 + 1800, 3600.0)]
    by_hour = hourly(points, 3650.0)
    assert by_hour == {
        datetime(2026, 11, 26, 9, tzinfo=UTC): pytest.approx(1800.0),
        datetime(2026, 11, 26, 10, tzinfo=UTC): pytest.approx(1850.0),
    }


def test_the_job_meter_writes_samples_over_the_jobs_life(tmp_path: Path) -> None:
    clock = Clock()
    samples = tmp_path / "energy.jsonl"
    meter = JobMeter(
        samples=samples,
        gpu=GpuMeter(FakeCounter(100.0, clock=clock), [0], clock=clock),
        cpu=CpuMeter(lambda: 0.0, memory_bytes=10**9, rapl=None, clock=clock),
        sample_every_s=15,
        wall=clock,
        clock=clock,
    )
    for _ in range(4):
        clock.now += 15
        meter.sample()
    totals = meter.finish(cpu_seconds=3.0)
    assert totals["gpu"] == {
        "joules": pytest.approx(6000.0),
        "method": "NVML energy counter",
        "measured": True,
    }
    assert totals["cpu"]["joules"] == pytest.approx(36.0)
    assert len(samples.read_text().splitlines()) == 6  # at start, 4 on the way, at the end
