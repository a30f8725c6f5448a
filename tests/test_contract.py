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
    assert capsys.readouterr().out.splitlines() == [
        "frozen_a on tiny llama (adamw, 20 steps): ok",
        "frozen_a on tiny gpt2 (adamw, 20 steps): ok",
    ]
    with pytest.raises(SystemExit, match="unknown variant 'nope'"):
        main(["test-variant", "nope"])


def test_a_declared_optimizer_is_the_default_and_a_contradiction_is_refused_or_warned() -> None:
    """flora declares sgd (refuse), resampled sgd (warn); lora declares none: train.optimizer."""
    import yaml

    from lorabench.checks import ConfigError, load_grid
    from tests.pipeline import SMOKE

    config = yaml.safe_load(SMOKE.read_text())
    config["variants"]["resampled"] = {"optimizer": "adamw"}
    grid = load_grid(config)
    optimizers = {name: variant.optimizer for name, variant in grid.variants().items()}
    assert (optimizers["flora"], optimizers["lora"], optimizers["resampled"]) == ("sgd", "adamw", "adamw")
    assert any(
        "`variants/resampled/optimizer`" in warning and "resampled declares 'sgd'" in warning
        for warning in grid.warnings
    )
    config["variants"]["flora"] = {"optimizer": "adamw"}
    with pytest.raises(ConfigError, match=r"`variants/flora/optimizer`: 'adamw', but flora declares 'sgd'.*drop"):
        load_grid(config)


def test_the_contract_trains_with_the_optimizer_a_run_would_use(monkeypatch: pytest.MonkeyPatch) -> None:
    from lorabench import contract

    used = []
    made = contract.make_optimizer
    monkeypatch.setattr(
        contract,
        "make_optimizer",
        lambda groups, settings: (used.append(settings.optimizer), made(groups, settings))[1],
    )
    assert check_variant("flora", "llama") == [] and set(used) == {"sgd"}
    used.clear()
    assert check_variant("lora", "llama", optimizer="sgd") == [] and set(used) == {"sgd"}


def test_transform_gradients_runs_between_backward_and_the_optimizer_step() -> None:
    """A hook that zeroes every gradient leaves SGD nothing to apply; it sees steps 0, 1, 2 with gradients present."""
    from lorabench.models import build_embedded, character_tokenizer
    from lorabench.tasks.algorithmic import AlgorithmicTask
    from lorabench.train import TrainSettings, train

    tokenizer = character_tokenizer()
    arch = {
        "family": "llama",
        "hidden_size": 16,
        "intermediate_size": 32,
        "num_hidden_layers": 1,
        "num_attention_heads": 2,
        "num_key_value_heads": 2,
        "max_position_embeddings": 32,
    }
    model = build_embedded(arch, tokenizer, seed=0)
    before = [p.detach().clone() for p in model.parameters()]
    seen = []

    def zero(model: nn.Module, step: int) -> None:
        seen.append((step, all(p.grad is not None for p in model.parameters())))
        for p in model.parameters():
            p.grad.zero_()

    examples = AlgorithmicTask("sort", seed=0, sizes=(16, 1, 1), min_len=2, max_len=5).split("train")
    train(
        model,
        tokenizer,
        examples,
        TrainSettings(steps=3, batch_size=4, lr=0.1, optimizer="sgd"),
        0,
        torch.device("cpu"),
        before_step=zero,
    )
    assert seen == [(0, True), (1, True), (2, True)]
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))


def test_variants_name_lists_options_and_test_variant_warns_of_an_unreached_period(
    capsys: pytest.CaptureFixture,
) -> None:
    main(["variants", "relora"])
    described = capsys.readouterr().out
    assert "merge_every (int, default 50), a period in steps: merge B A into the weight" in described
    assert "optimizer: any" in described and "after_step" in described
    main(["test-variant", "relora"])
    out = capsys.readouterr().out
    assert "warning: relora: option merge_every = 50 exceeds the 20 steps run here" in out and "--steps" in out
    assert "relora on tiny llama (adamw, 20 steps): ok" in out
