"""The schema owns every default: a minimal config is filled from it at every level the code reads (forgetting
measures included), and the code keeps no copy of its own (a schema with other defaults gives other jobs)."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml

from lorabench import stages
from lorabench.checks import load_grid
from tests.jobs import TINY_LLAMA
from tests.pipeline import REPO

SCHEMA = REPO / "workflow/schemas/config.schema.yaml"
MINIMAL = {
    "models": {
        "tiny": {
            "architecture": TINY_LLAMA,
            "target_modules": ["q_proj"],
        }
    },
    "tasks": {"source": ["copy"], "target": ["sort"]},
    "grid": {"ranks": [2], "lrs": [0.01], "seeds": [0]},
    "train": {"steps": 2, "batch_size": 4},
    "forgetting": {
        "lm_eval": {"tasks": ["probe"]},
        "heldout_ce": {"texts": "texts.txt"},
        "paraphrase_retrieval": {"pairs": "pairs.jsonl"},
    },
}


@pytest.fixture(autouse=True)
def local_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The files MINIMAL's forgetting measures read (and the other defaults' include folder), in a fresh folder."""
    monkeypatch.chdir(tmp_path)
    for name in ("texts.txt", "pairs.jsonl"):
        Path(name).write_text("a\n")
    Path("tasks").mkdir()


def schema_defaults(schema: dict[str, Any], path: tuple[str, ...] = ()) -> dict[tuple[str, ...], Any]:
    """Field path -> default, for every field of ``schema`` reached through ``properties`` that has one."""
    defaults: dict[tuple[str, ...], Any] = {}
    for name, field in schema.get("properties", {}).items():
        if "default" in field:
            defaults[(*path, name)] = field["default"]
        defaults |= schema_defaults(field, (*path, name))
    return defaults


def value_at(config: dict[str, Any], path: tuple[str, ...]) -> Any:
    for key in path:
        config = config[key]
    return config


def test_a_minimal_config_gets_every_default_of_the_schema() -> None:
    config = copy.deepcopy(MINIMAL)
    load_grid(config, SCHEMA)
    defaults = schema_defaults(yaml.safe_load(SCHEMA.read_text()))
    assert ("forgetting", "lm_eval", "batch_size") in defaults and ("train", "eval_batch_size") in defaults
    for path, default in defaults.items():  # a section's default `{}` is filled by its fields' defaults
        assert value_at(config, path) == default or default == {} and isinstance(value_at(config, path), dict), path


OTHER_DEFAULTS = {
    ("dtype",): "bfloat16",
    ("train", "alpha"): 3,
    ("train", "dropout"): 0.25,
    ("train", "weight_decay"): 0.5,
    ("train", "optimizer"): "sgd",
    ("train", "log_every"): 3,
    ("train", "eval_batch_size"): 7,
    ("train", "save_adapters"): True,
    ("train", "eval_at"): [1],
    ("train", "replay"): 0.5,
    ("data", "seed"): 5,
    ("data", "train"): 100,
    ("pretrain", "seed"): 6,
    ("forgetting", "lm_eval", "include_path"): "tasks",
    ("forgetting", "lm_eval", "limit"): 4,
    ("forgetting", "lm_eval", "batch_size"): 5,
    ("forgetting", "heldout_ce", "n"): 9,
    ("forgetting", "heldout_ce", "max_length"): 33,
    ("forgetting", "heldout_ce", "batch_size"): 6,
    ("forgetting", "paraphrase_retrieval", "batch_size"): 11,
}
"""Defaults the jobs read, each changed to another valid value."""


def with_defaults(schema: dict[str, Any], defaults: dict[tuple[str, ...], Any]) -> dict[str, Any]:
    schema = copy.deepcopy(schema)
    for path, default in defaults.items():
        field = schema
        for key in path:
            field = field["properties"][key]
        field["default"] = default
    return schema


def test_the_jobs_read_the_schema_s_defaults_and_keep_no_copy(tmp_path: Path) -> None:
    schema = tmp_path / "schema.yaml"
    schema.write_text(yaml.safe_dump(with_defaults(yaml.safe_load(SCHEMA.read_text()), OTHER_DEFAULTS)))
    config = copy.deepcopy(MINIMAL)
    config["grid"]["variants"] = ["lora"]  # one that saves its adapters (the changed `save_adapters`)
    grid = load_grid(config, schema)
    job = stages.train_job(grid, {"model": "tiny", "seed": "0"}, "cpu").to_dict()
    assert {key: job[key] for key in ("dtype", "alpha", "dropout", "eval_batch_size", "save_adapters")} == {
        "dtype": "bfloat16",
        "alpha": 3,
        "dropout": 0.25,
        "eval_batch_size": 7,
        "save_adapters": True,
    }
    assert job["train"] == {
        "steps": 2,
        "batch_size": 4,
        "weight_decay": 0.5,
        "log_every": 3,
        "eval_at": (1,),
        "replay": 0.5,
    }
    assert {variant["optimizer"] for variant in job["variants"].values()} == {"sgd"}
    assert job["data"]["seed"] == 5 and job["data"]["train"] == 100
    for path, default in OTHER_DEFAULTS.items():
        if path[0] == "forgetting":
            assert job["forgetting"][path[1]][path[2]] == default, path
    pretrain = stages.pretrain_job(grid, "tiny")
    assert pretrain.seed == 6 and pretrain.eval_batch_size == 7 and pretrain.data["seed"] == 5


def defaults_in_branches(schema: Any, inside: str = "") -> list[str]:
    """Defaults inside a ``oneOf``/``anyOf`` branch or an ``if``/``then``/``else``: snakemake's ``validate`` fills
    a default wherever validation descends, so one there would be filled from a branch that does not match."""
    if isinstance(schema, list):
        return [found for item in schema for found in defaults_in_branches(item, inside)]
    if not isinstance(schema, dict):
        return []
    found = [inside] if inside and "default" in schema else []
    for key, value in schema.items():
        branch = inside or (key if key in ("oneOf", "anyOf", "if", "then", "else") else "")
        found += defaults_in_branches(value, branch) if key not in ("default", "properties") else []
        if key == "properties":
            found += [hit for field in value.values() for hit in defaults_in_branches(field, inside)]
    return found


def test_no_default_sits_in_a_branch_of_the_schema() -> None:
    # the top-level `grid.variants: {oneOf: [...], default: all}` is fine: its default is outside the branches
    assert defaults_in_branches(yaml.safe_load(SCHEMA.read_text())) == []
    assert defaults_in_branches({"oneOf": [{"properties": {"a": {"default": 1}}}]}) == ["oneOf"]
