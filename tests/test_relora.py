"""Merge-and-restart LoRA (docs/variants.md §5): a merge keeps the outputs, restarts the factors and their state,
and each episode adds rank."""

from __future__ import annotations

import torch
from variants_fixtures import make_spec, one_torch_thread, tiny_model, token_batch, train  # noqa: F401

from lorabench.train import TrainSettings, make_optimizer
from lorabench.variants import AdapterSpec, adapter_layers, get
from lorabench.variants.base import OneLayer


def relora(merge_every: int, rank: int = 2):
    return get("relora")(
        AdapterSpec(rank=rank, alpha=2.0 * rank, target_modules=("layer",), options={"merge_every": merge_every})
    )


def test_a_merge_keeps_the_outputs_zeroes_b_redraws_a_and_resets_their_optimizer_state() -> None:
    variant = relora(merge_every=1)
    model = variant.apply(OneLayer(16, 12))
    layer = model.layer
    optimizer = make_optimizer(variant.parameter_groups(model, 0.01), TrainSettings(steps=1, batch_size=1, lr=0.01))
    x = torch.randn(5, 12)
    model(x).sum().backward()
    optimizer.step()
    with torch.no_grad():
        layer.lora_B.normal_()  # a sizeable update to merge
        expected = model(x)
    A = layer.lora_A.detach().clone()
    assert optimizer.state[layer.lora_A] and optimizer.state[layer.lora_B]
    variant.after_step(model, optimizer)
    with torch.no_grad():
        torch.testing.assert_close(model(x), expected)
    assert not layer.lora_B.any() and not torch.equal(layer.lora_A, A)
    assert layer.lora_A not in optimizer.state and layer.lora_B not in optimizer.state
    assert variant.record_extra(model) == {"merges": 1.0}


def test_each_episode_adds_rank_r_to_the_update() -> None:
    """LoRA's update has rank <= r; two merged episodes of rank r give rank 2r."""
    r = 2
    variant = relora(merge_every=1, rank=r)
    model = variant.apply(OneLayer(16, 12))
    W0 = model.layer.base_layer.weight.detach().clone()
    optimizer = make_optimizer(variant.parameter_groups(model, 0.01), TrainSettings(steps=1, batch_size=1, lr=0.01))
    for _ in range(2):
        with torch.no_grad():
            model.layer.lora_B.normal_()
        variant.after_step(model, optimizer)
    assert torch.linalg.matrix_rank(model.layer.base_layer.weight.detach() - W0).item() == 2 * r


def test_training_merges_every_merge_every_steps_and_merges_into_a_model_with_the_same_outputs() -> None:
    variant = get("relora")(make_spec("llama", "relora", options={"merge_every": 4}))
    model = variant.apply(tiny_model("llama"))
    losses = train(variant, model, steps=10, lr=1e-2)
    assert variant.merges == 2 and losses[-1] < losses[0]
    assert all(layer.lora_B.any() for _, layer in adapter_layers(model))  # trained again since the last merge
    with torch.no_grad():
        before = model(**token_batch()).logits
        torch.testing.assert_close(variant.merge(model)(**token_batch()).logits, before, atol=1e-5, rtol=1e-5)


def test_the_contract_holds_across_merges() -> None:
    """With merges inside the contract's steps: it learns, and merge reproduces the outputs after two restarts."""
    from lorabench.contract import check_variant, contract_warnings

    assert contract_warnings("relora", {"merge_every": 5}, steps=12) == []
    assert contract_warnings("relora", {}, steps=12)[0].startswith("option merge_every = 50 exceeds the 12 steps")
    assert check_variant("relora", "llama", options={"merge_every": 5}, steps=12) == []
