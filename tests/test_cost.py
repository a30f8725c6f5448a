"""The cost stage (lorabench/cost.py) on the tiny shape set, and its figure and tables in the report."""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd
import pytest
import yaml

from lorabench.checks import ConfigError, load_grid
from lorabench.cost import SHAPE_SETS, run_cost
from lorabench.report import plots
from lorabench.report.summary import COST_TARGETS, cost_answer, section_cost, target_verdict
from tests.pipeline import SMOKE
from tests.variants_fixtures import one_torch_thread  # noqa: F401  (autouse)

TINY = SHAPE_SETS["tiny"].layers
RANK = 2


def _settings(variants: list[dict], **overrides) -> dict:
    return {"shapes": {"tiny": {"cpu_tokens": 16, "cuda_tokens": 16}}, "rounds": 2, "warmup": 0,
            "profile_cpu_peak": True, "device": "cpu", "alpha": 8, "dtype": "float32", "variant_modules": [],
            "variants": variants, **overrides}


@pytest.fixture(scope="module")
def table(tmp_path_factory: pytest.TempPathFactory) -> pd.DataFrame:
    """The grid leaves out lora and peft_lora (measured anyway, as references) and has a method PEFT refuses."""
    out = tmp_path_factory.mktemp("cost") / "cost.csv"
    variants = [
        {"name": "additive", "uses": "additive", "ranks": [RANK], "optimizer": "adamw", "options": {}},
        {"name": "resampled", "uses": "resampled", "ranks": [RANK], "optimizer": "sgd", "options": {}},
        {"name": "full", "uses": "full", "ranks": [0], "optimizer": "adamw", "options": {}},
        {"name": "broken", "uses": "peft", "ranks": [RANK], "optimizer": "adamw",
         "options": {"peft_config": {"peft_type": "LORA", "no_such_field": 1}}},
    ]
    run_cost(_settings(variants), out, threads=1)
    return pd.read_csv(out)


def test_stage_writes_one_row_per_candidate_with_what_it_measured(table: pd.DataFrame) -> None:
    assert list(table["variant"]) == ["floor", "additive", "resampled", "full", "broken", "peft_lora", "lora"]
    assert table.set_index("variant").loc[["peft_lora", "lora"], "role"].eq("reference").all()
    assert {"method", "threads", "tokens", "dtype", "device", "shapes", "stage_seconds"} <= set(table.columns)
    assert (table["method"] == "process_time").all() and (table["threads"] == 1).all() and (table["tokens"] == 16).all()
    floor = table[table["variant"] == "floor"].iloc[0]
    assert floor["ratio_floor"] == 1.0 and floor["status"] == "ok"


def test_ratios_are_positive_and_a_variant_that_cannot_be_applied_says_why(table: pd.DataFrame) -> None:
    ok = table[table["status"] == "ok"]
    for column in ("step_ms", "ratio_floor", "ratio_peft_lora", "ratio_lora", "peak_mb"):
        assert (ok[column] > 0).all(), column
    broken = table[table["variant"] == "broken"].iloc[0]
    assert broken["status"] == "not_measured" and "no_such_field" in broken["reason"]
    assert math.isnan(broken["step_ms"])


def test_memory_account_is_exact(table: pd.DataFrame) -> None:
    rows = table.set_index("variant")
    weights = sum(layer.m * layer.n for layer in TINY.values()) * 4 / 2**20
    factors = sum(RANK * (layer.m + layer.n) for layer in TINY.values()) * 4 / 2**20
    assert rows.loc["full", "mem_grads_mb"] == pytest.approx(weights)
    assert rows.loc["full", "mem_optimizer_mb"] == pytest.approx(2 * weights, rel=1e-3)  # Adam's moments (+ steps)
    assert rows.loc["lora", "mem_params_mb"] == pytest.approx(factors)
    assert rows.loc["resampled", "mem_optimizer_mb"] == 0  # plain SGD, as the grid asks
    assert rows.loc["lora", "mem_ratio_lora"] == 1.0


def test_unknown_shape_set_is_refused_naming_the_field() -> None:
    config = yaml.safe_load(SMOKE.read_text())
    config["cost"] = {"shapes": {"llama-70b": {"cpu_tokens": 8, "cuda_tokens": 8}}}
    with pytest.raises(ConfigError, match="cost/shapes"):
        load_grid(config)


def test_schema_defaults_measure_the_llama_block_and_the_1024_layer() -> None:
    config = yaml.safe_load(SMOKE.read_text())
    del config["cost"]
    settings = load_grid(config).cost_settings("cpu")
    assert set(settings["shapes"]) == {"llama-1b", "square-1024"} and settings["rounds"] >= 3
    assert {v["name"]: v["optimizer"] for v in settings["variants"]}["resampled"] == "sgd"


def test_report_draws_the_figure_and_the_tables_from_the_csv(table: pd.DataFrame, tmp_path: Path) -> None:
    plots.plot_cost_real_shapes(table, tmp_path / "cost.png")
    assert (tmp_path / "cost.png").stat().st_size > 10_000
    text = "\n".join(section_cost(table))
    assert "| additive | 2 | adamw |" in text and "| lora (reference) | 2 | adamw |" in text
    assert "| broken | 2 | adamw | not measured:" in text
    row = table.set_index("variant").loc["additive"]
    verdict = target_verdict(row["ratio_lora"], (row["ratio_lora_q1"], row["ratio_lora_q3"]), 1.0)
    assert row["ratio_lora_q1"] <= row["ratio_lora"] <= row["ratio_lora_q3"]
    assert (f"| {COST_TARGETS[1][0]} | tiny | 2 | {row['ratio_lora']:.3f} (rounds' quartiles "
            f"{row['ratio_lora_q1']:.3f}–{row['ratio_lora_q3']:.3f}) | {verdict} |") in text
    answer = cost_answer(table, "2.")
    assert answer.startswith("Cost at real layer sizes, tiny (") and "additive at rank 2 (adamw) vs lora" in answer
    shapes = table["shapes"].iloc[0]  # the layer shapes: named once, in the cost section's table of shape sets
    assert shapes not in answer and text.count(shapes) == 1 and f"| tiny | {shapes} |" in text


def test_a_target_is_met_or_missed_only_where_the_rounds_agree() -> None:
    assert target_verdict(0.95, (0.93, 0.97), 1.0) == "met"
    assert target_verdict(1.05, (1.02, 1.08), 1.0) == "**missed**"
    assert target_verdict(0.98, (0.91, 1.04), 1.0) == "within noise (met by the median)"
    assert target_verdict(1.02, (0.97, 1.06), 1.0) == "within noise (missed by the median)"
    assert target_verdict(1.002, None, 1.1) == "met"  # memory: deterministic, no quartiles


def test_report_without_the_stage_says_so(tmp_path: Path) -> None:
    plots.plot_cost_real_shapes(None, tmp_path / "cost.png")
    assert (tmp_path / "cost.png").stat().st_size > 1000
    assert any("did not run" in line for line in section_cost(None))
