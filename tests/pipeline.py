"""Helpers for tests that run the Snakemake pipeline as a user would: `snakemake` in a fresh folder."""

from __future__ import annotations

import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SMOKE = REPO / "workflow" / "config" / "smoke.yaml"


def snakemake(workdir: Path, *args: str, config: Path = SMOKE, check: bool = True) -> subprocess.CompletedProcess:
    """Run the repo's Snakefile on ``config`` with ``workdir`` as working directory."""
    command = ["snakemake", "-s", str(REPO / "Snakefile"), "--directory", str(workdir),
               "--configfile", str(config), "--cores", "2", *args]
    result = subprocess.run(command, capture_output=True, text=True, cwd=REPO)
    if check and result.returncode != 0:
        raise AssertionError(f"{' '.join(command)} failed:\n{result.stdout[-3000:]}\n{result.stderr[-6000:]}")
    return result
