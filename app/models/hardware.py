"""What this machine can train on: NVIDIA GPUs through NVML, otherwise CPU cores and RAM."""

from __future__ import annotations

import os
import platform
from dataclasses import asdict, dataclass, field

import psutil


@dataclass
class GPU:
    index: int
    name: str
    total_mb: int
    used_mb: int
    utilization_pct: int | None


@dataclass
class Hardware:
    gpus: list[GPU] = field(default_factory=list)
    cpu_name: str = ""
    cpu_cores: int = 1
    ram_total_mb: int = 0
    ram_available_mb: int = 0
    nvml_error: str | None = None  # why no GPU was seen, for the UI ("no NVIDIA driver")

    @property
    def device(self) -> str:
        return "cuda" if self.gpus else "cpu"

    @property
    def budget_mb(self) -> int:
        """Memory one training process can use: the smallest GPU, else the available RAM."""
        if self.gpus:
            return min(g.total_mb for g in self.gpus)
        return self.ram_available_mb

    def as_dict(self) -> dict:
        return asdict(self) | {"device": self.device, "budget_mb": self.budget_mb}

    def summary(self) -> str:
        if self.gpus:
            return "; ".join(
                f"GPU {g.index}: {g.name}, {g.used_mb / 1024:.1f}/{g.total_mb / 1024:.1f} GiB"
                + (f", {g.utilization_pct}% busy" if g.utilization_pct is not None else "")
                for g in self.gpus
            )
        why = f" ({self.nvml_error})" if self.nvml_error else ""
        return (
            f"CPU only{why}: {self.cpu_cores} cores {self.cpu_name}, "
            f"{self.ram_available_mb / 1024:.1f}/{self.ram_total_mb / 1024:.1f} GiB RAM free"
        )


def probe_gpus() -> tuple[list[GPU], str | None]:
    """Every NVIDIA GPU NVML sees; ([], reason) on machines without the driver. Never raises."""
    try:
        import pynvml
    except ImportError:
        return [], "nvidia-ml-py not installed"
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError as exc:  # NVMLError_LibraryNotFound without a driver
        return [], f"no NVIDIA driver: {exc}"
    gpus = []
    try:
        visible = os.environ.get("CUDA_VISIBLE_DEVICES")
        wanted = {int(i) for i in visible.split(",") if i.strip().isdigit()} if visible else None
        for index in range(pynvml.nvmlDeviceGetCount()):
            if wanted is not None and index not in wanted:
                continue
            handle = pynvml.nvmlDeviceGetHandleByIndex(index)
            name = pynvml.nvmlDeviceGetName(handle)
            memory = pynvml.nvmlDeviceGetMemoryInfo(handle)
            try:
                util = int(pynvml.nvmlDeviceGetUtilizationRates(handle).gpu)
            except pynvml.NVMLError:
                util = None
            gpus.append(
                GPU(
                    index=index,
                    name=name.decode() if isinstance(name, bytes) else str(name),
                    total_mb=int(memory.total // 2**20),
                    used_mb=int(memory.used // 2**20),
                    utilization_pct=util,
                )
            )
    except pynvml.NVMLError as exc:
        return gpus, f"NVML error: {exc}"
    finally:
        try:
            pynvml.nvmlShutdown()
        except pynvml.NVMLError:
            pass
    return gpus, None


def probe_hardware() -> Hardware:
    gpus, error = probe_gpus()
    memory = psutil.virtual_memory()
    return Hardware(
        gpus=gpus,
        cpu_name=platform.processor() or platform.machine(),
        cpu_cores=psutil.cpu_count(logical=True) or 1,
        ram_total_mb=int(memory.total // 2**20),
        ram_available_mb=int(memory.available // 2**20),
        nvml_error=error,
    )
