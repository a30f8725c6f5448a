"""Device selection and GPU pinning, exercised on CPU with faked GPU counts and lock holders."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch

from lorabench import devices


@pytest.fixture(autouse=True)
def no_held_slots():
    devices.release_slots()
    yield
    devices.release_slots()


HOLDER = """
import fcntl, os, sys, time
fd = os.open(sys.argv[1], os.O_RDONLY | os.O_CREAT)
fcntl.flock(fd, fcntl.LOCK_EX)
print("locked", flush=True)
time.sleep(60)
"""


def hold_externally(path: Path) -> subprocess.Popen:
    """Another process holding the lock, like a concurrent training job."""
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(path)], stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "locked"
    return holder


def test_cpu_and_auto_without_cuda_give_cpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert devices.select_device("cpu") == torch.device("cpu")
    assert devices.select_device("auto") == torch.device("cpu")


def test_cuda_requested_without_cuda_fails_even_with_visible_devices_set(monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0")  # what SLURM sets for a fake GRES GPU
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert devices.select_device("auto") == torch.device("cpu")
    with pytest.raises(RuntimeError, match="is_available"):
        devices.select_device("cuda")


def test_unknown_device_is_rejected():
    with pytest.raises(ValueError, match="auto"):
        devices.select_device("gpu")


def test_concurrent_claims_get_distinct_slots(tmp_path):
    keys = ["gpu-a", "gpu-b", "gpu-c"]
    assert devices.claim_free_slot(keys, tmp_path) == 0
    assert devices.claim_free_slot(keys, tmp_path) == 0, "a process keeps the slot it holds"
    other_job = devices.try_lock(tmp_path / "gpu-a.lock")
    assert other_job is None, "slot 0 must stay locked while held"
    second = devices.try_lock(tmp_path / "gpu-b.lock")
    assert second is not None


def test_slot_held_by_another_process_is_skipped_and_freed_on_exit(tmp_path):
    keys = ["gpu-a", "gpu-b"]
    holder = hold_externally(tmp_path / "gpu-a.lock")
    try:
        assert devices.claim_free_slot(keys, tmp_path) == 1
    finally:
        holder.kill()
        holder.wait()
    devices.release_slots()
    assert devices.claim_free_slot(keys, tmp_path) == 0, "the kernel released the dead holder's lock"


def test_claim_waits_until_a_slot_frees(tmp_path):
    keys = ["gpu-a", "gpu-b"]
    busy = [devices.try_lock(tmp_path / f"{key}.lock") for key in keys]
    claimed: list[int] = []
    waiter = threading.Thread(target=lambda: claimed.append(devices.claim_free_slot(keys, tmp_path, 0.02)))
    waiter.start()
    time.sleep(0.2)
    assert claimed == [], "must wait while every GPU is taken"
    os.close(busy[1])
    waiter.join(timeout=5)
    assert claimed == [1]
    os.close(busy[0])


def test_select_device_pins_to_first_free_gpu(monkeypatch, tmp_path):
    uuids = ["GPU-1111", "GPU-2222"]
    monkeypatch.setenv(devices.LOCK_DIR_ENV, str(tmp_path))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: len(uuids))
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda i: type("Props", (), {"uuid": uuids[i]}))
    selected: list[int] = []
    monkeypatch.setattr(torch.cuda, "set_device", selected.append)
    busy = devices.try_lock(tmp_path / "gpu-GPU-1111.lock")
    assert devices.select_device("auto") == torch.device("cuda", 1)
    assert selected == [1]
    os.close(busy)


def test_lock_dir_is_shared_and_sticky(monkeypatch, tmp_path):
    target = tmp_path / "locks"
    monkeypatch.setenv(devices.LOCK_DIR_ENV, str(target))
    assert devices.lock_dir() == target
    devices.ensure_shared_dir(target)
    assert target.stat().st_mode & 0o7777 == 0o1777


def test_cpu_device_info():
    info = devices.device_info(torch.device("cpu"))
    assert info["device"] == "cpu"
    assert info["cuda_driver"] is None
    assert isinstance(info["device_name"], str) and info["device_name"]


def test_cuda_device_info_names_index_gpu_and_driver(monkeypatch):
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda i: f"Fake H100 #{i}")
    monkeypatch.setattr(devices, "nvidia_driver_version", lambda: "550.54.15")
    assert devices.device_info(torch.device("cuda", 1)) == {
        "device": "cuda:1",
        "device_name": "Fake H100 #1",
        "cuda_driver": "550.54.15",
    }


def test_driver_version_is_none_without_nvidia_driver():
    if Path("/proc/driver/nvidia/version").exists():
        pytest.skip("an NVIDIA driver is installed here")
    assert devices.nvidia_driver_version() is None
