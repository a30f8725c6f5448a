"""The contract every variant keeps, checked on tiny models in seconds.

``lorabench test-variant NAME`` runs it on one variant (yours too, with ``--config``), and the test suite
runs it over the whole registry: the variant learns (the loss on a memorised batch falls) under the optimizer
its runs would use (the config entry's, else the one the variant declares, else AdamW), with its hooks
(``transform_gradients`` before each optimizer step, ``after_step`` after it); its optimizer groups hold exactly
its trainable parameters and each of them receives a gradient; it merges into a plain model that computes the
same outputs; and what it saves reloads to the same outputs where a loader exists (PEFT's adapter format, a
transformers checkpoint). docs/variants.md §6 describes the contract.
"""

from __future__ import annotations

import dataclasses
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn
from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM, PreTrainedModel

from lorabench.train import TrainSettings, make_optimizer
from lorabench.variants import AdapterSpec, Variant, get
from lorabench.variants._layers import find_targets, layer_shape
from lorabench.variants.base import period_warnings, saves

VOCAB = 48
TARGETS = {
    "llama": ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"),
    "gpt2": ("c_attn", "c_proj", "c_fc"),
}
FAMILIES = tuple(TARGETS)
GENERIC_PEFT = {
    "llama": {"peft_type": "LOHA", "alpha": 8},  # LyCORIS methods in PEFT cannot wrap GPT-2's Conv1D
    "gpt2": {"peft_type": "RANDLORA"},
}
"""The ``peft_config`` the generic ``peft`` variant is checked with when no config gives one, per family."""
LEARNING_RATES = {"adamw": (1e-2, 3e-2), "sgd": (0.1, 0.3, 1.0)}
"""Per optimizer, tried in order until the loss falls: adapters that train few parameters (VeRA) need the larger
ones; plain SGD takes steps proportional to the gradient, far smaller than AdamW's at one lr."""
LEARN_STEPS = 20
"""The contract's default number of steps (``lorabench test-variant --steps`` runs more)."""
MIN_LOSS_DROP = 0.1
TOLERANCE = dict(atol=1e-4, rtol=1e-4)


def tiny_model(family: str, seed: int = 0) -> PreTrainedModel:
    """The default grid's size: hidden 64, 2 layers, 4 heads (Llama MLP 128, GPT-2 MLP 4 x 64)."""
    torch.manual_seed(seed)
    if family == "llama":
        config = LlamaConfig(
            vocab_size=VOCAB,
            hidden_size=64,
            intermediate_size=128,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=4,
            max_position_embeddings=64,
            pad_token_id=0,
            bos_token_id=1,
            eos_token_id=2,
        )
        return LlamaForCausalLM(config)
    config = GPT2Config(
        vocab_size=VOCAB, n_embd=64, n_layer=2, n_head=4, n_positions=64, bos_token_id=1, eos_token_id=2, pad_token_id=0
    )
    return GPT2LMHeadModel(config)


def token_batch(seed: int = 0, batch: int = 4, length: int = 12) -> dict[str, torch.Tensor]:
    """A fixed batch to memorise: the loss on it must fall under any working adapter."""
    ids = torch.randint(3, VOCAB, (batch, length), generator=torch.Generator().manual_seed(seed))
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids}


def make_spec(family: str, variant: str = "lora", rank: int = 4, **changes: Any) -> AdapterSpec:
    """The spec of the contract's runs; the generic ``peft`` entry gets :data:`GENERIC_PEFT` as its options."""
    settings = dict(
        rank=rank,
        alpha=2.0 * rank,
        target_modules=TARGETS[family],
        seed=3,
        total_steps=LEARN_STEPS,
        options={"peft_config": GENERIC_PEFT[family]} if variant == "peft" else {},
    )
    return AdapterSpec(**(settings | changes))


def train_steps(
    variant: Variant, model: nn.Module, steps: int = 30, lr: float = 1e-2, optimizer: str = "adamw"
) -> list[float]:
    """The pipeline's loop in miniature: ``optimizer`` on the variant's parameter groups, its hooks around each
    step."""
    batch = token_batch()
    settings = TrainSettings(steps=steps, batch_size=len(batch["input_ids"]), lr=lr, optimizer=optimizer)
    optimizer = make_optimizer(variant.parameter_groups(model, lr), settings)
    losses = []
    for step in range(steps):
        loss = model(**batch).loss
        loss.backward()
        variant.transform_gradients(model, step)
        optimizer.step()
        variant.after_step(model, optimizer)
        optimizer.zero_grad()
        losses.append(loss.item())
    return losses


def run_optimizer(cls: type[Variant], entry: dict[str, Any] | None = None, default: str = "adamw") -> str:
    """The optimizer a run of ``cls`` uses: its config ``entry``'s, else the one the variant declares, else
    ``default`` (the config's ``train.optimizer``), as :meth:`lorabench.grid.Grid.optimizer` chooses it."""
    return (entry or {}).get("optimizer") or cls.optimizer or default


def check_variant(
    name: str,
    family: str,
    options: dict[str, Any] | None = None,
    optimizer: str | None = None,
    steps: int = LEARN_STEPS,
) -> list[str]:
    """Every contract violation of variant ``name`` on the tiny ``family`` model; empty when it keeps it all.

    ``options``: the variant's options (a config's entry); default: none (``peft``: :data:`GENERIC_PEFT`).
    ``optimizer``: the one its runs use (:func:`run_optimizer`); default: the variant's own, else AdamW.
    """
    spec = make_spec(family, name) if options is None else make_spec(family, name, options=options)
    spec = dataclasses.replace(spec, total_steps=steps)
    cls = get(name)
    optimizer = optimizer or run_optimizer(cls)
    if not cls.ranked(spec.options):
        spec = dataclasses.replace(spec, rank=0)
    problems = _count_problems(cls, spec, family)
    losses, lr = [], None
    for lr in LEARNING_RATES[optimizer]:
        variant = cls(spec)
        model = variant.apply(tiny_model(family))
        losses = train_steps(variant, model, steps=steps, lr=lr, optimizer=optimizer)
        if losses[-1] < losses[0] - MIN_LOSS_DROP:
            break
    else:
        problems.append(
            f"does not learn: loss {losses[0]:.3f} -> {losses[-1]:.3f} in {steps} {optimizer} steps "
            f"at lr {LEARNING_RATES[optimizer]} (expected a drop of at least {MIN_LOSS_DROP})"
        )
    model.eval()  # GPT-2 has dropout
    with torch.no_grad():
        logits = model(**token_batch()).logits
        if saves(cls):
            problems += _save_problems(variant, model, family, logits)
        problems += _merge_problems(variant, model, family, logits)
    return problems


def contract_warnings(name: str, options: dict[str, Any] | None, steps: int = LEARN_STEPS) -> list[str]:
    """What the contract's ``steps`` leave unchecked: options whose period they never reach."""
    cls = get(name)
    return period_warnings(cls, cls.parse_options(options or {}), steps)


def _count_problems(cls: type[Variant], spec: AdapterSpec, family: str) -> list[str]:
    """Optimizer groups = the trainable parameters, each once; each gets a gradient; a stated formula = the count."""
    variant = cls(spec)
    model = variant.apply(tiny_model(family))
    trainable = {id(p): name for name, p in model.named_parameters() if p.requires_grad}
    grouped = [id(p) for group in variant.parameter_groups(model, 1e-3) for p in group["params"]]
    problems = []
    if not trainable:
        problems.append("no parameter requires grad after apply")
    if sorted(grouped) != sorted(trainable):
        problems.append(
            f"parameter_groups hold {len(grouped)} tensors ({len(set(grouped))} distinct), "
            f"expected each of the {len(trainable)} trainable ones exactly once"
        )
    model(**token_batch()).loss.backward()
    if idle := [name for name, p in model.named_parameters() if p.requires_grad and p.grad is None]:
        problems.append(
            f"{len(idle)} parameters require grad but get no gradient (counted as trainable, never "
            f"trained), e.g. {idle[0]}"
        )
    if _states_formula(cls):
        m, n = layer_shape(find_targets(tiny_model(family), spec.target_modules)[0][1])
        stated, counted = cls.trainable_parameters(m, n, spec.rank), variant.layer_parameters(m, n, spec.rank)
        if stated != counted:
            problems.append(
                f"trainable_parameters({m}, {n}, {spec.rank}) = {stated}, but applied to one such "
                f"layer the variant trains {counted} parameters"
            )
    return problems


def _states_formula(cls: type[Variant]) -> bool:
    """Whether ``cls`` overrides the counted default of ``trainable_parameters`` with a formula of its own."""
    try:
        cls.trainable_parameters(8, 8, 2)
    except NotImplementedError:  # `peft`: the count depends on the options
        return False
    return cls.trainable_parameters.__func__ is not Variant.trainable_parameters.__func__


def _save_problems(variant: Variant, model: nn.Module, family: str, logits: torch.Tensor) -> list[str]:
    """What ``save`` writes is not empty, and reloads to the same outputs where a loader exists."""
    with tempfile.TemporaryDirectory(prefix="lorabench_contract_") as directory:
        variant.save(model, Path(directory))
        files = [path for path in Path(directory).rglob("*") if path.is_file() and path.stat().st_size]
        if not files:
            return ["save wrote no non-empty file"]
        reload = _loader(Path(directory), family)
        if reload is None:
            return []
        reloaded = reload().eval()
        return _differs("the saved state, reloaded", reloaded(**token_batch()).logits, logits)


def _loader(directory: Path, family: str) -> Callable[[], nn.Module] | None:
    """How to load what was saved onto a fresh base: PEFT's adapter format or a transformers checkpoint."""
    if (directory / "adapter_config.json").exists():
        from peft import PeftModel

        return lambda: PeftModel.from_pretrained(tiny_model(family), str(directory))
    if (directory / "config.json").exists():
        return lambda: type(tiny_model(family)).from_pretrained(str(directory))
    return None


def _merge_problems(variant: Variant, model: nn.Module, family: str, logits: torch.Tensor) -> list[str]:
    """``merge`` returns the base architecture (same parameter names) computing the adapted outputs."""
    merged = variant.merge(model)
    expected = set(tiny_model(family).state_dict())
    if set(merged.state_dict()) != expected:
        return [
            f"merge returned {type(merged).__name__} whose parameter names differ from the plain model's "
            f"(extra: {sorted(set(merged.state_dict()) - expected)[:3]})"
        ]
    return _differs("the merged model", merged(**token_batch()).logits, logits)


def _differs(what: str, actual: torch.Tensor, expected: torch.Tensor) -> list[str]:
    try:
        torch.testing.assert_close(actual, expected, **TOLERANCE)
    except AssertionError as error:
        return [f"{what} does not compute the trained model's outputs: {str(error).splitlines()[-1]}"]
    return []
