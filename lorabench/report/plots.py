"""The report's figures: one function per PNG, each ``(table, out_path) -> None``.

Every figure that compares variants uses only ``status == "ok"`` runs at the lr chosen on
validation (:func:`lorabench.aggregate.best_lr`), one colour per variant that never changes
between figures (:func:`variant_palette` over the whole table's variants), and a 95% bootstrap CI over seeds
(:func:`ci95_bounds`). Where tasks are pooled, each seed's runs are averaged first, so the CI stays a CI over seeds
and not over tasks.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator
from itertools import product
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import seaborn as sns  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402
from matplotlib.patches import Patch  # noqa: E402
from matplotlib.ticker import LogLocator, MaxNLocator, NullFormatter, ScalarFormatter  # noqa: E402

from lorabench.aggregate import best_lr  # noqa: E402
from lorabench.cost_targets import SHAPE_SETS, Target, flop_bound  # noqa: E402

DPI = 120
N_BOOT = 1000
BOOT_SEED = 0
"""Fixed so the CIs in the figures and in summary.md are the same numbers on every rebuild."""
VARIANT_COLOURS = {
    "full": "dimgray",
    "full_sgd": "darkgray",
    "lora": "tab:blue",
    "peft_lora": "tab:cyan",
    "rslora": "navy",
    "dora": "tab:purple",
    "pissa": "tab:pink",
    "loraplus": "gold",
    "peft": "darkkhaki",
    "vera": "tab:olive",
    "frozen_a": "tab:green",
    "frozen_b": "tab:brown",
    "additive": "tab:orange",
    "resampled": "tab:red",
}
"""Known variants in their reading order, family by family (:data:`FAMILY_MARKERS`): the practitioners' baselines
first, the study's own variants last. Colours that share a hue (lora, peft_lora, rslora) differ in lightness."""
FAMILY_MARKERS = {
    "full FT": ("s", ("full", "full_sgd")),
    "LoRA-like": ("o", ("lora", "peft_lora", "rslora", "dora", "pissa", "loraplus", "peft")),
    "VeRA": ("D", ("vera",)),
    "this study's": ("^", ("frozen_a", "frozen_b", "additive", "resampled")),
}
"""Family -> (marker, its variants): with 13+ variants colour alone is not distinct at a glance, so a point's
shape says its family. Variants of no family (user variants, config aliases) get :data:`OTHER_MARKER`."""
OTHER_MARKER = "P"
MARKER_GLYPHS = {"s": "■", "o": "●", "D": "◆", "^": "▲"}
"""How the legend's title names each family's marker."""
SPARE_COLOURS = ("teal", "magenta", "lime", "maroon", "indigo", "coral", "sienna", "slateblue")
DODGE = 0.02
"""Sideways spread between variants drawn at the same x, in decades of a log axis per variant (±0.12 decades for
13 variants): no point hides another, and the spread stays under half the gap between swept learning rates."""
STATUS_COLOURS = {"ok": "tab:green", "diverged": "tab:orange", "failed": "tab:red"}
NO_RANK = 0
"""The rank recorded for a method without one (full fine-tuning, and configs that alias it)."""
MIN_ACCURACY_SPAN = 0.1


def variant_order(variants: Iterable[str]) -> list[str]:
    """Known variants in :data:`VARIANT_COLOURS` order, then unknown ones alphabetically."""
    present = set(variants)
    known = [name for name in VARIANT_COLOURS if name in present]
    return known + sorted(present - set(VARIANT_COLOURS))


def variant_colour(variant: str) -> str:
    """The fixed colour of a shipped variant (figures that show one named variant, e.g. the theory checks)."""
    return VARIANT_COLOURS[variant]


def variant_palette(variants: Iterable[str]) -> dict[str, str]:
    """Shipped variants keep their colours; the others (user variants, config aliases), in name order, take
    :data:`SPARE_COLOURS`, then evenly spaced hues: every variant distinct, and the same colour in every
    figure drawn from the same table, which is why figures pass the whole table's variants."""
    order = variant_order(variants)
    unknown = [name for name in order if name not in VARIANT_COLOURS]
    hues = [
        matplotlib.colors.to_hex(rgb) for rgb in sns.color_palette("husl", max(0, len(unknown) - len(SPARE_COLOURS)))
    ]
    spare = dict(zip(unknown, [*SPARE_COLOURS, *hues], strict=False))  # more colours than names
    return {name: VARIANT_COLOURS.get(name) or spare[name] for name in order}


def variant_marker(variant: str) -> str:
    """The marker of ``variant``'s family (:data:`FAMILY_MARKERS`)."""
    return next((marker for marker, members in FAMILY_MARKERS.values() if variant in members), OTHER_MARKER)


def _finite(values: Iterable[float]) -> np.ndarray:
    array = np.asarray(list(values), dtype=float)
    return array[~np.isnan(array)]


def ci95_bounds(values: Iterable[float]) -> tuple[float, float]:
    """95% percentile-bootstrap CI of the mean: what seaborn's ``errorbar=("ci", 95)`` computes.

    Vectorised because seaborn's own bootstrap loops in Python (~50 ms a group), which made
    loss curves with hundreds of steps take minutes. Fewer than two values: NaN, as in seaborn.
    """
    array = _finite(values)
    if array.size < 2:
        return np.nan, np.nan
    draws = np.random.default_rng(BOOT_SEED).integers(0, array.size, size=(N_BOOT, array.size))
    low, high = np.percentile(array[draws].mean(axis=1), [2.5, 97.5])
    return float(low), float(high)


ERRORBAR = ci95_bounds
"""Passed to seaborn as ``errorbar``, so figures and summary.md show the same intervals."""


def ci95(values: Iterable[float]) -> tuple[float, float, float]:
    """(mean, low, high); NaN mean when there are no values."""
    array = _finite(values)
    return (float(array.mean()) if array.size else np.nan, *ci95_bounds(array))


def selected_ok(results: pd.DataFrame) -> pd.DataFrame:
    """The ok runs at the validation-chosen lr: what every comparison figure is drawn from."""
    selected = best_lr(results)
    return selected[selected["status"] == "ok"]


def reference_rank(results: pd.DataFrame) -> int:
    """The largest rank in the grid: the rank single-rank views show, where costs differ most."""
    ranks = results.loc[results["rank"] != NO_RANK, "rank"]
    return int(ranks.max()) if len(ranks) else NO_RANK


def at_reference_rank(runs: pd.DataFrame, rank: int) -> pd.DataFrame:
    """Runs at ``rank``, plus the methods without a rank (full fine-tuning), which belong in every view."""
    return runs[(runs["rank"] == rank) | (runs["rank"] == NO_RANK)]


def seed_means(runs: pd.DataFrame, by: list[str], values: list[str]) -> pd.DataFrame:
    """Per (``by``, seed), the mean of ``values`` over everything else (tasks): one point per seed."""
    return runs.groupby([*by, "seed"], as_index=False)[values].mean()


def curves_of(loss_curves: pd.DataFrame, results: pd.DataFrame) -> pd.DataFrame:
    """The loss curves of the runs at the validation-chosen lr."""
    return loss_curves[loss_curves["run_id"].isin(best_lr(results)["run_id"])]


def _grid(n_rows: int, n_cols: int, title: str, panel: tuple[float, float] = (4.2, 3.2), sharey=False):
    fig, axes = plt.subplots(
        n_rows, n_cols, figsize=(panel[0] * n_cols, panel[1] * n_rows),
        squeeze=False, sharey=sharey, layout="constrained",
    )  # fmt: skip
    fig.suptitle(title, fontsize=12)
    return fig, axes


def _variant_legend(
    fig, variants: Iterable[str], palette: dict[str, str], extra: list[tuple[Line2D, str]] = ()
) -> None:
    """One legend below all panels, outside the data, for the ``variants`` shown in their order (family by family),
    each with its colour and its family's marker; the title says which marker is which family."""
    labels = variant_order(variants)
    handles = [Line2D([], [], color=palette[name], marker=variant_marker(name), linewidth=2) for name in labels]
    handles += [handle for handle, _ in extra]
    labels += [label for _, label in extra]
    families = " · ".join(
        f"{MARKER_GLYPHS[marker]} {name}"
        for name, (marker, members) in FAMILY_MARKERS.items()
        if set(members) & set(labels)
    )
    columns = max(2, min(len(labels), int(fig.get_figwidth() / 1.45)))
    fig.legend(
        handles,
        labels,
        title=f"variant (marker: {families})",
        loc="outside lower center",
        ncols=columns,
        fontsize="small",
        title_fontsize="small",
    )


def _dodged(points: pd.DataFrame, x: str) -> pd.Series:
    """``points[x]`` spread sideways (multiplicatively, for a log axis) among the variants that share a value of
    ``x``, in :func:`variant_order`, so that none hides another."""
    factor = pd.Series(1.0, index=points.index)
    for _, same_x in points.groupby(x):
        order = variant_order(same_x["variant"])
        slot = same_x["variant"].map(order.index)
        factor[same_x.index] = 10 ** (DODGE * (slot - (len(order) - 1) / 2))
    return points[x] * factor


def _mean_ci_lines(ax, points: pd.DataFrame, x: str, y: str, palette: dict[str, str]) -> None:
    """Per variant, the mean of ``y`` over seeds at each ``x`` with its 95% CI bars, joined in ``x`` order, drawn at
    dodged x (:func:`_dodged`) with the variant's colour and family marker. ``points``: one row per seed."""
    summary = points.groupby(["variant", x])[y].apply(lambda values: pd.Series(ci95(values), ["mean", "low", "high"]))
    summary = summary.unstack().reset_index()
    summary["at"] = _dodged(summary, x)
    for variant in variant_order(summary["variant"]):
        line = summary[summary["variant"] == variant].sort_values(x)
        error = [line["mean"] - line["low"], line["high"] - line["mean"]]
        ax.errorbar(
            line["at"],
            line["mean"],
            yerr=error,
            color=palette[variant],
            marker=variant_marker(variant),
            markersize=6,
            linewidth=1.2,
            capsize=2,
            markeredgecolor="white",
            markeredgewidth=0.5,
        )


def _save(fig, out_path: Path) -> None:
    Path(out_path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_path, dpi=DPI, bbox_inches="tight")
    plt.close(fig)


def _no_data(out_path: Path, title: str) -> None:
    """A figure that says why it is empty, so the report still builds and shows the gap."""
    fig, ax = plt.subplots(figsize=(6, 2))
    ax.axis("off")
    ax.text(0.5, 0.5, f"{title}\n\nno successful (status ok) runs to plot", ha="center", va="center")
    _save(fig, out_path)


def _log2_rank_axis(ax, ranks: Iterable[int]) -> None:
    ranks = sorted(set(ranks))
    ax.set_xscale("log", base=2)
    ax.set_xticks(ranks, [str(r) for r in ranks])
    ax.minorticks_off()


def _accuracy_axis(ax, axis: str = "y") -> None:
    """Show at least 0.1 of accuracy, so near-identical values do not look like big differences."""
    get, set_ = (ax.get_ylim, ax.set_ylim) if axis == "y" else (ax.get_xlim, ax.set_xlim)
    low, high = get()
    low = max(low, -0.02)
    high = min(max(high, low + MIN_ACCURACY_SPAN), 1.02)
    set_(min(low, high - MIN_ACCURACY_SPAN), high)


def _task_model_panels(axes, tasks: list[str], models: list[str]) -> Iterator[tuple[object, str, str]]:
    """(axis, task, model) for a grid with one row per task and one column per model."""
    for (i, task), (j, model) in product(enumerate(tasks), enumerate(models)):
        yield axes[i, j], task, model


def plot_accuracy_vs_rank(results: pd.DataFrame, out_path: Path) -> None:
    """Target accuracy vs rank per (task, model) panel; full FT is a horizontal band."""
    title = "Target accuracy after fine-tuning vs rank (one panel per task × model)"
    runs = selected_ok(results)
    if runs.empty:
        return _no_data(out_path, title)
    tasks, models = sorted(runs["task"].unique()), sorted(runs["model"].unique())
    fig, axes = _grid(
        len(tasks),
        len(models),
        title + "\nline: mean over seeds, bars: 95% CI; lr chosen on validation;"
        "\nvariants at one rank spread sideways so none hides another",
        panel=(5.6, 4.2),
    )
    ranked = runs[runs["rank"] != NO_RANK]
    rank_free = runs[runs["rank"] == NO_RANK]
    palette = variant_palette(results["variant"])
    for ax, task, model in _task_model_panels(axes, tasks, models):
        panel = ranked[(ranked["task"] == task) & (ranked["model"] == model)]
        if not panel.empty:
            _mean_ci_lines(ax, panel, "rank", "target_acc_after", palette)
            _log2_rank_axis(ax, panel["rank"])
        for variant, full in rank_free[(rank_free["task"] == task) & (rank_free["model"] == model)].groupby("variant"):
            mean, low, high = ci95(full["target_acc_after"])
            ax.axhline(mean, color=palette[variant], linestyle="--")
            if not np.isnan(low):
                ax.axhspan(low, high, color=palette[variant], alpha=0.15)
        ax.set(title=f"{model} · {task}", xlabel="rank r (log₂ scale)", ylabel="target test accuracy")
        _accuracy_axis(ax)
    full_handle = Line2D([], [], color="black", linestyle="--")
    _variant_legend(fig, runs["variant"], palette, [(full_handle, "dashed: no rank (full FT;\nband: 95% CI)")])
    _save(fig, out_path)


def _errorbar_point(ax, x: pd.Series, y: pd.Series, colour: str, marker: str) -> None:
    """A mean point with asymmetric 95% CI bars in both directions (none where n < 2)."""
    (mx, lx, hx), (my, ly, hy) = ci95(x), ci95(y)
    xerr = None if np.isnan(lx) else [[mx - lx], [hx - mx]]
    yerr = None if np.isnan(ly) else [[my - ly], [hy - my]]
    ax.errorbar(mx, my, xerr=xerr, yerr=yerr, fmt=marker, color=colour, markersize=7, capsize=3)


FAMILIES = {
    "full fine-tuning": ("full", "full_sgd"),
    "this study's variants": ("resampled", "additive", "frozen_a", "frozen_b"),
}
"""Panels of the learning-forgetting figure; every other variant goes in the panel of LoRA and its relatives."""
LORA_FAMILY = "LoRA and its relatives"
OVERVIEW = "every variant at its chosen lr"
REFERENCES = ("lora", "full")
"""Drawn faintly in the panels they do not belong to, so every panel reads against them."""
FIGURE_SIZE = (1400 / DPI, 1000 / DPI)
"""The learning-forgetting figure of one model (2 x 2 panels), in inches: 1400 x 1000 pixels."""


def family(variant: str) -> str:
    """The panel of ``variant`` in the learning-forgetting figure."""
    return next((name for name, members in FAMILIES.items() if variant in members), LORA_FAMILY)


def _trade_off_points(runs: pd.DataFrame, trajectories: pd.DataFrame | None, measure: str) -> pd.DataFrame:
    """Per (model, variant, lr, step) the mean over seeds (tasks averaged per seed) of target test accuracy and
    ``measure``: every evaluation during training where recorded, else each run's final one."""
    finals = runs.assign(step=runs["steps_done"])[
        ["run_id", "model", "variant", "lr", "seed", "step", "target_acc_after", measure]
    ]
    if trajectories is not None:
        along = trajectories[trajectories["run_id"].isin(runs["run_id"])].rename(
            columns={"target_test": "target_acc_after"}
        )
        finals = pd.concat([finals[~finals["run_id"].isin(along["run_id"])], along[finals.columns]], ignore_index=True)
    per_seed = finals.groupby(["model", "variant", "lr", "step", "seed"], as_index=False)[
        ["target_acc_after", measure]
    ].mean()
    return per_seed.groupby(["model", "variant", "lr", "step"], as_index=False)[["target_acc_after", measure]].mean()


def plot_forgetting_vs_accuracy(
    results: pd.DataFrame, out_path: Path, trajectories: pd.DataFrame | None = None
) -> None:
    """Learning (target test accuracy) vs forgetting from measured points only, as Biderman et al. (2024, "LoRA
    Learns Less and Forgets Less") draw it: the base model top left (forgetting axis inverted: up = less
    forgetting), each learning rate's evaluations during training joined in step order, each learning rate's
    final point with 95% CIs over seeds, ★ the lr chosen on validation. The forgetting measure is the first of
    :data:`lorabench.report.measures.MEASURES` not saturated in these runs, named on the axis. One panel per
    variant family and one of every variant at its chosen lr, per model (one model: 2 x 2 panels at 1400 x 1000
    pixels); LoRA and full fine-tuning faint in the other families' panels."""
    from lorabench.report.measures import choose

    rank = reference_rank(results)
    title = f"Learning vs forgetting, measured points only (rank {rank}; full FT: no rank)"
    runs = at_reference_rank(results[results["status"] == "ok"], rank)
    if runs.empty:
        return _no_data(out_path, title)
    choice = choose(runs)
    measure = choice.measure or "forgetting"
    points = _trade_off_points(runs, trajectories, measure)
    chosen = best_lr(results)
    palette = variant_palette(results["variant"])
    models = sorted(runs["model"].unique())
    families = [name for name in (*FAMILIES, LORA_FAMILY) if any(family(v) == name for v in runs["variant"].unique())]
    panels = [(model, name) for model in models for name in [*families, OVERVIEW]]
    n_cols = 2 if len(panels) > 1 else 1
    n_rows = -(-len(panels) // n_cols)
    height = FIGURE_SIZE[1] * (100 + 450 * n_rows) / 1000  # a title band and 450 pixels a row of panels
    fig, axes = plt.subplots(
        n_rows, n_cols, figsize=(FIGURE_SIZE[0], height), squeeze=False, layout="constrained", sharex=True, sharey=True
    )
    saturated = "" if choice.measure else " — every measure saturated in these runs: no ranking by forgetting"
    fig.suptitle(
        f"{title}{saturated}\nthin line: one lr along training (evaluations at train.eval_at); dashed: "
        "final points in lr order; bars: 95% CI over seeds; ★ lr chosen on validation; ■ base model",
        fontsize=11,
    )
    for ax, (model, name) in zip(axes.flat, panels, strict=False):  # a grid may have spare axes
        panel = points[points["model"] == model]
        if name == OVERVIEW:
            picked = chosen[(chosen["model"] == model) & (chosen["status"] == "ok")]
            for variant, seeds in picked[picked["run_id"].isin(runs["run_id"])].groupby("variant"):
                per_seed = seeds.groupby("seed")[["target_acc_after", measure]].mean()
                _errorbar_point(
                    ax, per_seed["target_acc_after"], per_seed[measure], palette[variant], variant_marker(variant)
                )
        members = [v for v in variant_order(panel["variant"]) if family(v) == name]
        references = [v for v in REFERENCES if v in set(panel["variant"]) and v not in members and name != OVERVIEW]
        for variant in references + members:
            _draw_variant(
                ax,
                panel[panel["variant"] == variant],
                runs[(runs["model"] == model) & (runs["variant"] == variant)],
                chosen,
                measure,
                palette[variant],
                faint=variant in references,
                marker=variant_marker(variant),
            )
        base = runs[runs["model"] == model]
        ax.plot(base["target_acc_before"].mean(), 0.0, "s", color="black", markersize=7, zorder=5)
        ax.set_title(f"{model} · {name}", fontsize=11)
    for ax in axes.flat[len(panels) :]:
        ax.axis("off")
    for ax in axes[:, 0]:
        ax.set_ylabel(f"forgetting: {choice.names[measure]}\n(↑ less forgetting)")
    for ax in axes[-1, :]:
        ax.set_xlabel("learning: target test accuracy (→ more learning)")
    axes[0, 0].invert_yaxis()  # shared: up = less forgetting, as Biderman et al.'s source-score axis
    axes[0, 0].set_xlim(-0.03, 1.03)
    extra = [
        (Line2D([], [], color="black", marker="s", linestyle="none"), "base model"),
        (Line2D([], [], color="black", marker="*", markersize=12, linestyle="none"), "chosen lr"),
        (Line2D([], [], color="grey", alpha=0.35, linewidth=2), "faint: reference\n(lora, full)"),
    ]
    _variant_legend(fig, runs["variant"], palette, extra)
    _save(fig, out_path)


def _draw_variant(
    ax,
    points: pd.DataFrame,
    runs: pd.DataFrame,
    chosen: pd.DataFrame,
    measure: str,
    colour: str,
    faint: bool,
    marker: str,
) -> None:
    """One variant's measured points: a line per lr along training, its final points (CIs over seeds) joined in lr
    order, the chosen lr starred."""
    alpha = 0.3 if faint else 1.0
    finals = []
    for _, along in points.groupby("lr"):
        along = along.sort_values("step")
        ax.plot(
            along["target_acc_after"],
            along[measure],
            "-",
            marker=".",
            color=colour,
            alpha=0.6 * alpha,
            linewidth=1.0,
            markersize=4,
        )
        finals.append(along.iloc[-1])
    if not finals:
        return
    finals = pd.DataFrame(finals).sort_values("lr")
    ax.plot(finals["target_acc_after"], finals[measure], "--", color=colour, alpha=0.8 * alpha, linewidth=1.4)
    if faint:
        return
    for _, seeds in runs.groupby("lr"):
        per_seed = seeds.groupby("seed")[["target_acc_after", measure]].mean()
        _errorbar_point(ax, per_seed["target_acc_after"], per_seed[measure], colour, marker)
    picked = runs[runs["run_id"].isin(chosen["run_id"])]
    if not picked.empty:
        star = picked.groupby("seed")[["target_acc_after", measure]].mean().mean()
        ax.plot(
            star["target_acc_after"], star[measure], "*", color=colour, markersize=15, markeredgecolor="black", zorder=6
        )


def plot_lr_sweep(results: pd.DataFrame, out_path: Path) -> None:
    """Validation accuracy vs learning rate per variant, the chosen lr filled and a choice at a sweep's edge ×."""
    from lorabench.aggregate import VALIDATION_COLUMN, lr_choices

    title = "Learning-rate sweeps: validation accuracy, which chooses the lr\n(one panel per task × model)"
    runs = results[results["status"] == "ok"]
    if runs.empty or VALIDATION_COLUMN not in runs:
        return _no_data(out_path, title)
    rank = reference_rank(results)
    runs = at_reference_rank(runs, rank)
    choices = at_reference_rank(lr_choices(runs), rank)
    tasks, models = sorted(runs["task"].unique()), sorted(runs["model"].unique())
    fig, axes = _grid(
        len(tasks),
        len(models),
        title + f"\nrank {rank}; line: mean over seeds, bars: 95% CI;\n"
        "○ ringed: chosen, × chosen at an edge of the sweep; variants at one lr spread sideways",
        panel=(7.2, 4.8),
    )
    palette = variant_palette(results["variant"])
    for ax, task, model in _task_model_panels(axes, tasks, models):
        panel = runs[(runs["task"] == task) & (runs["model"] == model)]
        _mean_ci_lines(ax, panel, "lr", VALIDATION_COLUMN, palette)
        picked = choices[(choices["task"] == task) & (choices["model"] == model)]
        for row in picked.itertuples():
            value = panel.loc[(panel["variant"] == row.variant) & (panel["lr"] == row.chosen_lr), VALIDATION_COLUMN]
            ax.plot(
                _chosen_at(panel, row.variant, row.chosen_lr),
                value.mean(),
                "X" if row.at_edge else "o",
                color=palette[row.variant],
                markersize=12 if row.at_edge else 10,
                markeredgecolor="black",
                markerfacecolor="none" if not row.at_edge else palette[row.variant],
                markeredgewidth=1.5,
            )
        ax.set_xscale("log")
        ax.set(title=f"{model} · {task}", xlabel="learning rate (log scale)", ylabel="validation accuracy")
        _accuracy_axis(ax)
    _variant_legend(fig, runs["variant"], palette)
    _save(fig, out_path)


def _chosen_at(panel: pd.DataFrame, variant: str, lr: float) -> float:
    """Where :func:`_mean_ci_lines` drew ``variant``'s point at ``lr``: its dodged x."""
    points = panel.drop_duplicates(["variant", "lr"]).reset_index(drop=True)
    at = _dodged(points, "lr")
    return float(at[(points["variant"] == variant) & (points["lr"] == lr)].iloc[0])


def plot_cost(results: pd.DataFrame, out_path: Path) -> None:
    """Time per optimizer step and peak memory added by training, per variant and model."""
    rank = reference_rank(results)
    title = f"Cost per variant at rank {rank} (full FT: no rank), tasks averaged per seed"
    runs = at_reference_rank(selected_ok(results), rank)
    if runs.empty:
        return _no_data(out_path, title)
    metrics = {"step_ms": "time per optimizer step (ms)", "mem_account_mb": "memory training holds (MiB, exact)"}
    points = seed_means(runs, ["model", "variant"], list(metrics))
    models, order = sorted(points["model"].unique()), variant_order(points["variant"])
    panel = (0.55 * len(order) + 2, 3.2)
    fig, axes = _grid(2, len(models), title + "\nbar: mean over seeds, black line: 95% CI", panel=panel)
    for j, model in enumerate(models):
        for i, (metric, label) in enumerate(metrics.items()):
            sns.barplot(
                points[points["model"] == model], x="variant", y=metric, hue="variant", order=order,
                palette=variant_palette(results["variant"]), errorbar=ERRORBAR, ax=axes[i, j], legend=False,
                err_kws={"color": "black", "linewidth": 1.2},
            )  # fmt: skip
            axes[i, j].set(title=f"{model}", xlabel="", ylabel=label)
            plt.setp(axes[i, j].get_xticklabels(), rotation=40, ha="right", rotation_mode="anchor")
    _save(fig, out_path)


MEMORY_PARTS = {
    "mem_params_mb": "trainable parameters",
    "mem_grads_mb": "gradients",
    "mem_optimizer_mb": "optimizer state",
    "mem_activations_mb": "saved activations",
    "mem_variant_state_mb": "variant state (buffers, frozen factors)",
}
"""The memory account's parts (results.csv columns) -> legend label, stacked in this order."""


def plot_memory_account(results: pd.DataFrame, out_path: Path) -> None:
    """What training holds per variant, stacked by part: exact byte counts, the same for every seed, so no CI."""
    rank = reference_rank(results)
    title = f"Memory training holds at rank {rank} (full FT: no rank), exact account, tasks averaged"
    runs = at_reference_rank(selected_ok(results), rank).dropna(subset=["mem_account_mb"])
    if runs.empty:
        return _no_data(out_path, title)
    parts = runs.groupby(["model", "variant"])[list(MEMORY_PARTS)].mean().fillna(0)  # records before a part existed
    models = sorted(runs["model"].unique())
    fig, axes = _grid(1, len(models), title, panel=(0.55 * runs["variant"].nunique() + 2, 3.4))
    colours = sns.color_palette("colorblind", len(MEMORY_PARTS))
    for ax, model in zip(axes[0], models, strict=True):
        table = parts.loc[model].reindex(variant_order(parts.loc[model].index))
        bottom = np.zeros(len(table))
        for (column, label), colour in zip(MEMORY_PARTS.items(), colours, strict=True):
            ax.bar(table.index, table[column], bottom=bottom, color=colour, label=label)
            bottom += table[column].to_numpy()
        ax.set(title=model, ylabel="MiB")
        plt.setp(ax.get_xticklabels(), rotation=40, ha="right", rotation_mode="anchor")
    axes[0, -1].legend(loc="upper left", bbox_to_anchor=(1.01, 1), frameon=False, fontsize="small")
    _save(fig, out_path)


def plot_params_vs_accuracy(results: pd.DataFrame, out_path: Path) -> None:
    """Trainable parameters (log) vs target accuracy: one point per rank, joined per variant."""
    title = "Trainable parameters vs target accuracy (tasks averaged per seed; one point per rank)"
    runs = selected_ok(results)
    if runs.empty:
        return _no_data(out_path, title)
    points = seed_means(runs, ["model", "variant", "rank", "trainable_params"], ["target_acc_after"])
    models = sorted(points["model"].unique())
    fig, axes = _grid(
        1,
        len(models),
        title + "\npoint: mean over seeds, bars: 95% CI; variants with equal parameter "
        "counts spread sideways so none hides another",
        panel=(7.2, 4.8),
    )
    palette = variant_palette(results["variant"])
    for ax, model in zip(axes[0], models, strict=True):
        _mean_ci_lines(ax, points[points["model"] == model], "trainable_params", "target_acc_after", palette)
        ax.set_xscale("log")
        ax.set(title=model, xlabel="trainable parameters (log scale)", ylabel="target test accuracy")
        _accuracy_axis(ax)
    _variant_legend(fig, points["variant"], palette)
    _save(fig, out_path)


def plot_loss_curves(loss_curves: pd.DataFrame, out_path: Path) -> None:
    """Mean training loss vs step per variant, CI band over seeds, at the reference rank."""
    rank = reference_rank(loss_curves)
    title = f"Training loss at rank {rank} (full FT: no rank; one panel per task × model)"
    curves = at_reference_rank(loss_curves[loss_curves["status"] == "ok"], rank)
    if curves.empty:
        return _no_data(out_path, title)
    tasks, models = sorted(curves["task"].unique()), sorted(curves["model"].unique())
    fig, axes = _grid(
        len(tasks),
        len(models),
        title + "\nline: mean over seeds, band: 95% CI; log scale, so the late differences show",
        panel=(7.2, 4.4),
    )
    palette = variant_palette(loss_curves["variant"])
    for ax, task, model in _task_model_panels(axes, tasks, models):
        panel = curves[(curves["task"] == task) & (curves["model"] == model)]
        sns.lineplot(panel, x="step", y="loss", hue="variant", palette=palette, errorbar=ERRORBAR, ax=ax, legend=False)
        ax.set_yscale("log")
        ax.set(title=f"{model} · {task}", xlabel="optimizer step", ylabel="training loss (cross-entropy, nats; log)")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    _variant_legend(fig, curves["variant"], palette)
    _save(fig, out_path)


def plot_status(results: pd.DataFrame, out_path: Path) -> None:
    """Runs per variant by status, every grid point counted, so failures cannot hide."""
    title = "Runs per variant by status (every lr, rank, task and seed of the grid)"
    models = sorted(results["model"].unique())
    if not models:
        return _no_data(out_path, title)
    order = variant_order(results["variant"])
    fig, axes = _grid(1, len(models), title, panel=(4.2, 0.35 * len(order) + 1.2), sharey=True)
    for ax, model in zip(axes[0], models, strict=True):
        counts = pd.crosstab(results.loc[results["model"] == model, "variant"], results["status"])
        counts = counts.reindex(index=order[::-1], columns=list(STATUS_COLOURS), fill_value=0)
        left = np.zeros(len(counts))
        for status, colour in STATUS_COLOURS.items():
            ax.barh(counts.index, counts[status], left=left, color=colour)
            left += counts[status].to_numpy()
        for y, total in enumerate(left):
            ax.text(total, y, f" {int(total)}", va="center", fontsize=8)
        ax.margins(x=0.12)
        ax.set(title=model, xlabel="runs (count)", ylabel="variant")
    handles = [Patch(color=colour) for colour in STATUS_COLOURS.values()]
    fig.legend(handles, list(STATUS_COLOURS), title="status", loc="outside center right")
    _save(fig, out_path)


def theory_table(out_csv: Path, seed: int = 0) -> pd.DataFrame:
    """The Monte Carlo checks of docs/variants.md from :mod:`lorabench.theory`, long form with a ``panel`` column.

    Sizes are ``lorabench.theory``'s defaults, which its author keeps small enough for a CPU.
    """
    from lorabench import theory

    panels = {
        "resampled": theory.resampled_update_error(seed=seed),
        "frozen_a": theory.frozen_a_residual(seed=seed),
        "additive": theory.additive_rank(seed=seed),
    }
    table = pd.concat([frame.assign(panel=name) for name, frame in panels.items()], ignore_index=True)
    Path(out_csv).parent.mkdir(parents=True, exist_ok=True)
    table.to_csv(out_csv, index=False)
    return table


def _identity_line(ax, values: pd.Series) -> None:
    low, high = values.min(), values.max()
    ax.plot([low, high], [low, high], color="black", linestyle=":", label="measured = expected")


def plot_theory(table: pd.DataFrame, out_path: Path) -> None:
    """Three panels: 1/√N convergence of resampling, frozen-A residual, additive rank."""
    fig, axes = _grid(
        1, 3, "docs/variants.md claims checked numerically (Monte Carlo, small random matrices)", panel=(4.4, 3.8)
    )
    resampled, frozen, additive = (table[table["panel"] == name] for name in ("resampled", "frozen_a", "additive"))

    ax = axes[0, 0]
    colour = variant_colour("resampled")
    ax.loglog(resampled["samples"], resampled["relative_error"], "o-", color=colour, label="measured")
    first = resampled.iloc[0]
    reference = first["relative_error"] * np.sqrt(first["samples"] / resampled["samples"])
    ax.loglog(resampled["samples"], reference, ":", color="black", label="∝ 1/√N reference")
    ax.set(title="§2 resampled: mean update → −2ηG", xlabel="samples N (log)", ylabel="rel. error of the mean (log)")
    ax.legend(loc="upper right")

    ax = axes[0, 1]
    frozen = frozen.astype({"m": int, "r": int})
    sns.scatterplot(frozen, x="expected", y="residual", hue="m", style="r", palette="viridis", ax=ax, s=50)
    _identity_line(ax, frozen["expected"])
    ax.set_xscale("log")
    ax.set_yscale("log")
    for axis in (ax.xaxis, ax.yaxis):
        axis.set_major_locator(LogLocator(subs=(1, 2, 5)))
        axis.set_major_formatter(ScalarFormatter())
        axis.set_minor_formatter(NullFormatter())
    ax.set(title="§4 frozen A: E‖(I−P)A*‖² = r(m−r)", xlabel="expected r(m − r) (log)",
           ylabel="measured mean residual (log)")  # fmt: skip
    ax.legend(fontsize=7, ncols=2, loc="upper left")

    ax = axes[0, 2]
    colour = variant_colour("additive")
    ax.scatter(additive["expected"], additive["rank"], color=colour, s=50, label="measured", zorder=3)
    for (expected, rank), shapes in additive.groupby(["expected", "rank"]):
        label = "\n".join(f"({r.m:.0f},{r.n:.0f},r={r.r:.0f})" for r in shapes.itertuples())
        ax.annotate(
            label, (expected, rank), textcoords="offset points", xytext=(8, -4), ha="left", va="top", fontsize=7
        )
    _identity_line(ax, additive["expected"])
    ax.margins(x=0.3, y=0.15)  # room for the shape labels right of the points
    ax.set(title="§3 additive: rank(ΔW) = 2r", xlabel="expected min(2r, m, n)", ylabel="numerical rank of ΔW")
    ax.legend(loc="upper left")
    _save(fig, out_path)


COST_PANELS = {
    "ratio_floor": ("step time ÷ frozen floor\n(forward+backward of the same layers)", 1.10),
    "ratio_peft_lora": ("step time ÷ PEFT LoRA's\n(same rank)", 1.0),
    "peak_ratio_lora": ("peak memory of a step ÷ lora's\n(same rank)", 1.1),
}
"""The cost stage's ratios drawn (column -> axis label, the target line of issue item 3 drawn at it)."""


def cost_label(row: pd.Series) -> str:
    """``lora r4``, or ``full`` for a method without a rank; ``(ref)`` marks a reference the grid leaves out."""
    name = f"{row['variant']} r{row['rank']}" if row["rank"] else row["variant"]
    return name + (" (ref)" if row["role"] == "reference" else "")


def floor_bound(row: pd.Series) -> float:
    """The FLOP bound of ``row``'s step over the floor's (:func:`lorabench.cost_targets.flop_bound`); NaN where
    it is not modelled."""
    target = Target("", row["variant"], "ratio_floor", math.inf)
    shapes = SHAPE_SETS.get(row["shape_set"])
    bound = flop_bound(target, shapes, int(row["rank"])) if shapes else None
    return math.nan if bound is None else bound


def plot_cost_real_shapes(table: pd.DataFrame | None, out_path: Path) -> None:
    """The cost stage's ratios per variant: to the frozen floor, to PEFT's LoRA, and memory to our LoRA; one row
    of panels per shape set. ``table`` None: the stage did not run (config ``cost.enabled: false``)."""
    title = "Cost at real layer sizes: one training step of each variant, interleaved with the references"
    if table is None:
        fig, ax = plt.subplots(figsize=(6, 2))
        ax.axis("off")
        ax.text(
            0.5, 0.5, f"{title}\n\nthe cost stage did not run (config cost.enabled: false)", ha="center", va="center"
        )
        return _save(fig, out_path)
    runs = table[(table["status"] == "ok") & (table["variant"] != "floor")]
    if runs.empty:
        return _no_data(out_path, title)
    sets = list(dict.fromkeys(runs["shape_set"]))
    order = variant_order(runs["variant"])
    n_rows = runs.groupby("shape_set").size().max()
    fig, axes = _grid(
        len(sets),
        len(COST_PANELS),
        title + "\nbar: median over rounds of the ratio within a round; "
        "dotted: the target for our implementation; grey: 1; |: the FLOP bound",
        panel=(4.6, 0.32 * n_rows + 1.6),
    )
    palette = variant_palette(table.loc[table["variant"] != "floor", "variant"])
    for i, shape_set in enumerate(sets):
        rows = runs[runs["shape_set"] == shape_set].copy()
        rows["order"] = rows["variant"].map(order.index)
        rows = rows.sort_values(["order", "rank"])
        labels = [cost_label(row) for _, row in rows.iterrows()]
        first = rows.iloc[0]
        where = (
            f"{shape_set}: {first['tokens']} tokens, {first['dtype']}, {first['device']}, {first['method']}, "
            f"{first['threads']} thread(s)"
        )
        for j, (column, (label, target)) in enumerate(COST_PANELS.items()):
            ax = axes[i, j]
            values = rows[column].to_numpy(dtype=float)
            ax.barh(labels, values, color=[palette[v] for v in rows["variant"]])
            ax.invert_yaxis()
            ax.axvline(1.0, color="grey", linewidth=1)
            ax.axvline(target, color="black", linestyle=":", linewidth=1.2)
            for y, value in enumerate(values):
                if not np.isnan(value):
                    ax.text(value, y, f" {value:.2f}", va="center", fontsize=7)
            if column == "ratio_floor":
                bounds = [floor_bound(row) for _, row in rows.iterrows()]
                ax.scatter(bounds, range(len(bounds)), marker="|", s=120, color="black", zorder=3, label="FLOP bound")
                if not np.isnan(bounds).all():
                    ax.legend(loc="lower right", fontsize=7)
            ax.set_xscale("log")
            ax.xaxis.set_major_locator(LogLocator(subs=(1, 2, 5)))
            ax.xaxis.set_major_formatter(ScalarFormatter())
            ax.xaxis.set_minor_formatter(NullFormatter())
            ax.margins(x=0.25)
            ax.set(title=where if j == 0 else shape_set, xlabel=label + " (log)")
            ax.title.set_fontsize(8 if j == 0 else 10)
            if j:
                ax.set_yticklabels([])
    _save(fig, out_path)
