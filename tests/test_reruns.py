"""Reruns follow changes: after a finished smoke run, a dry run plans exactly the jobs an edit affects, for
Snakemake's own reason (a tracked param changed, or an input was updated by a job that re-runs)."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from lorabench import stages
from lorabench.checks import load_grid
from lorabench.grid import RECORD_LIST
from lorabench.job import format_lr
from lorabench.provenance import git_state
from tests.pipeline import REPO, SMOKE, snakemake_command

pytestmark = pytest.mark.e2e
SCHEMA = REPO / "workflow/schemas/config.schema.yaml"


def planned_jobs(workdir: Path, config: Path = SMOKE, repo: Path = REPO, *args: str) -> list[dict[str, str]]:
    """The jobs a dry run of ``repo``'s Snakefile and package plans, each as its rule, wildcards and reason."""
    command = snakemake_command(workdir, "--dry-run", *args, config=config, snakefile=repo / "Snakefile")
    env = os.environ | {"PYTHONPATH": str(repo)}
    result = subprocess.run(command, capture_output=True, text=True, cwd=repo, env=env)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    jobs: list[dict[str, str]] = []
    for line in result.stdout.splitlines():
        if match := re.match(r"(?:local)?rule (\w+):$", line):
            jobs.append({"rule": match[1]})
        elif jobs and (match := re.match(r"\s+(wildcards|reason|threads): (.*)", line)):
            jobs[-1][match[1]] = match[2]
    return jobs


def trained(jobs: list[dict[str, str]]) -> set[tuple[str, str]]:
    """(model, variant) of the planned train jobs."""
    values = [dict(item.split("=") for item in job["wildcards"].split(", ")) for job in jobs if job["rule"] == "train"]
    return {(wildcards["model"], wildcards["variant"]) for wildcards in values}


def smoke_changed(folder: Path, change: dict) -> Path:
    """The smoke config with ``change`` merged in one level deep (e.g. ``{"train": {"steps": 13}}``)."""
    config = yaml.safe_load(SMOKE.read_text())
    for section, values in change.items():
        config[section] = {**config.get(section, {}), **values}
    path = folder / "changed.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def every_train_job() -> set[tuple[str, str]]:
    grid = load_grid(yaml.safe_load(SMOKE.read_text()), SCHEMA)
    return {(point.model, point.variant) for point in grid.points()}


@pytest.mark.parametrize("change", [{"steps": 13}, {"replay": 0.25}])
def test_a_train_setting_reruns_every_train_job_and_no_pretraining(
    smoke_run: Path, tmp_path: Path, change: dict
) -> None:
    jobs = planned_jobs(smoke_run, smoke_changed(tmp_path, {"train": change}))
    assert trained(jobs) == every_train_job()
    assert all("Params have changed" in job["reason"] for job in jobs if job["rule"] == "train")
    assert "pretrain" not in {job["rule"] for job in jobs}


def test_a_variant_option_reruns_that_variants_jobs_only(smoke_run: Path, tmp_path: Path) -> None:
    change = {"variants": {"resampled": {"optimizer": "sgd", "lrs": [0.1], "resample_every": 2}}}
    jobs = planned_jobs(smoke_run, smoke_changed(tmp_path, change))
    assert trained(jobs) == {(model, "resampled") for model in ("llama-tiny", "gpt2-tiny")}
    assert "pretrain" not in {job["rule"] for job in jobs}


def test_a_pretrain_setting_reruns_pretraining_and_every_train_job(smoke_run: Path, tmp_path: Path) -> None:
    jobs = planned_jobs(smoke_run, smoke_changed(tmp_path, {"pretrain": {"steps": 61}}))
    assert sum(job["rule"] == "pretrain" for job in jobs) == 2
    assert trained(jobs) == every_train_job()


def test_adding_a_variant_module_plans_only_the_new_variants_jobs(smoke_run: Path, tmp_path: Path) -> None:
    """README's "Add a variant": a module file and one config line; the existing jobs carry no module of theirs."""
    from tests.test_user_variants import readme_steps

    path, code, config_line = readme_steps()
    module, listing = smoke_run / path, smoke_run / RECORD_LIST
    module.parent.mkdir(parents=True)
    module.write_text(code)
    kept = listing.read_bytes(), listing.stat()
    try:
        config = tmp_path / "with-tied-a.yaml"
        config.write_text(yaml.safe_dump(yaml.safe_load(SMOKE.read_text()) | config_line))  # `variants: all`
        jobs = planned_jobs(smoke_run, config)
    finally:  # the smoke run is shared with other test modules: its record list (the grid's, rewritten) too
        shutil.rmtree(module.parent)
        listing.write_bytes(kept[0])
        os.utime(listing, ns=(kept[1].st_atime_ns, kept[1].st_mtime_ns))
    assert trained(jobs) == {(model, "tied_a") for model in ("llama-tiny", "gpt2-tiny")}
    assert "pretrain" not in {job["rule"] for job in jobs}


def test_config_threads_set_the_jobs_threads_and_rerun_nothing(smoke_run: Path, tmp_path: Path) -> None:
    config = tmp_path / "threads.yaml"
    config.write_text(yaml.safe_dump(yaml.safe_load(SMOKE.read_text()) | {"threads": 3}, sort_keys=False))  # the
    # models' order is the record list's: sorted keys would rewrite results/records.txt and re-run the aggregate
    assert planned_jobs(smoke_run, config) == []  # threads are on the command line, not in a tracked param
    jobs = planned_jobs(smoke_run, config, REPO, "--forceall")
    assert {job["rule"] for job in jobs} >= {"pretrain", "train", "cost"}
    threads = {job["rule"]: job.get("threads") for job in jobs}
    assert threads["pretrain"] == threads["train"] == threads["cost"] == "2"  # 3, capped by --cores 2


@pytest.fixture
def edited_copy(tmp_path: Path) -> Path:
    """A copy of the Snakefile, workflow and package, to edit without touching the checkout."""
    copy = tmp_path / "repo"
    copy.mkdir()
    for name in ("Snakefile", "workflow", "lorabench"):
        (shutil.copytree if (REPO / name).is_dir() else shutil.copy)(REPO / name, copy / name)
    return copy


def test_editing_a_variants_code_reruns_its_jobs_only(smoke_run: Path, edited_copy: Path) -> None:
    with (edited_copy / "lorabench/variants/resampled.py").open("a") as module:
        module.write("\nEDITED = True\n")  # code: a comment or docstring re-runs nothing (test below)
    jobs = planned_jobs(smoke_run, repo=edited_copy)
    assert trained(jobs) == {(model, "resampled") for model in ("llama-tiny", "gpt2-tiny")}
    assert "pretrain" not in {job["rule"] for job in jobs}
    assert "cost" in {job["rule"] for job in jobs}  # the cost stage measures every variant: its code is tracked


def test_editing_comments_and_docstrings_reruns_nothing(smoke_run: Path, edited_copy: Path) -> None:
    for name in ("variants/resampled.py", "runner.py", "report/plots.py"):
        module = edited_copy / "lorabench" / name
        text = module.read_text().replace('"""', '"""Edited. ', 1)  # the module's docstring
        module.write_text(f"# an edit\n{text}\n# another edit\n\n")
    jobs = planned_jobs(smoke_run, SMOKE, edited_copy, "--set-threads", "train=2", "pretrain=2", "cost=2")
    assert not jobs, jobs


def test_editing_the_report_redraws_it_and_reruns_no_training(smoke_run: Path, edited_copy: Path) -> None:
    with (edited_copy / "lorabench/report/plots.py").open("a") as module:
        module.write("\nEDITED = True\n")
    jobs = planned_jobs(smoke_run, SMOKE, edited_copy, "--set-threads", "train=2", "pretrain=2", "cost=2")
    assert {job["rule"] for job in jobs} == {"aggregate", "figures", "all"}, jobs
    assert "Params have changed" in next(job["reason"] for job in jobs if job["rule"] == "aggregate")


def test_every_record_names_the_code_that_ran(smoke_run: Path) -> None:
    grid = load_grid(yaml.safe_load(SMOKE.read_text()), SCHEMA)
    for point in grid.points():
        environment = json.loads((smoke_run / point.record).read_text())["environment"]
        job = {"model": point.model, "variant": point.variant, "rank": str(point.rank), "lr": format_lr(point.lr)}
        assert environment["code_sha256"] == stages.train_job_code(grid, job), point.record
        assert {key: environment[key] for key in ("commit", "dirty")} == git_state()


def test_deleting_a_record_that_is_not_a_target_reruns_its_job(smoke_run: Path) -> None:
    grid = load_grid(yaml.safe_load(SMOKE.read_text()), SCHEMA)
    targets = {records[0] for records in grid.records_by_job()}  # the aggregate's inputs (common.smk: job_records)
    point = next(p for p in reversed(grid.points()) if p.record not in targets)
    record = smoke_run / point.record
    kept = record.rename(smoke_run / "kept-record.json")  # a rename back keeps its mtime
    try:
        jobs = planned_jobs(smoke_run)
    finally:
        kept.rename(record)  # the smoke run is shared with other test modules
    assert trained(jobs) == {(point.model, point.variant)}
    assert sum(job["rule"] == "train" for job in jobs) == 1


@pytest.mark.parametrize(
    ("edit", "same"),
    [
        (lambda text: text.replace("\nimport torch", "\n# a comment\nimport torch", 1), True),
        (lambda text: text.replace('"""', '"""More words. ', 1), True),  # the module docstring
        (lambda text: text.replace("\n    @staticmethod", '\n    """A bare string."""\n    @staticmethod', 1), True),
        (lambda text: text + "\n\n\n", True),
        (lambda text: text + "\nEDITED = 1\n", False),
        (lambda text: text.replace("import torch", "import torch as torch", 1), False),
        (lambda text: text.replace("import torch", "import  torch", 1), True),  # layout
    ],
)
def test_the_code_hash_ignores_comments_docstrings_and_layout(tmp_path: Path, edit, same: bool) -> None:
    from lorabench.provenance import _code

    original = REPO / "lorabench/variants/resampled.py"
    edited = tmp_path / "resampled.py"
    edited.write_text(edit(original.read_text()))
    assert (_code(edited) == _code(original)) == same
