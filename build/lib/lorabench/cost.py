"""Cost at real layer sizes: step time and memory of every variant of the grid on the linear layers of a real model.

The per-run records time a tiny model, whose steps are dominated by Python and kernel launches; what a variant
costs where it matters is its step on real layer shapes. This stage builds the linear layers of one decoder
block of a named model (:data:`SHAPE_SETS`: by default Llama-3.2-1B's, hidden 2048, MLP 8192, GQA k/v 512),
each fed the input it reads in the real block (q/k/v share one, gate/up share one), applies each variant of the
grid at each of its ranks exactly as a run does (``variant.apply``, its ``parameter_groups``, its optimizer, its
``after_step``), and times one training step: forward, backward (given upstream gradients, the layers' input
requiring grad as inside a network), optimizer step, the variant's hook. Beside them it times two references:

- the **floor**: the same layers frozen, forward + backward to their input only: what any method pays;
- **PEFT's LoRA** (``peft_lora``) at the same rank, and our own ``lora``, measured whether or not the grid has them.

All of them step in turn within each round (A B C ... C A B ..., a fresh random order every round), after warm-up
rounds, so a load swing on a shared machine hits every candidate alike; a ratio is the median over rounds of the
two steps' ratio within the round. CPU: the process's CPU time on one thread, wall time on more (:class:`Clock`).
CUDA: CUDA events around each step, read after the round's synchronisation.

Memory: the exact account of :mod:`lorabench.measure` (trainable parameters, gradients and optimizer state after
the first step, the activations autograd saves in one forward, and the variant's own buffers and frozen factors;
the wrapped layers' weights not counted), and the peak of
the first step (grads and optimizer state created, activations, temporaries): on CUDA ``max_memory_allocated``
above what was allocated before the step, on the CPU torch.profiler's memory timeline.
"""

from __future__ import annotations

import copy
import itertools
import json
import math
import random
import statistics
import tempfile
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from lorabench.measure import (
    MIB,
    account_after_first_step,
    saved_activation_bytes,
    storage_addresses,
    variant_state_bytes,
)

FLOOR = "floor"
REFERENCES = ("peft_lora", "lora")
"""Measured at every rank even when the grid leaves them out: the ratios are to them."""
LR = 1e-4
"""Learning rate of the measured steps: the cost of a step does not depend on it."""
SETUP_OPTIONS = {"pissa": {"pissa_init": "pissa_niter_4"}}
"""Options the stage sets in place of the config's where they change only a run's one-off setup, never a step:
PiSSA's exact SVD of an 8192x2048 weight takes ~10 s on one CPU thread (33 s for the llama-1b block), its
randomised SVD well under one, and the step after either is the same LoRA step on the same shapes. The CSV's
``options`` column says what was used."""


@dataclass(frozen=True)
class Linear:
    """One linear layer of a shape set: ``m`` outputs, ``n`` inputs, reading the block input named ``reads``."""

    m: int
    n: int
    reads: str


@dataclass(frozen=True)
class ShapeSet:
    """The linear layers of one block of a real model, by their module names."""

    description: str
    layers: dict[str, Linear]

    def text(self) -> str:
        """``q_proj 2048x2048, k_proj 512x2048, ...`` (m x n): what the report states."""
        return ", ".join(f"{name} {layer.m}x{layer.n}" for name, layer in self.layers.items())


SHAPE_SETS = {
    "llama-1b": ShapeSet(
        "one decoder block of Llama-3.2-1B (hidden 2048, MLP 8192, 32 query heads and 8 key/value heads of 64)",
        {"q_proj": Linear(2048, 2048, "hidden"), "k_proj": Linear(512, 2048, "hidden"),
         "v_proj": Linear(512, 2048, "hidden"), "o_proj": Linear(2048, 2048, "attention"),
         "gate_proj": Linear(8192, 2048, "normed"), "up_proj": Linear(8192, 2048, "normed"),
         "down_proj": Linear(2048, 8192, "gated")},
    ),
    "square-1024": ShapeSet("one 1024x1024 layer (the micro-benchmark's)", {"layer": Linear(1024, 1024, "x")}),
    "tiny": ShapeSet(
        "a Llama-like block at hidden 64, MLP 128 (tests and the smoke grid)",
        {"q_proj": Linear(64, 64, "hidden"), "k_proj": Linear(32, 64, "hidden"), "v_proj": Linear(32, 64, "hidden"),
         "o_proj": Linear(64, 64, "attention"), "gate_proj": Linear(128, 64, "normed"),
         "up_proj": Linear(128, 64, "normed"), "down_proj": Linear(64, 128, "gated")},
    ),
}
"""Named shape sets (the config's ``cost.shapes`` keys). Layer names are Llama's, so ``target_modules`` match."""


class ShapeBlock(nn.Module):
    """The layers of a :class:`ShapeSet`, each applied to its own input; returns their outputs in order."""

    def __init__(self, shapes: ShapeSet) -> None:
        super().__init__()
        self.reads = {name: layer.reads for name, layer in shapes.layers.items()}
        for name, layer in shapes.layers.items():
            self.add_module(name, nn.Linear(layer.n, layer.m, bias=False))

    def forward(self, inputs: dict[str, torch.Tensor]) -> list[torch.Tensor]:
        return [getattr(self, name)(inputs[reads]) for name, reads in self.reads.items()]


@dataclass(frozen=True)
class VariantEntry:
    """One grid variant as the stage measures it (from :meth:`lorabench.grid.Grid.cost_settings`)."""

    name: str
    uses: str
    ranks: list[int]
    optimizer: str
    options: dict[str, Any] = field(default_factory=dict)


@dataclass
class Candidate:
    """Something stepped in each round: a variant at a rank, or the floor; ``step`` is None when not measurable."""

    name: str
    uses: str
    rank: int
    optimizer: str
    role: str
    """``floor``, ``grid`` (a variant of the grid) or ``reference`` (measured for the ratios only)."""
    options: dict[str, Any] = field(default_factory=dict)
    step: Callable[[], None] | None = None
    reason: str = ""
    account: dict[str, int] = field(default_factory=dict)
    peak_bytes: float = math.nan
    times: list[float] = field(default_factory=list)


def block_inputs(shapes: ShapeSet, tokens: int, like: torch.Tensor, seed: int = 0) -> tuple[dict, list]:
    """Inputs requiring grad (one per name the layers read) and one upstream gradient per layer output."""
    generator = torch.Generator().manual_seed(seed)
    draw = lambda width: torch.randn(tokens, width, generator=generator).to(like)  # noqa: E731
    widths = {layer.reads: layer.n for layer in shapes.layers.values()}
    inputs = {name: draw(width).requires_grad_() for name, width in widths.items()}
    upstream = [draw(layer.m) for layer in shapes.layers.values()]
    return inputs, upstream


def base_block(shapes: ShapeSet, device: torch.device, dtype: torch.dtype, seed: int = 0) -> ShapeBlock:
    """The frozen block every candidate starts from (each gets its own copy: some variants change ``W``)."""
    torch.manual_seed(seed)
    return ShapeBlock(shapes).to(device=device, dtype=dtype).requires_grad_(False)


def make_step(model: nn.Module, inputs: dict, upstream: list, optimizer: Any = None,
              variant: Any = None) -> Callable[[], None]:
    """One training step as ``lorabench.train`` takes it: forward, backward, the variant's ``transform_gradients``,
    optimizer step, its ``after_step``, gradients dropped; without an optimizer, the floor's forward and backward.
    The inputs' gradients are dropped too, so no step pays for accumulating into the previous one's."""
    steps = itertools.count()

    def step() -> None:
        torch.autograd.backward(model(inputs), upstream)
        if optimizer is not None:
            variant.transform_gradients(model, next(steps))
            optimizer.step()
            variant.after_step(model, optimizer)
            optimizer.zero_grad(set_to_none=True)
        for x in inputs.values():
            x.grad = None

    return step


def variant_candidate(entry: VariantEntry, rank: int, role: str, block: ShapeBlock, inputs: dict,
                      upstream: list, alpha: float, total_steps: int) -> Candidate:
    """``entry`` applied to ``block`` at ``rank`` with its own optimizer; the reason instead when it cannot be."""
    from lorabench.train import TrainSettings, make_optimizer
    from lorabench.variants import AdapterSpec, get

    options = entry.options | SETUP_OPTIONS.get(entry.uses, {})
    candidate = Candidate(entry.name, entry.uses, rank, entry.optimizer, role, options=options)
    targets = tuple(block.reads)
    try:
        variant = get(entry.uses)(AdapterSpec(rank=rank, alpha=alpha, target_modules=targets, options=options,
                                              total_steps=total_steps))
        for name in targets:
            if problem := variant.layer_problem(name, getattr(block, name)):
                candidate.reason = f"cannot adapt {name}: {problem}"
                return candidate
        before = storage_addresses([*block.parameters(), *block.buffers()])
        model = variant.apply(block)
        optimizer = make_optimizer(variant.parameter_groups(model, LR),
                                   TrainSettings(steps=total_steps, batch_size=1, lr=LR, optimizer=entry.optimizer))
    except Exception as error:  # a variant that needs a whole transformers model, say: recorded, not dropped
        candidate.reason = f"{type(error).__name__}: {error}"
        return candidate
    candidate.account["saved_activations"] = saved_activation_bytes(model, lambda: model(inputs))
    candidate.account["variant_state"] = variant_state_bytes(model, before)
    account_after_first_step(optimizer, candidate.account)
    candidate.step = make_step(model, inputs, upstream, optimizer, variant)
    return candidate


def peak_of_step(step: Callable[[], None], device: torch.device, profile_cpu: bool) -> float:
    """Bytes allocated at the peak of ``step`` above what was allocated before it (NaN: not measured).

    CUDA: the caching allocator's statistics. CPU: the allocator keeps none, so torch.profiler's memory timeline
    (its categories summed at each instant), which costs a profiled step; ``profile_cpu`` False skips it.
    """
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        step()
        torch.cuda.synchronize(device)
        return float(torch.cuda.max_memory_allocated(device) - before)
    if not profile_cpu:
        step()
        return math.nan
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True, record_shapes=True, with_stack=True) as prof:
        step()
    with tempfile.TemporaryDirectory() as directory, warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # deprecated for CUDA; still the only CPU timeline
        path = Path(directory) / "timeline.json"
        prof.export_memory_timeline(str(path), device="cpu")
        _, sizes = json.loads(path.read_text())
    return float(max(map(sum, sizes), default=0))


class Clock:
    """Times one step: CUDA events on a GPU, read after the round synchronises. On a CPU with one thread, the
    process's CPU time (``time.process_time``): every kernel then runs on the calling thread, and CPU time is blind
    to the waits for a core that dominate the noise on a shared machine (single steps swung by 30% in wall time
    beside other jobs here); with more threads, wall time (``time.perf_counter``), as CPU time would add up threads."""

    def __init__(self, device: torch.device) -> None:
        self.cuda = device.type == "cuda"
        one_thread = torch.get_num_threads() == 1
        self.method = "cuda_events" if self.cuda else "process_time" if one_thread else "perf_counter"
        self._now = time.process_time if one_thread else time.perf_counter
        self.pending: list[tuple[Candidate, Any, Any]] = []

    def time(self, candidate: Candidate) -> None:
        if self.cuda:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            candidate.step()
            end.record()
            self.pending.append((candidate, start, end))
        else:
            started = self._now()
            candidate.step()
            candidate.times.append(self._now() - started)

    def end_round(self) -> None:
        if self.cuda:
            torch.cuda.synchronize()
            for candidate, start, end in self.pending:
                candidate.times.append(start.elapsed_time(end) / 1000)
            self.pending.clear()


def run_rounds(candidates: list[Candidate], rounds: int, warmup: int, clock: Clock, seed: int = 0) -> None:
    """Every measurable candidate steps once per round, in a fresh (seeded) random order each round, so that no
    candidate always follows the same one (a step after full fine-tuning's Adam pass finds the caches cold); a
    rotation would keep every neighbour. Warm-up rounds are not kept."""
    active = [c for c in candidates if c.step is not None]
    shuffle = random.Random(seed)
    for index in range(warmup + rounds):
        for candidate in shuffle.sample(active, len(active)):
            clock.time(candidate)
        clock.end_round()
        if index < warmup:
            for candidate in active:
                candidate.times.clear()


def round_ratios(a: Candidate, b: Candidate | None) -> list[float]:
    """``a``'s step time over ``b``'s, round by round (empty if either was not measured)."""
    if b is None or not a.times or not b.times:
        return []
    return [x / y for x, y in zip(a.times, b.times, strict=True)]


def paired_ratio(a: Candidate, b: Candidate | None) -> float:
    """Median over rounds of ``a``'s step time over ``b``'s in the same round (NaN if either was not measured)."""
    ratios = round_ratios(a, b)
    return statistics.median(ratios) if ratios else math.nan


def ratio_columns(name: str, a: Candidate, b: Candidate | None) -> dict[str, float]:
    """``name`` (the median ratio) and ``name_q1``, ``name_q3``: its quartiles over rounds, the spread that says
    whether a ratio near a target is distinguishable from it."""
    ratios = round_ratios(a, b)
    if not ratios:
        return {name: math.nan, f"{name}_q1": math.nan, f"{name}_q3": math.nan}
    q1, _, q3 = statistics.quantiles(ratios, n=4, method="inclusive") if len(ratios) > 1 else ratios * 3
    return {name: statistics.median(ratios), f"{name}_q1": q1, f"{name}_q3": q3}


def measure_shape_set(name: str, tokens: int, entries: list[VariantEntry], settings: dict[str, Any],
                      device: torch.device) -> list[dict[str, Any]]:
    """Rows of the cost table for one shape set: the floor, every (variant, rank) of ``entries``, the references."""
    shapes = SHAPE_SETS[name]
    dtype = getattr(torch, settings["dtype"])
    base = base_block(shapes, device, dtype)
    inputs, upstream = block_inputs(shapes, tokens, next(base.parameters()))
    rounds, warmup = settings["rounds"], settings["warmup"]
    total_steps = rounds + warmup + 1
    ranks = sorted({rank for entry in entries for rank in entry.ranks if rank}) or [0]
    frozen = copy.deepcopy(base)
    floor = Candidate(FLOOR, FLOOR, 0, "none", FLOOR, step=make_step(frozen, inputs, upstream))
    floor.account["saved_activations"] = saved_activation_bytes(frozen, lambda: frozen(inputs))
    candidates = [floor]
    wanted = [(entry, rank, "grid") for entry in entries for rank in entry.ranks]
    in_grid = {(entry.name, rank) for entry, rank, _ in wanted}
    wanted += [(VariantEntry(ref, ref, ranks, "adamw"), rank, "reference")
               for ref in REFERENCES for rank in ranks if (ref, rank) not in in_grid]
    for entry, rank, role in wanted:
        candidates.append(variant_candidate(entry, rank, role, copy.deepcopy(base), inputs, upstream,
                                            settings["alpha"], total_steps))
    for candidate in candidates:
        if candidate.step is not None:
            candidate.peak_bytes = peak_of_step(candidate.step, device, settings["profile_cpu_peak"])
    clock = Clock(device)
    run_rounds(candidates, rounds, warmup, clock)
    return table_rows(name, tokens, candidates, ranks[0], clock.method, settings, device)


def table_rows(shape_set: str, tokens: int, candidates: list[Candidate], reference_rank: int, method: str,
               settings: dict[str, Any], device: torch.device) -> list[dict[str, Any]]:
    """One row per candidate with its step time, memory and ratios to the floor, PEFT's LoRA and our LoRA."""
    from lorabench.devices import device_info

    by_key = {(c.name, c.rank): c for c in candidates}
    floor = by_key[(FLOOR, 0)]
    common = {"shape_set": shape_set, "shapes": SHAPE_SETS[shape_set].text(), "tokens": tokens,
              "dtype": settings["dtype"], "method": method, "threads": torch.get_num_threads(),
              "rounds": settings["rounds"], "warmup": settings["warmup"], **device_info(device)}
    rows = []
    for c in candidates:
        at = c.rank or reference_rank
        peft, lora = by_key.get(("peft_lora", at)), by_key.get(("lora", at))
        held = sum(c.account.values())
        lora_held = sum(lora.account.values()) if lora and lora.step else math.nan
        rows.append({
            **common, "variant": c.name, "uses": c.uses, "rank": c.rank, "role": c.role, "optimizer": c.optimizer,
            "options": json.dumps(c.options, sort_keys=True) if c.options else "",
            "status": "ok" if c.step is not None else "not_measured", "reason": c.reason,
            "compared_at_rank": at if c.name != FLOOR else 0,
            "step_ms": 1000 * statistics.median(c.times) if c.times else math.nan,
            "step_ms_min": 1000 * min(c.times) if c.times else math.nan,
            **ratio_columns("ratio_floor", c, floor),
            **ratio_columns("ratio_peft_lora", c, peft),
            **ratio_columns("ratio_lora", c, lora),
            "mem_account_mb": held / MIB if c.step is not None else math.nan,
            **{f"mem_{part}_mb": c.account.get(key, 0) / MIB if c.step is not None else math.nan
               for part, key in (("params", "trainable_parameters"), ("grads", "gradients"),
                                 ("optimizer", "optimizer_state"), ("activations", "saved_activations"),
                                 ("variant_state", "variant_state"))},
            "mem_ratio_lora": held / lora_held if c.step is not None and lora_held else math.nan,
            "peak_mb": c.peak_bytes / MIB,
            "peak_ratio_lora": c.peak_bytes / lora.peak_bytes if lora and lora.peak_bytes else math.nan,
            "peak_method": ("cuda_max_memory_allocated" if device.type == "cuda" else "torch_profiler_memory_timeline"
                            if settings["profile_cpu_peak"] else "not_measured"),
        })
    return rows


def run_cost(settings: dict[str, Any], out: Path, threads: int | None = None) -> list[dict[str, Any]]:
    """CLI entry (``lorabench cost``): every shape set of ``settings`` measured, one CSV of all rows at ``out``."""
    import pandas as pd

    from lorabench.devices import select_device
    from lorabench.variants import load_modules

    started = time.perf_counter()
    load_modules(settings.get("variant_modules", []))
    if threads:
        torch.set_num_threads(threads)
    device = select_device(settings["device"])
    entries = [VariantEntry(**entry) for entry in settings["variants"]]
    rows = []
    for name, tokens in settings["shapes"].items():
        count = tokens["cuda_tokens" if device.type == "cuda" else "cpu_tokens"]
        rows += measure_shape_set(name, count, entries, settings, device)
    table = pd.DataFrame(rows).assign(stage_seconds=time.perf_counter() - started)
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    table.to_csv(out, index=False)
    return rows
