"""A bad config is refused before any job runs, with a message naming the field and the fix."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml

from lorabench.config import ConfigError, load_grid
from tests.pipeline import REPO, SMOKE, snakemake

SCHEMA = REPO / "workflow" / "schemas" / "config.schema.yaml"


@pytest.fixture
def smoke() -> dict:
    return yaml.safe_load(SMOKE.read_text())


def _refused(config: dict) -> str:
    with pytest.raises(ConfigError) as caught:
        load_grid(copy.deepcopy(config), SCHEMA)
    return str(caught.value)


def test_shipped_configs_are_valid() -> None:
    for path in (REPO / "workflow" / "config").glob("*.yaml"):
        grid = load_grid(yaml.safe_load(path.read_text()), SCHEMA)
        assert grid.points(), path


def test_unknown_variant_names_the_field_and_the_known_ones(smoke: dict) -> None:
    smoke["grid"]["variants"] = ["lora", "lorra"]
    message = _refused(smoke)
    assert "grid/variants" in message and "'lorra'" in message and "frozen_a" in message


def test_rank_that_does_not_fit_names_model_layer_and_shape(smoke: dict) -> None:
    smoke["grid"]["variants"] = ["lora"]
    smoke["grid"]["ranks"] = [64]
    message = _refused(smoke)
    assert "grid/ranks" in message and "rank 64" in message and "(32, 32)" in message


def test_additive_rank_must_divide_every_layer(smoke: dict) -> None:
    smoke["grid"]["variants"] = ["additive"]
    smoke["grid"]["ranks"] = [3]
    message = _refused(smoke)
    assert "additive" in message and "rank 3" in message


def test_misspelt_key_is_named(smoke: dict) -> None:
    smoke["grid"]["rnaks"] = smoke["grid"].pop("ranks")
    message = _refused(smoke)
    assert message.startswith("config error at `grid`") and "'rnaks' was unexpected" in message


def test_target_modules_matching_nothing_are_refused(smoke: dict) -> None:
    smoke["models"]["gpt2-tiny"]["target_modules"] = ["q_proj"]
    assert "models/gpt2-tiny/target_modules" in _refused(smoke)


def test_snakemake_refuses_a_bad_config_before_any_job(tmp_path: Path, smoke: dict) -> None:
    smoke["grid"]["variants"] = ["lorra"]
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(smoke))
    result = snakemake(tmp_path, "--dry-run", config=bad, check=False)
    assert result.returncode != 0
    assert "unknown variant 'lorra'" in result.stdout + result.stderr
    assert not (tmp_path / "results").exists()


def test_model_needs_exactly_one_of_architecture_and_path(smoke: dict) -> None:
    smoke["models"]["gpt2-tiny"]["path"] = "gpt2"
    assert "models/gpt2-tiny" in _refused(smoke) and "exactly one" in _refused(smoke)


def test_bad_hub_task_entry_names_the_field(smoke: dict) -> None:
    smoke["tasks"]["target"] = ["sort", {"math": {"dataset": "openai/gsm8k", "fallback": "guess"}}]
    message = _refused(smoke)
    assert "tasks/target/1/math" in message and "'fallback'" in message


def test_unresolvable_hub_model_skips_the_rank_check(smoke: dict) -> None:
    smoke["models"] = {"remote": {"path": "no-such-org/no-such-model", "target_modules": ["q_proj"]}}
    smoke["tasks"] = {"source": [], "target": [{"math": {"dataset": "openai/gsm8k", "config": "main"}}]}
    grid = load_grid(copy.deepcopy(smoke), SCHEMA)
    assert {p.task for p in grid.points()} == {"math"}
    assert grid.checkpoint_input("remote") == [] and grid.checkpoint("remote") == "no-such-org/no-such-model"


def test_local_checkpoint_ranks_are_checked_from_its_config(smoke: dict, tmp_path: Path) -> None:
    from tests.fixtures_hub import save_tiny_llama

    smoke["models"] = {"local": {"path": str(save_tiny_llama(tmp_path / "m")), "target_modules": ["q_proj"]}}
    smoke["grid"]["variants"] = ["lora"]
    smoke["grid"]["ranks"] = [64]
    message = _refused(smoke)
    assert "rank 64" in message and "'local'" in message and "(32, 32)" in message


def test_a_variant_can_train_with_its_own_optimizer(smoke: dict) -> None:
    smoke["variants"]["resampled"] = {"resample_every": 1, "optimizer": "sgd", "lrs": [0.5]}
    grid = load_grid(smoke, SCHEMA)
    jobs = {v: grid.train_job({"model": "llama-tiny", "variant": v, "rank": "2", "lr": lr}, "cpu", 1)
            for v, lr in (("resampled", "0.5"), ("lora", "0.003"))}
    assert jobs["resampled"]["train"]["optimizer"] == "sgd"
    assert jobs["resampled"]["variant_options"] == {"resample_every": 1}  # not passed to the adapter
    assert jobs["lora"]["train"]["optimizer"] == "adamw"


def test_unknown_optimizer_is_named(smoke: dict) -> None:
    smoke["train"]["optimizer"] = "adam"
    assert _refused(smoke) == "config error at `train/optimizer`: 'adam' is not one of ['adamw', 'sgd']"
