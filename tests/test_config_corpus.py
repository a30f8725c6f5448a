"""The corpus of broken configs: each one is refused before any job, by ``load_grid`` (what the Snakefile runs)
and by ``lorabench check``, with a message that names the field, the bad value and what would be accepted.

A case edits the smoke config: ``{dotted.path: YAML text}`` (YAML text, so that ``3e-3`` arrives as a user's
YAML gives it: a string); ``DROP`` removes the key.
"""

from __future__ import annotations

import copy
import dataclasses
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from lorabench import stages
from lorabench.checks import ConfigError, load_grid
from lorabench.cli import main
from lorabench.variants import registry
from tests.pipeline import SMOKE, snakemake

DROP = object()
LOCAL_MODEL = "{local: {path: %s, target_modules: [q_proj]}}"
ALL_OPTIONS = "; every entry also takes the settings uses, lrs, optimizer"

CASES = {
    # unknown keys at every level
    "top-level key": ({"suit": "smoke"}, ["`(top level)`", "'suit'"]),
    "grid key": ({"grid.rnaks": "[2]", "grid.ranks": DROP}, ["`grid`", "'rnaks'"]),
    "train key": ({"train.stpes": "3"}, ["`train`", "'stpes'"]),
    "pretrain key": ({"pretrain.lr_": "0.1"}, ["`pretrain`", "'lr_'"]),
    "data key": ({"data.max_length": "5"}, ["`data`", "'max_length'"]),
    "forgetting key": ({"forgetting": "{lm_evl: {tasks: [x]}}"}, ["`forgetting`", "'lm_evl'"]),
    "variant setting typo (lr for lrs)": (
        {"variants.full": "{lr: [0.001]}"},
        ["`variants/full/lr`", "'lr'", "did you mean 'lrs'", ALL_OPTIONS],
    ),
    "variant option typo": (
        {"variants.resampled.resample_evry": "5"},
        ["`variants/resampled/resample_evry`", "did you mean 'resample_every'", "resample_every (int, default 1)"],
    ),
    "optimizer spelt optimiser": (
        {"variants.resampled.optimiser": "sgd"},
        ["`variants/resampled/optimiser`", "did you mean 'optimizer'"],
    ),
    "variant optimizer value": ({"variants.full.optimizer": "adam"}, ["`variants/full/optimizer`", "'adam'", "sgd"]),
    "optimizer a variant's maths refuses": (
        {"variants.flora": "{optimizer: adamw}"},
        ["`variants/flora/optimizer`", "'adamw'", "flora declares 'sgd'", "drop the entry's optimizer"],
    ),
    "variant entry that is no variant": (
        {"variants.lorra": "{lrs: [0.1]}"},
        ["`variants/lorra`", "'lorra'", "frozen_a", "uses: <registered variant>"],
    ),
    "uses an unknown variant": ({"variants.mine": "{uses: lorra}"}, ["`variants/mine/uses`", "'lorra'", "frozen_a"]),
    "grid variant unknown": ({"grid.variants": "[lora, lorra]"}, ["`grid/variants`", "'lorra'", "frozen_a"]),
    # option types and values
    "option of the wrong type": (
        {"variants.resampled.resample_every": "'5'"},
        ["`variants/resampled/resample_every`", "'5' is not of type int", "drop the quotes"],
    ),
    "option out of range": (
        {"variants.resampled.resample_every": "0"},
        ["`variants/resampled/resample_every`", "not 0", "positive"],
    ),
    "pissa init": ({"variants.pissa": "{pissa_init: svd}"}, ["`variants/pissa/pissa_init`", "'svd'", "pissa_niter_4"]),
    "eval_at beyond the steps": (
        {"train.eval_at": "[4, 8, 20]"},
        ["`train/eval_at`", "[4, 8, 20]", "at most train/steps (12)"],
    ),
    "eval_at out of order": ({"train.eval_at": "[8, 4]"}, ["`train/eval_at`", "ascending"]),
    # combinations a variant refuses
    "dropout with resampled": (
        {"train.dropout": "0.1"},
        ["`variants/resampled`", "resampled refuses dropout", "0.1", "train.dropout to 0"],
    ),
    "peft without peft_config": (
        {"variants.loha": "{uses: peft}"},
        ["`variants/loha/peft_config`", "needs options: peft_config", "peft_type: LOHA"],
    ),
    "unknown peft_type": (
        {"variants.loha": "{uses: peft, peft_config: {peft_type: LOAH}}"},
        ["`variants/loha/peft_config`", "unknown peft_type 'LOAH'", "LOHA"],
    ),
    "peft_config field typo": (
        {"variants.loha": "{uses: peft, peft_config: {peft_type: LOHA, alpah: 8}}"},
        ["`variants/loha/peft_config`", "'alpah'", "alpha"],
    ),
    # models
    "architecture key the config class lacks": (
        {"models.llama-tiny.architecture.hiden_size": "32"},
        ["`models/llama-tiny/architecture`", "'hiden_size'", "did you mean 'hidden_size'"],
    ),
    "architecture key set by the tokenizer": (
        {"models.gpt2-tiny.architecture.vocab_size": "100"},
        ["`models/gpt2-tiny/architecture`", "'vocab_size'", "leave it out"],
    ),
    "one target module misspelt": (
        {"models.llama-tiny.target_modules": "[q_proj, vproj, down_proj]"},
        ["`models/llama-tiny/target_modules`", "'vproj' matches no", "c_attn"],
    ),
    "two target modules misspelt": (
        {"models.gpt2-tiny.target_modules": "[c_atn, c_fc, cproj]"},
        ["`models/gpt2-tiny/target_modules`", "'c_atn', 'cproj' match no", "matched: ['c_fc']"],
    ),
    "path to a missing folder": (
        {"models": LOCAL_MODEL % "./no-such-checkpoint"},
        ["`models/local/path`", "'./no-such-checkpoint'", "does not exist", "hub name"],
    ),
    "path that is no hub name": (
        {"models": LOCAL_MODEL % "checkpoints/run1/final"},
        ["`models/local/path`", "'checkpoints/run1/final'", "does not exist"],
    ),
    "path under ~": (
        {"models": LOCAL_MODEL % "~/checkpoints/x"},
        ["`models/local/path`", "'~/checkpoints/x'", "full path"],
    ),
    # grid values that collide
    "duplicate rank": ({"grid.ranks": "[2, 2]"}, ["`grid/ranks`", "2 is given twice"]),
    "duplicate seed": ({"grid.seeds": "[0, 1, 0]"}, ["`grid/seeds`", "0 is given twice"]),
    "lrs naming one record": (
        {"grid.lrs": "[0.001, 0.0010000001]"},
        ["`grid/lrs`", "0.001 and 0.0010000001", "'0.001'", "6 significant digits"],
    ),
    "variant lrs duplicate": ({"variants.full.lrs": "[0.0005, 0.0005]"}, ["`variants/full/lrs`", "given twice"]),
    # data and tasks
    "min_len above max_len": (
        {"data.min_len": "8", "data.max_len": "3"},
        ["`data/min_len`", "min_len 8 is above max_len 3", "min_len <= max_len"],
    ),
    "splits larger than the inputs": (
        {"data.min_len": "1", "data.max_len": "2"},
        ["`data`", "'copy' has 72 distinct inputs of length 1-2", "348", "raise data.max_len"],
    ),
    "unknown target task": ({"tasks.target": "[sortt]"}, ["`tasks/target/0`", "'sortt'", "'lookup'"]),
    "unknown source task": ({"tasks.source": "[copy, revers]"}, ["`tasks/source/1`", "'revers'", "'reverse'"]),
    "replay without source tasks": (
        {"train.replay": "0.25", "tasks.source": "[]"},
        ["`train/replay`", "replay 0.25", "`tasks/source` is empty", "train.replay: 0"],
    ),
    "replay of no example per batch": (
        {"train.replay": "0.01"},
        ["`train/replay`", "batch_size 16 rounds to 0", "above 0.0312"],
    ),
    "replay of the whole batch": ({"train.replay": "0.99"}, ["`train/replay`", "rounds to 16", "between 1 and 15"]),
    "replay of 1": ({"train.replay": "1"}, ["`train/replay`", "1"]),
    # a registered name may not run another variant; a task is source or target, not both
    "registered name running another variant": (
        {"variants.lora": "{uses: full}"},
        ["`variants/lora/uses`", "'full'", "drop `uses`", "new name"],
    ),
    "source task that is also a target": (
        {"tasks.source": "[copy, sort]"},
        ["`tasks/source`", "['sort']", "`tasks/target`", "forgetting"],
    ),
    # names that are no single path part
    "model name ..": (
        {
            "models": "{'..': {architecture: {family: gpt2, n_embd: 32, n_layer: 1, n_head: 2}, "
            "target_modules: [c_attn]}}"
        },
        ["`models`", "'..'", "one safe path part"],
    ),
    "model name with a slash": (
        {"models": "{org/llama: {path: org/llama, target_modules: [q_proj]}}", "tasks.source": "[]"},
        ["`models`", "'org/llama'", "`path`"],
    ),
    "variant entry with a slash": ({"variants.a/b": "{uses: lora}"}, ["`variants`", "'a/b'", "letters, digits"]),
    "grid variant with a slash": ({"grid.variants": "[lora, a/b]"}, ["`grid/variants/1`", "'a/b'"]),
    "target task name with a slash": (
        {"tasks.target": "[{my/task: {data_files: {train: t.jsonl, test: t.jsonl}}}]"},
        ["`tasks/target/0`", "'my/task'"],
    ),
    # duplicates and the variant list
    "duplicate grid variant": ({"grid.variants": "[lora, lora]"}, ["`grid/variants`", "'lora' is given twice"]),
    "duplicate target module": (
        {"models.gpt2-tiny.target_modules": "[c_fc, c_fc]"},
        ["`models/gpt2-tiny/target_modules`", "'c_fc' is given twice"],
    ),
    "grid variants ALL": ({"grid.variants": "ALL"}, ["`grid/variants`", "'ALL'", "`all`", "frozen_a"]),
    # numbers that are not finite
    "nan learning rate": ({"grid.lrs": "[.nan]"}, ["`grid/lrs/0`", "nan", "finite"]),
    "inf learning rate": ({"grid.lrs": "[.inf]"}, ["`grid/lrs/0`", "inf", "finite"]),
    "inf in a variant's lrs": ({"variants.full.lrs": "[0.001, .inf]"}, ["`variants/full/lrs/1`", "inf", "finite"]),
    # local files the jobs would read
    "missing held-out texts": (
        {"forgetting": "{heldout_ce: {texts: no-such/heldout.txt}}"},
        ["`forgetting/heldout_ce/texts`", "'no-such/heldout.txt'", "does not exist", "relative to"],
    ),
    "missing paraphrase pairs": (
        {"forgetting": "{paraphrase_retrieval: {pairs: no-such/pairs.jsonl}}"},
        ["`forgetting/paraphrase_retrieval/pairs`", "'no-such/pairs.jsonl'", "does not exist"],
    ),
    "missing lm-eval include folder": (
        {"forgetting": "{lm_eval: {tasks: [x], include_path: no-such/tasks}}"},
        ["`forgetting/lm_eval/include_path`", "folder 'no-such/tasks'", "does not exist"],
    ),
    "missing task data file": (
        {"tasks.source": "[]", "tasks.target": "[{mine: {data_files: {train: no-such/train.jsonl, test: README.md}}}]"},
        ["`tasks/target/0/mine/data_files/train`", "'no-such/train.jsonl'", "does not exist"],
    ),
    "task data pattern matching nothing": (
        {
            "tasks.source": "[]",
            "tasks.target": "[{mine: {dataset: json, data_files: {train: 'no-such/*.jsonl', test: README.md}}}]",
        },
        ["`tasks/target/0/mine/data_files/train`", "matches no file"],
    ),
    # float16 where there is no GPU (the smoke config's device is cpu)
    "float16 on the cpu": ({"dtype": "float16"}, ["`dtype`", "float16", "device is cpu", "bfloat16"]),
    "a model's float16 on the cpu": (
        {"models.gpt2-tiny.dtype": "float16"},
        ["`models/gpt2-tiny/dtype`", "float16", "device is cpu"],
    ),
    # values accepted before without a word (the audit's)
    "negative seed": ({"grid.seeds": "[0, -1]"}, ["`grid/seeds/1`", "-1 is not a seed from 0 to 4294967295"]),
    "seed of 2**70": ({"grid.seeds": f"[{2**70}]"}, ["`grid/seeds/0`", f"{2**70} is not a seed", "in that range"]),
    "batch larger than the train split": (
        {"train.batch_size": "301"},
        ["`train/batch_size`", "301 is more than the 300 examples", "data.train"],
    ),
    "fewer positions than the longest example": (
        {"models.llama-tiny.architecture.max_position_embeddings": "8"},
        [
            "`models/llama-tiny/architecture/max_position_embeddings`",
            "8 positions, fewer than the 13 tokens",
            "at least 13",
        ],
    ),
    "no layers": (
        {"models.gpt2-tiny.architecture.n_layer": "0"},
        ["`models/gpt2-tiny/architecture/n_layer`", "0 layers leaves nothing to adapt"],
    ),
    # YAML's numbers
    "3e-3 is a string to YAML": ({"grid.lrs": "[3e-3]"}, ["`grid/lrs/0`", "'3e-3'", "3.0e-3", "0.003"]),
    "1e-4 in a variant's lrs": ({"variants.full.lrs": "[1e-4]"}, ["`variants/full/lrs/0`", "'1e-4'", "3.0e-3"]),
}


def _edited(edits: dict[str, object]) -> dict:
    config = yaml.safe_load(SMOKE.read_text())
    for dotted, text in edits.items():
        *parents, key = dotted.split(".")
        entry = config
        for part in parents:
            entry = entry.setdefault(part, {})
        if text is DROP:
            del entry[key]
        else:
            entry[key] = yaml.safe_load(text)
    return config


def _check(path: Path) -> str:
    """``lorabench check`` as its command line runs it: the message it exits with."""
    with pytest.raises(SystemExit) as exited:
        main(["check", str(path)])
    return str(exited.value.code)


@pytest.mark.parametrize("edits, expected", CASES.values(), ids=CASES.keys())
def test_load_grid_refuses_the_case(edits: dict, expected: list[str]) -> None:
    with pytest.raises(ConfigError) as refused:
        load_grid(_edited(edits))
    message = str(refused.value)
    assert message.startswith("config error at ") and all(words in message for words in expected), message


@pytest.mark.parametrize("edits, expected", CASES.values(), ids=CASES.keys())
def test_lorabench_check_refuses_the_case(edits: dict, expected: list[str], tmp_path: Path) -> None:
    config = tmp_path / "broken.yaml"
    config.write_text(yaml.safe_dump(_edited(edits)))
    message = _check(config)
    assert message.startswith(f"{config}: config error at ") and all(words in message for words in expected), message


YAML_CASES = {
    "tab indentation": ("models:\n  a: 1\n\tb: 2\n", [":3:1: YAML syntax error", "tabs"]),
    "unclosed bracket": ("grid: {ranks: [2, 4}\n", [":1:20: YAML syntax error"]),
    "empty file": ("", ["the config is empty", "models, tasks, grid and train"]),
    "top-level key given twice": (
        "train: {steps: 3}\ngrid: {ranks: [2]}\ntrain: {steps: 4}\n",
        [":3:1: duplicate key 'train' (first given at line 1)", "give each key once"],
    ),
    "nested key given twice": ("pretrain: {steps: 60, steps: 6}\n", [":1:23: duplicate key 'steps'", "line 1"]),
    "a list": ("- models\n- tasks\n", ["config error at `(top level)`", "must be a mapping", "not a list"]),
    "a scalar": ("just some text\n", ["config error at `(top level)`", "must be a mapping", "not a str"]),
}


@pytest.mark.parametrize("text, expected", YAML_CASES.values(), ids=YAML_CASES.keys())
def test_lorabench_check_names_file_line_and_column_of_yaml_errors(
    text: str, expected: list[str], tmp_path: Path
) -> None:
    config = tmp_path / "broken.yaml"
    config.write_text(text)
    message = _check(config)
    assert message.startswith(str(config)) and "Traceback" not in message
    assert all(words in message for words in expected), message


def alias_bomb(levels: int = 9) -> bytes:
    """A config of 9 x 9 x ... nested aliases: under 1 KiB of text, 9**levels values once expanded."""
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x]"]
    lines += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 9)}]" for i in range(1, levels)]
    return ("\n".join(lines) + "\n").encode()


FILE_CASES = {
    "alias bomb": (alias_bomb(), ["aliases (*name) expand to", "values, more than 100,000"]),
    "UTF-16": (SMOKE.read_text().encode("utf-16"), ["not UTF-8 text", "save the config as UTF-8"]),
    "binary": (bytes(range(256)) * 4, ["not UTF-8 text"]),
    "too large": (b"# padding\n" * 120_000, ["1,200,000 bytes", "more than a config needs"]),
}


@pytest.mark.parametrize("content, expected", FILE_CASES.values(), ids=FILE_CASES.keys())
def test_lorabench_check_refuses_a_file_no_config_is_at_once(
    content: bytes, expected: list[str], tmp_path: Path
) -> None:
    config = tmp_path / "broken.yaml"
    config.write_bytes(content)
    message = _check(config)  # at once: the bomb is counted, never expanded (it hung for 15 minutes before)
    assert message.startswith(str(config)) and all(words in message for words in expected), message


def test_snakemake_refuses_an_alias_bomb_before_any_job(tmp_path: Path) -> None:
    config = tmp_path / "bomb.yaml"
    config.write_bytes(SMOKE.read_bytes() + alias_bomb().replace(b"a", b"bomb_"))
    result = snakemake(tmp_path, "--dry-run", config=config, check=False)
    assert result.returncode != 0 and "values, more than 100,000" in result.stdout + result.stderr, result.stderr
    assert not (tmp_path / "results").exists()


def test_a_variant_of_ones_own_under_a_built_in_name_is_refused_by_name(tmp_path: Path) -> None:
    module = tmp_path / "mine.py"
    module.write_text(
        "from lorabench.variants import register\nfrom lorabench.variants.lora import LoRA\n\n\n"
        "@register('lora')\nclass Mine(LoRA):\n    pass\n"
    )
    config = _edited({"variant_modules": f"[{module}]"})
    with pytest.raises(ConfigError) as refused:
        load_grid(config)
    message = str(refused.value)
    assert "`variant_modules/0`" in message and "'lora' is taken (by lorabench.variants.lora.LoRA)" in message
    assert "give yours a name of its own" in message


def test_the_corpus_edits_the_smoke_config_that_is_accepted() -> None:
    """Each case fails for its own edit, not for a broken base."""
    assert load_grid(_edited({})).points()


def test_an_existing_local_folder_and_a_hub_name_are_accepted(tmp_path: Path) -> None:
    from tests.fixtures_hub import save_tiny_llama

    for path in (str(save_tiny_llama(tmp_path / "m")), "no-such-org/no-such-model"):
        config = _edited({"models": LOCAL_MODEL % path, "tasks.source": "[]", "grid.variants": "[lora]"})
        assert {p.model for p in load_grid(config).points()} == {"local"}


def test_every_variant_option_is_declared_with_a_type_and_help() -> None:
    for name, cls in registry().items():
        assert dataclasses.is_dataclass(cls.Options), name
        for option in dataclasses.fields(cls.Options):
            assert option.metadata.get("help"), f"{name}.{option.name} has no help text"
            assert option.name in cls.describe_options()


def test_a_variant_is_built_from_its_parsed_options() -> None:
    from lorabench.variants import AdapterSpec, get

    variant = get("resampled")(
        AdapterSpec(rank=2, alpha=4.0, target_modules=("q_proj",), options={"resample_every": 3})
    )
    assert variant.options == get("resampled").Options(resample_every=3)
    config = _edited({"variants.resampled.resample_every": "3"})
    config["jobs"] = {"batch": ["variant", "rank", "lr", "task"]}  # one job per (model, seed)
    job = stages.train_job(load_grid(copy.deepcopy(config)), {"model": "llama-tiny", "seed": "0"}, "cpu")
    assert job.variants["resampled"].options == {"resample_every": 3}


def test_lorabench_check_works_outside_the_repository(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "lorabench.cli", "check", str(SMOKE)], cwd=tmp_path, capture_output=True, text=True
    )
    assert result.returncode == 0 and f"{SMOKE}: ok, " in result.stdout, result.stderr


def test_snakemake_refuses_a_key_given_twice_with_its_line(tmp_path: Path) -> None:
    config = tmp_path / "twice.yaml"
    config.write_text(SMOKE.read_text() + "train: {steps: 3, batch_size: 4}\n")
    lines = len(SMOKE.read_text().splitlines())
    result = snakemake(tmp_path, "--dry-run", config=config, check=False)
    assert result.returncode != 0, result.stdout
    assert f"{config}:{lines + 1}:1: duplicate key 'train'" in result.stdout + result.stderr, result.stderr[-2000:]
    assert not (tmp_path / "results").exists()


def test_snakemake_refuses_a_misspelt_option_before_any_job(tmp_path: Path) -> None:
    config = tmp_path / "broken.yaml"
    config.write_text(yaml.safe_dump(_edited({"variants.resampled.optimiser": "sgd"})))
    result = snakemake(tmp_path, "--dry-run", config=config, check=False)
    assert result.returncode != 0 and "variants/resampled/optimiser" in result.stdout + result.stderr
    assert not (tmp_path / "results").exists()


def test_registering_what_is_not_a_variant_is_refused_by_name(tmp_path: Path) -> None:
    module = tmp_path / "mine.py"
    module.write_text("from lorabench.variants import register\n\n\n@register('mine')\nclass Mine:\n    pass\n")
    config = _edited({"variant_modules": f"[{module}]"})
    with pytest.raises(ConfigError) as refused:
        load_grid(config)
    message = str(refused.value)
    assert "`variant_modules/0`" in message and "@register('mine')" in message
    assert "not a subclass of lorabench.variants.Variant" in message
