"""Shared test set-up: never reach a hub (a hub name would spend ~47 s on retries before failing), and
one local run of the smoke grid for every test that needs one (it is the suite's slowest step)."""

import os
from pathlib import Path

import pytest

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session")
def smoke_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished local run of the smoke grid. Tests may read it; a test that changes it restores it."""
    from tests.pipeline import snakemake

    workdir = tmp_path_factory.mktemp("smoke")
    snakemake(workdir)
    return workdir
