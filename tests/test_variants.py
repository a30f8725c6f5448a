"""The shipped variants, on both model families: their formulas, counts and settings (the contract:
test_contract.py)."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
from torch import nn
from variants_fixtures import (  # noqa: F401  (one_torch_thread is an autouse fixture)
    FAMILIES,
    TARGETS,
    assert_saved_adapter_reproduces,
    make_spec,
    make_variant,
    one_torch_thread,
    target_shapes,
    tiny_model,
)

from lorabench.variants import AdapterSpec, get, registry
from lorabench.variants._layers import find_targets

EXPECTED = {
    "lora",
    "peft_lora",
    "rslora",
    "dora",
    "pissa",
    "vera",
    "peft",
    "resampled",
    "additive",
    "frozen_a",
    "frozen_b",
    "full",
    "loraplus",
}
"""The variants lorabench ships; the contract test (test_contract.py) runs over whatever is registered."""
ADAPTERS = sorted(EXPECTED - {"full"})


def test_registry_holds_every_variant_with_a_source() -> None:
    variants = registry()
    assert EXPECTED <= set(variants)
    assert all(cls.source and cls.name == name for name, cls in variants.items())


@pytest.mark.parametrize(
    ("name", "formula"),
    [
        ("lora", lambda m, n, r: r * (m + n)),
        ("dora", lambda m, n, r: r * (m + n) + m),
        ("vera", lambda m, n, r: m + r),
        ("frozen_a", lambda m, n, r: m * r),
        ("frozen_b", lambda m, n, r: r * n),
        ("additive", lambda m, n, r: r * (m + n)),
        ("full", lambda m, n, r: m * n),
    ],
)
def test_trainable_parameter_formulas(name: str, formula: Callable[[int, int, int], int]) -> None:
    assert get(name).trainable_parameters(192, 64, 8) == formula(192, 64, 8)


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("name", ADAPTERS)
def test_formula_equals_counted_trainable_parameters(family: str, name: str) -> None:
    model = tiny_model(family)
    variant = make_variant(family, name, rank=4)
    expected = sum(variant.layer_parameters(m, n, 4) for m, n in target_shapes(model, TARGETS[family]))
    adapted = variant.apply(model)
    assert sum(p.numel() for p in adapted.parameters() if p.requires_grad) == expected


def test_full_trains_every_parameter_and_its_formula_counts_a_bias_free_layer() -> None:
    model = get("full")(make_spec("llama", "full")).apply(tiny_model("llama").requires_grad_(False))
    assert all(p.requires_grad for p in model.parameters())
    layer = nn.Linear(48, 80, bias=False)
    assert get("full").trainable_parameters(80, 48, 4) == sum(p.numel() for p in layer.parameters())


@pytest.mark.parametrize("family", FAMILIES)
def test_pissa_saves_an_adapter_for_the_original_weights(family: str, tmp_path) -> None:
    """PiSSA mutates W; its saved adapter (converted to rank 2r) must reproduce training on the original W."""
    assert_saved_adapter_reproduces(family, "pissa", tmp_path, atol=1e-4, rtol=1e-4)


def test_generic_peft_path_fills_rank_and_targets_from_the_spec() -> None:
    """LoHa through options alone: r and target_modules come from the spec; count = 2 r (m + n) per layer."""
    variant = make_variant("llama", "peft", rank=2)
    assert variant.layer_parameters(64, 32, 2) == 2 * 2 * (64 + 32)
    config = variant.apply(tiny_model("llama")).peft_config["default"]
    assert (config.r, set(config.target_modules)) == (2, set(TARGETS["llama"]))


def test_generic_peft_path_fails_loudly_where_peft_cannot_wrap_the_layer() -> None:
    spec = make_spec("gpt2", "peft", options={"peft_config": {"peft_type": "LOHA"}})
    with pytest.raises(TypeError, match="Conv1D"):
        get("peft")(spec).apply(tiny_model("gpt2"))


def test_generic_peft_path_keeps_explicit_settings_and_rejects_bad_configs() -> None:
    explicit = get("peft")(make_spec("llama", "peft", options={"peft_config": {"peft_type": "lora", "r": 6}}))
    assert explicit.peft_config().r == 6
    with pytest.raises(ValueError, match="needs options"):
        get("peft")(make_spec("llama", "peft", options={})).peft_config()
    with pytest.raises(ValueError, match="unknown peft_type 'NOPE'"):
        get("peft")(make_spec("llama", "peft", options={"peft_config": {"peft_type": "NOPE"}})).peft_config()
    with pytest.raises(NotImplementedError, match="peft_config"):
        get("peft").trainable_parameters(64, 64, 4)


def test_targets_match_name_suffixes_like_peft() -> None:
    model = tiny_model("llama")
    names = [name for name, _ in find_targets(model, ("q_proj", "mlp.up_proj"))]
    assert names == [f"model.layers.{i}.{part}" for i in range(2) for part in ("self_attn.q_proj", "mlp.up_proj")]
    with pytest.raises(ValueError, match="no module"):
        find_targets(model, ("proj",))  # a suffix must be whole dotted components
    with pytest.raises(TypeError, match="only nn.Linear and Conv1D"):
        find_targets(model, ("input_layernorm",))


def test_unknown_variant_lists_the_known_ones() -> None:
    with pytest.raises(KeyError, match="additive"):
        get("no_such_variant")


def test_peft_variants_are_seeded_and_leave_the_global_rng_alone() -> None:
    state = torch.random.get_rng_state()
    first = make_variant("llama", "peft_lora").apply(tiny_model("llama"))
    assert torch.equal(torch.random.get_rng_state(), state)
    second = make_variant("llama", "peft_lora").apply(tiny_model("llama"))
    for a, b in zip(first.parameters(), second.parameters(), strict=True):
        assert torch.equal(a, b)


def test_dropout_is_rejected_where_it_has_no_meaning() -> None:
    with pytest.raises(ValueError, match="dropout"):
        get("resampled")(AdapterSpec(rank=4, alpha=8, target_modules=("c_attn",), dropout=0.1))


def test_a_variants_options_are_parsed_once_per_process(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every grid point of a job builds its variant from the same options: one parse serves them all."""
    cls, calls = get("resampled"), []
    parse = cls.parse_options.__func__
    monkeypatch.setattr(cls, "parse_options", classmethod(lambda c, raw, *a: calls.append(raw) or parse(c, raw, *a)))
    monkeypatch.setattr("lorabench.variants.base.PARSED", {})
    built = [
        cls(AdapterSpec(rank=2, alpha=4.0, target_modules=("q_proj",), seed=seed, options={"resample_every": 2}))
        for seed in range(3)
    ]
    assert calls == [{"resample_every": 2}] and built[0].options is built[2].options
    assert built[0].options == cls.Options(resample_every=2)
