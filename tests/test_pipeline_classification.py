"""End to end with a classification grid, like workflow/config/offline_encoder.yaml: an encoder from an installed
package (copied by the cache_model rule), a local sentiment set, paraphrase-retrieval forgetting, the report."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pandas as pd
import pytest
import yaml

from lorabench import records
from lorabench.checks import load_grid
from tests import fixtures_hub
from tests.pipeline import REPO, snakemake

pytestmark = pytest.mark.e2e

SCHEMA = REPO / "workflow" / "schemas" / "config.schema.yaml"


@pytest.fixture(scope="module")
def classification_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    root = tmp_path_factory.mktemp("classification-e2e")
    package = fixtures_hub.save_tiny_bert_package(root / "site")
    data = str(fixtures_hub.write_jsonl(root / "sentiment.jsonl", fixtures_hub.SENTIMENT_ROWS))
    pairs = fixtures_hub.write_jsonl(root / "pairs.jsonl", fixtures_hub.PARAPHRASE_ROWS)
    config = {
        "suite": "classification-e2e",
        "device": "cpu",
        "models": {"tiny-bert": {"package": package, "target_modules": ["query", "value"]}},
        "tasks": {
            "source": [],
            "target": [
                {
                    "sentiment": {
                        "data_files": {"train": data, "test": data},
                        "prompt": "{text}",
                        "target": "{label}",
                        "labels": ["negative", "positive"],
                        "validation_size": 2,
                    }
                }
            ],
        },
        "train": {"steps": 3, "batch_size": 4, "log_every": 1, "eval_batch_size": 8},
        "grid": {"variants": ["lora", "resampled"], "ranks": [2], "lrs": [0.01], "seeds": [0]},
        "forgetting": {"paraphrase_retrieval": {"pairs": str(pairs), "batch_size": 3}},
    }
    path = root / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    workdir = root / "run"
    workdir.mkdir()
    with pytest.MonkeyPatch.context() as patch:  # the package is "installed" for Snakemake and its jobs
        patch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(root / "site"), os.environ.get("PYTHONPATH")])))
        patch.syspath_prepend(str(root / "site"))
        snakemake(workdir, config=path)
        grid = load_grid(config, SCHEMA)
    return workdir, {"config": config, "points": grid.points()}


def test_the_package_checkpoint_is_copied_once_into_the_results(classification_run: tuple[Path, dict]) -> None:
    workdir, _ = classification_run
    cached = workdir / "results" / "models" / "tiny-bert"
    assert (cached / "config.json").exists() and (cached / "model.safetensors").exists()


def test_records_carry_label_accuracy_and_embedding_forgetting(classification_run: tuple[Path, dict]) -> None:
    workdir, run = classification_run
    assert {p.variant for p in run["points"]} == {"lora", "resampled"}
    for point in run["points"]:
        record = json.loads((workdir / point.record).read_text())
        records.validate(record)
        assert record["status"] == "ok", record["error"]
        assert record["hyperparameters"]["checkpoint"] == "results/models/tiny-bert"
        for key in ("accuracy_before", "accuracy_after"):  # 12 examples: a multiple of 1/12
            assert round(record["target"][key] * 12, 6).is_integer()
        extra = record["extra"]
        drop = extra["paraphrase_retrieval_before"] - extra["paraphrase_retrieval_after"]
        forgetting = record["forgetting"]
        assert forgetting["mean"] == pytest.approx(drop)
        assert forgetting["per_task"] == {"paraphrase_retrieval": pytest.approx(drop)}
        assert forgetting["graded"]["char_accuracy_drop"]["per_task"] == {}  # no source tasks to read answers of


def test_the_report_shows_the_classification_grid(classification_run: tuple[Path, dict]) -> None:
    workdir, run = classification_run
    results = pd.read_csv(workdir / "reports" / "results.csv")
    assert len(results) == len(run["points"]) and set(results["status"]) == {"ok"}
    assert "extra__paraphrase_retrieval_after" in results.columns
    summary = (workdir / "reports" / "summary.md").read_text()
    assert "- models: tiny-bert" in summary and "- tasks: sentiment" in summary
    assert (workdir / "reports" / "forgetting_vs_accuracy.png").stat().st_size > 0
