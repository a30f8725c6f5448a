"""Stacked training (config ``jobs.stack``): the grid points of one job that differ only in learning rate
train as one computation, and are evaluated as one.

Each member is built exactly as its lone run builds it (:func:`lorabench.runner.prepare_point`: its own seeded
model, adapter and optimizer). A *host*, a copy of the first member's model that shares its frozen tensors, runs
the members' batches concatenated along the batch axis: the frozen model is shared, and each adapted module
(a variant's wrapper, or a module that owns a trainable parameter) is a :class:`StackedLayer` that sends each
member's rows through that member's own module, or, for plain low-rank adapters over a shared frozen weight, does
the frozen GEMM once on every row. Each member's loss is its lone run's (the model's own loss function on its
rows); the backward of their sum gives each member its own gradients, since no row of one member meets another
member's parameters. Each member then steps its own optimizer and its variant's hooks, under its own random state,
as the lone loop does (:func:`lorabench.train.train`).

A member's arithmetic is its lone run's, in the same order, so its record equals its lone record to the bit, which
tests/test_stack.py checks for every stackable variant. This matters: a float rounded otherwise grows over a long run
into other accuracies (seen in a 150-step preview). So a stack is one seed's learning rates (the same batches: no
member's rows padded to another's), PEFT's skinny products run per member through PEFT's own modules, our LoRA's
batched function takes each product in the lone function's orientation, and a variant whose layers are several
autograd steps (their gradients a stack would sum in another order) declares itself unstackable
(:attr:`lorabench.variants.base.Variant.unstackable`). What else cannot be reproduced is refused before training
and the points run alone: dropout (its draws would interleave), a classification target, members whose frozen
weights differ outside their adapted modules.

What it saves is per-call work: kernel launches and Python per layer, once for the stack instead of once per run.
The arithmetic is the same. On a CPU thread the default grid's lone step is bound by its arithmetic: stacking a job's
learning rates measured 1.05-1.17x the lone training throughput (our LoRA, 4 runs; frozen_a, 3 runs: PEFT's skinny
products stay per member; 1.09x for 24 LoRA runs), and one run on all the members' rows together, which shares every
per-call cost, only 1.16-1.35x (tests/benchmarks/test_bench_stack.py, its *widened* mode; 2 interleaved rounds of 60
steps, one thread, on a 2-core machine where nothing else ran; 2026-12-04). Where a tiny model's step is
launch-bound (a GPU) the saving is larger: on one H200, 24 LoRA runs of the default's model trained at 4.81x and
evaluated at 5.44x (`.ci/gpu-check`, 2026-12-04; reports/reference/stack-throughput-gpu.json).
"""

from __future__ import annotations

import copy
import math
import random
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from itertools import chain

import torch
from peft import PeftModel
from peft.tuners.lora import Linear as PeftLoraLinear
from peft.tuners.tuners_utils import BaseTunerLayer
from torch import nn

from lorabench.measure import PeakMemory, StepClock, account_after_first_step
from lorabench.train import (
    Divergence,
    TokenizedExample,
    TrainOutcome,
    TrainSettings,
    _log_loss,
    _saved_activations,
    collate,
    divergence,
    ended_above_start,
    make_optimizer,
    replay_count,
    tokenize_examples,
)
from lorabench.variants._layers import AdapterLayer, dense_weight, fusable, replace_module
from lorabench.variants.base import Variant
from lorabench.variants.lora import LoRALayer


@dataclass
class Member:
    """One grid point of a stack: its adapted model, variant, training settings and seed (as its lone run has them)
    and, once training starts, its own samplers, optimizer, random state and outcome."""

    model: nn.Module
    variant: Variant
    settings: TrainSettings
    seed: int
    parameter_groups: list[dict]
    rng_state: torch.Tensor = field(default_factory=torch.get_rng_state)
    """The global random state its lone run would have now: swapped in around its hooks."""
    outcome: TrainOutcome | None = None
    running: bool = True
    losses: list[float] = field(default_factory=list)

    def start(self, tokenizer, examples, replay: Sequence[TokenizedExample], device: torch.device) -> None:
        """What :func:`lorabench.train.train` does before its loop, for this member."""
        trainable = [p for p in self.model.parameters() if p.requires_grad]
        self.optimizer = make_optimizer(self.parameter_groups or trainable, self.settings)
        self.sampler, self.replay_sampler = random.Random(self.seed), random.Random(f"replay:{self.seed}")
        self.tokenized = tokenize_examples(tokenizer, examples, self.settings.max_length)
        self.replayed = replay_count(self.settings)
        if self.replayed and not replay:
            raise ValueError(
                f"replay {self.settings.replay} asks for {self.replayed} replayed examples per batch; none were given"
            )
        self.replay_rows = list(replay) if self.replayed else []
        self.outcome = TrainOutcome(clock=StepClock(device), memory=PeakMemory(device))
        self.model.train()
        self.outcome.account["saved_activations"] = _saved_activations(
            self.model, self.tokenized + self.replay_rows, self.settings.batch_size, tokenizer.pad_token_id, device
        )
        account_after_first_step(self.optimizer, self.outcome.account)

    def rows(self) -> list[TokenizedExample]:
        """This step's batch, drawn as the lone loop draws it."""
        rows = self.sampler.choices(self.tokenized, k=self.settings.batch_size - self.replayed)
        return rows + self.replay_sampler.choices(self.replay_rows, k=self.replayed)

    def checked(self, step: int, loss: float, uniform: float) -> bool:
        """Record this step's loss; False (and the member stops) when it diverged."""
        self.losses.append(loss)
        if reason := divergence(loss, self.losses[0], uniform):
            self.outcome.status, self.outcome.divergence = "diverged", Divergence(step, loss, reason)
            _log_loss(self.outcome, step, loss)
            self.running = False
        return self.running

    def update(self, step: int) -> None:
        """The lone loop's update after backward, under this member's random state."""
        with _random_state(self):
            self.variant.transform_gradients(self.model, step)
            self.optimizer.step()
            self.variant.after_step(self.model, self.optimizer)
            self.optimizer.zero_grad(set_to_none=True)

    def finish(self) -> None:
        if self.outcome.status == "ok" and (reason := ended_above_start(self.losses)):
            self.outcome.status = "diverged"
            self.outcome.divergence = Divergence(len(self.losses) - 1, self.losses[-1], reason)


@contextmanager
def _random_state(member: Member) -> Iterator[None]:
    """``member``'s global random state while inside, saved back to it on leaving (the caller's restored)."""
    saved = torch.get_rng_state()
    torch.set_rng_state(member.rng_state)
    try:
        yield
    finally:
        member.rng_state = torch.get_rng_state()
        torch.set_rng_state(saved)


def _low_rank(layer: nn.Module) -> tuple[torch.Tensor, torch.Tensor, float] | None:
    """``(A (r, n), B (m, r), scale)`` of a layer computing ``base(x) + scale x A^T B^T`` with a fusable base and
    no dropout (our LoRA, PEFT's plain LoRA), else None."""
    if type(layer) is LoRALayer and isinstance(layer.dropout, nn.Identity) and fusable(layer.base_layer):
        return layer.lora_A, layer.lora_B, layer.scale
    if (
        type(layer) is PeftLoraLinear
        and layer.active_adapters == ["default"]
        and not layer.merged
        and not layer.disable_adapters
        and not layer.use_dora["default"]
        and not layer.lora_bias["default"]
        and isinstance(layer.lora_dropout["default"], nn.Identity)
        and fusable(layer.base_layer)
    ):
        return layer.lora_A["default"].weight, layer.lora_B["default"].weight, layer.scaling["default"]
    return None


class StackedLayer(nn.Module):
    """The members' versions of one adapted module: the rows of each active member (equal blocks along the first
    axis, in member order) go through that member's module; with ``shared_base``, plain low-rank adapters over one
    frozen weight, that weight's GEMM once on every row (row by row the same numbers as on fewer rows)."""

    def __init__(self, members: list[nn.Module], shared_base: bool) -> None:
        super().__init__()
        self.members = nn.ModuleList(members)
        self.shared_base = shared_base
        self.active = list(range(len(members)))

    def forward(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        layers = [self.members[index] for index in self.active]
        if x.shape[0] % len(layers):
            raise ValueError(f"{x.shape[0]} rows do not split into {len(layers)} members' equal blocks")
        if not self.shared_base:
            return torch.cat(
                [layer(part, *args, **kwargs) for layer, part in zip(layers, x.chunk(len(layers)), strict=True)]
            )
        base = layers[0].base_layer
        if type(layers[0]) is LoRALayer:
            return _StackedLowRank.apply(
                x,
                dense_weight(base),
                base.bias,
                layers[0].scale,
                *(layer.lora_A for layer in layers),
                *(layer.lora_B for layer in layers),
            )
        # PEFT's own operations in PEFT's order, the skinny ones per member: a batched GEMM would round differently
        result = base(x)
        deltas = [
            layer.lora_B["default"](layer.lora_A["default"](part)) * layer.scaling["default"]
            for layer, part in zip(layers, x.chunk(len(layers)), strict=True)
        ]
        return result + torch.cat(deltas)


class _StackedLowRank(torch.autograd.Function):
    """:class:`lorabench.variants._layers._LowRankLinear` for ``K`` members' factors, ``K`` ``A`` s (r, n) then ``K``
    ``B`` s (m, r), over one frozen ``W`` (m, n), the rows in ``K`` equal blocks: the frozen GEMM once on every row,
    the skinny products batched, each in the orientation the lone function found fastest on a CPU thread. Each
    member's factor gradient is a tensor of its own (a view of a stacked one would make the memory account count
    every member's gradient as each one's)."""

    @staticmethod
    def forward(
        ctx, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, scale: float, *factors: torch.Tensor
    ) -> torch.Tensor:
        members = len(factors) // 2
        A, B = torch.stack(factors[:members]), torch.stack(factors[members:])
        x3 = x.reshape(members, -1, x.shape[-1])
        h = torch.bmm(x3, A.mT) * scale
        y = torch.bmm(h, B.mT).view(-1, B.shape[1])
        y.addmm_(x3.view(-1, x.shape[-1]), weight.mT)
        if bias is not None:
            y.add_(bias)
        ctx.save_for_backward(x3, h, weight, A, B)
        ctx.scale, ctx.has_bias, ctx.shape = scale, bias is not None, x.shape
        return y.view(*x.shape[:-1], y.shape[-1])

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        x3, h, weight, A, B = ctx.saved_tensors
        members = A.shape[0]
        needs_A, needs_B = ctx.needs_input_grad[4 : 4 + members], ctx.needs_input_grad[4 + members :]
        g3 = grad.reshape(members, -1, grad.shape[-1])
        gh_t = torch.bmm(B.mT, g3.mT) * ctx.scale  # (K, r, tokens): (s g B)^T per member
        grad_A = torch.bmm(gh_t, x3).unbind() if any(needs_A) else [None] * members
        grad_B = torch.bmm(h.mT, g3).mT.unbind() if any(needs_B) else [None] * members
        grad_x = torch.bmm(gh_t.mT.contiguous(), A).view(-1, A.shape[-1]).addmm_(g3.view(-1, g3.shape[-1]), weight)
        grad_b = g3.view(-1, g3.shape[-1]).sum(0) if ctx.has_bias and ctx.needs_input_grad[2] else None
        own = [
            g.clone() if needed else None for g, needed in zip((*grad_A, *grad_B), (*needs_A, *needs_B), strict=True)
        ]
        return grad_x.view(ctx.shape), None, grad_b, None, *own


def _adapted(module: nn.Module) -> bool:
    """A variant's wrapper, or a module that owns a trainable parameter (full, flora, a new head)."""
    return isinstance(module, AdapterLayer | BaseTunerLayer) or any(
        p.requires_grad for p in module.parameters(recurse=False)
    )


def adapted_modules(model: nn.Module) -> list[str]:
    """Names of the outermost adapted modules (:func:`_adapted`) of ``model``, in module order."""
    found: list[str] = []

    def walk(prefix: str, module: nn.Module) -> None:
        if _adapted(module):
            found.append(prefix)
            return
        for name, child in module.named_children():
            walk(f"{prefix}.{name}" if prefix else name, child)

    walk("", model)
    return found


def _frozen_rest(model: nn.Module, adapted: list[str]) -> dict[str, torch.Tensor]:
    """Every parameter and buffer of ``model`` outside its adapted modules."""
    inside = tuple(f"{name}." for name in adapted)
    return {
        name: tensor
        for name, tensor in chain(model.named_parameters(), model.named_buffers())
        if not name.startswith(inside)
    }


def _draws_dropout(model: nn.Module) -> bool:
    return any(isinstance(m, nn.Dropout) and m.p > 0 for m in model.modules()) or any(
        getattr(getattr(m, "config", None), "attention_dropout", 0) for m in model.modules()
    )


def stack_problem(members: list[Member]) -> str | None:
    """Why these members cannot train as one computation with records equal to their lone ones, or None."""
    variant = type(members[0].variant)
    if variant.unstackable:
        return f"variant {variant.name!r}: {variant.unstackable}"
    models = [member.model for member in members]
    if _draws_dropout(models[0]):
        return "the model draws dropout in training: the members' draws would not be their lone runs'"
    adapted = adapted_modules(models[0])
    if "" in adapted:
        return "the whole model is one adapted module: nothing to share"
    if any(adapted_modules(model) != adapted for model in models[1:]):
        return "the members' adapted modules differ"
    first = _frozen_rest(models[0], adapted)
    for model in models[1:]:
        rest = _frozen_rest(model, adapted)
        if rest.keys() != first.keys() or not all(torch.equal(rest[k], first[k]) for k in first):
            return "the members' frozen weights differ outside their adapted modules"
    return None


def _shares_base(layers: list[nn.Module], variant: type[Variant]) -> bool:
    """Whether a :class:`StackedLayer` of ``layers`` may run their frozen base once: plain low-rank layers with equal
    base weights at the start, of a variant whose hooks (which might change a base weight: ReLoRA's merge) are the
    base class's no-ops."""
    if variant.after_step is not Variant.after_step or variant.transform_gradients is not Variant.transform_gradients:
        return False
    if any(_low_rank(layer) is None for layer in layers):
        return False
    scales = {_low_rank(layer)[2] for layer in layers}
    bases = [layer.base_layer for layer in layers]
    return len(scales) == 1 and all(
        torch.equal(base.weight, bases[0].weight)
        and (base.bias is None) == (bases[0].bias is None)
        and (base.bias is None or torch.equal(base.bias, bases[0].bias))
        for base in bases
    )


def build_host(members: list[Member]) -> nn.Module:
    """A copy of the first member's model (its frozen tensors shared, not copied) whose adapted modules are
    :class:`StackedLayer` s of every member's."""
    first = members[0].model
    frozen = {id(t): t for t in chain(first.parameters(), first.buffers()) if not t.requires_grad}
    host = copy.deepcopy(first, memo=frozen)
    variant = type(members[0].variant)
    for name in adapted_modules(first):
        layers = [member.model.get_submodule(name) for member in members]
        replace_module(host, name, StackedLayer(layers, _shares_base(layers, variant)))
    return host


def set_active(host: nn.Module, active: list[int]) -> None:
    """Which members' rows (in this order) the host's next calls carry."""
    for module in host.modules():
        if isinstance(module, StackedLayer):
            module.active = list(active)


def _language_model(model: nn.Module) -> nn.Module:
    return model.get_base_model() if isinstance(model, PeftModel) else model


def train_stack(
    host: nn.Module,
    members: list[Member],
    tokenizer,
    examples,
    device: torch.device,
    evaluate: Callable[[int, list[int]], None],
    replay: Sequence[TokenizedExample] = (),
) -> StepClock:
    """Train every member as :func:`lorabench.train.train` trains it alone, one forward and backward for all.

    ``evaluate(steps_done, active)``: called after each step count of ``eval_at`` below ``steps`` with the running
    members' indices. Each member's ``outcome`` gets its own losses, status, account and the stack's step times;
    returns the stack's clock of the whole loop (mid-training evaluations included; see the members' ``eval_seconds``).
    """
    settings = members[0].settings
    for member in members:
        member.start(tokenizer, examples, replay, device)
    lm = _language_model(host)
    uniform = math.log(lm.config.vocab_size)
    memory = PeakMemory(device)
    memory.start()
    loop, clock, eval_seconds = StepClock(device), StepClock(device), 0.0
    loop.start()
    for step in range(settings.steps):
        active = [index for index, member in enumerate(members) if member.running]
        if not active:
            break
        rows = [members[index].rows() for index in active]
        batch = collate([row for each in rows for row in each], tokenizer.pad_token_id, device)
        widths = [max(len(ids) for ids, _ in each) for each in rows]  # each member's own batch width, as alone
        labels = [label[:, :width] for label, width in zip(batch.pop("labels").chunk(len(active)), widths, strict=True)]
        set_active(host, active)
        clock.start()
        logits = host(**batch).logits.chunk(len(active))
        losses = [
            lm.loss_function(
                logits=part[:, : label.shape[1]].contiguous(), labels=label, vocab_size=lm.config.vocab_size
            )
            for part, label in zip(logits, labels, strict=True)
        ]
        values = torch.stack([loss.detach() for loss in losses]).tolist()
        going = [i for i, index in enumerate(active) if members[index].checked(step, values[i], uniform)]
        if going:
            sum(losses[i] for i in going).backward()
        for i in going:
            members[active[i]].update(step)
        clock.stop()
        for i in going:
            member = members[active[i]]
            member.outcome.clock.step_seconds.append(clock.step_seconds[-1])
            if step % settings.log_every == 0 or step == settings.steps - 1:
                _log_loss(member.outcome, step, values[i])
        if step + 1 in settings.eval_at and step + 1 < settings.steps and going:
            eval_seconds += _evaluate_aside(memory, evaluate, step + 1, [active[i] for i in going], device)
    loop.stop()
    peak = memory.peak_mb()
    for member in members:
        member.finish()
        member.outcome.memory, member.outcome.peak_mb = memory, peak
        member.outcome.train_seconds = loop.step_seconds[0] - eval_seconds
        member.outcome.eval_seconds = eval_seconds
    return loop


def _evaluate_aside(
    memory: PeakMemory,
    evaluate: Callable[[int, list[int]], None],
    steps_done: int,
    active: list[int],
    device: torch.device,
) -> float:
    """``evaluate`` kept out of training's time, peak memory and random state (as the lone loop keeps it); its
    seconds."""
    memory.pause()
    clock = StepClock(device)
    clock.start()
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        evaluate(steps_done, active)
    clock.stop()
    memory.resume()
    return clock.step_seconds[0]
