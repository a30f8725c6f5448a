"""``summary.md``: the answers to the study's questions first, then what was run, one table per model and the costs.

Every sentence is computed from the numbers. Two variants are compared paired by seed (the mean of per-seed
differences with a Student-t 95% interval, :mod:`lorabench.report.stats`), every comparison of the answers is one
member of a family whose t tests are Holm-adjusted together; a sentence says "higher", "less", "matches" and so on
only when its adjusted test rejects, and "not distinguishable at this sample size" otherwise. Forgetting is
compared at matched learning, along each variant's measured points (learning rates and evaluations during
training), not at one arbitrary learning rate, by the first forgetting measure not saturated in the runs compared
(:mod:`lorabench.report.measures`).
"""

from __future__ import annotations

import math
import textwrap
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from lorabench.aggregate import lr_choices
from lorabench.cost_targets import SHAPE_SETS, TARGETS, Target, flop_bound
from lorabench.records import run_reason
from lorabench.report.measures import MEASURES, SATURATION, UNMEASURED, choose, names, saturation
from lorabench.report.plots import (
    NO_RANK,
    at_reference_rank,
    ci95,
    reference_rank,
    seed_means,
    selected_ok,
    variant_order,
)  # fmt: skip
from lorabench.report.stats import (
    ALPHA,
    MARGIN,
    POWER,
    Comparison,
    Matched,
    holm,
    matched_learning,
    paired,
    seed_curves,
)  # fmt: skip

METRICS = ["target_acc_after", *MEASURES, "step_ms", "peak_mem_added_mb", "mem_account_mb"]
MAX_LISTED_FAILURES = 40
TIMING_MEANING = {
    "perf_counter": "`time.perf_counter` around each step on the CPU",
    "cuda_synchronize": "`time.perf_counter` with `torch.cuda.synchronize()` before each reading, so queued GPU "
    "work is counted",
}
MEMORY_MEANING = {
    "cuda_max_memory_allocated": "`torch.cuda.max_memory_allocated` after `reset_peak_memory_stats` at training "
    "start (tensors only, not the allocator's cache)",
    "cpu_peak_rss": "the process's peak resident set (VmHWM) after resetting it through `/proc/self/clear_refs` at "
    "training start",
    "cpu_ru_maxrss": "`ru_maxrss`, the lifetime peak RSS of the process: a fallback that includes loading the model, "
    "so the added memory can read as 0 when loading peaked higher than training",
}


@dataclass(frozen=True)
class Estimate:
    """A mean over seeds with its 95% bootstrap CI (NaN bounds below two seeds)."""

    mean: float
    low: float
    high: float

    @classmethod
    def of(cls, values: pd.Series) -> Estimate:
        return cls(*ci95(values))

    @property
    def known(self) -> bool:
        return not math.isnan(self.mean)

    @property
    def has_ci(self) -> bool:
        return not math.isnan(self.low)

    def text(self, digits: int) -> str:
        if not self.known:
            return "n/a"
        if not self.has_ci:
            return f"{self.mean:.{digits}f} (1 seed, no CI)"
        return f"{self.mean:.{digits}f} ± {(self.high - self.low) / 2:.{digits}f}"


def variant_table(runs: pd.DataFrame) -> dict[str, dict[str, Estimate | float]]:
    """Per variant of one model: trainable params and an :class:`Estimate` per metric (tasks averaged per seed)."""
    metrics = [metric for metric in METRICS if metric in runs]  # results of older records lack the graded ones
    points = seed_means(runs, ["variant"], metrics)
    params = runs.groupby("variant")["trainable_params"].median()
    by_variant = dict(tuple(points.groupby("variant")))
    return {
        variant: {
            "params": params[variant],
            **{m: Estimate.of(by_variant[variant].get(m, pd.Series(dtype=float))) for m in METRICS},
        }
        for variant in variant_order(points["variant"])
    }


def _values(results: pd.DataFrame, column: str) -> str:
    return ", ".join(str(v) for v in sorted(results[column].dropna().unique()))


def _optimizers(results: pd.DataFrame) -> str:
    """``adamw (lora, dora, ...); sgd (resampled)``: which variants trained with which optimizer."""
    by_optimizer = results.groupby("optimizer")["variant"].unique()
    return "; ".join(f"{name} ({', '.join(variant_order(variants))})" for name, variants in by_optimizer.items())


def _one_rank_note(results: pd.DataFrame) -> str:
    """Said where the grid has one rank: rank effects are then not part of what it measures."""
    ranks = results.loc[results["rank"] != NO_RANK, "rank"].unique()
    return (
        "; one rank only: this grid spends its budget on learning-rate sweeps and seeds, so it says nothing "
        "about rank (accuracy_vs_rank.png has one point per variant)"
        if len(ranks) == 1
        else ""
    )


def _sweeps(results: pd.DataFrame) -> str:
    """``lora 0.001/0.003/0.01; full 0.0001/...``: each variant's learning rates."""
    lrs = results.groupby("variant")["lr"].unique()
    return "; ".join(f"{v} {'/'.join(f'{lr:g}' for lr in sorted(lrs[v]))}" for v in variant_order(lrs.index))


def _replay(results: pd.DataFrame) -> str:
    """``train.replay`` in words: forgetting read under rehearsal is not forgetting without it."""
    shares = sorted(results["replay"].unique()) if "replay" in results else [0.0]
    if shares == [0.0]:
        return "none (fine-tuning batches hold target examples only)"
    return (
        f"{'/'.join(f'{share:g}' for share in shares)} of each fine-tuning batch drawn from the source tasks' train "
        "splits (train.replay), so forgetting is measured under that rehearsal"
    )


def section_what_was_run(results: pd.DataFrame) -> list[str]:
    devices = results[["device", "device_name"]].astype("string").fillna("").drop_duplicates()
    device_text = "; ".join(f"{d} {n}".strip() for d, n in devices.itertuples(index=False))
    counts = results["status"].value_counts()
    lines = [
        "## What was run",
        "",
        f"- models: {_values(results, 'model')}",
        f"- tasks: {_values(results, 'task')}",
        f"- variants: {', '.join(variant_order(results['variant']))}",
        f"- ranks: {_values(results, 'rank')} (0 = no rank: full fine-tuning){_one_rank_note(results)}",
        f"- learning rates swept: {_sweeps(results)}",
        f"- seeds: {_values(results, 'seed')}",
        f"- optimizers: {_optimizers(results)}",
        f"- replay: {_replay(results)}",
        f"- device: {device_text}",
        f"- runs: {len(results)} — " + ", ".join(f"{s} {counts.get(s, 0)}" for s in ("ok", "diverged", "failed"))
        + " ([status.png](status.png))",
        "",
        "Learning rate: for each (model, task, variant, rank) the lr with the best mean validation accuracy over ok "
        "seeds is kept (test accuracy is never used to choose); with a single lr there is nothing to choose.",
    ]  # fmt: skip
    bad = results[results["status"] != "ok"].sort_values("run_id")
    if not bad.empty:
        lines += ["", "Runs that did not finish:", ""]
        listed = bad.head(MAX_LISTED_FAILURES).itertuples()
        lines += [
            f"- `{run.run_id}` — {run.status}: {run_reason(run.divergence_step, run.divergence_reason, run.error)}"
            for run in listed
        ]
        if len(bad) > MAX_LISTED_FAILURES:
            lines.append(f"- … and {len(bad) - MAX_LISTED_FAILURES} more (see results.csv)")
    return lines


def section_model_table(model: str, table: dict[str, dict], rank: int, forgetting: str) -> list[str]:
    """The model's table at ``rank``; ``forgetting``: what its ``forgetting`` column measures (:func:`names`)."""
    lines = [
        f"### {model}",
        "",
        f"Rank {rank} (full FT: no rank); tasks averaged within each seed; mean ± 95% CI half-width over seeds.",
        "",
        f"| variant | trainable params | target acc | forgetting: {forgetting} | per-character | cross-entropy "
        "| step ms | peak MiB added | MiB held (exact) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for variant, row in table.items():
        lines.append(
            f"| {variant} | {row['params']:,.0f} | {row['target_acc_after'].text(3)} | {row['forgetting'].text(3)} "
            f"| {row['forgetting_char'].text(3)} | {row['forgetting_ce'].text(3)} "
            f"| {row['step_ms'].text(1)} | {row['peak_mem_added_mb'].text(1)} | {row['mem_account_mb'].text(3)} |"
        )
    return lines + [""]


@dataclass(frozen=True)
class ModelRuns:
    """One model's ok runs at the reference rank (and the rank-free methods): what the answers compare."""

    model: str
    selected: pd.DataFrame
    """At each variant's validation-chosen lr."""
    swept: pd.DataFrame
    """At every lr of the sweep: the learning-rate curves."""
    trajectories: pd.DataFrame | None = None
    """Evaluations during training (trajectories.csv), where recorded: the curves' points along training."""

    def per_seed(self, variant: str, metric: str) -> pd.Series:
        """``metric`` of ``variant`` per seed, tasks averaged within the seed."""
        runs = self.selected[self.selected["variant"] == variant]
        return runs.groupby("seed")[metric].mean()

    def compare(
        self, a: str, b: str, metric: str, lower: str, higher: str, non_inferior: str | None = None
    ) -> Comparison:
        """The paired difference a − b of ``metric`` as one comparison of the family, at the metric's margin."""
        label, margin, margin_text = METRIC_MARGINS.get(metric, (metric, MARGIN, f"{MARGIN:g}"))
        if metric == "step_ms":  # no absolute scale: a share of b's own step
            margin, margin_text = STEP_SHARE * self.per_seed(b, metric).mean(), f"{STEP_SHARE:.0%} of {b}'s"
        difference = paired(self.per_seed(a, metric), self.per_seed(b, metric))
        return Comparison(self.model, a, b, label, difference, lower, higher, margin, margin_text, non_inferior)

    def forgetting_at_matched_learning(self, a: str, b: str) -> Part:
        """Forgetting of a − b where both reach the same target accuracy, per seed, between their measured points
        (learning rates and evaluations during training), by the first measure not saturated in their runs."""
        choice = choose(self.swept[self.swept["variant"].isin([a, b])])
        if choice.measure is None:
            return [f"vs {b}: no verdict, {choice.text()}"]
        curves = {
            v: seed_curves(self.swept[self.swept["variant"] == v], self.trajectories, choice.measure) for v in (a, b)
        }
        matched = matched_learning(curves[a], curves[b])
        if matched.difference.n == 0:
            return [f"vs {b} {choice.text()}: cannot be compared{_disjoint_text(matched, a, b)}"]
        return [
            f"vs {b} {choice.text()}, at accuracy {matched.level:.3f}: ",
            Comparison(
                self.model,
                a,
                b,
                f"forgetting at matched learning ({choice.names[choice.measure]})",
                matched.difference,
                f"{a} forgets less",
                f"{a} forgets more",
                MARGIN,
                f"{MARGIN:g}",
            ),
            _disjoint_text(matched, a, b),
        ]

    def mib(self, variant: str) -> str:
        """The memory account's mean: exact, the same for every seed, so an interval would only say ± 0."""
        held = self.selected.loc[self.selected["variant"] == variant, "mem_account_mb"].mean()
        return "n/a" if pd.isna(held) else f"{held:.3f}"

    def missing(self, needed: list[str]) -> str | None:
        absent = [v for v in needed if v not in set(self.selected["variant"])]
        return f"not answered on {self.model}: no ok runs of {', '.join(absent)}." if absent else None


def _disjoint_text(matched: Matched, a: str, b: str) -> str:
    """Said where seeds were left out because a's and b's measured target accuracies do not overlap."""
    if not matched.disjoint:
        return ""
    seed, ((low_a, high_a), (low_b, high_b)) = next(iter(matched.disjoint.items()))
    return (
        f"; in {len(matched.disjoint)} seed(s) their measured target accuracies do not overlap (seed {seed}: "
        f"{a} {low_a:.2f}–{high_a:.2f}, {b} {low_b:.2f}–{high_b:.2f}), so they are not compared there, rather "
        "than extrapolated"
    )


def section_forgetting_measures(swept: pd.DataFrame, selected: pd.DataFrame) -> list[str]:
    """Each forgetting measure's saturation over all ok runs and at the chosen lrs, per model."""
    lines = [
        "## Forgetting measures",
        "",
        f"Three measures per source task: exact-match accuracy drop, per-character accuracy drop (the greedy answers' "
        f"aligned characters), and the increase of the answers' mean token cross-entropy under teacher forcing. Each "
        f"has a ceiling, its value when everything is forgotten (accuracy 0; cross-entropy: a uniform guess, ln |V|). "
        f"A measure is *saturated* in a set of runs when every run lies at ≥ {SATURATION:g} of its ceiling, or every "
        f"run at ≤ {1 - SATURATION:.2g} of it: it cannot rank them. Each verdict on forgetting below uses the first of "
        "these (in this order) not saturated in the runs it compares, and names it.",
        "",
        "| model | runs | " + " | ".join(names(swept).values()) + " |",
        "|---|---|" + "---|" * len(MEASURES),
    ]
    notes = []
    for model, runs in swept.groupby("model"):
        for label, subset in (("all lrs", runs), ("chosen lrs", selected[selected["model"] == model])):
            states = [saturation(subset, column) for column in MEASURES]
            cells = ["not saturated" if state is None else state for state in states]
            lines.append(f"| {model} | {label} | " + " | ".join(cells) + " |")
            if label == "all lrs" and all(state == "unmeasured" for state in states):
                notes.append(f"**{model}: {UNMEASURED}; no verdict on forgetting.**")
            elif label == "all lrs" and all(state is not None for state in states):
                notes.append(
                    f"**Every forgetting measure is saturated (or unmeasured) in {model}'s runs: no verdict "
                    "on forgetting can be drawn from them.**"
                )
    return lines + [line for note in notes for line in ("", note)]  # after the table, which a paragraph would cut


Part = list["str | Comparison"]
"""A sentence in pieces: its comparisons are read only once the whole family's Holm adjustment is known."""
METRIC_MARGINS = {
    "target_acc_after": ("target accuracy", MARGIN, f"{MARGIN:g}"),
    "extra__delta_effective_rank_mean": ("effective rank of ΔW", 1.0, "1"),
    "extra__intruder_dimensions_mean": ("intruder dimensions", 1.0, "1"),
}
"""Metric -> (label, margin, margin in words). Weight-space margins are one unit: one more direction of the
update, one more intruder dimension per layer on average."""
STEP_SHARE = 0.05
"""Step-time margin where the cost stage did not run: 5% of the comparator's step."""


def _joined(parts: list[Part], separator: str) -> Part:
    """``parts`` joined by ``separator``, as one sentence in pieces."""
    out: Part = []
    for i, part in enumerate(parts):
        out += ([separator] if i else []) + part
    return out


def _weight_space(runs: ModelRuns, baselines: list[str]) -> Part:
    """Q1's "learns differently", read in the weights: ΔW's effective rank and intruder dimensions of W + ΔW."""
    metrics = [
        m
        for m in ("extra__delta_effective_rank_mean", "extra__intruder_dimensions_mean")
        if m in runs.selected and runs.per_seed("resampled", m).notna().any()
    ]
    parts = []
    for metric in metrics:
        means = runs.selected.groupby("variant")[metric].mean()
        for b in baselines:
            if pd.isna(means.get(b)):
                continue
            parts.append(
                [
                    f"{METRIC_MARGINS[metric][0]} {means['resampled']:.1f} vs {b} {means[b]:.1f}: ",
                    runs.compare("resampled", b, metric, "lower", "higher"),
                ]
            )
    return [" In weight space (mean over adapted layers): ", *_joined(parts, "; "), "."] if parts else []


def answer_resampling(runs: ModelRuns, staged: bool = False) -> Part:
    """Q1: does resampling forget less than LoRA and full FT (at matched learning), does it learn a different
    update, and what does it cost? ``staged``: the cost stage ran, so the cost is its bullet (:func:`cost_answer`),
    not the runs' timings."""
    baselines = [v for v in ("lora", "full", "full_sgd") if v in set(runs.selected["variant"])]
    if note := runs.missing(["resampled", "lora"]):
        return [note]
    forgetting = _joined([runs.forgetting_at_matched_learning("resampled", b) for b in baselines], "; ")
    learning = _joined(
        [[f"vs {b}: ", runs.compare("resampled", b, "target_acc_after", "lower", "higher")] for b in baselines], "; "
    )
    answer = [
        f"On {runs.model}, forgetting at matched learning (per seed, at the highest target accuracy both "
        "curves reach) ",
        *forgetting,
        ". Target accuracy at each one's chosen lr ",
        *learning,
        ".",
        *_weight_space(runs, [b for b in baselines if b != "full_sgd"]),
    ]
    if staged:
        return [*answer, " ([forgetting_vs_accuracy.png](forgetting_vs_accuracy.png))"]
    return [
        *answer,
        " Step time (ms) vs lora: ",
        runs.compare("resampled", "lora", "step_ms", "faster", "slower"),
        f". Training holds {runs.mib('resampled')} vs lora {runs.mib('lora')}"
        + "".join(f" and {b} {runs.mib(b)}" for b in baselines if b != "lora")
        + " MiB (exact account: parameters, gradients, optimizer state, saved activations; the same for every seed) "
        "([forgetting_vs_accuracy.png](forgetting_vs_accuracy.png), [cost.png](cost.png), "
        "[memory_account.png](memory_account.png)).",
    ]


def answer_additive(runs: ModelRuns, staged: bool = False) -> Part:
    """Q2: does additive fit as well as LoRA at equal parameters (non-inferiority), and is it cheaper per step?"""
    if note := runs.missing(["additive", "lora"]):
        return [note]
    params = runs.selected.groupby("variant")["trainable_params"].median()
    same = "the same" if params["additive"] == params["lora"] else f"{params['additive']:,.0f} vs {params['lora']:,.0f}"
    acc = runs.compare(
        "additive",
        "lora",
        "target_acc_after",
        "lower",
        "higher",
        non_inferior=f"additive fits as well as lora (within {MARGIN:g})",
    )
    step = (
        [] if staged else ["step time (ms): ", runs.compare("additive", "lora", "step_ms", "cheaper", "dearer"), "; "]
    )
    return [
        f"On {runs.model}, with {same} trainable parameters, additive's target accuracy vs lora's: ",
        acc,
        "; ",
        *step,
        "forgetting at matched learning ",
        *runs.forgetting_at_matched_learning("additive", "lora"),
        " ([accuracy_vs_rank.png](accuracy_vs_rank.png), [forgetting_vs_accuracy.png](forgetting_vs_accuracy.png),"
        " [cost.png](cost.png)).",
    ]


def answer_frozen(runs: ModelRuns, staged: bool = False) -> Part:
    """Q3: does frozen-A match LoRA with half the parameters (non-inferiority, each at its own best lr), and does
    frozen-B fall behind?"""
    if note := runs.missing(["frozen_a", "frozen_b", "lora"]):
        return [note]
    params = runs.selected.groupby("variant")["trainable_params"].median()
    match = runs.compare(
        "frozen_a",
        "lora",
        "target_acc_after",
        "below lora",
        "above lora",
        non_inferior=f"frozen_a matches lora (within {MARGIN:g})",
    )
    behind = runs.compare("frozen_b", "frozen_a", "target_acc_after", "frozen_b falls behind", "frozen_b is ahead")
    return [
        f"On {runs.model}, each at its own validation-chosen lr, frozen_a's target accuracy vs lora's: ",
        match,
        f", with {params['frozen_a'] / params['lora']:.2f}× lora's trainable parameters; frozen_b vs frozen_a: ",
        behind,
        " ([params_vs_accuracy.png](params_vs_accuracy.png), "
        "[forgetting_vs_accuracy.png](forgetting_vs_accuracy.png)).",
    ]


QUESTIONS = {
    "1. Does resampling forget less than LoRA and full fine-tuning, at what cost in target accuracy, time and "
    "memory?": answer_resampling,
    "2. At equal parameter count, does the additive form fit the target task as well as LoRA, and is it cheaper "
    "per step?": answer_additive,
    "3. Does frozen-A match LoRA's accuracy with half the trainable parameters, and does frozen-B fall "
    "behind?": answer_frozen,
}
"""The study's research questions (docs/variants.md), each with the function that answers it from one model's
runs."""


def family_of(answers: list[Part]) -> tuple[list[Comparison], dict[int, float]]:
    """Every comparison the answers make, in order, and each one's Holm-adjusted p-value (by ``id``)."""
    family = [piece for part in answers for piece in part if isinstance(piece, Comparison)]
    return family, {id(c): p for c, p in zip(family, holm([c.p for c in family]), strict=True)}


def rendered(part: Part, adjusted: dict[int, float]) -> str:
    """A sentence with each comparison read at its Holm-adjusted p-value."""
    return "".join(piece.verdict(adjusted[id(piece)]) if isinstance(piece, Comparison) else piece for piece in part)


def _p(value: float) -> str:
    return "n/a" if math.isnan(value) else f"{value:.3g}"


def section_family(family: list[Comparison], adjusted: dict[int, float]) -> list[str]:
    """The family the Holm adjustment runs over: every comparison of the answers, with its tests and power."""
    testable = sum(not math.isnan(c.p) for c in family)
    lines = [
        "### The comparisons, Holm-adjusted as one family",
        "",
        f"The family: the {len(family)} comparisons of the answers above ({testable} with two or more paired seeds, "
        f"the m of Holm's adjustment), at family-wise α = {ALPHA:g}. Each is the paired t test of the per-seed "
        f'differences: two-sided, or for a "matches" question one-sided non-inferiority (the claim: a − b > '
        f"−{MARGIN:g}; {MARGIN:g} of target accuracy is 5 test examples in 100, the tolerance within which "
        "`lorabench compare` reads two runs as the same result). Beside it, the Wilcoxon signed-rank test (no "
        f"normality assumed) and the seeds a paired t test needs for {POWER:.0%} power at α = {ALPHA:g} (before "
        "Holm) to detect the margin, at the observed SD of the differences. With n seeds the smallest two-sided "
        "Wilcoxon p is 2/2ⁿ (0.031 at 6 seeds): it can confirm a t test, not beat it.",
        "",
        "| # | comparison | test | difference [95% CI] | t p | Wilcoxon p | Holm p | decision | seeds for 80% power |",
        "|---:|---|---|---|---:|---:|---:|---|---:|",
    ]
    for i, c in enumerate(family, 1):
        d, p = c.difference, adjusted[id(c)]
        decision = "n/a" if math.isnan(p) else "rejected" if p <= ALPHA else "not rejected"
        lines.append(
            f"| {i} | {c.what} | {c.test} | {d.text(3)} | {_p(c.p)} | {_p(c.wilcoxon)} | {_p(p)} "
            f"| {decision} | {c.power_text()} |"
        )
    return lines + [""]


TARGET_BOUNDS = {
    "lora": "what bounds it: beyond the floor's two GEMMs, a LoRA step reads the layer input twice more (x Aᵀ, "
    "and x for A's gradient), the output gradient twice (g B, gᵀ h) and writes one output-sized and one "
    "input-sized tensor that the base GEMMs accumulate into; the r-wide products are memory-bound, so these passes, "
    "not multiplies, are the overhead, plus the optimizer step and Python per layer, which weigh most at few "
    "tokens. Tried: the scale folded into the r-wide intermediate, and one fused autograd function (lorabench/"
    "variants/_layers.py, low_rank_linear) that writes the update once and lets the base GEMM accumulate into it, "
    "forward and backward (about 6 passes fewer than autograd's path), each skinny GEMM in the orientation the "
    "CPU BLAS streams well",
    "additive": "what bounds it: additive's own fused function makes LoRA's r-wide skinny products (two forward, four "
    "backward) plus four passes over activations or their gradients (the fold of x and of the output gradient, "
    "the tile added into the output and into the input gradient); it holds and saves what lora does (no fold or "
    "tile matrix, no gradient for them). Tried before: fold and tile as 0/1 matrices in LoRA's fused function "
    "with 2r-wide factors (step 1.13x lora's and memory held 1.83x at rank 64 on the llama-1b block)",
    "resampled": "what bounds it: the layer input saved for the factor gradients and the rank-2r merge's temporaries",
}
"""What bounds each of our implementations' targets and what was tried: said beside a missed target."""
COST_QUESTIONS = {
    "1.": [("resampled", "lora"), ("resampled", "full"), ("resampled", "full_sgd")],
    "2.": [("additive", "lora")],
    "3.": [("frozen_a", "lora"), ("frozen_b", "lora")],
}
"""Which cost comparisons answer which question (variant, against), from the cost stage's table."""
REAL_SHAPES = "llama-1b"
"""The shape set the answers quote when the stage measured it (else its first)."""


def _cost_where(rows: pd.DataFrame) -> str:
    """``llama-1b (32 tokens, float32, cpu AMD EPYC, process_time, 1 thread(s))``: the layer shapes are named once,
    in the cost section's table of shape sets."""
    row = rows.iloc[0]
    return (
        f"{row['shape_set']} ({row['tokens']} tokens, {row['dtype']}, {row['device']} {row['device_name']}, "
        f"{row['method']}, {row['threads']} thread(s))"
    )


def _ok_cost(cost: pd.DataFrame, shape_set: str, variant: str, rank: int | None = None) -> pd.Series | None:
    """The cost row of ``variant`` (at ``rank``, else its lowest), or None where it was not measured."""
    rows = cost[(cost["shape_set"] == shape_set) & (cost["variant"] == variant) & (cost["status"] == "ok")]
    if rank is not None:
        rows = rows[rows["rank"].isin([rank, NO_RANK])]
    rows = rows.assign(extra=rows["role"] == "target_rank").sort_values(["extra", "rank"])  # the grid's ranks first
    return rows.iloc[0] if len(rows) else None


def cost_answer(cost: pd.DataFrame, question: str) -> str | None:
    """The cost bullet of a question, from the cost stage's table (its real-model shape set)."""
    sets = list(dict.fromkeys(cost["shape_set"]))
    shape_set = REAL_SHAPES if REAL_SHAPES in sets else sets[0]
    rows = cost[cost["shape_set"] == shape_set]
    parts = []
    for variant, against in COST_QUESTIONS.get(question, []):
        mine = _ok_cost(cost, shape_set, variant)
        if mine is None or (theirs := _ok_cost(cost, shape_set, against, int(mine["compared_at_rank"]))) is None:
            continue
        rank = f" at rank {mine['rank']}" if mine["rank"] else ""
        # against a reference the stage paired each round with: its median ratio; else the ratio of the medians
        paired = {"lora": "ratio_lora", "peft_lora": "ratio_peft_lora"}.get(against)
        step = mine[paired] if paired else mine["step_ms"] / theirs["step_ms"]
        interval = f" [{_number(mine[paired + '_lo'], 3)}, {_number(mine[paired + '_hi'], 3)}]" if paired else ""
        parts.append(
            f"{variant}{rank} ({mine['optimizer']}) vs {against} ({theirs['optimizer']}): step {step:.3g}×{interval} "
            f"({mine['step_ms']:.1f} vs {theirs['step_ms']:.1f} ms; {mine['ratio_floor']:.3g}× the frozen floor), "
            f"memory held {_ratio(mine, theirs, 'mem_account_mb')}×, peak {_ratio(mine, theirs, 'peak_mb')}×"
        )
    if not parts:
        return None
    return (
        f"Cost at real layer sizes, {_cost_where(rows)}, medians of ≥ {rows.iloc[0]['min_rounds']} interleaved rounds "
        "with their 95% intervals (layer shapes in the cost section): "
        + "; ".join(parts)
        + " ([cost_real_shapes.png](cost_real_shapes.png), table below)."
    )


def _ratio(a: pd.Series, b: pd.Series, column: str) -> str:
    return "n/a" if not b[column] or pd.isna(a[column]) or pd.isna(b[column]) else f"{a[column] / b[column]:.3g}"


def _rank_free_note(cost: pd.DataFrame) -> str:
    ranks = cost.loc[(cost["rank"] == NO_RANK) & (cost["variant"] != "floor"), "compared_at_rank"].dropna().unique()
    return f" Methods without a rank are compared with the references at rank {int(ranks[0])}." if len(ranks) else ""


def _number(value: float, digits: int) -> str:
    return "n/a" if pd.isna(value) else f"{value:.{digits}f}"


def section_cost(cost: pd.DataFrame | None) -> list[str]:
    """The cost stage: what it measured and how, its table of ratios, the targets for our implementations met or
    missed."""
    lines = ["## Cost at real layer sizes", ""]
    if cost is None:
        return lines + [
            "The cost stage did not run (config `cost.enabled: false`): the cost answers above come from "
            "the runs' own step times and memory account, on the grid's models.",
            "",
        ]
    first = cost.iloc[0]
    lines += [
        f"Every variant of the grid at each of its ranks{_target_ranks_note(cost)}, applied to the linear layers "
        "of a real model's block as a run applies it, one "
        "training step (forward, backward given upstream gradients with the layers' input requiring grad, the "
        "variant's optimizer step and hook), beside the frozen forward+backward floor of the same layers and PEFT's "
        f"LoRA at the same rank. Rounds step every candidate once in a fresh random order, so load and cache state hit "
        f"all alike: {first['warmup']} warm-up and {first['min_rounds']} timed rounds of all, then rounds of only the "
        "candidates of a timed target until each target ratio's 95% interval lies within "
        f"±{first['target_halfwidth']:g} of it, or {first['max_rounds']} rounds in all or {first['max_seconds']:g} s "
        "of these further rounds stop them (`rounds` per row). A ratio is the median over rounds of the ratio "
        "within a round; [lo, hi] is the "
        "distribution-free 95% interval of that median (order statistics). "
        f"Timing: {first['method']} on {first['threads']} thread(s), {first['device']} "
        f"{first['device_name']}, {first['dtype']}. Memory held: the exact account (trainable parameters, gradients, "
        f"optimizer state, saved activations); peak: {first['peak_method']}, the first step above what was allocated "
        f"before it. The stage took {first['stage_seconds']:.0f} s.{_rank_free_note(cost)} ([cost_real_shapes.png]"
        "(cost_real_shapes.png), [cost_real_shapes.csv](cost_real_shapes.csv)).",
        "",
    ]
    lines += [
        "| shape set | layers (out x in) | tokens | dtype | device | timing | threads | rounds stopped |",
        "|---|---|---:|---|---|---|---:|---|",
    ]
    lines += [
        f"| {row.shape_set} | {row.shapes} | {row.tokens} | {row.dtype} | {row.device} {row.device_name} "
        f"| {row.method} | {row.threads} | {row.stopped} |"
        for row in cost.drop_duplicates("shape_set").itertuples()
    ]
    lines.append("")
    for _, rows in cost.groupby("shape_set", sort=False):
        lines += [
            f"### {_cost_where(rows)}",
            "",
            "| variant | rank | optimizer | rounds | step ms | ÷ floor | ÷ PEFT LoRA | ÷ lora "
            "| MiB held (exact) | ÷ lora | peak MiB | ÷ lora |",
            "|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for row in rows.itertuples():
            if row.status != "ok":
                lines.append(
                    f"| {row.variant} | {row.rank} | {row.optimizer} | not measured: {row.reason} | | | | | | | | |"
                )
                continue
            lines.append(
                f"| {row.variant}{ROLE_MARKS.get(row.role, '')} | {row.rank} | {row.optimizer} | {row.rounds} "
                f"| {row.step_ms:.1f} | {_number(row.ratio_floor, 3)} | {_number(row.ratio_peft_lora, 3)} "
                f"| {_number(row.ratio_lora, 3)} | {_number(row.mem_account_mb, 2)} | {_number(row.mem_ratio_lora, 3)} "
                f"| {_number(row.peak_mb, 1)} | {_number(row.peak_ratio_lora, 3)} |"
            )
        lines.append("")
    return lines + section_cost_targets(cost)


ROLE_MARKS = {"reference": " (reference)", "target_rank": " (target rank)"}
"""How the cost table marks a candidate the grid does not have at that rank."""


def _target_ranks_note(cost: pd.DataFrame) -> str:
    """`` (and lora, ... at ranks 8, 64 too)``: the stage's ``target_ranks`` the grid lacks, if any."""
    extra = set(cost.loc[cost["role"] != "grid", "rank"]) - set(cost.loc[cost["role"] == "grid", "rank"]) - {0}
    if not extra:
        return ""
    return f" (and lora, PEFT's LoRA and the targets' variants at ranks {', '.join(str(r) for r in sorted(extra))} too)"


def section_cost_targets(cost: pd.DataFrame) -> list[str]:
    """The targets for our own implementations (:data:`lorabench.cost.TARGETS`) at every shape set and rank: the
    measured ratio with its interval, the FLOP bound (:func:`lorabench.cost.flop_bound`), whether the rounds
    narrowed it to the stage's half-width or a cap stopped them, and met or missed."""
    lines = [
        "### Targets for our own implementations",
        "",
        (
            "FLOP bound: the least ratio the step could show if every multiply-add ran at the floor's rate "
            "(per token, floor 4 Σ m·n, a LoRA-shaped update 6 r Σ (m + n) more; docs/variants.md §7); "
            "where it exceeds the target, no implementation can meet it."
        ),
        "",
        "| target | shape set | rank | measured [95% interval] | FLOP bound | rounds | met |",
        "|---|---|---:|---|---:|---|---|",
    ]
    missed = []
    for target in TARGETS:
        for row in cost[(cost["variant"] == target.variant) & (cost["status"] == "ok")].itertuples():
            value = getattr(row, target.column)
            interval = (
                (getattr(row, target.column + "_lo"), getattr(row, target.column + "_hi")) if target.against else None
            )
            bound = flop_bound(target, SHAPE_SETS[row.shape_set], row.rank) if row.shape_set in SHAPE_SETS else None
            met = target_verdict(value, interval, target.limit)
            if bound is not None and bound > target.limit:
                met += f" (unattainable: FLOP bound {bound:.3f} > {target.limit:g})"
            shown = _number(value, 3) + (f" [{_number(interval[0], 3)}, {_number(interval[1], 3)}]" if interval else "")
            lines.append(
                f"| {target.what} | {row.shape_set} | {row.rank} | {shown} "
                f"| {'—' if bound is None else f'{bound:.3f}'} | {_rounds_note(row, target, interval)} "
                f"| {met} |"
            )
            if met.startswith(("**missed", "within")) and target.variant not in missed:
                missed.append(target.variant)
    lines.append("")
    lines += [f"- {variant} did not clearly meet a target here; {TARGET_BOUNDS[variant]}." for variant in missed]
    return lines + [""]


def _rounds_note(row: Any, target: Target, interval: tuple[float, float] | None) -> str:
    """``converged, 48`` (the ratio's interval within the stage's half-width, over 48 paired rounds) or
    ``**not converged: max_seconds (±0.041)**, 31`` where a cap stopped the rounds first; ``exact`` for a memory
    ratio (no rounds)."""
    if interval is None:
        return "exact"
    value, rounds = getattr(row, target.column), getattr(row, target.column + "_rounds")
    half = max(value - interval[0], interval[1] - value)
    if half <= row.target_halfwidth:
        return f"converged, {rounds}"
    why = row.stopped if row.stopped != "converged" else "not a ratio the rounds narrowed"
    return f"**not converged: {why} (±{_number(half, 3)})**, {rounds}"


def target_verdict(value: float, interval: tuple[float, float] | None, limit: float) -> str:
    """``met``/``**missed**`` only where the rounds agree: a timed ratio whose 95% interval (of its median over
    rounds) holds the limit is ``within noise`` (its median alone would name a side by chance); a deterministic one
    (memory) has none."""
    if pd.isna(value):
        return "n/a"
    if interval is not None and (pd.isna(interval[0]) or interval[0] <= limit < interval[1]):
        return f"within noise ({'met' if value <= limit else 'missed'} by the median)"
    return "met" if value <= limit else "**missed**"


def section_lr_choice(results: pd.DataFrame) -> list[str]:
    """How many chosen learning rates sit at an edge of their sweep, each of them named."""
    choices = lr_choices(results[results["status"] == "ok"])
    swept = choices[choices["n_lrs"] > 1]
    edges = swept[swept["at_edge"]]
    lines = [
        "## Learning-rate choice",
        "",
        f"{len(edges)} of {len(swept)} swept (model, task, variant, rank) chose a learning rate at an edge of its "
        "sweep, where the best one may lie outside it ([lr_sweep.png](lr_sweep.png) marks them with ×)"
        + (":" if len(edges) else "."),
    ]
    if len(edges):
        lines.append("")
        lines += [
            f"- {row.model} · {row.task} · {row.variant} · r{row.rank}: chose {row.chosen_lr:g} of "
            f"{row.lr_min:g}–{row.lr_max:g} ({'lowest' if row.chosen_lr == row.lr_min else 'highest'})"
            for row in edges.itertuples()
        ]
    return lines


def section_meaning(results: pd.DataFrame) -> list[str]:
    timing = "; ".join(TIMING_MEANING[m] for m in sorted(results["timing_method"].dropna().unique()))
    memory = "; ".join(MEMORY_MEANING[m] for m in sorted(results["memory_method"].dropna().unique()))
    return [
        "## What the numbers mean",
        "",
        f"Time is the median wall-clock of one optimizer step (forward, backward, update and the variant's hook), "
        f"measured with {timing}. Memory added is peak minus baseline, where both are {memory}, taken just before "
        "and during training. Memory held (exact) counts the bytes training holds, each tensor storage once: the "
        "trainable parameters, their gradients and the optimizer's state right after the first optimizer step, and "
        "the activations autograd saves for backward in one forward pass of the train split's batch_size longest "
        "examples (the model's frozen weights, temporaries inside one operation and the allocator's cache are not "
        "in it); it depends only on shapes and dtypes, so it is the same for every seed, rerun and device. Accuracy "
        "is exact match on the test split (for a classification task: the share of "
        "examples whose argmax label is right); forgetting is the mean over source tasks (exact match) and lm-eval "
        "tasks and paraphrase retrieval, where the config names them, of the score before minus after fine-tuning "
        "(0 = nothing forgotten); per-character is the same for the share of the greedy answers' characters that "
        "match, cross-entropy the rise of the source answers' mean token cross-entropy (nats) under teacher "
        "forcing. Forgetting at matched learning interpolates only between measured points: each learning rate's "
        "final evaluation and its evaluations during training (train.eval_at), never toward the untrained model. "
        "In the tables, ± is the half-width of a 95% percentile-bootstrap CI of one "
        "variant's mean over seeds (1000 resamples), the interval the figures draw; with few seeds it is "
        "optimistic. Comparisons between variants do not use it: they use the paired Student-t interval above.",
    ]


QUESTION_FIGURES = {
    "1.": ["forgetting_vs_accuracy.png", "cost_real_shapes.png", "memory_account.png"],
    "2.": ["accuracy_vs_rank.png", "forgetting_vs_accuracy.png", "cost_real_shapes.png"],
    "3.": ["params_vs_accuracy.png", "forgetting_vs_accuracy.png"],
}
"""The figures that show each question's answer: linked from the report's first page."""


def write_description(answers: dict[str, list[Part]], adjusted: dict[int, float], out_path: Path) -> None:
    """The HTML report's first page, in reStructuredText: each question with this run's comparisons in brief
    (difference, 95% interval, Holm decision) and links to its figures (Snakemake's ``name.png`_`` links). Short on
    purpose: Snakemake centres the page beside the rule graph, so what does not fit one screen is cut off at the top."""
    lines = [
        f"**The study's questions and this run's answers**: a − b per seed, 95% interval, Holm decision (n.s.: "
        f"not significant; non-inferior: a − b > −{MARGIN:g}).",
        "",
    ]
    for question, parts in answers.items():
        figures = ", ".join(f"`{name}`_" for name in QUESTION_FIGURES[question.split()[0]])
        lines += [f"**{question}** ({figures})", ""]
        for part in parts:
            comparisons = [piece for piece in part if isinstance(piece, Comparison)]
            if not comparisons:
                lines.append(f"- {''.join(piece for piece in part if isinstance(piece, str))}")
                continue
            groups: dict[tuple[str, str], list[str]] = {}
            for c in comparisons:
                groups.setdefault((c.a, c.label), []).append(f"{c.b} {c.brief(adjusted[id(c)])}")
            lines.append(
                f"- *{comparisons[0].scope}*, "
                + "; ".join(f"{label}: {a} vs {', vs '.join(against)}" for (a, label), against in groups.items())
            )
        lines.append("")
    Path(out_path).write_text("\n".join(lines) + "\n")


WIDTH = 120
"""summary.md's prose is wrapped at this width; a table row stays one line (the longest, the family's and the
cost stage's shape sets, stay under 200 characters)."""


def wrapped(lines: list[str]) -> list[str]:
    """Prose and bullets wrapped at :data:`WIDTH` (a bullet's continuation indented under its text); headings and
    table rows as they are. Markdown joins the wrapped lines back into one paragraph."""
    out = []
    for line in lines:
        if len(line) <= WIDTH or line.startswith(("|", "#")):
            out.append(line)
            continue
        indent = "  " if line.startswith("- ") else ""
        out += textwrap.wrap(line, WIDTH, subsequent_indent=indent, break_long_words=False, break_on_hyphens=False)
    return out


def write_summary(
    results: pd.DataFrame,
    out_path: Path,
    harness: list[str] = (),
    cost: pd.DataFrame | None = None,
    description: Path | None = None,
    trajectories: pd.DataFrame | None = None,
) -> None:
    """Write the markdown summary of ``results`` (all runs; comparisons use ok runs, at the chosen lr or along
    the lr sweep), answers first; ``harness``: the lines of :func:`lorabench.report.harness.section_harness`, where
    the pipeline's benchmarks are known; ``cost``: the cost stage's table, where it ran (the cost answers come from
    it); ``description``: where to write the answers in brief for the HTML report's first page
    (:func:`write_description`)."""
    rank = reference_rank(results)
    ok = results[results["status"] == "ok"]
    selected = at_reference_rank(selected_ok(results), rank)
    swept = at_reference_rank(ok, rank)
    tables = {model: variant_table(group) for model, group in selected.groupby("model")}
    models = [
        ModelRuns(model, selected[selected["model"] == model], swept[swept["model"] == model], trajectories)
        for model in tables
    ]
    answers = {question: [answer(runs, cost is not None) for runs in models] for question, answer in QUESTIONS.items()}
    family, adjusted = family_of([part for parts in answers.values() for part in parts])
    lines = [
        "# lorabench summary",
        "",
        "The answers first; how they were computed, what ran, the tables and the costs follow. Comparisons are "
        "paired by seed (the mean of per-seed differences, tasks averaged within each seed, with a Student-t 95% "
        "interval) and Holm-adjusted as one family (its table follows the answers); a sentence names a "
        "direction, or a match, only where the adjusted test rejects.",
        "",
        "## Answers to the study's questions",
        "",
    ]
    for question, parts in answers.items():
        lines += [f"**{question}**", ""]
        lines += [f"- {rendered(part, adjusted)}" for part in parts] or ["- no ok runs to answer from."]
        if cost is not None and (line := cost_answer(cost, question.split()[0])):
            lines.append(f"- {line}")
        lines.append("")
    lines += [
        *section_family(family, adjusted),
        *section_what_was_run(results),
        "",
        *section_lr_choice(results),
        "",
        *section_forgetting_measures(swept, selected),
        "",
        "## Results per model",
        "",
    ]
    for model, table in tables.items():
        lines += section_model_table(model, table, rank, names(swept[swept["model"] == model])["forgetting"])
    lines += [*section_cost(cost), *harness, *section_meaning(results)]
    Path(out_path).parent.mkdir(parents=True, exist_ok=True)
    Path(out_path).write_text("\n".join(wrapped(lines)) + "\n")
    if description:
        write_description(answers, adjusted, description)
