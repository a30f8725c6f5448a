"""The Snakemake glue of workflow/rules/common.smk: the train rule's outputs, inputs and tracked params, the rules'
model wildcards, the aggregate's record list and the targets that re-run a job, read from the Snakefile's own
namespace (parsed in this process, no DAG built)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from lorabench.checks import load_grid
from lorabench.grid import RECORD_LIST
from lorabench.job import TrainJob
from tests.pipeline import REPO, SMOKE, wildcards, workflow_namespace

SCHEMA = REPO / "workflow/schemas/config.schema.yaml"


@pytest.fixture
def smoke() -> dict:
    return yaml.safe_load(SMOKE.read_text())


def test_train_rule_outputs_params_and_inputs_follow_the_batched_axes(smoke: dict, tmp_path: Path) -> None:
    smoke["jobs"] = {"batch": ["variant", "rank", "lr", "task"]}  # the default: one job per (model, seed)
    with workflow_namespace(smoke, tmp_path) as workflow:
        outputs, grid = workflow["job_outputs"](), workflow["GRID"]
        job = wildcards(model="gpt2-tiny", seed="1")
        params = TrainJob.from_json(workflow["train_job"](job))
        assert workflow["job_file"]("logs", ".log") == "results/logs/train/model{model}/seed{seed}.log"
        assert workflow["checkpoint_input"](job) == ["results/models/gpt2-tiny"] and workflow["data_input"](job) == []
        # pretrain and cache_model share the output pattern results/models/{model}; each claims only its models
        architecture = re.compile(f"(?:{workflow['model_wildcard']('architecture')})$")
        assert [model for model in smoke["models"] if architecture.match(model)] == ["llama-tiny", "gpt2-tiny"]
        assert not any(re.match(f"(?:{workflow['model_wildcard']('gguf', 'package')})$", m) for m in smoke["models"])
    assert all("{model}" in path and "{seed}" in path and "{lr}" not in path for path in outputs)
    expected = [point.record for point in grid.points() if point.model == "gpt2-tiny" and point.seed == 1]
    assert sorted(path.format(model="gpt2-tiny", seed=1) for path in outputs) == sorted(expected)
    assert [point.record for point in params.points] == expected


def test_generated_task_data_is_the_train_input_of_its_jobs(smoke: dict, tmp_path: Path) -> None:
    generator = {"mathematics_dataset": {"modules": ["mul"], "train_per_module": 20, "test_per_module": 5}}
    smoke["tasks"]["target"] = ["sort", {"arith": {"generator": generator, "fallback": "first_line"}}]
    files = ["results/data/arith/train.jsonl", "results/data/arith/test.jsonl"]
    with workflow_namespace(smoke, tmp_path) as workflow:
        data_input = workflow["data_input"]
        assert data_input(wildcards(model="llama-tiny", task="sort")) == []
        assert data_input(wildcards(model="llama-tiny", task="arith")) == files
        assert data_input(wildcards(model="llama-tiny")) == files  # tasks batched into one job
        assert workflow["generated_files"]("{task}") == {
            "train": "results/data/{task}/train.jsonl",
            "test": "results/data/{task}/test.jsonl",
        }


def test_record_list_is_rewritten_only_when_the_grid_changes(smoke: dict, tmp_path: Path) -> None:
    listing = tmp_path / RECORD_LIST
    with workflow_namespace(yaml.safe_load(SMOKE.read_text()), tmp_path):
        pass
    assert listing.read_text().splitlines() == [point.record for point in load_grid(dict(smoke), SCHEMA).points()]
    written = listing.stat().st_mtime_ns
    with workflow_namespace(yaml.safe_load(SMOKE.read_text()), tmp_path):
        pass
    assert listing.stat().st_mtime_ns == written  # an unchanged grid does not re-run the aggregate
    smoke["grid"]["seeds"] = [0, 1, 2]
    with workflow_namespace(smoke, tmp_path) as workflow:
        assert len(listing.read_text().splitlines()) == len(workflow["GRID"].points())


def test_missing_records_name_the_first_missing_record_of_each_incomplete_job(smoke: dict, tmp_path: Path) -> None:
    with workflow_namespace(smoke, tmp_path) as workflow:
        grid, missing, targets = workflow["GRID"], workflow["missing_records"], workflow["job_records"]()
        assert targets == [records[0] for records in grid.records_by_job()]
        assert missing() == targets  # nothing written yet
        for point in grid.points():
            Path(point.record).parent.mkdir(parents=True, exist_ok=True)
            Path(point.record).write_text("{}")  # whole JSON objects: an empty file would be set aside as cut short
        assert missing() == []
        deleted = grid.points()[-1].record  # not the first record of its job (seeds 0 and 1 share one)
        Path(deleted).unlink()
        assert deleted not in targets and missing() == [deleted]


def test_local_files_are_train_inputs_of_the_jobs_that_read_them(smoke: dict, tmp_path: Path) -> None:
    """Snakemake re-runs a job whose input is newer than its outputs: editing a task's local data, the held-out
    texts, the paraphrase pairs or an lm-eval task file re-runs exactly the jobs that read it."""
    for name in (
        "data/a_train.jsonl",
        "data/a_test.jsonl",
        "data/b_train.jsonl",
        "data/b_test.jsonl",
        "probes/heldout.txt",
        "probes/pairs.jsonl",
        "tasks/facts.yaml",
        "tasks/notes.md",
    ):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text("{}\n")
    smoke["tasks"] = {
        "source": [],
        "target": [
            "sort",
            {"a": {"data_files": {"train": "data/a_train.jsonl", "test": "data/a_test.jsonl"}}},
            {"b": {"dataset": "json", "data_files": {"train": "data/b_*.jsonl", "test": "data/b_test.jsonl"}}},
            {"hub": {"dataset": "org/hub-set", "data_files": {"train": "on/the/hub.jsonl", "test": "x.jsonl"}}},
        ],
    }
    smoke["forgetting"] = {
        "heldout_ce": {"texts": "probes/heldout.txt"},
        "paraphrase_retrieval": {"pairs": "probes/pairs.jsonl"},
        "lm_eval": {"tasks": ["facts"], "include_path": "tasks"},
    }
    shared = ["probes/heldout.txt", "probes/pairs.jsonl", "tasks/facts.yaml"]
    with workflow_namespace(smoke, tmp_path) as workflow:
        local_input = workflow["local_input"]
        assert local_input(wildcards(model="llama-tiny", task="sort")) == shared
        assert local_input(wildcards(model="llama-tiny", task="a")) == [
            "data/a_train.jsonl",
            "data/a_test.jsonl",
            *shared,
        ]
        assert local_input(wildcards(model="llama-tiny", task="b")) == [
            "data/b_test.jsonl",
            "data/b_train.jsonl",
            *shared,
        ]
        assert local_input(wildcards(model="llama-tiny", task="hub")) == shared  # files inside the hub dataset
        assert set(local_input(wildcards(model="llama-tiny"))) == {  # tasks batched into one job
            "data/a_train.jsonl",
            "data/a_test.jsonl",
            "data/b_test.jsonl",
            "data/b_train.jsonl",
            *shared,
        }


def test_the_workflow_passes_snakemakes_linter() -> None:
    """`snakemake --lint` (Snakemake's own conventions: no absolute paths, functions apart from rules, ...) finds
    nothing; it exits 0 either way, so the test reads what it prints."""
    import subprocess

    result = subprocess.run(["snakemake", "--lint"], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert "Lints for" not in result.stdout + result.stderr, result.stdout + result.stderr
    assert "your workflow is in a good condition" in result.stdout + result.stderr


@pytest.mark.parametrize("stage", ["runner.py", "cost.py", "pretrain.py"])
def test_the_code_a_job_runs_leaves_out_the_grids_expansion(stage: str) -> None:
    """How the grid expands (grid.py, stages.py, checks.py) reaches a job through its settings, which re-run exactly
    the jobs whose settings it changes; were it part of the code a job runs, any edit of it would re-run them all."""
    from lorabench.provenance import PACKAGE, _closure

    ran = {path.relative_to(PACKAGE).as_posix() for path in _closure(frozenset({PACKAGE / stage}))}
    assert stage in ran and not ran & {"grid.py", "stages.py", "checks.py"}, sorted(ran)
