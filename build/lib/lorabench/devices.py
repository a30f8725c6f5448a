"""Pick the device a training job runs on, and describe it for the run record.

Snakemake never assigns GPU ids to local jobs: with ``resources: gpu=1`` it only caps how
many run at once. So each process claims one GPU itself by taking an exclusive ``flock``
on a lock file named after the GPU's UUID, held until the process exits (the kernel
drops it even on a crash). Keying by UUID rather than index keeps jobs that see different
``CUDA_VISIBLE_DEVICES`` subsets (SLURM gives every job its own device 0) from blocking
each other, while jobs that see the same physical GPU never share it -- sharing would
corrupt the timing and memory measurements. GPU presence is decided by
``torch.cuda.is_available()`` only: SLURM sets ``CUDA_VISIBLE_DEVICES`` for GRES GPUs even
where no CUDA device exists.
"""

from __future__ import annotations

import ctypes
import fcntl
import logging
import os
import platform
import tempfile
import time
from pathlib import Path

import torch

LOCK_DIR_ENV = "LORABENCH_GPU_LOCK_DIR"
DEVICE_CHOICES = ("auto", "cpu", "cuda")

log = logging.getLogger(__name__)

# Lock file descriptors held for the life of the process, by slot index.
_held_locks: dict[int, int] = {}


def select_device(requested: str) -> torch.device:
    """Resolve ``--device`` to a concrete device; on CUDA, claim a GPU no other job holds."""
    if requested not in DEVICE_CHOICES:
        raise ValueError(f"device must be one of {DEVICE_CHOICES}, got {requested!r}")
    if requested == "cpu":
        return torch.device("cpu")
    if not torch.cuda.is_available():
        if requested == "cuda":
            raise RuntimeError("--device cuda was requested but torch.cuda.is_available() is False")
        return torch.device("cpu")
    index = claim_free_slot(gpu_lock_keys(), lock_dir())
    torch.cuda.set_device(index)
    return torch.device("cuda", index)


def gpu_lock_keys() -> list[str]:
    """One key per visible GPU that names the physical device, not its position in this job's view."""
    return [f"gpu-{torch.cuda.get_device_properties(i).uuid}" for i in range(torch.cuda.device_count())]


def lock_dir() -> Path:
    """Shared by all users and containers of the host (/tmp is bound into Apptainer by default)."""
    return Path(os.environ.get(LOCK_DIR_ENV) or Path(tempfile.gettempdir()) / "lorabench-gpu-locks")


def claim_free_slot(keys: list[str], directory: Path, poll_seconds: float = 2.0) -> int:
    """Return the index of the first key whose lock this process could take, waiting while all are taken.

    Idempotent within a process: a second call returns the slot already held.
    """
    if _held_locks:
        return next(iter(_held_locks))
    ensure_shared_dir(directory)
    announced = False
    while True:
        for index, key in enumerate(keys):
            fd = try_lock(directory / f"{key}.lock")
            if fd is not None:
                _held_locks[index] = fd
                log.info("pinned to slot %d (%s)", index, key)
                return index
        if not announced:
            log.warning("all %d GPUs are held by other jobs; waiting for one to free up", len(keys))
            announced = True
        time.sleep(poll_seconds)


def release_slots() -> None:
    """Drop the held GPU locks (process exit does the same; tests need it earlier)."""
    for fd in _held_locks.values():
        os.close(fd)
    _held_locks.clear()


def ensure_shared_dir(directory: Path) -> None:
    """Create the lock dir world-writable and sticky, so jobs of every user coordinate through it."""
    if not directory.is_dir():
        directory.mkdir(parents=True, exist_ok=True)
        try:
            directory.chmod(0o1777)
        except PermissionError:  # another user created it between our check and chmod
            pass


def try_lock(path: Path) -> int | None:
    """Take an exclusive, non-blocking flock on ``path``; the open fd is the lock, or None if busy.

    Opened read-only so a lock file created by another user can still be locked.
    """
    fd = os.open(path, os.O_RDONLY | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    return fd


def device_info(device: torch.device) -> dict[str, str | None]:
    """The record's environment fields: which device, what hardware, which NVIDIA driver."""
    if device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        return {
            "device": f"cuda:{index}",
            "device_name": torch.cuda.get_device_name(index),
            "cuda_driver": nvidia_driver_version(),
        }
    return {"device": device.type, "device_name": cpu_model_name(), "cuda_driver": None}


def cpu_model_name() -> str:
    """The CPU model from /proc/cpuinfo (Linux), else what the platform module knows."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def nvidia_driver_version() -> str | None:
    """The kernel driver version via NVML (torch only reports the CUDA runtime it was built with).

    libnvidia-ml ships with the driver and Apptainer's --nv binds it, so this works in containers.
    """
    try:
        nvml = ctypes.CDLL("libnvidia-ml.so.1")
    except OSError:
        return None
    if nvml.nvmlInit_v2() != 0:
        return None
    buffer = ctypes.create_string_buffer(96)
    try:
        if nvml.nvmlSystemGetDriverVersion(buffer, len(buffer)) != 0:
            return None
        return buffer.value.decode("ascii")
    finally:
        nvml.nvmlShutdown()
