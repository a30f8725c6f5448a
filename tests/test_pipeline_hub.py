"""End to end with a real-model config: a local checkpoint by `path`, a HubTask target, lm-eval and
held-out cross-entropy forgetting, through Snakemake, offline (tiny local stand-ins for hub assets)."""

from __future__ import annotations

import json
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


def _hub_config(root: Path) -> dict:
    model = fixtures_hub.save_tiny_llama(root / "tiny-llama")
    math = fixtures_hub.write_math_json(root / "math.jsonl")
    lm_eval_tasks = fixtures_hub.write_multiple_choice_task(root / "lm_eval_tasks")
    heldout = root / "heldout.txt"
    heldout.write_text("\n".join(fixtures_hub.CORPUS[1:]) + "\n")
    return {
        "suite": "hub-e2e",
        "device": "cpu",
        "models": {"tiny-llama": {"path": str(model), "dtype": "float32", "target_modules": ["q_proj", "v_proj"]}},
        "tasks": {
            "source": [],
            "target": [
                {
                    "math": {
                        "data_files": {"train": str(math), "test": str(math)},
                        "validation_size": 2,
                        "max_new_tokens": 8,
                    }
                }
            ],
        },
        "train": {"steps": 3, "batch_size": 4, "log_every": 1, "eval_batch_size": 8},
        "grid": {"variants": ["lora", "full"], "ranks": [2], "lrs": [0.001], "seeds": [0]},
        "forgetting": {
            "lm_eval": {
                "tasks": [fixtures_hub.MULTIPLE_CHOICE_TASK],
                "include_path": str(lm_eval_tasks),
                "limit": 8,
                "batch_size": 4,
            },
            "heldout_ce": {"texts": str(heldout), "n": 3, "max_length": 64, "batch_size": 2},
        },
    }


@pytest.fixture(scope="module")
def hub_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    root = tmp_path_factory.mktemp("hub")
    config = _hub_config(root)
    path = root / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    workdir = root / "run"
    workdir.mkdir()
    snakemake(workdir, "reports/results.csv", config=path)
    return workdir, config


def test_records_carry_task_accuracy_and_forgetting_before_and_after(hub_run: tuple[Path, dict]) -> None:
    workdir, config = hub_run
    points = load_grid(config, SCHEMA).points()
    assert {p.variant for p in points} == {"lora", "full"}
    assert not (workdir / "results" / "models").exists()  # a `path` model is never pretrained
    task = fixtures_hub.MULTIPLE_CHOICE_TASK
    for point in points:
        record = json.loads((workdir / point.record).read_text())
        records.validate(record)
        assert record["status"] == "ok", record["error"]
        assert 0 <= record["target"]["accuracy_before"] <= 1 and 0 <= record["target"]["accuracy_after"] <= 1
        extra = record["extra"]
        assert 0 <= extra[f"lm_eval_before__{task}"] <= 1 and 0 <= extra[f"lm_eval_after__{task}"] <= 1
        drop = extra[f"lm_eval_before__{task}"] - extra[f"lm_eval_after__{task}"]
        assert record["forgetting"]["per_task"] == {f"lm_eval__{task}": pytest.approx(drop)}
        assert record["forgetting"]["mean"] == pytest.approx(drop)  # no source tasks: the benchmark is the measure
        assert extra["heldout_ce_before"] > 0 and extra["heldout_ce_after"] > 0
        increase = extra["heldout_ce_after"] - extra["heldout_ce_before"]
        assert record["forgetting"]["graded"]["ce_increase"]["per_task"] == {"heldout_ce": pytest.approx(increase)}
        assert record["hyperparameters"]["checkpoint"] == config["models"]["tiny-llama"]["path"]
    results = pd.read_csv(workdir / "reports" / "results.csv")
    assert len(results) == len(points)
    columns = {f"extra__lm_eval_before__{task}", "extra__heldout_ce_after", "forgetting_ce__heldout_ce"}
    assert columns <= set(results.columns)
