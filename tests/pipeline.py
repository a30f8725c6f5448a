"""Helpers for tests that run the Snakemake pipeline as a user would: `snakemake` in a fresh folder."""

from __future__ import annotations

import importlib.machinery
import importlib.util
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parent.parent
SMOKE = REPO / "workflow" / "config" / "smoke.yaml"
EXACT = ("grid", "status", "target", "source", "forgetting")
"""Record fields that must agree exactly between two runs of one grid point (accuracies are counts)."""


def ci_script(name: str) -> ModuleType:
    """A script of .ci/ as a module (its name has no .py, so it is loaded by path)."""
    loader = importlib.machinery.SourceFileLoader(name.replace("-", "_"), str(REPO / ".ci" / name))
    module = importlib.util.module_from_spec(importlib.util.spec_from_loader(loader.name, loader))
    loader.exec_module(module)
    return module


def snakemake(
    workdir: Path, *args: str, config: Path = SMOKE, check: bool = True, snakefile: Path = REPO / "Snakefile"
) -> subprocess.CompletedProcess:
    """Run the repo's Snakefile (or another tree's) on ``config`` with ``workdir`` as working directory."""
    command = snakemake_command(workdir, *args, config=config, snakefile=snakefile)
    result = subprocess.run(command, capture_output=True, text=True, cwd=REPO)
    if check and result.returncode != 0:
        raise AssertionError(f"{' '.join(command)} failed:\n{result.stdout[-3000:]}\n{result.stderr[-6000:]}")
    return result


def snakemake_command(
    workdir: Path, *args: str, config: Path = SMOKE, snakefile: Path = REPO / "Snakefile"
) -> list[str]:
    """The command line :func:`snakemake` runs (from the repo root)."""
    return [
        "snakemake",
        "-s",
        str(snakefile),
        "--directory",
        str(workdir),
        "--configfile",
        str(config),
        "--cores",
        "2",
        *args,
    ]


@contextmanager
def workflow_namespace(config: dict, workdir: Path) -> Iterator[dict[str, Any]]:
    """The Snakefile's namespace (``GRID`` and the glue of ``workflow/rules/common.smk``), parsed in this process
    on ``config`` with ``workdir`` as working directory, as ``snakemake`` would before building its DAG; the
    environment, ``sys.path`` and working directory the Snakefile changes are restored afterwards."""
    from snakemake.api import SnakemakeApi
    from snakemake.settings.types import ConfigSettings, OutputSettings, ResourceSettings

    environment, path, cwd = dict(os.environ), list(sys.path), Path.cwd()
    try:
        with SnakemakeApi(OutputSettings(quiet={})) as api:
            workflow = api.workflow(
                ResourceSettings(cores=1), ConfigSettings(config=config), snakefile=REPO / "Snakefile", workdir=workdir
            )
            yield workflow._workflow.globals
    finally:
        os.chdir(cwd)
        os.environ.clear()
        os.environ.update(environment)
        sys.path[:] = path


def wildcards(**values: str) -> Any:
    """Snakemake's wildcards object, as the rules' input and param functions get it."""
    from snakemake.iocontainers import Wildcards

    return Wildcards(fromdict=values)


def fresh_copy(destination: Path, commit: bool = False) -> Path:
    """The working tree as a clone of it holds it: tracked files and files git would track (not ignored ones);
    with ``commit``, a git checkout of them with one commit, clean."""
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split("\0")
    for name in filter(None, listed):
        if (REPO / name).is_file():
            (destination / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, destination / name)
    if commit:
        for git in (
            ["init", "-q"],
            ["add", "-A"],
            ["-c", "user.name=test", "-c", "user.email=test@localhost", "commit", "-qm", "the working tree"],
        ):
            subprocess.run(["git", *git], cwd=destination, check=True)
    return destination


def smoke_with_variants(folder: Path, variants: list[str]) -> Path:
    """The smoke config restricted to ``variants``: for tests of an execution path (containers, SLURM),
    which is the same for every variant; the full smoke grid runs locally in test_pipeline."""
    config = yaml.safe_load(SMOKE.read_text())
    config["grid"]["variants"] = variants
    path = folder / "smoke-subset.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def load_records(workdir: Path) -> dict[str, dict]:
    """Records by path relative to the workdir."""
    return {
        str(path.relative_to(workdir)): json.loads(path.read_text())
        for path in sorted((workdir / "results" / "runs").rglob("*.json"))
    }


def assert_same_results(records: dict[str, dict], reference: dict[str, dict]) -> None:
    """Same grid points, same schema, same accuracies; float32 losses may differ in the last bit."""
    assert records and set(records) <= set(reference)
    for path, record in records.items():
        local = reference[path]
        assert record.keys() == local.keys()
        for key in EXACT:
            assert record[key] == local[key], f"{path}: {key} differs from the local run"
        assert record["loss_curve"]["step"] == local["loss_curve"]["step"]
        assert record["loss_curve"]["loss"] == pytest.approx(local["loss_curve"]["loss"], rel=1e-5)
