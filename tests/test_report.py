"""Figures, theory table and summary.md from synthetic records (see test_aggregate.write_grid)."""

from __future__ import annotations

import inspect
import re
import sys
import types
from pathlib import Path

import matplotlib.colors
import matplotlib.image
import numpy as np
import pandas as pd
import pytest
from test_aggregate import BAD_LR, GOOD_LR, write_grid

import lorabench
from lorabench.aggregate import aggregate, write_tables
from lorabench.records import run_reason
from lorabench.report import DESCRIPTION, REPORT_ITEMS, plots, run_report
from lorabench.report.summary import QUESTIONS, write_summary

CAPTIONS = Path(__file__).parents[1] / "workflow" / "report"


def _stub_theory() -> types.ModuleType:
    """Exact answers in the shape of lorabench.theory's API, so report tests do not depend on it."""
    stub = types.ModuleType("lorabench.theory")
    stub.resampled_update_error = lambda seed, samples=(10, 100, 1000): pd.DataFrame(
        {"samples": samples, "relative_error": [2 / np.sqrt(s) for s in samples]}
    )
    stub.frozen_a_residual = lambda seed, ms=(16, 32), rs=(1, 4): pd.DataFrame(
        [{"m": m, "r": r, "residual": r * (m - r), "expected": r * (m - r)} for m in ms for r in rs]
    )
    stub.additive_rank = lambda seed, shapes=((8, 12, 1), (16, 24, 4)): pd.DataFrame(
        [{"m": m, "n": n, "r": r, "rank": 2 * r, "expected": 2 * r} for m, n, r in shapes]
    )
    return stub


@pytest.fixture
def stub_theory(monkeypatch: pytest.MonkeyPatch) -> None:
    stub = _stub_theory()
    monkeypatch.setitem(sys.modules, "lorabench.theory", stub)
    monkeypatch.setattr(lorabench, "theory", stub, raising=False)


@pytest.fixture(scope="module")
def report_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One full report for the module: drawing is the slow part, so it is done once."""
    root = tmp_path_factory.mktemp("report")
    (root / "runs").mkdir()
    write_grid(root / "runs", models=("gpt2-tiny", "pythia-14m"))
    write_tables(*aggregate(sorted((root / "runs").rglob("*.json"))), root / "reports")
    with pytest.MonkeyPatch.context() as patch:
        patch.setitem(sys.modules, "lorabench.theory", _stub_theory())
        patch.setattr(lorabench, "theory", sys.modules["lorabench.theory"], raising=False)
        run_report(root / "reports")
    return root / "reports"


@pytest.fixture(scope="module")
def results(report_dir: Path) -> pd.DataFrame:
    return pd.read_csv(report_dir / "results.csv")


def test_every_report_item_is_written_and_non_empty(report_dir: Path) -> None:
    for name in REPORT_ITEMS:
        if name != "cost_real_shapes.csv":  # the cost stage's output (tests/test_cost.py), not the report's
            assert (report_dir / name).stat().st_size > 200, name


def test_figures_are_readable_pngs(report_dir: Path) -> None:
    for name in (n for n in REPORT_ITEMS if n.endswith(".png")):
        height, width, _ = matplotlib.image.imread(report_dir / name).shape
        assert 300 < width < 2500 and 200 < height < 2000, (name, width, height)


def test_every_report_item_has_a_caption() -> None:
    for name, (category, caption, _) in REPORT_ITEMS.items():
        assert category and (CAPTIONS / caption).read_text().strip(), name


def _flat(path: Path) -> str:
    """summary.md's text with its prose unwrapped (wrapped lines joined), so a sentence reads as one string."""
    return " ".join(path.read_text().split())


def test_summary_mentions_every_variant_and_question(report_dir: Path, results: pd.DataFrame) -> None:
    summary = (report_dir / "summary.md").read_text()
    for variant in results["variant"].unique():
        assert f"| {variant} |" in summary, variant
    for question in QUESTIONS:
        assert question in _flat(report_dir / "summary.md")
    for link in ("forgetting_vs_accuracy.png", "cost.png", "accuracy_vs_rank.png", "params_vs_accuracy.png"):
        assert f"]({link})" in summary and (report_dir / link).exists()


def test_summary_opens_on_its_answers_in_short_lines(report_dir: Path) -> None:
    summary = (report_dir / "summary.md").read_text()
    headings = [line for line in summary.splitlines() if line.startswith("## ")]
    assert headings[0] == "## Answers to the study's questions" and "## What was run" in headings
    assert max(len(line) for line in summary.splitlines()) <= 200


def test_summary_states_the_holm_family_and_every_verdict_carries_its_decision(report_dir: Path) -> None:
    summary = (report_dir / "summary.md").read_text()
    rows = [line for line in summary.splitlines() if line.startswith("| ") and line.split("|")[1].strip().isdigit()]
    assert f"The family: the {len(rows)} comparisons of the answers above" in _flat(report_dir / "summary.md")
    answers = _flat(report_dir / "summary.md").split("## Answers")[1].split("### The comparisons")[0]
    # every verdict in the answers carries its Holm-adjusted decision, its Wilcoxon test and its power line
    assert answers.count("difference ") == answers.count("Holm-adjusted p ") == len(rows)
    assert answers.count("Wilcoxon p ") == answers.count("seeds for 80% power at ±") == len(rows)
    for row in rows:
        assert row.split("|")[8].strip() in ("rejected", "not rejected"), row
    assert any("non-inferiority, margin 0.05" in row for row in rows)


def test_q1_reads_learning_differently_in_weight_space(tmp_path: Path) -> None:
    results, _, _ = aggregate(write_grid(tmp_path, variants=("lora", "full", "resampled"), lrs=(GOOD_LR,)))
    # effective rank of dW: resampled 20 + seed, lora 3 + seed, full 25 + seed -> paired differences exactly +17, -5
    base = results["variant"].map({"lora": 3.0, "full": 25.0, "resampled": 20.0})
    results["extra__delta_effective_rank_mean"] = base + results["seed"]
    results["extra__intruder_dimensions_mean"] = results["variant"].map({"lora": 2.0, "full": 1.0, "resampled": 1.0})
    write_summary(results, tmp_path / "summary.md")
    summary = _flat(tmp_path / "summary.md")
    assert (
        "effective rank of ΔW 21.0 vs lora 4.0: higher: difference +17.000 [95% CI +17.000, +17.000; 3 seeds]"
        in summary
    )
    assert "effective rank of ΔW 21.0 vs full 26.0: lower: difference -5.000" in summary
    assert "intruder dimensions 1.0 vs full 1.0: not distinguishable at this sample size" in summary


def test_summary_numbers_come_from_the_data(report_dir: Path) -> None:
    summary = _flat(report_dir / "summary.md")
    # forgetting = base + 0.01 * seed over seeds 0..2 -> means 0.09 (resampled) and 0.21 (lora)
    # per-seed jitter is shared by all variants, so paired differences are exact: frozen_b - frozen_a = -0.14
    assert "frozen_b vs frozen_a: frozen_b falls behind: difference -0.140 [95% CI -0.140, -0.140; 3 seeds]" in summary
    assert "vs lora by exact-match accuracy drop, at accuracy 0.668: resampled forgets less: difference -" in summary
    assert "| resampled | 16,000 | 0.618 ± 0.010 |" in summary  # the table: means over seeds at the chosen lr
    assert "0.50× lora's trainable parameters" in summary
    assert "Rank 8 (full FT: no rank)" in summary
    # memory account: 16 bytes per trainable parameter (weights, grads, two moments) + 1 MiB of activations
    assert "Training holds 1.244 vs lora 1.244 and full 153.588 MiB (exact account" in summary
    assert "| lora | 16,000 |" in summary and "| 1.244 ± 0.000 |" in summary
    assert "- optimizers: adamw (full, lora," in summary and "; sgd (resampled) - replay: none" in summary
    assert "- replay: none (fine-tuning batches hold target examples only) - device" in summary  # no replay


def test_report_description_states_the_answers_with_links_to_the_figures(report_dir: Path) -> None:
    description = (report_dir / DESCRIPTION).read_text()
    for question in QUESTIONS:
        assert f"**{question}**" in description
    assert "target accuracy: frozen_b vs frozen_a -0.14 [-0.14, -0.14] significant" in description
    page = (CAPTIONS / "workflow.rst").read_text()  # the report's first page: the answers, then where to look
    assert page.startswith(f".. include:: reports/{DESCRIPTION}\n")
    links = re.findall(r"`([\w.]+)`_", description + page)
    assert "summary.md" in links and "forgetting_vs_accuracy.png" in links
    assert set(links) <= set(REPORT_ITEMS)  # every link names a result the report holds


def test_the_summary_says_forgetting_was_measured_under_replay() -> None:
    from lorabench.report.summary import _replay

    assert _replay(pd.DataFrame({"replay": [0.05, 0.05]})).startswith("0.05 of each fine-tuning batch drawn from")
    assert "under that rehearsal" in _replay(pd.DataFrame({"replay": [0.0, 0.1]}))


def test_summary_lists_failed_and_diverged_runs_by_first_line(report_dir: Path) -> None:
    summary = (report_dir / "summary.md").read_text()
    assert "`gpt2-tiny/add/lora/r4/lr0.001/seed99` — failed: RuntimeError: loss became nan at step 3" in summary
    assert "— diverged: step 3: non-finite loss" in summary  # where and why, from the record's divergence
    assert "Traceback follows" not in summary
    assert "ok 132, diverged 1, failed 1" in summary


def test_error_headline_of_a_traceback_is_the_exception() -> None:
    traceback = 'Traceback (most recent call last):\n  File "x.py", line 1, in f\n    g()\nValueError: rank 3\n'
    assert run_reason(None, None, traceback) == "ValueError: rank 3"
    assert run_reason(None, None, "loss became nan at step 7\ndetails") == "loss became nan at step 7"
    assert run_reason(float("nan"), float("nan"), float("nan")) == "(no reason recorded)"
    assert run_reason(12.0, "loss above 4 x the first", None) == "step 12: loss above 4 x the first"


def test_summary_says_what_is_not_answered(tmp_path: Path) -> None:
    results, _, _ = aggregate(write_grid(tmp_path, variants=("lora", "full"), lrs=(GOOD_LR,), seeds=(0,)))
    write_summary(results, tmp_path / "summary.md")
    summary = (tmp_path / "summary.md").read_text()
    assert "not answered on tiny-a: no ok runs of resampled." in summary
    assert "not answered on tiny-a: no ok runs of additive." in summary
    assert "(1 seed, no CI)" in summary


def test_summary_of_a_grid_where_everything_failed(tmp_path: Path) -> None:
    results, _, _ = aggregate(write_grid(tmp_path, variants=("lora",), ranks=(4,), seeds=(0,)))
    failed = results.assign(status="failed").drop(columns="extra__validation_accuracy")
    write_summary(failed, tmp_path / "summary.md")
    summary = (tmp_path / "summary.md").read_text()
    assert "ok 0, diverged 0, failed 4" in summary and "- no ok runs to answer from." in summary


def test_summary_counts_and_names_choices_at_a_sweep_edge(report_dir: Path, results: pd.DataFrame) -> None:
    summary = (report_dir / "summary.md").read_text()
    swept = results[results["status"] == "ok"].groupby(["model", "task", "variant", "rank"]).ngroups
    # two lrs per sweep: every choice is at an edge; GOOD_LR is the lower one
    assert f"{swept} of {swept} swept (model, task, variant, rank) chose a learning rate at an edge" in summary
    assert f"- gpt2-tiny · add · lora · r4: chose {GOOD_LR:g} of {GOOD_LR:g}–{BAD_LR:g} (lowest)" in summary


def test_summary_words_follow_the_paired_interval(tmp_path: Path) -> None:
    results, _, _ = aggregate(write_grid(tmp_path, variants=("lora", "frozen_a", "frozen_b"), lrs=(GOOD_LR,)))
    noisy = results.copy()
    # frozen_a vs lora: per-seed differences +0.05, -0.05, +0.01: the interval includes 0
    shift = {0: 0.06, 1: -0.04, 2: 0.02}
    rows = noisy["variant"] == "frozen_a"
    noisy.loc[rows, "target_acc_after"] = noisy.loc[rows, "target_acc_after"] + noisy.loc[rows, "seed"].map(shift)
    write_summary(noisy, tmp_path / "summary.md")
    summary = _flat(tmp_path / "summary.md")
    assert "frozen_a's target accuracy vs lora's: not shown to be within 0.05 (non-inferiority): difference" in summary
    assert "below lora" not in summary and "above lora" not in summary and "frozen_a matches lora" not in summary


def test_a_clear_match_is_read_as_non_inferior(tmp_path: Path) -> None:
    results, _, _ = aggregate(write_grid(tmp_path, variants=("lora", "frozen_a", "frozen_b"), lrs=(GOOD_LR,)))
    write_summary(results, tmp_path / "summary.md")
    assert "frozen_a matches lora (within 0.05): difference" in _flat(tmp_path / "summary.md")


def test_ci95_matches_seaborn_bootstrap_interval() -> None:
    from seaborn.algorithms import bootstrap

    values = np.random.default_rng(1).normal(0.5, 0.1, size=12)
    mean, low, high = plots.ci95(values)
    seaborn_low, seaborn_high = np.percentile(bootstrap(values, func="mean", n_boot=4000, seed=0), [2.5, 97.5])
    assert mean == pytest.approx(values.mean())
    assert low == pytest.approx(seaborn_low, abs=0.01) and high == pytest.approx(seaborn_high, abs=0.01)
    assert np.isnan(plots.ci95([0.3])[1])


def test_variant_colours_do_not_depend_on_which_variants_are_present() -> None:
    assert plots.variant_palette(["resampled", "lora"]) == {"lora": "tab:blue", "resampled": "tab:red"}
    assert plots.variant_order(["zeta", "lora", "alpha", "full"]) == ["full", "lora", "alpha", "zeta"]


@pytest.mark.parametrize("n_new", [2, 30])
def test_new_variants_get_distinct_colours_that_no_shipped_variant_has(n_new: int) -> None:
    """Two names whose hash once picked the same spare colour ("tied_a", "shared_a"), and more names than spares."""
    new = ["tied_a", "shared_a"] if n_new == 2 else [f"user_{i}" for i in range(n_new)]
    palette = plots.variant_palette([*new, *plots.VARIANT_COLOURS])
    colours = [matplotlib.colors.to_hex(colour) for colour in palette.values()]
    assert len(set(colours)) == len(palette) == n_new + len(plots.VARIANT_COLOURS)
    assert palette == plots.variant_palette(reversed(list(palette)))  # deterministic, whatever the order


def test_variants_at_one_x_are_spread_so_none_hides_another() -> None:
    """Seven variants with one parameter count (as in the default grid) and two at another: distinct x, in the
    variants' order, within half the gap between two swept learning rates (a factor 3: 0.24 decades)."""
    same = ["lora", "peft_lora", "rslora", "pissa", "loraplus", "additive", "resampled"]
    points = pd.DataFrame({"variant": [*same, "frozen_a", "frozen_b"], "x": [8704.0] * 7 + [4608.0, 4608.0]})
    at = plots._dodged(points, "x")
    assert at.nunique() == len(points)
    assert list(at[:7].sort_values().index) == sorted(range(7), key=lambda i: plots.variant_order(same).index(same[i]))
    assert np.log10(at[:7].max() / at[:7].min()) < np.log10(3) / 2
    assert np.allclose(np.log10(at[:7]).mean(), np.log10(8704.0))  # centred on the true value


def test_every_shipped_variant_has_a_distinct_colour_and_its_family_marker() -> None:
    colours = [matplotlib.colors.to_hex(c) for c in plots.VARIANT_COLOURS.values()]
    assert len(set(colours)) == len(colours)
    families = [members for _, members in plots.FAMILY_MARKERS.values()]
    assert sorted(v for members in families for v in members) == sorted(plots.VARIANT_COLOURS)
    assert plots.variant_marker("resampled") == "^" and plots.variant_marker("my_variant") == plots.OTHER_MARKER


def test_figures_use_only_ok_runs_at_the_validation_lr(results: pd.DataFrame) -> None:
    used = plots.selected_ok(results)
    assert set(used["status"]) == {"ok"} and set(used["lr"]) == {GOOD_LR}
    assert BAD_LR in set(results["lr"])
    assert plots.reference_rank(results) == 8


def test_figures_without_ok_runs_still_render(tmp_path: Path) -> None:
    results, curves, _ = aggregate(write_grid(tmp_path, variants=("lora",), ranks=(4,), lrs=(GOOD_LR,), seeds=(0,)))
    failed = results.assign(status="failed")
    plots.plot_forgetting_vs_accuracy(failed, tmp_path / "empty.png")
    plots.plot_loss_curves(curves.assign(status="failed"), tmp_path / "empty_curves.png")
    assert (tmp_path / "empty.png").stat().st_size > 500 and (tmp_path / "empty_curves.png").stat().st_size > 500


def test_theory_table_has_three_panels(tmp_path: Path, stub_theory: None) -> None:
    table = plots.theory_table(tmp_path / "theory.csv")
    assert set(table["panel"]) == {"resampled", "frozen_a", "additive"}
    additive = table[table["panel"] == "additive"]
    assert (additive["rank"] == 2 * additive["r"]).all()
    assert len(pd.read_csv(tmp_path / "theory.csv")) == len(table)


def test_real_theory_module_takes_the_calls_theory_table_makes() -> None:
    """Only the signatures: running the Monte Carlo is lorabench.theory's own tests' job."""
    theory = pytest.importorskip("lorabench.theory")
    for function in (theory.resampled_update_error, theory.frozen_a_residual, theory.additive_rank):
        parameters = inspect.signature(function).parameters
        assert "seed" in parameters, function.__name__
        assert all(p.default is not p.empty for name, p in parameters.items() if name != "seed"), function.__name__
