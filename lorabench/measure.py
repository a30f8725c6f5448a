"""Honest measurements of the training phase: wall-clock per step and peak memory.

Time: ``time.perf_counter`` around each optimizer step; on CUDA the device is synchronised before
each reading, so a step's time includes its kernels, not just their launch.
Memory: on CUDA, the caching allocator's peak after ``reset_peak_memory_stats``; on CPU, the
process's peak resident set (``VmHWM``) after resetting it through ``/proc/self/clear_refs``, so the
peak belongs to the training phase and not to loading or evaluation. Where that reset is not allowed,
the lifetime peak (``ru_maxrss``) is reported and the record's ``memory.method`` says so.
Both peaks carry noise (the allocator's cache, the runtime's resident pages), so beside them an exact
account counts what training itself holds, in bytes of distinct storages: trainable parameters, their
gradients, the optimizer's state, the activations autograd saves for backward and the variant's own
non-trainable state (buffers, frozen factors). It depends only on
shapes and dtypes, so it is the same on every device, seed and rerun of a grid point.
"""

from __future__ import annotations

import resource
import statistics
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

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
    _held: float = 0.0

    def start(self) -> None:
        self._held = 0.0
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
        """The peak since :meth:`start`, leaving out what ran between :meth:`pause` and :meth:`resume`."""
        return max(self._held, self._live_peak_mb())

    def pause(self) -> None:
        """Keep the peak so far: work until :meth:`resume` (evaluation mid-training) is not training's.

        With ``cpu_ru_maxrss`` (no reset possible) the lifetime peak includes that work anyway; the method says so.
        """
        self._held = max(self._held, self._live_peak_mb())

    def resume(self) -> None:
        """Reset the peak counter (not the baseline) after a :meth:`pause`."""
        if self.method == "cuda_max_memory_allocated":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
        elif self.method == "cpu_peak_rss":
            _reset_cpu_peak()

    def _live_peak_mb(self) -> float:
        if self.method == "cuda_max_memory_allocated":
            torch.cuda.synchronize(self.device)
            return torch.cuda.max_memory_allocated(self.device) / MIB
        if self.method == "cpu_peak_rss":
            return _status_kib("VmHWM") / 1024
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def storage_bytes(tensors: Iterable[torch.Tensor], exclude: frozenset[int] = frozenset()) -> int:
    """Bytes of the distinct storages behind ``tensors``: views of one buffer are one buffer in memory.

    ``exclude``: storage addresses not to count (the model's own weights, held whether or not it trains).
    """
    storages = {}
    for tensor in tensors:
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in exclude:
            storages[storage.data_ptr()] = storage.nbytes()
    return sum(storages.values())


def storage_addresses(tensors: Iterable[torch.Tensor]) -> frozenset[int]:
    return frozenset(tensor.untyped_storage().data_ptr() for tensor in tensors)


def saved_activation_bytes(model: torch.nn.Module, forward: Callable[[], torch.Tensor]) -> int:
    """Bytes autograd saves for backward during ``forward()``, each storage once, the model's weights not counted.

    What a training step holds between its forward and backward pass beyond the model: inputs of layers whose
    weights train, masks, intermediates of the loss. The graph is dropped unused, so no gradient is touched.
    """
    weights = storage_addresses([*model.parameters(), *model.buffers()])
    saved: list[torch.Tensor] = []

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        # Detached (same storage, no grad_fn): a saved output packed as itself would point back at the node that
        # saves it, a cycle through C++ that gc cannot see, so the graph, every activation it saved and the
        # adapter's parameters would outlive the grid point, and every point of a job would start higher.
        detached = tensor.detach()
        saved.append(detached)
        return detached

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        loss = forward()
    counted = storage_bytes(saved, exclude=weights)
    del loss
    saved.clear()
    return counted


def variant_state_bytes(model: torch.nn.Module, before: frozenset[int]) -> int:
    """Bytes of what the variant added to ``model`` and holds beside its trainable parameters: its buffers and frozen
    factors (resampled's ``U0``/``V0``, frozen_a's ``A``, VeRA's shared projections), each storage once.

    ``before``: the storage addresses of the model's parameters and buffers before the variant was applied. Not
    counted: those, the trainable parameters (their own part), and the weights of the layers it wraps (a
    ``base_layer``, which PiSSA rewrites in place of the original).
    """
    trainable = storage_addresses(p for p in model.parameters() if p.requires_grad)
    held = [
        tensor
        for name, tensor in (*model.named_parameters(), *model.named_buffers())
        if not tensor.requires_grad and "base_layer." not in name
    ]
    return storage_bytes(held, exclude=before | trainable)


def optimizer_state_tensors(optimizer: torch.optim.Optimizer) -> list[torch.Tensor]:
    return [value for state in optimizer.state.values() for value in state.values() if isinstance(value, torch.Tensor)]


def account_after_first_step(optimizer: torch.optim.Optimizer, account: dict[str, int]) -> None:
    """Fill ``account`` with the bytes of trainable parameters, their gradients and the optimizer's state,
    counted once, right after the optimizer's first step: state is created lazily there, and a variant's
    hook may drop it afterwards (resampled does at each redraw)."""

    def count(opt: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
        params = [p for group in opt.param_groups for p in group["params"]]
        account["trainable_parameters"] = storage_bytes(params)
        account["gradients"] = storage_bytes(p.grad for p in params if p.grad is not None)
        account["optimizer_state"] = storage_bytes(optimizer_state_tensors(opt))
        handle.remove()

    handle = optimizer.register_step_post_hook(count)
