"""The cost stage (lorabench/cost.py) on the tiny shape set, and its figure and tables in the report."""

from __future__ import annotations

import json
import logging
import math
import random
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml

from lorabench import stages
from lorabench.checks import ConfigError, load_grid
from lorabench.cost import Candidate, Rounds, median_interval, run_cost, run_rounds
from lorabench.cost_targets import SHAPE_SETS, TARGETS, Target, flop_bound
from lorabench.job import CostJob
from lorabench.report import plots
from lorabench.report.summary import (
    cost_answer,
    section_cost,
    section_cost_targets,
    target_verdict,
)
from tests.pipeline import SMOKE
from tests.variants_fixtures import one_torch_thread  # noqa: F401  (autouse)

TINY = SHAPE_SETS["tiny"].layers
RANK = 2
TARGET_RANK = 4
MAX_ROUNDS = 12


def _settings(variants: list[dict], **overrides) -> dict:
    """A cost job's JSON form (``lorabench cost --settings``)."""
    return {
        "shapes": {"tiny": {"cpu_tokens": 16, "cuda_tokens": 16}},
        "rounds": 2,
        "warmup": 0,
        "profile_cpu_peak": True,
        "device": "cpu",
        "alpha": 8,
        "dtype": "float32",
        "variant_modules": [],
        "target_ranks": [TARGET_RANK],
        "target_halfwidth": 0.03,
        "max_rounds": MAX_ROUNDS,
        "max_seconds": 60,
        "variants": variants,
        **overrides,
    }


@pytest.fixture(scope="module")
def table(tmp_path_factory: pytest.TempPathFactory) -> pd.DataFrame:
    """The grid leaves out lora and peft_lora (measured anyway, as references) and has a method PEFT refuses."""
    out = tmp_path_factory.mktemp("cost") / "cost.csv"
    variants = [
        {"name": "additive", "uses": "additive", "ranks": [RANK], "optimizer": "adamw", "options": {}, "lrs": []},
        {"name": "resampled", "uses": "resampled", "ranks": [RANK], "optimizer": "sgd", "options": {}, "lrs": []},
        {"name": "full", "uses": "full", "ranks": [0], "optimizer": "adamw", "options": {}, "lrs": []},
        {
            "name": "broken",
            "uses": "peft",
            "ranks": [RANK],
            "optimizer": "adamw",
            "lrs": [],
            "options": {"peft_config": {"peft_type": "LORA", "no_such_field": 1}},
        },
    ]
    run_cost(CostJob.from_dict(_settings(variants)), out, threads=1)
    return pd.read_csv(out)


def test_stage_writes_one_row_per_candidate_with_what_it_measured(table: pd.DataFrame) -> None:
    assert [(row.variant, row.rank, row.role) for row in table.itertuples()] == [
        ("floor", 0, "floor"),
        ("additive", RANK, "grid"),
        ("resampled", RANK, "grid"),
        ("full", 0, "grid"),
        ("broken", RANK, "grid"),
        ("additive", TARGET_RANK, "target_rank"),
        ("resampled", TARGET_RANK, "target_rank"),
        ("peft_lora", RANK, "reference"),
        ("peft_lora", TARGET_RANK, "reference"),
        ("lora", RANK, "reference"),
        ("lora", TARGET_RANK, "reference"),
    ]
    assert {"method", "threads", "tokens", "dtype", "device", "shapes", "stage_seconds", "stopped"} <= set(
        table.columns
    )
    assert (table["method"] == "process_time").all() and (table["threads"] == 1).all() and (table["tokens"] == 16).all()
    floor = table[table["variant"] == "floor"].iloc[0]
    assert floor["ratio_floor"] == 1.0 and floor["status"] == "ok"


def test_ratios_are_positive_and_a_variant_that_cannot_be_applied_says_why(table: pd.DataFrame) -> None:
    ok = table[table["status"] == "ok"]
    for column in ("step_ms", "ratio_floor", "ratio_peft_lora", "ratio_lora", "peak_mb"):
        assert (ok[column] > 0).all(), column
    targeted = ok[ok["variant"].isin(["floor", "lora", "peft_lora", "additive"])]
    assert (targeted["ratio_lora_lo"] <= targeted["ratio_lora"]).all()
    assert (targeted["ratio_lora"] <= targeted["ratio_lora_hi"]).all()
    broken = table[table["variant"] == "broken"].iloc[0]
    assert broken["status"] == "not_measured" and "no_such_field" in broken["reason"]
    assert math.isnan(broken["step_ms"])


def test_memory_account_is_exact(table: pd.DataFrame) -> None:
    rows = table.set_index(["variant", "rank"])
    weights = sum(layer.m * layer.n for layer in TINY.values()) * 4 / 2**20
    factors = sum(RANK * (layer.m + layer.n) for layer in TINY.values()) * 4 / 2**20
    assert rows.loc[("full", 0), "mem_grads_mb"] == pytest.approx(weights)
    assert rows.loc[("full", 0), "mem_optimizer_mb"] == pytest.approx(2 * weights, rel=1e-3)  # Adam's moments (+ steps)
    assert rows.loc[("lora", RANK), "mem_params_mb"] == pytest.approx(factors)
    assert rows.loc[("lora", TARGET_RANK), "mem_params_mb"] == pytest.approx(factors * TARGET_RANK / RANK)
    assert rows.loc[("resampled", RANK), "mem_optimizer_mb"] == 0  # plain SGD, as the grid asks
    assert rows.loc[("lora", RANK), "mem_ratio_lora"] == 1.0


def test_unknown_shape_set_is_refused_naming_the_field() -> None:
    config = yaml.safe_load(SMOKE.read_text())
    config["cost"] = {"shapes": {"llama-70b": {"cpu_tokens": 8, "cuda_tokens": 8}}}
    with pytest.raises(ConfigError, match="cost/shapes"):
        load_grid(config)


def test_rounds_go_on_only_for_the_targets_until_a_cap_and_the_table_says_which(table: pd.DataFrame) -> None:
    """Tiny steps are noisy: ±0.03 is not reached in 12 rounds, so the cap stops them, and says so."""
    assert set(table["stopped"]) == {"max_rounds"}
    rounds = table.set_index(["variant", "rank"])["rounds"]
    for key in [("floor", 0), ("lora", RANK), ("lora", TARGET_RANK), ("peft_lora", RANK), ("additive", TARGET_RANK)]:
        assert rounds[key] == MAX_ROUNDS, key  # in a target ratio: stepped on
    assert rounds[("resampled", RANK)] == rounds[("full", 0)] == 2  # in none (resampled's target is memory)
    paired = table.set_index(["variant", "rank"])
    assert paired.loc[("additive", RANK), "ratio_lora_rounds"] == MAX_ROUNDS
    assert paired.loc[("resampled", RANK), "ratio_lora_rounds"] == 2  # the rounds both stepped in


class _Clock:
    """Stands in for :class:`lorabench.cost.Clock`: each candidate's step takes its ``seconds`` times a seeded
    noise factor in [1 - noise, 1 + noise]."""

    method = "fake"

    def __init__(self, seconds: dict[str, float], noise: float) -> None:
        self.seconds, self.noise, self.random = seconds, noise, random.Random(0)

    def time(self, candidate: Candidate, index: int) -> None:
        candidate.times[index] = self.seconds[candidate.name] * (1 + self.noise * (2 * self.random.random() - 1))

    def end_round(self, index: int) -> None:
        pass


def _fake(seconds: dict[str, float]) -> list[Candidate]:
    return [Candidate(name, name, 0 if name == "floor" else 8, "adamw", "grid", step=lambda: None) for name in seconds]


SECONDS = {"floor": 1.0, "lora": 1.05, "peft_lora": 1.1, "dora": 3.0}


def test_rounds_stop_once_every_target_ratio_is_narrow(caplog: pytest.LogCaptureFixture) -> None:
    candidates = _fake(SECONDS)
    with caplog.at_level(logging.INFO, logger="lorabench.cost"):
        stopped = run_rounds(candidates, Rounds(2, 0, 0.03, 500, 60), _Clock(SECONDS, 0.05), "fake")
    assert stopped == "converged"
    rounds = {c.name: len(c.times) for c in candidates}
    assert rounds["dora"] == 2 and 6 <= min(rounds["peft_lora"], rounds["floor"]) and rounds["lora"] < 500
    assert rounds["lora"] == max(rounds["peft_lora"], rounds["floor"])  # a candidate leaves with its last open pair
    lines = [record.getMessage() for record in caplog.records]
    assert lines[0].startswith("cost fake: round 1, 4 candidates, ") and "round 3, 3 candidates" in lines[2]
    assert "open: lora r8/peft_lora r8 ±inf, lora r8/floor ±inf" in lines[2]  # too few rounds for an interval yet


def test_rounds_stop_at_the_cap_when_noise_keeps_a_ratio_wide() -> None:
    candidates = _fake(SECONDS)
    assert run_rounds(candidates, Rounds(2, 0, 0.03, 20, 60), _Clock(SECONDS, 0.5), "fake") == "max_rounds"
    assert {c.name: len(c.times) for c in candidates} == {"floor": 20, "lora": 20, "peft_lora": 20, "dora": 2}
    assert run_rounds(_fake(SECONDS), Rounds(2, 0, 0.03, 10**6, 0.05), _Clock(SECONDS, 0.5), "f") == "max_seconds"


def test_the_median_interval_covers_the_median_as_stated() -> None:
    assert median_interval([5.0, 4.0, 3.0, 2.0, 1.0]) is None  # 2/2^5 > 5%: no 95% interval from 5 values
    assert median_interval([6.0, 5.0, 4.0, 3.0, 2.0, 1.0]) == (1.0, 6.0)
    assert median_interval([float(i) for i in range(1, 101)]) == (40.0, 61.0)  # the textbook k = 40 at n = 100
    draw = random.Random(0)
    median = math.log(2)  # of Exp(1): skewed, as step times are
    hits = 0
    for _ in range(2000):
        lo, hi = median_interval([draw.expovariate(1.0) for _ in range(20)])
        hits += lo <= median <= hi
    assert 0.945 <= hits / 2000 < 0.99  # at n = 20 the exact coverage is 95.9% (k = 6); k = 7 would give 88.5%


def _target(variant: str, column: str) -> Target:
    return next(t for t in TARGETS if (t.variant, t.column) == (variant, column))


def test_flop_bound_is_the_ratio_of_gemm_flops() -> None:
    lora_floor, lora_peft = _target("lora", "ratio_floor"), _target("lora", "ratio_peft_lora")
    additive_lora, memory = _target("additive", "ratio_lora"), _target("resampled", "peak_ratio_lora")
    assert flop_bound(lora_floor, SHAPE_SETS["square-1024"], 64) == 1 + 6 * 64 * 2048 / (4 * 1024 * 1024) == 1.1875
    llama = SHAPE_SETS["llama-1b"].layers.values()
    assert flop_bound(lora_floor, SHAPE_SETS["llama-1b"], 8) == pytest.approx(
        1 + 1.5 * 8 * sum(x.m + x.n for x in llama) / sum(x.m * x.n for x in llama)
    )
    assert flop_bound(lora_peft, SHAPE_SETS["tiny"], 8) == flop_bound(additive_lora, SHAPE_SETS["tiny"], 8) == 1.0
    assert flop_bound(memory, SHAPE_SETS["tiny"], 8) is None


def test_report_prints_the_bound_beside_a_target_physics_rules_out_and_a_capped_ratio() -> None:
    row = {
        "variant": "lora",
        "status": "ok",
        "shape_set": "square-1024",
        "rank": 64,
        "rounds": 90,
        "stopped": "max_seconds",
        "target_halfwidth": 0.03,
        "ratio_floor": 1.25,
        "ratio_floor_lo": 1.21,
        "ratio_floor_hi": 1.30,
        "ratio_floor_rounds": 90,
        "ratio_peft_lora": 0.97,
        "ratio_peft_lora_lo": 0.95,
        "ratio_peft_lora_hi": 0.99,
        "ratio_peft_lora_rounds": 64,
    }
    text = "\n".join(section_cost_targets(pd.DataFrame([row])))
    assert (
        "| lora's step ≤ 1.10× the frozen floor | square-1024 | 64 | 1.250 [1.210, 1.300] | 1.188 "
        "| **not converged: max_seconds (±0.050)**, 90 | **missed** (unattainable: FLOP bound 1.188 > 1.1) |"
    ) in text
    assert (
        "| own lora's step ≤ 1.0× PEFT LoRA's | square-1024 | 64 | 0.970 [0.950, 0.990] | 1.000 | converged, 64 "
        "| met |" in text
    )


def test_the_cli_logs_its_progress_to_the_job_log(tmp_path: Path) -> None:
    """The rule sends the command's output to its log: `tail -f` of it shows the stage alive."""
    settings = _settings([], profile_cpu_peak=False, target_ranks=[RANK], max_rounds=3)
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "lorabench.cli",
            "cost",
            "--settings",
            json.dumps(settings),
            "--out",
            str(tmp_path / "cost.csv"),
            "--threads",
            "1",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    )
    assert "cost tiny: set up lora r2 (first step taken)" in done.stderr
    assert "cost tiny: round 1, 3 candidates" in done.stderr and "cost: 3 rows written to" in done.stderr


def test_schema_defaults_measure_the_llama_block_and_the_1024_layer() -> None:
    config = yaml.safe_load(SMOKE.read_text())
    del config["cost"]
    job = stages.cost_job(load_grid(config), "cpu")
    assert set(job.shapes) == {"llama-1b", "square-1024"} and job.rounds >= 6
    assert job.target_ranks == [8, 64] and job.target_halfwidth == 0.03
    assert {variant.name: variant.optimizer for variant in job.variants}["resampled"] == "sgd"


def test_report_draws_the_figure_and_the_tables_from_the_csv(table: pd.DataFrame, tmp_path: Path) -> None:
    plots.plot_cost_real_shapes(table, tmp_path / "cost.png")
    assert (tmp_path / "cost.png").stat().st_size > 10_000
    text = "\n".join(section_cost(table))
    assert (
        f"| additive | 2 | adamw | {MAX_ROUNDS} |" in text
        and f"| lora (reference) | 2 | adamw | {MAX_ROUNDS} |" in text
    )
    assert "| additive (target rank) | 4 | adamw |" in text and "| resampled | 2 | sgd | 2 |" in text
    assert "| broken | 2 | adamw | not measured:" in text
    assert f"targets' variants at ranks {TARGET_RANK} too" in text and "| tiny | " in text and "| max_rounds |" in text
    row = table.set_index(["variant", "rank"]).loc[("additive", RANK)]
    verdict = target_verdict(row["ratio_lora"], (row["ratio_lora_lo"], row["ratio_lora_hi"]), 1.0)
    assert (
        f"| additive's step ≤ 1.0× lora's | tiny | 2 | {row['ratio_lora']:.3f} [{row['ratio_lora_lo']:.3f}, "
        f"{row['ratio_lora_hi']:.3f}] | 1.000 | "
    ) in text and f"| {verdict} |" in text
    answer = cost_answer(table, "2.")
    assert answer.startswith("Cost at real layer sizes, tiny (") and "additive at rank 2 (adamw) vs lora" in answer
    assert (
        f"vs lora (adamw): step {row['ratio_lora']:.3g}× [{row['ratio_lora_lo']:.3f}, {row['ratio_lora_hi']:.3f}]"
        in answer
    )
    shapes = table["shapes"].iloc[0]  # the layer shapes: named once, in the cost section's table of shape sets
    assert shapes not in answer and text.count(shapes) == 1 and f"| tiny | {shapes} |" in text


def test_a_target_is_met_or_missed_only_where_the_rounds_agree() -> None:
    assert target_verdict(0.95, (0.93, 0.97), 1.0) == "met"
    assert target_verdict(1.05, (1.02, 1.08), 1.0) == "**missed**"
    assert target_verdict(0.98, (0.91, 1.04), 1.0) == "within noise (met by the median)"
    assert target_verdict(1.02, (0.97, 1.06), 1.0) == "within noise (missed by the median)"
    assert target_verdict(0.9, (math.nan, math.nan), 1.0) == "within noise (met by the median)"  # too few rounds
    assert target_verdict(1.002, None, 1.1) == "met"  # memory: deterministic, no interval


def test_report_without_the_stage_says_so(tmp_path: Path) -> None:
    plots.plot_cost_real_shapes(None, tmp_path / "cost.png")
    assert (tmp_path / "cost.png").stat().st_size > 1000
    assert any("did not run" in line for line in section_cost(None))
