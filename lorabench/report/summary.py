"""``summary.md``: what was run, one table per model, and what this data says about MATH.md's questions.

Every sentence is computed from the numbers, with the same bootstrap CI the figures draw, and
says "not separated" where the 95% CIs overlap instead of claiming a winner.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from lorabench.report.plots import (
    RANK_FREE, at_reference_rank, ci95, reference_rank, seed_means, selected_ok, variant_order,
)  # fmt: skip

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

    def overlaps(self, other: Estimate) -> bool:
        return not (self.high < other.low or other.high < self.low)


def _verdict(a: Estimate, b: Estimate, lower: str, higher: str) -> str:
    """``lower``/``higher`` for a vs b when the CIs separate them, otherwise an explicit hedge."""
    if not (a.known and b.known):
        return "cannot be compared"
    if not (a.has_ci and b.has_ci):
        return "not separated: one seed gives no CI"
    if a.overlaps(b):
        return "not separated: the 95% CIs overlap"
    return lower if a.mean < b.mean else higher


def variant_table(runs: pd.DataFrame) -> dict[str, dict[str, Estimate | float]]:
    """Per variant of one model: trainable params and an :class:`Estimate` per metric (tasks averaged per seed)."""
    points = seed_means(runs, ["variant"], METRICS)
    params = runs.groupby("variant")["trainable_params"].median()
    by_variant = dict(tuple(points.groupby("variant")))
    return {
        variant: {"params": params[variant], **{m: Estimate.of(by_variant[variant][m]) for m in METRICS}}
        for variant in variant_order(points["variant"])
    }


def error_headline(error: object) -> str:
    """The line that says what went wrong: a traceback's last line (the exception), else the first."""
    if not isinstance(error, str) or not error.strip():
        return "(no error message)"
    lines = [line for line in error.strip().splitlines() if line.strip()]
    return lines[-1].strip() if lines[0].startswith("Traceback") else lines[0].strip()


def _values(results: pd.DataFrame, column: str) -> str:
    return ", ".join(str(v) for v in sorted(results[column].dropna().unique()))


def _optimizers(results: pd.DataFrame) -> str:
    """``adamw (lora, dora, ...); sgd (resampled)``: which variants trained with which optimizer."""
    by_optimizer = results.groupby("optimizer")["variant"].unique()
    return "; ".join(f"{name} ({', '.join(variant_order(variants))})" for name, variants in by_optimizer.items())


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
        f"- ranks: {_values(results, 'rank')} (0 = no rank: full fine-tuning)",
        f"- learning rates: {_values(results, 'lr')}; seeds: {_values(results, 'seed')}",
        f"- optimizers: {_optimizers(results)}",
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
        lines += [f"- `{run.run_id}` — {run.status}: {error_headline(run.error)}" for run in listed]
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


def _missing(table: dict, needed: list[str], model: str) -> str | None:
    absent = [v for v in needed if v not in table]
    return f"not answered on {model}: no ok runs of {', '.join(absent)}." if absent else None


def answer_resampling(table: dict, model: str) -> str:
    """Q1: does resampling forget less than LoRA and full FT, and what does it cost?"""
    if note := _missing(table, ["resampled", "lora", RANK_FREE], model):
        return note
    res, lora, full = (table[v] for v in ("resampled", "lora", RANK_FREE))
    forget = "; ".join(
        f"vs {name} {row['forgetting'].text(3)} ({_verdict(res['forgetting'], row['forgetting'], 'less', 'more')})"
        for name, row in (("lora", lora), ("full", full))
    )
    return (
        f"On {model}, resampled forgets {res['forgetting'].text(3)} {forget}; its target accuracy is "
        f"{res['target_acc_after'].text(3)} vs lora {lora['target_acc_after'].text(3)} and full "
        f"{full['target_acc_after'].text(3)}, a step takes {res['step_ms'].text(1)} vs {lora['step_ms'].text(1)} "
        f"and {full['step_ms'].text(1)} ms, and training holds {_mib(res)} vs {_mib(lora)} and {_mib(full)} MiB "
        "(exact account: parameters, gradients, optimizer state, saved activations; "
        "[forgetting_vs_accuracy.png](forgetting_vs_accuracy.png), [cost.png](cost.png), "
        "[memory_account.png](memory_account.png))."
    )


def _mib(row: dict) -> str:
    """The memory account's mean: exact, the same for every seed, so a CI would only say ± 0."""
    return f"{row['mem_account_mb'].mean:.3f}" if row["mem_account_mb"].known else "n/a"


def answer_additive(table: dict, model: str) -> str:
    """Q2: does additive fit as well as LoRA at equal parameters, and is it cheaper per step?"""
    if note := _missing(table, ["additive", "lora"], model):
        return note
    add, lora = table["additive"], table["lora"]
    same = "the same" if add["params"] == lora["params"] else f"{add['params']:,.0f} vs {lora['params']:,.0f}"
    acc = _verdict(add["target_acc_after"], lora["target_acc_after"], "lower", "higher")
    step = _verdict(add["step_ms"], lora["step_ms"], "cheaper", "dearer")
    return (
        f"On {model}, with {same} trainable parameters, additive reaches target accuracy "
        f"{add['target_acc_after'].text(3)} vs lora {lora['target_acc_after'].text(3)} ({acc}) at "
        f"{add['step_ms'].text(1)} vs {lora['step_ms'].text(1)} ms per step ({step}) "
        "([accuracy_vs_rank.png](accuracy_vs_rank.png), [cost.png](cost.png))."
    )


def answer_frozen(table: dict, model: str) -> str:
    """Q3: does frozen-A match LoRA with half the parameters, and does frozen-B fall behind?"""
    if note := _missing(table, ["frozen_a", "frozen_b", "lora"], model):
        return note
    fa, fb, lora = table["frozen_a"], table["frozen_b"], table["lora"]
    match = _verdict(fa["target_acc_after"], lora["target_acc_after"], "below lora", "above lora")
    behind = _verdict(fb["target_acc_after"], fa["target_acc_after"], "frozen_b falls behind", "frozen_b is ahead")
    return (
        f"On {model}, frozen_a reaches {fa['target_acc_after'].text(3)} vs lora {lora['target_acc_after'].text(3)} "
        f"({match}) with {fa['params'] / lora['params']:.2f}× lora's trainable parameters, and frozen_b reaches "
        f"{fb['target_acc_after'].text(3)} ({behind}) "
        "([params_vs_accuracy.png](params_vs_accuracy.png), [accuracy_vs_rank.png](accuracy_vs_rank.png))."
    )


QUESTIONS = {
    "1. Does resampling forget less than LoRA and full fine-tuning, at what cost in target accuracy, time and "
    "memory?": answer_resampling,
    "2. At equal parameter count, does the additive form fit the target task as well as LoRA, and is it cheaper "
    "per step?": answer_additive,
    "3. Does frozen-A match LoRA's accuracy with half the trainable parameters, and does frozen-B fall "
    "behind?": answer_frozen,
}
"""MATH.md's research questions, each with the function that answers it from one model's table."""


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
        "nothing forgotten). ± is the half-width of a 95% bootstrap "
        "CI over seeds (percentile bootstrap of the mean, 1000 resamples, as seaborn's errorbar=(\"ci\", 95)), "
        "the same interval the figures draw; with few seeds it is "
        "optimistic, since a bootstrap interval never reaches beyond the observed values.",
    ]


def write_summary(results: pd.DataFrame, out_path: Path, harness: list[str] = ()) -> None:
    """Write the markdown summary of ``results`` (all runs; comparisons use ok runs at the chosen lr); ``harness``:
    the lines of :func:`lorabench.report.harness.section_harness`, where the pipeline's benchmarks are known."""
    rank = reference_rank(results)
    runs = at_reference_rank(selected_ok(results), rank)
    tables = {model: variant_table(group) for model, group in runs.groupby("model")}
    lines = ["# lorabench summary", "", *section_what_was_run(results), "", "## Results per model", ""]
    for model, table in tables.items():
        lines += section_model_table(model, table, rank)
    lines += ["## What this data says about MATH.md's questions", ""]
    for question, answer in QUESTIONS.items():
        lines += [f"**{question}**", ""]
        lines += [f"- {answer(table, model)}" for model, table in tables.items()] or ["- no ok runs to answer from."]
        lines.append("")
    lines += [*harness, *section_meaning(results)]
    Path(out_path).parent.mkdir(parents=True, exist_ok=True)
    Path(out_path).write_text("\n".join(lines) + "\n")
