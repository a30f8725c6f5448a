"""The generic PEFT path is honest: refused before any job where PEFT cannot wrap a layer, faithful where it runs.

LoHa, AdaLoRA and IA3 on both model families of the smoke grid (llama-tiny: nn.Linear, gpt2-tiny: Conv1D).
"""

from __future__ import annotations

import copy

import pytest
import yaml
from variants_fixtures import one_torch_thread  # noqa: F401  (autouse)

from lorabench.checks import ConfigError, load_grid
from lorabench.contract import check_variant, make_spec, tiny_model, train_steps
from lorabench.variants import get
from tests.pipeline import REPO, SMOKE

SCHEMA = REPO / "workflow" / "schemas" / "config.schema.yaml"
FEEDFORWARD = {"llama-tiny": "down_proj", "gpt2-tiny": "c_fc"}
"""IA3 scales the input of these layers (the smoke grid's feedforward targets), the output of the others."""
METHODS = {
    "loha": {"peft_type": "LOHA", "alpha": 8},
    "adalora": {"peft_type": "ADALORA"},
    "ia3": {"peft_type": "IA3"},
}


def smoke_with(model: str, method: str) -> dict:
    """The smoke grid on one model, running one generic PEFT method (IA3 told its feedforward layer)."""
    config = yaml.safe_load(SMOKE.read_text())
    config["models"] = {model: config["models"][model]}
    peft_config = copy.deepcopy(METHODS[method]) | (
        {"feedforward_modules": [FEEDFORWARD[model]]} if method == "ia3" else {}
    )
    config["variants"] = {method: {"uses": "peft", "peft_config": peft_config}}
    config["grid"]["variants"] = [method]
    return config


def test_loha_on_gpt2_conv1d_is_refused_before_any_job_naming_variant_layer_and_reason() -> None:
    with pytest.raises(ConfigError) as caught:
        load_grid(smoke_with("gpt2-tiny", "loha"), SCHEMA)
    message = str(caught.value)
    assert "`variants/loha`" in message and "Conv1D" in message and "gpt2-tiny" in message
    assert "not supported" in message  # PEFT's own reason


def test_ia3_without_its_feedforward_layers_is_refused_with_peft_s_reason() -> None:
    config = smoke_with("llama-tiny", "ia3")
    del config["variants"]["ia3"]["peft_config"]["feedforward_modules"]
    with pytest.raises(ConfigError, match="feedforward_modules"):
        load_grid(config, SCHEMA)


@pytest.mark.parametrize(
    ("model", "method"),
    [
        ("llama-tiny", "loha"),
        ("llama-tiny", "adalora"),
        ("gpt2-tiny", "adalora"),
        ("llama-tiny", "ia3"),
        ("gpt2-tiny", "ia3"),
    ],
)
def test_supported_methods_pass_the_check_and_the_variant_contract(model: str, method: str) -> None:
    grid = load_grid(smoke_with(model, method), SCHEMA)
    ranks = {point.rank for point in grid.points()}
    assert ranks == ({0} if method == "ia3" else {2})  # IA3 has no rank: it runs once, recorded at rank 0
    family = model.removesuffix("-tiny")
    assert check_variant("peft", family, grid.variants()[method].options) == []


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_adalora_gets_its_schedule_from_the_grid_and_reallocates_its_rank(family: str) -> None:
    """total_step = the run's steps, target_r = the grid's rank (init_r 1.5x); after the last step the kept
    ranks differ between layers (the allocation happened) and average the budget, which the record reports."""
    spec = make_spec(family, "peft", rank=4, total_steps=20, options={"peft_config": METHODS["adalora"]})
    variant = get("peft")(spec)
    model = variant.apply(tiny_model(family))
    config = model.peft_config["default"]
    assert (config.total_step, config.target_r, config.init_r) == (20, 4, 6)
    train_steps(variant, model, steps=20)
    kept = [sum(mask) for mask in config.rank_pattern.values()]
    assert len(set(kept)) > 1 and max(kept) <= 6
    assert variant.record_extra(model) == {"rank_used": pytest.approx(sum(kept) / len(kept))}
    assert variant.record_extra(model)["rank_used"] == pytest.approx(4, abs=0.5)


def test_record_says_the_rank_loha_used_and_that_ia3_has_none() -> None:
    loha = get("peft")(make_spec("llama", "peft", rank=3, options={"peft_config": METHODS["loha"]}))
    assert loha.record_extra(loha.apply(tiny_model("llama"))) == {"rank_used": 3.0}
    ia3_config = METHODS["ia3"] | {"feedforward_modules": ["down_proj"]}
    ia3 = get("peft")(make_spec("llama", "peft", rank=0, options={"peft_config": ia3_config}))
    assert ia3.record_extra(ia3.apply(tiny_model("llama"))) == {"rank_used": 0.0}


@pytest.mark.parametrize(
    ("peft_config", "reason"),
    [({"peft_type": "NOPE"}, r"unknown peft_type 'NOPE'; PEFT \S+ knows"), (None, "needs options")],
)
def test_an_unknown_or_missing_peft_type_is_refused_before_any_job(peft_config: dict | None, reason: str) -> None:
    config = smoke_with("llama-tiny", "loha")
    if peft_config is None:
        del config["variants"]["loha"]["peft_config"]
    else:
        config["variants"]["loha"]["peft_config"] = peft_config
    with pytest.raises(ConfigError, match=rf"`variants/loha(/peft_config)?`.*{reason}"):
        load_grid(config, SCHEMA)
