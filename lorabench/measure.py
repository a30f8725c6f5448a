"""Honest measurements of the training phase: wall-clock per step and peak memory.

Time: ``time.perf_counter`` around each optimizer step; on CUDA the device is synchronised before
each reading, so a step's time includes its kernels, not just their launch.
Memory: on CUDA, the caching allocator's peak after ``reset_peak_memory_stats``; on CPU, the
process's peak resident set (``VmHWM``) after resetting it through ``/proc/self/clear_refs``, so the
peak belongs to the training phase and not to loading or evaluation. Where that reset is not allowed,
the lifetime peak (``ru_maxrss``) is reported and the record's ``memory.method`` says so.
"""

from __future__ import annotations

import resource
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

MIB = 1024 * 1024
_STATUS = Path("/proc/self/status")
_CLEAR_REFS = Path("/proc/self/clear_refs")


@dataclass
class StepClock:
    """Wall-clock of each optimizer step, synchronising the device when it runs asynchronously."""

    device: torch.device
    step_seconds: list[float] = field(default_factory=list)
    _started: float = 0.0

    def _now(self) -> float:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        return time.perf_counter()

    def start(self) -> None:
        self._started = self._now()

    def stop(self) -> None:
        self.step_seconds.append(self._now() - self._started)

    @property
    def method(self) -> str:
        return "cuda_synchronize" if self.device.type == "cuda" else "perf_counter"

    def summary(self) -> dict[str, float | None]:
        steps_ms = [1000 * s for s in self.step_seconds]
        return {
            "step_ms_median": statistics.median(steps_ms) if steps_ms else None,
            "step_ms_mean": statistics.fmean(steps_ms) if steps_ms else None,
        }


def _status_kib(key: str) -> int:
    for line in _STATUS.read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    raise KeyError(key)


def _reset_cpu_peak() -> bool:
    """Reset the kernel's peak-RSS counter of this process (Linux >= 4.0); False where not allowed."""
    try:
        _CLEAR_REFS.write_text("5")
        return True
    except OSError:
        return False


@dataclass
class PeakMemory:
    """Peak memory of one phase, in MiB, with the method that measured it."""

    device: torch.device
    method: str = ""
    baseline_mb: float | None = None

    def start(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self.method = "cuda_max_memory_allocated"
            self.baseline_mb = torch.cuda.memory_allocated(self.device) / MIB
        elif _STATUS.exists() and _reset_cpu_peak():
            self.method = "cpu_peak_rss"
            self.baseline_mb = _status_kib("VmRSS") / 1024
        else:
            self.method = "cpu_ru_maxrss"
            self.baseline_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

    def peak_mb(self) -> float:
        if self.method == "cuda_max_memory_allocated":
            torch.cuda.synchronize(self.device)
            return torch.cuda.max_memory_allocated(self.device) / MIB
        if self.method == "cpu_peak_rss":
            return _status_kib("VmHWM") / 1024
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
