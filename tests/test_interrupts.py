"""Faults that lose nothing and poison nothing. A kill -9 in the middle of a batched train job loses no finished
record: the next run puts every record the job had finished back in place from results/kept (byte for byte: the same
timings, which a run trained again never repeats), trains only the rest, and ends with the results of a run that was
never interrupted. (Snakemake touches every output of a job that ran, so a record's own modification time is not the
evidence; its kept copy's is.) A checkpoint or record cut short is set aside when the Snakefile is parsed and written
again."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest
import yaml

from tests.pipeline import REPO, SMOKE, assert_same_results, load_records, snakemake, snakemake_command

pytestmark = pytest.mark.e2e
SEEDS = [0, 1, 2, 3]


def one_job_of_four_points(folder: Path) -> Path:
    """The smoke grid cut to one train job (llama-tiny, lora) of four seeds, each long enough (200 steps, about
    2 s here) for a kill to land between two records."""
    config = yaml.safe_load(SMOKE.read_text())
    config["models"] = {"llama-tiny": config["models"]["llama-tiny"]}
    config["grid"] |= {"variants": ["lora"], "seeds": SEEDS}
    config["train"]["steps"] = 200
    config["cost"] = {"enabled": False}
    path = folder / "one-job.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def run_until_first_record(workdir: Path, config: Path, timeout: float = 600) -> None:
    """Start the pipeline and kill -9 it (Snakemake and its job, the whole process group) as soon as the train
    job has written its first record."""
    process = subprocess.Popen(
        snakemake_command(workdir, config=config),
        cwd=REPO,
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + timeout
    while not list((workdir / "results" / "runs").rglob("*.json")):
        assert process.poll() is None, "the pipeline ended before its train job wrote a record"
        assert time.monotonic() < deadline, "no record within the timeout"
        time.sleep(0.02)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """The one-job config and a finished run of it (read only)."""
    folder = tmp_path_factory.mktemp("one-job")
    config = one_job_of_four_points(folder)
    snakemake(folder / "uninterrupted", config=config)
    return config, folder / "uninterrupted"


def cut_short(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def test_a_killed_job_keeps_its_finished_records_and_trains_only_the_rest(
    uninterrupted: tuple[Path, Path], tmp_path: Path
) -> None:
    config, reference = uninterrupted
    workdir = tmp_path / "killed"
    run_until_first_record(workdir, config)
    finished = {path: path.read_bytes() for path in (workdir / "results" / "runs").rglob("*.json")}
    assert 0 < len(finished) < len(SEEDS), "the kill did not land inside the job"
    kept = {path: path.stat().st_mtime_ns for path in (workdir / "results" / "kept").rglob("*.json")}
    assert len(kept) == len(finished)

    # the README's recovery: release the lock the killed run left, re-run the job it left incomplete
    snakemake(workdir, "--unlock", config=config)
    snakemake(workdir, "--rerun-incomplete", config=config)

    for path, content in finished.items():
        assert path.read_bytes() == content, f"{path} was trained again"
    for path, mtime in kept.items():
        assert path.stat().st_mtime_ns == mtime, f"{path} was written again"
    log = next((workdir / "results" / "logs" / "train").rglob("*.log")).read_text()
    restored = {line.split(": ")[1] for line in log.splitlines() if "restored from" in line}
    assert len(restored) == len(finished)
    assert log.count(": ok\n") == len(SEEDS) - len(finished)  # trained: only the points without a record
    records = load_records(workdir)
    assert len(records) == len(SEEDS)
    assert_same_results(records, load_records(reference))


def test_a_checkpoint_and_a_record_cut_short_are_set_aside_and_made_again(
    uninterrupted: tuple[Path, Path], tmp_path: Path
) -> None:
    from lorabench.integrity import safetensors_problem

    config, reference = uninterrupted
    workdir = tmp_path / "damaged"
    shutil.copytree(reference, workdir)  # with the modification times, so Snakemake sees a finished run
    record = next((workdir / "results" / "runs").rglob("seed1.json"))
    weights = workdir / "results" / "models" / "llama-tiny" / "model.safetensors"
    cut_short(record)
    cut_short(weights)
    result = snakemake(workdir, config=config)
    said = result.stdout + result.stderr
    assert f"{record.relative_to(workdir)} is damaged: not a whole JSON object" in said, said[-3000:]
    assert f"{weights.parent.relative_to(workdir)} is damaged: model.safetensors: " in said, said[-3000:]
    assert "rule pretrain:" in said and "rule train:" in said
    assert safetensors_problem(weights) is None
    assert record.with_name("seed1.json.damaged").exists()
    assert_same_results(load_records(workdir), load_records(reference))


@pytest.mark.parametrize(
    ("runs", "options", "same"),
    [
        ([("resampled", 2, "sort", 0.01, 0), ("resampled", 2, "sort", 0.03, 0)], {}, True),  # a wider sweep
        ([("resampled", 2, "sort", 0.01, 0), ("full", 0, "sort", 1e-3, 0)], {}, True),  # another variant beside it
        ([("resampled", 2, "sort", 0.01, 0)], {"resampled": {"resample_every": 2}}, False),  # its own options
    ],
    ids=["wider-sweep", "another-variant", "own-options"],
)
def test_a_finished_points_kept_key_follows_its_own_settings_only(tmp_path: Path, runs, options, same: bool) -> None:
    """A finished point is restored, not retrained, when only the job around it changed (a wider lr sweep, another
    variant batched with it), and retrained when its own variant's options changed."""
    from lorabench import kept
    from tests.jobs import tiny_job

    def key(job) -> str:
        return kept.key(job, job.points[0], "code", [])

    alone = tiny_job(tmp_path, [("resampled", 2, "sort", 0.01, 0)])
    assert (key(tiny_job(tmp_path, runs, options)) == key(alone)) == same
