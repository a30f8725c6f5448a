"""``summary.md``: what was run, one table per model, and what this data says about MATH.md's questions.

Every sentence is computed from the numbers. Two variants are compared paired by seed (the mean of per-seed
differences with a Student-t 95% interval, :mod:`lorabench.report.stats`); a sentence says "higher", "less" and
so on only when that interval excludes 0, and "not distinguishable at this sample size" otherwise. Forgetting is
compared at matched learning, along each variant's learning-rate curve, not at one arbitrary learning rate.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from lorabench.aggregate import lr_choices
from lorabench.records import run_reason
from lorabench.report.plots import (
    NO_RANK, at_reference_rank, ci95, reference_rank, seed_means, selected_ok, variant_order,
)  # fmt: skip
from lorabench.report.stats import matched_learning, paired, seed_curves, verdict

METRICS = ["target_acc_after", "forgetting", "step_ms", "peak_mem_added_mb", "mem_account_mb"]
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
    points = seed_means(runs, ["variant"], METRICS)
    params = runs.groupby("variant")["trainable_params"].median()
    by_variant = dict(tuple(points.groupby("variant")))
    return {
        variant: {"params": params[variant], **{m: Estimate.of(by_variant[variant][m]) for m in METRICS}}
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
    return "; one rank only: this grid spends its budget on learning-rate sweeps and seeds, so it says nothing " \
        "about rank (accuracy_vs_rank.png has one point per variant)" if len(ranks) == 1 else ""


def _sweeps(results: pd.DataFrame) -> str:
    """``lora 0.001/0.003/0.01; full 0.0001/...``: each variant's learning rates."""
    lrs = results.groupby("variant")["lr"].unique()
    return "; ".join(f"{v} {'/'.join(f'{lr:g}' for lr in sorted(lrs[v]))}" for v in variant_order(lrs.index))


def _replay(results: pd.DataFrame) -> str:
    """``train.replay`` in words: forgetting read under rehearsal is not forgetting without it."""
    shares = sorted(results["replay"].unique()) if "replay" in results else [0.0]
    if shares == [0.0]:
        return "none (fine-tuning batches hold target examples only)"
    return (f"{'/'.join(f'{share:g}' for share in shares)} of each fine-tuning batch drawn from the source tasks' train "
            "splits (train.replay), so forgetting is measured under that rehearsal")


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
        lines += [f"- `{run.run_id}` — {run.status}: {run_reason(run.divergence_step, run.divergence_reason, run.error)}" for run in listed]
        if len(bad) > MAX_LISTED_FAILURES:
            lines.append(f"- … and {len(bad) - MAX_LISTED_FAILURES} more (see results.csv)")
    return lines


def section_model_table(model: str, table: dict[str, dict], rank: int) -> list[str]:
    lines = [
        f"### {model}",
        "",
        f"Rank {rank} (full FT: no rank); tasks averaged within each seed; mean ± 95% CI half-width over seeds.",
        "",
        "| variant | trainable params | target acc | forgetting | step ms | peak MiB added | MiB held (exact) |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for variant, row in table.items():
        lines.append(
            f"| {variant} | {row['params']:,.0f} | {row['target_acc_after'].text(3)} | {row['forgetting'].text(3)} "
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

    def per_seed(self, variant: str, metric: str) -> pd.Series:
        """``metric`` of ``variant`` per seed, tasks averaged within the seed."""
        runs = self.selected[self.selected["variant"] == variant]
        return runs.groupby("seed")[metric].mean()

    def compare(self, a: str, b: str, metric: str, lower: str, higher: str) -> str:
        """The paired difference a − b of ``metric`` and its verdict."""
        return verdict(paired(self.per_seed(a, metric), self.per_seed(b, metric)), lower, higher)

    def forgetting_at_matched_learning(self, a: str, b: str) -> str:
        """Forgetting of a − b where both reach the same target accuracy, per seed, along their lr curves."""
        curves = {v: seed_curves(self.swept[self.swept["variant"] == v]) for v in (a, b)}
        matched = matched_learning(curves[a], curves[b])
        return f"vs {b} (at accuracy {matched.level:.3f}): " + verdict(
            matched.difference, f"{a} forgets less", f"{a} forgets more"
        )

    def mib(self, variant: str) -> str:
        """The memory account's mean: exact, the same for every seed, so an interval would only say ± 0."""
        held = self.selected.loc[self.selected["variant"] == variant, "mem_account_mb"].mean()
        return "n/a" if pd.isna(held) else f"{held:.3f}"

    def missing(self, needed: list[str]) -> str | None:
        absent = [v for v in needed if v not in set(self.selected["variant"])]
        return f"not answered on {self.model}: no ok runs of {', '.join(absent)}." if absent else None


def answer_resampling(runs: ModelRuns, staged: bool = False) -> str:
    """Q1: does resampling forget less than LoRA and full FT (at matched learning), and what does it cost?
    ``staged``: the cost stage ran, so the cost is its bullet (:func:`cost_answer`), not the runs' timings."""
    baselines = [v for v in ("lora", "full", "full_sgd") if v in set(runs.selected["variant"])]
    if note := runs.missing(["resampled", "lora"]):
        return note
    forgetting = "; ".join(runs.forgetting_at_matched_learning("resampled", b) for b in baselines)
    learning = "; ".join(
        f"vs {b}: {runs.compare('resampled', b, 'target_acc_after', 'lower', 'higher')}" for b in baselines
    )
    answer = (f"On {runs.model}, forgetting at matched learning (per seed, at the highest target accuracy both curves "
              f"reach) {forgetting}. Target accuracy at each one's chosen lr {learning}.")
    if staged:
        return answer + " ([forgetting_vs_accuracy.png](forgetting_vs_accuracy.png))"
    step = runs.compare("resampled", "lora", "step_ms", "faster", "slower")
    return (
        f"{answer} Step time (ms) vs lora: {step}. "
        f"Training holds {runs.mib('resampled')} vs lora {runs.mib('lora')}"
        + "".join(f" and {b} {runs.mib(b)}" for b in baselines if b != "lora")
        + " MiB (exact account: parameters, gradients, optimizer state, saved activations; the same for every seed) "
        "([forgetting_vs_accuracy.png](forgetting_vs_accuracy.png), [cost.png](cost.png), "
        "[memory_account.png](memory_account.png))."
    )


def answer_additive(runs: ModelRuns, staged: bool = False) -> str:
    """Q2: does additive fit as well as LoRA at equal parameters, and is it cheaper per step?"""
    if note := runs.missing(["additive", "lora"]):
        return note
    params = runs.selected.groupby("variant")["trainable_params"].median()
    same = "the same" if params["additive"] == params["lora"] else f"{params['additive']:,.0f} vs {params['lora']:,.0f}"
    acc = runs.compare("additive", "lora", "target_acc_after", "lower", "higher")
    step = "" if staged else f"step time (ms): {runs.compare('additive', 'lora', 'step_ms', 'cheaper', 'dearer')}; "
    return (
        f"On {runs.model}, with {same} trainable parameters, additive's target accuracy vs lora's is {acc}; "
        f"{step}forgetting at matched learning "
        f"{runs.forgetting_at_matched_learning('additive', 'lora')} "
        "([accuracy_vs_rank.png](accuracy_vs_rank.png), [forgetting_vs_accuracy.png](forgetting_vs_accuracy.png), [cost.png](cost.png))."
    )


def answer_frozen(runs: ModelRuns, staged: bool = False) -> str:
    """Q3: does frozen-A match LoRA with half the parameters (each at its own best lr), and does frozen-B fall behind?"""
    if note := runs.missing(["frozen_a", "frozen_b", "lora"]):
        return note
    params = runs.selected.groupby("variant")["trainable_params"].median()
    match = runs.compare("frozen_a", "lora", "target_acc_after", "below lora", "above lora")
    behind = runs.compare("frozen_b", "frozen_a", "target_acc_after", "frozen_b falls behind", "frozen_b is ahead")
    return (
        f"On {runs.model}, each at its own validation-chosen lr, frozen_a's target accuracy is {match}, with "
        f"{params['frozen_a'] / params['lora']:.2f}× lora's trainable parameters; frozen_b vs frozen_a: {behind} "
        "([params_vs_accuracy.png](params_vs_accuracy.png), [forgetting_vs_accuracy.png](forgetting_vs_accuracy.png))."
    )


QUESTIONS = {
    "1. Does resampling forget less than LoRA and full fine-tuning, at what cost in target accuracy, time and "
    "memory?": answer_resampling,
    "2. At equal parameter count, does the additive form fit the target task as well as LoRA, and is it cheaper "
    "per step?": answer_additive,
    "3. Does frozen-A match LoRA's accuracy with half the trainable parameters, and does frozen-B fall "
    "behind?": answer_frozen,
}
"""MATH.md's research questions, each with the function that answers it from one model's runs."""


COST_TARGETS = [
    ("own lora's step ≤ 1.0× PEFT LoRA's", "lora", "ratio_peft_lora", 1.0),
    ("additive's step ≤ 1.0× lora's", "additive", "ratio_lora", 1.0),
    ("resampled's peak memory ≤ 1.1× lora's", "resampled", "peak_ratio_lora", 1.1),
    ("lora's step ≤ 1.10× the frozen floor", "lora", "ratio_floor", 1.10),
]
"""Issue 13's targets for our own implementations: (what, variant, cost-table column, limit), per shape set."""
TARGET_BOUNDS = {
    "lora": "what bounds it: beyond the floor's two GEMMs, a LoRA step reads the layer input twice more (x Aᵀ, "
    "and x for A's gradient), the output gradient twice (g B, gᵀ h) and writes one output-sized and one "
    "input-sized tensor that the base GEMMs accumulate into; the r-wide products are memory-bound, so these passes, "
    "not multiplies, are the overhead, plus the optimizer step and Python per layer, which weigh most at few "
    "tokens. Tried: the scale folded into the r-wide intermediate, and one fused autograd function (lorabench/"
    "variants/_layers.py, low_rank_linear) that writes the update once and lets the base GEMM accumulate into it, "
    "forward and backward (about 6 passes fewer than autograd's path), each skinny GEMM in the orientation the "
    "CPU BLAS streams well",
    "additive": "what bounds it: additive runs LoRA's fused function with 2r-wide factors [cF; V] and [U, cT], so it "
    "makes the same passes over the activations as lora; MATH.md's saving (O(n + r(m+n)) multiplies per token) is "
    "in multiplies, which are not the bound; its factor-sized work (the concatenations, 2r-wide factor gradients) "
    "weighs most at few tokens. Tried: fold and tile as 0/1 matrices in the skinny GEMMs (a reshape-sum fold and a "
    "broadcast tile each add a pass), the fused function, and a function of its own that takes no gradient for "
    "the constant fold and tile (within noise of the fused one in interleaved A/B runs: not kept)",
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
    """``llama-1b (q_proj 2048x2048, ...; 64 tokens, float32, cpu, perf_counter, 1 thread(s))``."""
    row = rows.iloc[0]
    return (f"{row['shape_set']} ({row['shapes']}; {row['tokens']} tokens, {row['dtype']}, {row['device']} "
            f"{row['device_name']}, {row['method']}, {row['threads']} thread(s))")


def _ok_cost(cost: pd.DataFrame, shape_set: str, variant: str, rank: int | None = None) -> pd.Series | None:
    """The cost row of ``variant`` (at ``rank``, else its lowest), or None where it was not measured."""
    rows = cost[(cost["shape_set"] == shape_set) & (cost["variant"] == variant) & (cost["status"] == "ok")]
    if rank is not None:
        rows = rows[rows["rank"].isin([rank, NO_RANK])]
    return rows.sort_values("rank").iloc[0] if len(rows) else None


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
        parts.append(
            f"{variant}{rank} ({mine['optimizer']}) vs {against} ({theirs['optimizer']}): step {step:.3g}× "
            f"({mine['step_ms']:.1f} vs {theirs['step_ms']:.1f} ms; {mine['ratio_floor']:.3g}× the frozen floor), "
            f"memory held {_ratio(mine, theirs, 'mem_account_mb')}×, peak {_ratio(mine, theirs, 'peak_mb')}×"
        )
    if not parts:
        return None
    return (f"Cost at real layer sizes, {_cost_where(rows)}, medians of {rows.iloc[0]['rounds']} interleaved rounds: "
            + "; ".join(parts) + " ([cost_real_shapes.png](cost_real_shapes.png), table below).")


def _ratio(a: pd.Series, b: pd.Series, column: str) -> str:
    return "n/a" if not b[column] or pd.isna(a[column]) or pd.isna(b[column]) else f"{a[column] / b[column]:.3g}"


def _rank_free_note(cost: pd.DataFrame) -> str:
    ranks = cost.loc[(cost["rank"] == NO_RANK) & (cost["variant"] != "floor"), "compared_at_rank"].dropna().unique()
    return f" Methods without a rank are compared with the references at rank {int(ranks[0])}." if len(ranks) else ""


def _number(value: float, digits: int) -> str:
    return "n/a" if pd.isna(value) else f"{value:.{digits}f}"


def section_cost(cost: pd.DataFrame | None) -> list[str]:
    """The cost stage: what it measured and how, its table of ratios, the targets for our implementations met or missed."""
    lines = ["## Cost at real layer sizes", ""]
    if cost is None:
        return lines + ["The cost stage did not run (config `cost.enabled: false`): the cost answers above come from "
                        "the runs' own step times and memory account, on the grid's models.", ""]
    first = cost.iloc[0]
    lines += [
        f"Every variant of the grid at each of its ranks, applied to the linear layers of a real model's block as a "
        f"run applies it, one training step (forward, backward given upstream gradients with the layers' input "
        f"requiring grad, the variant's optimizer step and hook), beside the frozen forward+backward floor of the same "
        f"layers and PEFT's LoRA at the same rank; {first['warmup']} warm-up and {first['rounds']} timed rounds, each "
        f"stepping every candidate once in a fresh random order, so load and cache state hit all alike. A ratio is the median over rounds "
        f"of the ratio within a round. Timing: {first['method']} on {first['threads']} thread(s), {first['device']} "
        f"{first['device_name']}, {first['dtype']}. Memory held: the exact account (trainable parameters, gradients, "
        f"optimizer state, saved activations); peak: {first['peak_method']}, the first step above what was allocated "
        f"before it. The stage took {first['stage_seconds']:.0f} s.{_rank_free_note(cost)} ([cost_real_shapes.png]"
        "(cost_real_shapes.png), [cost_real_shapes.csv](cost_real_shapes.csv)).",
        "",
    ]
    for shape_set, rows in cost.groupby("shape_set", sort=False):
        lines += [
            f"### {_cost_where(rows)}", "",
            "| variant | rank | optimizer | step ms | ÷ floor | ÷ PEFT LoRA | ÷ lora | MiB held (exact) | ÷ lora "
            "| peak MiB | ÷ lora |",
            "|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for row in rows.itertuples():
            if row.status != "ok":
                lines.append(f"| {row.variant} | {row.rank} | {row.optimizer} | not measured: {row.reason} "
                             "| | | | | | | |")
                continue
            lines.append(
                f"| {row.variant}{' (reference)' if row.role == 'reference' else ''} | {row.rank} | {row.optimizer} "
                f"| {row.step_ms:.1f} | {_number(row.ratio_floor, 3)} | {_number(row.ratio_peft_lora, 3)} "
                f"| {_number(row.ratio_lora, 3)} | {_number(row.mem_account_mb, 2)} | {_number(row.mem_ratio_lora, 3)} "
                f"| {_number(row.peak_mb, 1)} | {_number(row.peak_ratio_lora, 3)} |"
            )
        lines.append("")
    lines += ["### Targets for our own implementations", "",
              "| target | shape set | rank | measured | met |", "|---|---|---:|---:|---|"]
    missed = []
    for what, variant, column, limit in COST_TARGETS:
        for row in cost[(cost["variant"] == variant) & (cost["status"] == "ok")].itertuples():
            value = getattr(row, column)
            quartiles = (getattr(row, column + "_q1"), getattr(row, column + "_q3")) \
                if hasattr(row, column + "_q1") and not pd.isna(getattr(row, column + "_q1")) else None
            met = target_verdict(value, quartiles, limit)
            spread = f" (rounds' quartiles {quartiles[0]:.3f}–{quartiles[1]:.3f})" if quartiles else ""
            lines.append(f"| {what} | {row.shape_set} | {row.rank} | {_number(value, 3)}{spread} | {met} |")
            if met.startswith(("**missed", "within")) and variant not in missed:
                missed.append(variant)
    lines.append("")
    lines += [f"- {variant} did not clearly meet a target here; {TARGET_BOUNDS[variant]}." for variant in missed]
    return lines + [""]


def target_verdict(value: float, quartiles: tuple[float, float] | None, limit: float) -> str:
    """``met``/``**missed**`` only where the rounds agree: a timed ratio whose quartiles over rounds straddle the
    limit is ``within noise`` (its median alone would name a side by chance); a deterministic one (memory) has none."""
    if pd.isna(value):
        return "n/a"
    if quartiles is not None and quartiles[0] <= limit < quartiles[1]:
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
        "examples whose argmax label is right); forgetting is the mean over source tasks (and lm-eval tasks and "
        "paraphrase retrieval, where the config names them) of the score before minus after fine-tuning (0 = "
        "nothing forgotten). In the tables, ± is the half-width of a 95% percentile-bootstrap CI of one "
        "variant's mean over seeds (1000 resamples), the interval the figures draw; with few seeds it is "
        "optimistic. Comparisons between variants do not use it: they use the paired Student-t interval above.",
    ]


def write_summary(results: pd.DataFrame, out_path: Path, harness: list[str] = (),
                  cost: pd.DataFrame | None = None) -> None:
    """Write the markdown summary of ``results`` (all runs; comparisons use ok runs, at the chosen lr or along
    the lr sweep); ``harness``: the lines of :func:`lorabench.report.harness.section_harness`, where the
    pipeline's benchmarks are known; ``cost``: the cost stage's table, where it ran (the cost answers come from it)."""
    rank = reference_rank(results)
    ok = results[results["status"] == "ok"]
    selected = at_reference_rank(selected_ok(results), rank)
    swept = at_reference_rank(ok, rank)
    tables = {model: variant_table(group) for model, group in selected.groupby("model")}
    lines = ["# lorabench summary", "", *section_what_was_run(results), "", *section_lr_choice(results), "",
             "## Results per model", ""]
    for model, table in tables.items():
        lines += section_model_table(model, table, rank)
    lines += ["## What this data says about MATH.md's questions", "",
              "Paired by seed: mean of per-seed differences (tasks averaged within each seed) with a Student-t 95% "
              "interval; a direction is named only when the interval excludes 0.", ""]
    models = [ModelRuns(model, selected[selected["model"] == model], swept[swept["model"] == model])
              for model in tables]
    for question, answer in QUESTIONS.items():
        lines += [f"**{question}**", ""]
        lines += [f"- {answer(runs, cost is not None)}" for runs in models] or ["- no ok runs to answer from."]
        if cost is not None and (line := cost_answer(cost, question.split()[0])):
            lines.append(f"- {line}")
        lines.append("")
    lines += [*section_cost(cost), *harness, *section_meaning(results)]
    Path(out_path).parent.mkdir(parents=True, exist_ok=True)
    Path(out_path).write_text("\n".join(lines) + "\n")
