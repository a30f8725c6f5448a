"""Wheels carried to a GPU machine without network: fetched here for its Python, unpacked there.

Shared by .ci/gpu-wheels and .ci/gpu-study (fetch, here) and .ci/gpu-check and .ci/gpu-study (unpack, there).
"""

from __future__ import annotations

import subprocess
import sys
import zipfile
from importlib.metadata import PackageNotFoundError, distribution
from pathlib import Path

PLATFORMS = ["manylinux_2_28_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64"]


def fetch(requirement: str, python_version: str, folder: Path) -> None:
    """The requirement's wheel for the GPU machine into ``folder``; one built here where only an sdist exists
    (pure Python)."""
    platform_flags = [flag for platform in PLATFORMS for flag in ("--platform", platform)]
    download = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "-q",
        "--no-deps",
        "--only-binary=:all:",
        "-d",
        str(folder),
        "--python-version",
        python_version,
        "--implementation",
        "cp",
        *platform_flags,
        requirement,
    ]
    if subprocess.run(download, capture_output=True).returncode == 0:
        return
    print(f"{requirement}: no wheel on the index for Python {python_version}; building one here")
    before = set(folder.glob("*.whl"))
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(folder), requirement], check=True
    )
    for wheel in set(folder.glob("*.whl")) - before:
        if not wheel.name.endswith("-none-any.whl"):  # built for this machine's Python: useless there
            wheel.unlink()
            sys.exit(f"{requirement}: no wheel for Python {python_version} on PyPI and not pure Python")


def install_missing_wheels(folder: Path, site: Path) -> None:
    """Unpack into ``site`` the wheels in ``folder`` whose distribution this Python lacks.

    Unpacked as pip --target would (a wheel is a zip of its import tree), so no pip is needed.
    """
    wheels = [wheel for wheel in sorted(folder.glob("*.whl")) if not installed(wheel.name.split("-")[0])]
    for wheel in wheels:
        with zipfile.ZipFile(wheel) as archive:
            archive.extractall(site)
    if wheels:
        print(f"installed {len(wheels)} carried wheels: {', '.join(wheel.name.split('-')[0] for wheel in wheels)}")


def installed(name: str) -> bool:
    """Whether this Python has the distribution ``name`` (wheel file names spell it with underscores)."""
    try:
        distribution(name)
        return True
    except PackageNotFoundError:
        return False
