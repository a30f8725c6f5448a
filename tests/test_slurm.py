"""The smoke grid (two variants: the path is the same for all) submitted to a real SLURM cluster with
the shipped profile gives the records a local run gives: same schema, same run ids, same accuracies
(CPU, same seeds).

Skipped where SLURM is absent; LORABENCH_REQUIRE_SLURM=1 (set by .ci/run after
.ci/slurm/up.sh) turns the skip into a failure so CI cannot pass without running it.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from lorabench import records
from tests.pipeline import REPO, assert_same_results, load_records, smoke_with_variants, snakemake

pytestmark = pytest.mark.e2e

# One sbatch per phase instead of one per job: each submission costs two Snakemake start-ups
# and a polling cycle. Inside the train allocation (2 GPUs, the CI node's fake ones) Snakemake
# runs two training jobs at a time, each as an `srun --gpus=1` step.
GROUPING = (
    "--groups",
    "pretrain=pretrain",
    "train=train",
    "cost=cost",
    "aggregate=report",
    "figures=report",
    "--group-components",
    "pretrain=100",
    "train=100",
    "report=100",
    "--resources",
    "gpu=2",
)


def slurm_unavailable() -> str | None:
    """Why no SLURM cluster can take jobs here, or None when one can."""
    if shutil.which("sinfo") is None:
        return "sinfo is not on PATH"
    probe = subprocess.run(["sinfo", "--noheader", "--format=%T"], capture_output=True, text=True, timeout=60)
    if probe.returncode != 0:
        return f"sinfo failed: {probe.stderr.strip()}"
    if not re.search(r"^(idle|mixed|allocated)", probe.stdout, re.MULTILINE):
        return f"no node takes jobs (states: {probe.stdout.split()})"
    return None


@pytest.fixture(scope="module")
def slurm_run(tmp_path_factory):
    reason = slurm_unavailable()
    if reason:
        if os.environ.get("LORABENCH_REQUIRE_SLURM") == "1":
            pytest.fail(f"LORABENCH_REQUIRE_SLURM=1 but {reason}")
        pytest.skip(reason)
    workdir = tmp_path_factory.mktemp("slurm_run")
    profile = REPO / "workflow" / "profiles" / "slurm"
    try:
        result = snakemake(
            workdir,
            "--workflow-profile",
            str(profile),
            *GROUPING,
            # poll every 3 s instead of 10: each of the three phases waits for one poll after it ends
            "--slurm-init-seconds-before-status-checks",
            "2",
            "--seconds-between-status-checks",
            "3",
            "--slurm-keep-successful-logs",
            "--verbose",
            config=smoke_with_variants(workdir, ["lora", "resampled"]),
        )
    finally:
        cancel_leftover_jobs(workdir)
    return workdir, result.stderr


def cancel_leftover_jobs(workdir: Path) -> None:
    """A killed Snakemake leaves its jobs queued; their ids are the names of the plugin's logs."""
    job_ids = [path.stem for path in (workdir / ".snakemake" / "slurm_logs").rglob("*.log") if path.stem.isdigit()]
    if job_ids:
        subprocess.run(["scancel", *job_ids], capture_output=True, timeout=60)


def test_smoke_grid_completes_under_slurm(slurm_run):
    workdir, _ = slurm_run
    assert (workdir / "reports" / "summary.md").is_file()
    written = load_records(workdir)
    assert written
    for record in written.values():
        records.validate(record)


def test_only_training_and_the_cost_stage_ask_slurm_for_gpus(slurm_run):
    workdir, log = slurm_run
    calls = re.findall(r"sbatch call: (.*)", log)
    by_group = {re.search(r"slurm_logs/group_(\w+?)_", call).group(1): call for call in calls}
    assert set(by_group) == {"pretrain", "train", "cost", "report"}, calls
    assert "--gpus=2" in by_group["train"] and "--gpus=1" in by_group["cost"]
    assert "--gpus" not in by_group["pretrain"] and "--gpus" not in by_group["report"]
    steps = "".join(path.read_text() for path in (workdir / ".snakemake/slurm_logs").rglob("*.log"))
    train_steps = re.findall(r"The call for this job is: srun (.*?) --target-jobs 'train:", steps)
    assert train_steps and all("--gpus=1" in step for step in train_steps), "each training job: one GPU"


def test_slurm_records_equal_a_local_run(slurm_run, smoke_run):
    assert_same_results(load_records(slurm_run[0]), load_records(smoke_run))
