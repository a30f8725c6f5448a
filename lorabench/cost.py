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
two steps' ratio within the round, with the 95% distribution-free interval of that median (:func:`median_interval`).
Every candidate steps in ``rounds`` rounds; then only the candidates of a timed target ratio (:data:`TARGETS`, at the
grid's ranks and ``target_ranks``) keep stepping, interleaved as before, until each target ratio's interval lies
within ``target_halfwidth`` of its median or a cap (``max_rounds``, ``max_seconds``) stops them: the table says
which (``stopped``, and each row's ``rounds``). CPU: the process's CPU time on one thread, wall time on more
(:class:`Clock`). CUDA: CUDA events around each step, read after the round's synchronisation. Every round and every
candidate's setup is logged with the elapsed time, so the job log shows the stage is alive.

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
import logging
import math
import random
import statistics
import tempfile
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from lorabench.cost_targets import FLOOR, REFERENCES, SHAPE_SETS, TARGETS, ShapeSet
from lorabench.job import CostJob, GridVariant
from lorabench.measure import (
    MIB,
    account_after_first_step,
    saved_activation_bytes,
    storage_addresses,
    variant_state_bytes,
)

log = logging.getLogger(__name__)

LR = 1e-4
"""Learning rate of the measured steps: the cost of a step does not depend on it."""
CONFIDENCE = 0.95
"""Coverage of the interval of a median ratio (:func:`median_interval`)."""
SETUP_OPTIONS = {"pissa": {"pissa_init": "pissa_niter_4"}}
"""Options the stage sets in place of the config's where they change only a run's one-off setup, never a step:
PiSSA's exact SVD of an 8192x2048 weight takes ~10 s on one CPU thread (33 s for the llama-1b block), its
randomised SVD well under one, and the step after either is the same LoRA step on the same shapes. The CSV's
``options`` column says what was used."""


class ShapeBlock(nn.Module):
    """The layers of a :class:`ShapeSet`, each applied to its own input; returns their outputs in order."""

    def __init__(self, shapes: ShapeSet) -> None:
        super().__init__()
        self.reads = {name: layer.reads for name, layer in shapes.layers.items()}
        for name, layer in shapes.layers.items():
            self.add_module(name, nn.Linear(layer.n, layer.m, bias=False))

    def forward(self, inputs: dict[str, torch.Tensor]) -> list[torch.Tensor]:
        return [getattr(self, name)(inputs[reads]) for name, reads in self.reads.items()]


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
    times: dict[int, float] = field(default_factory=dict)
    """Seconds of its step in each timed round it took part in, by round number (pairs are matched by round)."""

    @property
    def label(self) -> str:
        return f"{self.name} r{self.rank}" if self.rank else self.name


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


def make_step(
    model: nn.Module,
    inputs: dict,
    upstream: list,
    optimizer: Any = None,
    variant: Any = None,
    forward: Callable[[dict], list[torch.Tensor]] | None = None,
) -> Callable[[], None]:
    """One training step as ``lorabench.train`` takes it: forward, backward, the variant's ``transform_gradients``,
    optimizer step, its ``after_step``, gradients dropped; without an optimizer, the floor's forward and backward.
    The inputs' gradients are dropped too, so no step pays for accumulating into the previous one's. ``forward``
    (default ``model``) maps ``inputs`` to the outputs ``upstream`` is the gradient of: a loss, say; the variant's
    hooks get ``model``."""
    steps = itertools.count()
    forward = forward or model

    def step() -> None:
        torch.autograd.backward(forward(inputs), upstream)
        if optimizer is not None:
            variant.transform_gradients(model, next(steps))
            optimizer.step()
            variant.after_step(model, optimizer)
            optimizer.zero_grad(set_to_none=True)
        for x in inputs.values():
            x.grad = None

    return step


class CannotAdapt(ValueError):
    """A variant refuses a targeted layer (:meth:`~lorabench.variants.Variant.layer_problem`)."""


def adapted(
    grid_variant: GridVariant, rank: int, model: nn.Module, targets: tuple[str, ...], alpha: float, total_steps: int
) -> tuple[Any, nn.Module, torch.optim.Optimizer]:
    """``grid_variant`` applied to ``model``'s ``targets`` at ``rank`` with its optimizer (over the variant's
    parameter groups), as a run builds them: (variant, adapted model, optimizer)."""
    from lorabench.train import TrainSettings, make_optimizer
    from lorabench.variants import find_targets

    variant = grid_variant.build(rank, alpha, targets, total_steps=total_steps)
    for name, layer in find_targets(model, targets):
        if problem := variant.layer_problem(name, layer):
            raise CannotAdapt(f"cannot adapt {name}: {problem}")
    model = variant.apply(model)
    optimizer = make_optimizer(
        variant.parameter_groups(model, LR),
        TrainSettings(steps=total_steps, batch_size=1, lr=LR, optimizer=grid_variant.optimizer),
    )
    return variant, model, optimizer


def variant_candidate(
    variant: GridVariant,
    rank: int,
    role: str,
    block: ShapeBlock,
    inputs: dict,
    upstream: list,
    alpha: float,
    total_steps: int,
) -> Candidate:
    """``variant`` applied to ``block`` at ``rank`` with its own optimizer; the reason instead when it cannot be."""
    variant = replace(variant, options=variant.options | SETUP_OPTIONS.get(variant.uses, {}))
    candidate = Candidate(variant.name, variant.uses, rank, variant.optimizer, role, options=variant.options)
    before = storage_addresses([*block.parameters(), *block.buffers()])
    try:
        built, model, optimizer = adapted(variant, rank, block, tuple(block.reads), alpha, total_steps)
    except CannotAdapt as error:
        candidate.reason = str(error)
        return candidate
    except Exception as error:  # a variant that needs a whole transformers model, say: recorded, not dropped
        candidate.reason = f"{type(error).__name__}: {error}"
        return candidate
    candidate.account["saved_activations"] = saved_activation_bytes(model, lambda: model(inputs))
    candidate.account["variant_state"] = variant_state_bytes(model, before)
    account_after_first_step(optimizer, candidate.account)
    candidate.step = make_step(model, inputs, upstream, optimizer, built)
    return candidate


def floor_candidate(base: nn.Module, inputs: dict, upstream: list) -> Candidate:
    """The floor: a frozen copy of ``base``, forward and backward to its inputs only."""
    frozen = copy.deepcopy(base)
    floor = Candidate(FLOOR, FLOOR, 0, "none", FLOOR, step=make_step(frozen, inputs, upstream))
    floor.account["saved_activations"] = saved_activation_bytes(frozen, lambda: frozen(inputs))
    return floor


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

    def time(self, candidate: Candidate, round_index: int) -> None:
        if self.cuda:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            candidate.step()
            end.record()
            self.pending.append((candidate, start, end))
        else:
            started = self._now()
            candidate.step()
            candidate.times[round_index] = self._now() - started

    def end_round(self, round_index: int) -> None:
        if self.cuda:
            torch.cuda.synchronize()
            for candidate, start, end in self.pending:
                candidate.times[round_index] = start.elapsed_time(end) / 1000
            self.pending.clear()


@dataclass(frozen=True)
class Rounds:
    """How many rounds the stage runs (the config's ``cost`` section): every candidate steps in ``rounds`` timed
    rounds after ``warmup`` untimed ones; then the candidates of target ratios not yet within ``halfwidth`` go on
    until they are, or ``max_rounds`` rounds in all or ``max_seconds`` of these further rounds have passed."""

    rounds: int
    warmup: int
    halfwidth: float
    max_rounds: int
    max_seconds: float

    @classmethod
    def of(cls, job: CostJob) -> Rounds:
        return cls(job.rounds, job.warmup, job.target_halfwidth, job.max_rounds, job.max_seconds)


LOG_EVERY = 5.0
"""Seconds between progress lines once only the target ratios' candidates step (on tiny shapes, hundreds of rounds a
second; every earlier round is logged)."""
Pair = tuple[Candidate, Candidate]
"""A timed target ratio: the candidate of the target's variant and the one it is paired with (same rank)."""


def target_pairs(candidates: list[Candidate]) -> list[Pair]:
    """The timed target ratios among ``candidates`` (:data:`TARGETS` whose variant was measured at some rank)."""
    by_key = {(c.name, c.rank): c for c in candidates if c.step is not None}
    pairs = []
    for target in TARGETS:
        for (name, rank), candidate in by_key.items():
            if name == target.variant and target.against is not None:
                partner = by_key.get((target.against, 0 if target.against == FLOOR else rank))
                if partner is not None and partner is not candidate:
                    pairs.append((candidate, partner))
    return pairs


def open_pairs(pairs: list[Pair], halfwidth: float) -> list[tuple[Pair, float]]:
    """The pairs whose median ratio's interval is not yet within ``halfwidth`` of it, with its half-width (the
    larger side; inf while there are too few rounds for an interval)."""
    still = []
    for a, b in pairs:
        ratios = round_ratios(a, b)
        interval = median_interval(ratios)
        median = statistics.median(ratios) if ratios else math.nan
        half = math.inf if interval is None else max(median - interval[0], interval[1] - median)
        if not half <= halfwidth:
            still.append(((a, b), half))
    return still


def run_rounds(candidates: list[Candidate], plan: Rounds, clock: Clock, where: str = "", seed: int = 0) -> str:
    """Every measurable candidate steps once per round, in a fresh (seeded) random order each round, so that no
    candidate always follows the same one (a step after full fine-tuning's Adam pass finds the caches cold); a
    rotation would keep every neighbour. Warm-up rounds are not kept. After ``plan.rounds`` timed rounds only the
    candidates of open target ratios (:func:`open_pairs`) step on. Returns what stopped the rounds: ``converged``,
    ``max_rounds`` or ``max_seconds``. Logs every round up to the first of targets only, then one every
    :data:`LOG_EVERY` seconds, with the elapsed time and the ratios still open (``where``: the shape set)."""
    active = [c for c in candidates if c.step is not None]
    pairs = target_pairs(active)
    shuffle = random.Random(seed)
    started = logged = time.perf_counter()
    for index in range(-plan.warmup, max(plan.rounds, plan.max_rounds)):
        still = open_pairs(pairs, plan.halfwidth) if index >= plan.rounds else []
        if index == plan.rounds:
            narrowing = time.perf_counter()
        if index >= plan.rounds:
            if not still:
                return "converged"
            if time.perf_counter() - narrowing > plan.max_seconds:
                return "max_seconds"
            active = list({id(c): c for pair, _ in still for c in pair}.values())
        for candidate in shuffle.sample(active, len(active)):
            clock.time(candidate, index)
        clock.end_round(index)
        if index < 0:
            for candidate in active:
                candidate.times.clear()
        if index <= plan.rounds or time.perf_counter() - logged >= LOG_EVERY:
            logged = time.perf_counter()
            log.info(
                "cost %s: round %d%s, %d candidates, %.1f s%s",
                where,
                index + 1,
                " (warm-up)" if index < 0 else "",
                len(active),
                logged - started,
                _open_note(still),
            )
    return "converged" if not open_pairs(pairs, plan.halfwidth) else "max_rounds"


def _open_note(still: list[tuple[Pair, float]]) -> str:
    """``; open: lora r64/floor ±0.041, ...``: the target ratios still being narrowed."""
    if not still:
        return ""
    return "; open: " + ", ".join(f"{a.label}/{b.label} ±{half:.3f}" for (a, b), half in still)


def round_ratios(a: Candidate, b: Candidate | None) -> list[float]:
    """``a``'s step time over ``b``'s, in each round both stepped in (empty if either was not measured)."""
    if b is None:
        return []
    return [a.times[index] / b.times[index] for index in sorted(a.times.keys() & b.times.keys())]


def median_interval(values: list[float], confidence: float = CONFIDENCE) -> tuple[float, float] | None:
    """The distribution-free interval of the median of ``values`` (order statistics): ``[x_(k), x_(n+1-k)]`` of the
    sorted values with the largest ``k`` such that ``2 P(Binomial(n, 1/2) < k) <= 1 - confidence``, which covers the
    true median with at least that probability whatever the distribution (no resampling, no normality). Unlike
    the rounds' quartiles (the spread of single rounds, which more rounds do not narrow), it narrows as rounds
    accrue, about as 1/sqrt(n). None when there are too few values (fewer than 6 at 95%)."""
    n = len(values)
    tail, k = 0.0, 0
    while k < n and 2 * (tail + math.comb(n, k) / 2**n) <= 1 - confidence:
        tail += math.comb(n, k) / 2**n
        k += 1
    if k == 0:
        return None
    ordered = sorted(values)
    return ordered[k - 1], ordered[n - k]


def ratio_columns(name: str, a: Candidate, b: Candidate | None) -> dict[str, float]:
    """``name`` (the median ratio over the ``name_rounds`` rounds both stepped in) and ``name_lo``, ``name_hi``: the
    95% interval of that median (:func:`median_interval`; NaN with too few rounds), which says whether it is
    distinguishable from a target."""
    ratios = round_ratios(a, b)
    interval = median_interval(ratios) or (math.nan, math.nan)
    median = statistics.median(ratios) if ratios else math.nan
    return {name: median, f"{name}_lo": interval[0], f"{name}_hi": interval[1], f"{name}_rounds": len(ratios)}


def measure_shape_set(name: str, tokens: int, job: CostJob, device: torch.device) -> list[dict[str, Any]]:
    """Rows of the cost table for one shape set: the floor, every (variant, rank) of ``job.variants``, the references
    at every rank, and the targets' variants (:data:`TARGETS`) at ``job.target_ranks`` too."""
    shapes = SHAPE_SETS[name]
    dtype = getattr(torch, job.dtype)
    base = base_block(shapes, device, dtype)
    inputs, upstream = block_inputs(shapes, tokens, next(base.parameters()))
    plan = Rounds.of(job)
    total_steps = plan.warmup + max(plan.rounds, plan.max_rounds) + 1
    wanted = candidates_wanted(list(job.variants), job.target_ranks)
    grid_ranks = sorted({rank for variant in job.variants for rank in variant.ranks if rank})
    ranks = grid_ranks or sorted({rank for _, rank, _ in wanted if rank}) or [0]
    floor = floor_candidate(base, inputs, upstream)
    started = time.perf_counter()
    candidates = [floor]
    first_step(floor, name, device, job.profile_cpu_peak, started)
    for variant, rank, role in wanted:
        candidates.append(
            variant_candidate(variant, rank, role, copy.deepcopy(base), inputs, upstream, job.alpha, total_steps)
        )
        first_step(candidates[-1], name, device, job.profile_cpu_peak, started)
    clock = Clock(device)
    stopped = run_rounds(candidates, plan, clock, name)
    log.info("cost %s: rounds stopped (%s) after %.1f s", name, stopped, time.perf_counter() - started)
    return table_rows(name, tokens, candidates, ranks[0], clock.method, job, device, stopped)


def first_step(candidate: Candidate, where: str, device: torch.device, profile_cpu: bool, started: float) -> None:
    """The candidate's first step, untimed (its one-off costs: optimizer state, allocations), for its memory peak;
    logged with the time since the shape set's setup began."""
    if candidate.step is not None:
        candidate.peak_bytes = peak_of_step(candidate.step, device, profile_cpu)
    log.info(
        "cost %s: set up %s (%s), %.1f s",
        where,
        candidate.label,
        "first step taken" if candidate.step else f"not measured: {candidate.reason}",
        time.perf_counter() - started,
    )


def candidates_wanted(variants: list[GridVariant], target_ranks: list[int]) -> list[tuple[GridVariant, int, str]]:
    """(variant, rank, role) of every candidate but the floor: the grid's variants at their ranks (``grid``); a
    target's variant of the grid at a ``target_ranks`` rank it lacks (``target_rank``); lora and PEFT's LoRA at
    every rank where the grid lacks them (``reference``)."""
    wanted = [(variant, rank, "grid") for variant in variants for rank in variant.ranks]
    targeted = {target.variant for target in TARGETS} - set(REFERENCES)
    wanted += [
        (variant, rank, "target_rank")
        for variant in variants
        if variant.name in targeted and any(variant.ranks)
        for rank in target_ranks
        if rank not in variant.ranks
    ]
    ranks = sorted({rank for _, rank, _ in wanted if rank} | set(target_ranks)) or [0]
    present = {(variant.name, rank) for variant, rank, _ in wanted}
    return wanted + [
        (GridVariant(ref, ref, {}, "adamw", (), tuple(ranks)), rank, "reference")
        for ref in REFERENCES
        for rank in ranks
        if (ref, rank) not in present
    ]


def table_rows(
    shape_set: str,
    tokens: int,
    candidates: list[Candidate],
    reference_rank: int,
    method: str,
    job: CostJob,
    device: torch.device,
    stopped: str,
) -> list[dict[str, Any]]:
    """One row per candidate with its step time, memory and ratios to the floor, PEFT's LoRA and our LoRA, the
    rounds it stepped in, and what stopped the shape set's rounds (``stopped``)."""
    from lorabench.devices import device_info

    by_key = {(c.name, c.rank): c for c in candidates}
    floor = by_key[(FLOOR, 0)]
    common = {
        "shape_set": shape_set,
        "shapes": SHAPE_SETS[shape_set].text(),
        "tokens": tokens,
        "dtype": job.dtype,
        "method": method,
        "threads": torch.get_num_threads(),
        "min_rounds": job.rounds,
        "warmup": job.warmup,
        "max_rounds": job.max_rounds,
        "max_seconds": job.max_seconds,
        "target_halfwidth": job.target_halfwidth,
        "stopped": stopped,
        **device_info(device),
    }
    rows = []
    for c in candidates:
        at = c.rank or reference_rank
        peft, lora = by_key.get(("peft_lora", at)), by_key.get(("lora", at))
        held = sum(c.account.values())
        lora_held = sum(lora.account.values()) if lora and lora.step else math.nan
        rows.append(
            {
                **common,
                "variant": c.name,
                "uses": c.uses,
                "rank": c.rank,
                "role": c.role,
                "optimizer": c.optimizer,
                "options": json.dumps(c.options, sort_keys=True) if c.options else "",
                "status": "ok" if c.step is not None else "not_measured",
                "reason": c.reason,
                "compared_at_rank": at if c.name != FLOOR else 0,
                "rounds": len(c.times),
                "step_ms": 1000 * statistics.median(c.times.values()) if c.times else math.nan,
                "step_ms_min": 1000 * min(c.times.values()) if c.times else math.nan,
                **ratio_columns("ratio_floor", c, floor),
                **ratio_columns("ratio_peft_lora", c, peft),
                **ratio_columns("ratio_lora", c, lora),
                "mem_account_mb": held / MIB if c.step is not None else math.nan,
                **{
                    f"mem_{part}_mb": c.account.get(key, 0) / MIB if c.step is not None else math.nan
                    for part, key in (
                        ("params", "trainable_parameters"),
                        ("grads", "gradients"),
                        ("optimizer", "optimizer_state"),
                        ("activations", "saved_activations"),
                        ("variant_state", "variant_state"),
                    )
                },
                "mem_ratio_lora": held / lora_held if c.step is not None and lora_held else math.nan,
                "peak_mb": c.peak_bytes / MIB,
                "peak_ratio_lora": c.peak_bytes / lora.peak_bytes if lora and lora.peak_bytes else math.nan,
                "peak_method": (
                    "cuda_max_memory_allocated"
                    if device.type == "cuda"
                    else "torch_profiler_memory_timeline"
                    if job.profile_cpu_peak
                    else "not_measured"
                ),
            }
        )
    return rows


def run_cost(job: CostJob, out: Path, threads: int | None = None) -> list[dict[str, Any]]:
    """CLI entry (``lorabench cost``): every shape set of ``job`` measured, one CSV of all rows at ``out``."""
    import pandas as pd

    from lorabench.devices import select_device
    from lorabench.variants import load_modules

    started = time.perf_counter()
    load_modules(job.variant_modules)
    if threads:
        torch.set_num_threads(threads)
    device = select_device(job.device)
    rows = []
    for name, tokens in job.shapes.items():
        count = tokens["cuda_tokens" if device.type == "cuda" else "cpu_tokens"]
        rows += measure_shape_set(name, count, job, device)
    table = pd.DataFrame(rows).assign(stage_seconds=time.perf_counter() - started)
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    table.to_csv(out, index=False)
    log.info("cost: %d rows written to %s, %.1f s", len(rows), out, time.perf_counter() - started)
    return rows
