"""GPU inventory of the local machine: NVML when present, a declared fake set for tests and demos.

Both sit behind `GpuInventory`: the rest of fabriek cannot tell them apart.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Protocol

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class GpuInfo:
    index: int
    uuid: str
    model: str
    memory_bytes: int
    minor: int | None = None  # its device node is /dev/nvidia<minor> (NVML's index may differ)


class GpuInventory(Protocol):
    def detect(self) -> list[GpuInfo]: ...


class NvmlInventory:
    """Reads the GPUs from the NVIDIA driver. No driver or library: no GPUs, said once in the log."""

    def detect(self) -> list[GpuInfo]:
        try:
            import pynvml
        except ImportError:
            log.info("nvidia-ml-py is not installed: no GPUs")
            return []
        try:
            pynvml.nvmlInit()
        except pynvml.NVMLError as exc:
            log.info("no NVIDIA driver found (%s): no GPUs", exc)
            return []
        try:
            gpus = []
            for index in range(pynvml.nvmlDeviceGetCount()):
                dev = pynvml.nvmlDeviceGetHandleByIndex(index)
                name = pynvml.nvmlDeviceGetName(dev)
                uuid = pynvml.nvmlDeviceGetUUID(dev)
                mem = pynvml.nvmlDeviceGetMemoryInfo(dev)
                gpus.append(
                    GpuInfo(
                        index,
                        uuid if isinstance(uuid, str) else uuid.decode(),
                        name if isinstance(name, str) else name.decode(),
                        int(mem.total),
                        int(pynvml.nvmlDeviceGetMinorNumber(dev)),
                    )
                )
            return gpus
        finally:
            pynvml.nvmlShutdown()


class FakeInventory:
    """N identical GPUs that do not exist: for CI and demos on machines without an NVIDIA GPU."""

    def __init__(
        self, count: int, model: str = "fake-gpu", memory_bytes: int = 80 * 1024**3
    ) -> None:
        self.count, self.model, self.memory_bytes = count, model, memory_bytes

    def detect(self) -> list[GpuInfo]:
        return [
            GpuInfo(i, f"GPU-fake-{i:04d}", self.model, self.memory_bytes)
            for i in range(self.count)
        ]


class NoInventory:
    def detect(self) -> list[GpuInfo]:
        return []


def inventory_from_setting(value: str | None) -> GpuInventory:
    """`None`: NVML; `none`: no GPUs; `fake:N[:MODEL]`: N fake GPUs."""
    if value is None or value == "nvml":
        return NvmlInventory()
    if value == "none":
        return NoInventory()
    parts = value.split(":")
    if parts[0] == "fake" and len(parts) in (2, 3) and parts[1].isdigit():
        return FakeInventory(int(parts[1]), parts[2] if len(parts) == 3 else "fake-gpu")
    raise ValueError(f"FABRIEK_GPUS must be nvml, none or fake:N[:MODEL], not {value!r}")
