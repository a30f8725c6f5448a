"""The variant contract (lorabench.contract) over the whole registry, and proof that it catches breaches."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch
from torch import nn
from variants_fixtures import one_torch_thread  # noqa: F401  (autouse)

from lorabench import variants
from lorabench.cli import main
from lorabench.contract import FAMILIES, check_variant, make_spec, tiny_model, train_steps
from lorabench.variants import get, register, registry
from lorabench.variants.lora import LoRA


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("name", registry())
def test_every_registered_variant_keeps_the_contract(name: str, family: str) -> None:
    assert check_variant(name, family) == []


@pytest.fixture
def scratch_registry(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Variants registered inside a test vanish after it, so other tests see the shipped registry."""
    monkeypatch.setattr(variants, "_REGISTRY", dict(variants.registry()))
    yield


def test_the_contract_names_each_breach(scratch_registry: None) -> None:
    @register("broken")
    class Broken(LoRA):
        """Two breaches: a trainable tensor the forward never uses, and a formula that overcounts."""

        def apply(self, model: nn.Module) -> nn.Module:
            model = super().apply(model)
            model.idle = nn.Parameter(torch.zeros(3))
            return model

        @classmethod
        def trainable_parameters(cls, m: int, n: int, r: int) -> int:
            return r * (m + n) + 1

    problems = "\n".join(check_variant("broken", "llama"))
    assert "get no gradient" in problems and "idle" in problems
    assert "trainable_parameters(64, 64, 4) = 513" in problems and "trains 515" in problems


def test_a_merge_that_drops_the_update_and_a_variant_that_never_learns_are_caught(scratch_registry: None) -> None:
    @register("inert")
    class Inert(LoRA):
        def parameter_groups(self, model: nn.Module, lr: float) -> list[dict]:
            return [{"params": [p for p in model.parameters() if p.requires_grad], "lr": 0.0}]

    @register("forgetful")
    class Forgetful(LoRA):
        def merge(self, model: nn.Module) -> nn.Module:
            for module in model.modules():
                if hasattr(module, "lora_B"):
                    module.lora_B.zero_()
            return super().merge(model)

    assert any(problem.startswith("does not learn") for problem in check_variant("inert", "gpt2"))
    assert any("merged model does not compute" in problem for problem in check_variant("forgetful", "gpt2"))


def test_loraplus_trains_b_at_the_ratio_times_the_lr_of_a() -> None:
    variant = get("loraplus")(make_spec("llama", "loraplus", options={"lr_ratio": 4}))
    model = variant.apply(tiny_model("llama"))
    slow, fast = variant.parameter_groups(model, 1e-3)
    assert (slow["lr"], fast["lr"]) == (1e-3, 4e-3)
    names = {id(p): name for name, p in model.named_parameters()}
    assert fast["params"] and all("lora_B" in names[id(p)] for p in fast["params"])
    assert slow["params"] and all("lora_A" in names[id(p)] for p in slow["params"])


def test_loraplus_moves_b_further_than_lora_from_the_same_start() -> None:
    """Same seed, same lr: after one AdamW step (a sign step) each B entry moved by about lr_ratio x lr."""
    moved = {}
    for name in ("peft_lora", "loraplus"):
        variant = get(name)(make_spec("gpt2", name))
        model = variant.apply(tiny_model("gpt2"))
        train_steps(variant, model, steps=1, lr=1e-3)
        moved[name] = max(p.abs().max().item() for n, p in model.named_parameters() if "lora_B" in n)
    assert moved["peft_lora"] == pytest.approx(1e-3, rel=0.01)
    assert moved["loraplus"] == pytest.approx(16e-3, rel=0.01)


def test_test_variant_command_reports_each_family(capsys: pytest.CaptureFixture[str]) -> None:
    main(["test-variant", "frozen_a"])
    assert capsys.readouterr().out.splitlines() == ["frozen_a on tiny llama: ok", "frozen_a on tiny gpt2: ok"]
    with pytest.raises(SystemExit, match="unknown variant 'nope'"):
        main(["test-variant", "nope"])
