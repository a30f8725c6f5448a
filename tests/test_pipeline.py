"""End to end: the smoke grid through Snakemake, then what a user does next (re-run, delete, inspect)."""

from __future__ import annotations

import json
import re
from html import escape as html_escape
from pathlib import Path

import pandas as pd
import pytest

from lorabench import records
from lorabench.checks import load_grid
from lorabench.report import REPORT_ITEMS
from lorabench.report.summary import QUESTIONS
from tests.pipeline import REPO, SMOKE, snakemake

pytestmark = pytest.mark.e2e


def _grid_points() -> list:
    import yaml

    return load_grid(yaml.safe_load(SMOKE.read_text()), REPO / "workflow/schemas/config.schema.yaml").points()


def test_every_grid_point_has_a_valid_sane_record(smoke_run: Path) -> None:
    points = _grid_points()
    assert {p.variant for p in points} >= {"lora", "full"}
    for point in points:
        record = json.loads((smoke_run / point.record).read_text())
        records.validate(record)
        assert record["status"] == "ok", record["error"]
        assert 0 < record["parameters"]["trainable"] <= record["parameters"]["total"]
        assert record["timing"]["steps_done"] == record["hyperparameters"]["train"]["steps"]
        assert record["timing"]["step_ms_median"] > 0
        assert record["memory"]["peak_mb"] >= record["memory"]["baseline_mb"] > 0
        assert 0 <= record["target"]["accuracy_after"] <= 1
        assert set(record["forgetting"]["per_task"]) == {"copy", "reverse"}
        for graded in record["forgetting"]["graded"].values():
            assert set(graded["per_task"]) == {"copy", "reverse"} and graded["ceiling"] > 0
        assert record["trajectory"]["step"] == [4, 8, 12]  # smoke's train.eval_at
        assert record["trajectory"]["target_test"][-1] == record["target"]["accuracy_after"]


def test_adapters_train_fewer_parameters_than_full_fine_tuning(smoke_run: Path) -> None:
    results = pd.read_csv(smoke_run / "reports" / "results.csv")
    trainable = results.groupby(["model", "variant"])["trainable_params"].first()
    for model in results["model"].unique():
        assert trainable[model].idxmax() == "full"


def test_report_has_every_figure_and_one_row_per_run(smoke_run: Path) -> None:
    for name in REPORT_ITEMS:
        assert (smoke_run / "reports" / name).stat().st_size > 0, name
    results = pd.read_csv(smoke_run / "reports" / "results.csv")
    assert len(results) == len(_grid_points())
    assert results[["forgetting_char", "forgetting_ce", "forgetting_ce_ceiling"]].notna().all().all()
    trajectories = pd.read_csv(smoke_run / "reports" / "trajectories.csv")
    assert len(trajectories) == 3 * len(results)
    summary = (smoke_run / "reports" / "summary.md").read_text()
    assert all(variant in summary for variant in results["variant"].unique())


def test_rerun_does_nothing(smoke_run: Path) -> None:
    result = snakemake(smoke_run, "--dry-run")
    assert "Nothing to be done" in result.stdout + result.stderr


def test_deleting_one_record_reruns_one_train_job(smoke_run: Path) -> None:
    record = smoke_run / _grid_points()[0].record
    kept = record.rename(smoke_run / "kept-record.json")  # a rename back keeps its mtime
    try:
        out = snakemake(smoke_run, "--dry-run", "--quiet", "rules").stdout
    finally:
        kept.rename(record)  # the smoke run is shared with other test modules
    job_stats = [line.split() for line in out.splitlines()]
    counts = {row[0]: int(row[1]) for row in job_stats if len(row) == 2 and row[1].isdigit()}
    assert counts.get("train") == 1 and "pretrain" not in counts, out


def test_snakemake_report_is_written_and_opens_on_the_answers(smoke_run: Path) -> None:
    snakemake(smoke_run, "--report", "report.html")
    html = (smoke_run / "report.html").read_text()
    assert len(html) > 10_000
    # the first page (workflow_desc): the questions, this run's intervals and decisions, links to the figures
    description = json.loads(re.search(r"workflow_desc = (\".*?(?<!\\)\");", html).group(1))
    for question in QUESTIONS:
        assert html_escape(question, quote=False) in description, question
    assert re.search(r"resampled vs lora [+-]\d\.\d\d \[[+-]\d\.\d\d, [+-]\d\.\d\d\] (n\.s\.|significant)", description)
    assert "javascript:app.showResultInfo(" in description and "forgetting_vs_accuracy.png" in description


def test_memory_account_is_the_same_for_every_seed_and_orders_full_lora_frozen_a(smoke_run: Path) -> None:
    accounts: dict[tuple, set[str]] = {}
    for point in _grid_points():
        account = json.loads((smoke_run / point.record).read_text())["memory"]["account"]
        accounts.setdefault((point.model, point.task, point.variant), set()).add(json.dumps(account, sort_keys=True))
    assert all(len(seen) == 1 for seen in accounts.values()), accounts
    total = {key: json.loads(seen.pop())["total"] for key, seen in accounts.items()}
    for model, task, _ in total:
        assert total[model, task, "full"] > total[model, task, "lora"] > total[model, task, "frozen_a"]


def test_every_job_is_benchmarked_and_the_summary_gives_the_training_share(smoke_run: Path) -> None:
    benchmarks, logs = smoke_run / "results" / "benchmarks", smoke_run / "results" / "logs" / "train"
    jobs = sorted(log.relative_to(logs).with_suffix("") for log in logs.rglob("*.log"))
    assert jobs and jobs == sorted(
        tsv.relative_to(benchmarks / "train").with_suffix("") for tsv in (benchmarks / "train").rglob("*.tsv")
    )
    assert {path.name for path in benchmarks.iterdir()} >= {"pretrain", "train", "aggregate.tsv", "figures.tsv"}
    assert "Training share: " in (smoke_run / "reports" / "summary.md").read_text()
