"""Records -> results.csv / loss_curves.csv, validation errors, and lr selection on validation."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from lorabench import cli
from lorabench.aggregate import ACCOUNT_COLUMNS, RecordError, aggregate, best_lr, write_tables

SOURCE_TASKS = ("arith", "copy")
BASE_ACCURACY = {"full": 0.80, "lora": 0.70, "resampled": 0.60, "additive": 0.68, "frozen_a": 0.69, "frozen_b": 0.55}
BASE_FORGETTING = {"full": 0.30, "lora": 0.20, "resampled": 0.08, "additive": 0.18, "frozen_a": 0.15, "frozen_b": 0.12}
GOOD_LR, BAD_LR = 1e-3, 1e-2
"""GOOD_LR wins on validation; BAD_LR has the better *test* accuracy, so choosing on test is caught."""


def memory_account(trainable: int) -> dict[str, int]:
    """AdamW's account for ``trainable`` float32 parameters and 1 MiB of activations."""
    parts = {
        "trainable_parameters": 4 * trainable,
        "gradients": 4 * trainable,
        "optimizer_state": 8 * trainable,
        "saved_activations": 2**20,
    }
    return parts | {"total": sum(parts.values())}


def make_record(model: str, task: str, variant: str, rank: int, lr: float, seed: int, status: str = "ok") -> dict:
    """A schema-valid record whose metrics are simple known functions of the grid point."""
    ok = status == "ok"
    jitter = 0.01 * seed
    target_after = BASE_ACCURACY[variant] + jitter + (0.05 if lr == BAD_LR else 0.0) + 0.001 * rank
    validation = BASE_ACCURACY[variant] + jitter - (0.10 if lr == BAD_LR else 0.0)
    forgetting = BASE_FORGETTING[variant] + jitter
    trainable = 10_000_000 if variant == "full" else rank * 1000 * (1 if variant.startswith("frozen") else 2)
    steps = list(range(0, 50, 10))
    return {
        "schema_version": 1,
        "run_id": f"{model}/{task}/{variant}/r{rank}/lr{lr}/seed{seed}",
        "status": status,
        "error": "RuntimeError: loss became nan at step 3\nTraceback follows" if status == "failed" else None,
        "divergence": {"step": 3, "loss": None, "reason": "non-finite loss"} if status == "diverged" else None,
        "grid": {"model": model, "task": task, "variant": variant, "rank": rank, "lr": lr, "seed": seed},
        "hyperparameters": {
            "train": {"steps": 50, "batch_size": 8, "optimizer": "sgd" if variant == "resampled" else "adamw"},
        },
        "parameters": {"trainable": trainable, "total": 10_000_000 + trainable},
        "timing": {
            "method": "perf_counter",
            "train_seconds": 5.0 + seed if ok else None,
            "step_ms_median": 100.0 + 10 * rank + seed if ok else None,
            "step_ms_mean": 105.0 + 10 * rank if ok else None,
            "steps_done": 50 if ok else 3,
        },
        "memory": {
            "method": "cpu_peak_rss",
            "peak_mb": 900.0 + rank if ok else None,
            "baseline_mb": 800.0,
            "account": memory_account(trainable) if ok else None,
        },
        "loss_curve": {"step": steps, "loss": [2.0 / (1 + s) + jitter if ok else None for s in steps]},
        "target": {"task": task, "accuracy_before": 0.1, "accuracy_after": min(target_after, 1.0) if ok else None},
        "source": {
            name: {
                "accuracy_before": 0.9,
                "accuracy_after": 0.9 - forgetting if ok else None,
                "char_accuracy_before": 0.95,
                "char_accuracy_after": 0.95 - forgetting / 2 if ok else None,
                "ce_before": 0.1,
                "ce_after": 0.1 + 3 * forgetting if ok else None,
            }
            for name in SOURCE_TASKS
        },
        "forgetting": {
            "mean": forgetting if ok else None,
            "per_task": {name: forgetting if ok else None for name in SOURCE_TASKS},
            "ceiling": 0.9,
            "graded": {
                "char_accuracy_drop": {
                    "mean": forgetting / 2 if ok else None,
                    "ceiling": 0.95,
                    "per_task": {name: forgetting / 2 if ok else None for name in SOURCE_TASKS},
                },
                "ce_increase": {
                    "mean": 3 * forgetting if ok else None,
                    "ceiling": 4.0,
                    "per_task": {name: 3 * forgetting if ok else None for name in SOURCE_TASKS},
                },
            },
        },
        "trajectory": {
            "step": [25, 50] if ok else [],
            "target_validation": [validation / 2, validation] if ok else [],
            "target_test": [0.1, min(target_after, 1.0)] if ok else [],
            "forgetting": [forgetting / 2, forgetting] if ok else [],
            "forgetting_char": [forgetting / 4, forgetting / 2] if ok else [],
            "forgetting_ce": [forgetting, 3 * forgetting] if ok else [],
        },
        "extra": {"validation_accuracy": validation, "note": "text is not a metric", "lm_eval": {"piqa": 0.6}},
        "environment": {
            "device": "cpu",
            "device_name": None,
            "torch": "2.13.0",
            "python": "3.11",
            "commit": "0" * 40,
            "dirty": False,
            "code_sha256": "0" * 64,
        },
    }


def write_grid(
    directory: Path,
    models=("tiny-a",),
    tasks=("add",),
    variants=tuple(BASE_ACCURACY),
    ranks=(4, 8),
    lrs=(GOOD_LR, BAD_LR),
    seeds=(0, 1, 2),
) -> list[Path]:
    """Records for a small grid (full FT at rank 0 only), one failed and one diverged run included."""
    paths = []
    for model in models:
        for task in tasks:
            for variant in variants:
                for rank in (0,) if variant == "full" else ranks:
                    for lr in lrs:
                        for seed in seeds:
                            record = make_record(model, task, variant, rank, lr, seed)
                            paths.append(_write(directory, record))
    paths.append(_write(directory, make_record(models[0], tasks[0], "lora", ranks[0], lrs[0], 99, "failed")))
    paths.append(_write(directory, make_record(models[0], tasks[0], "resampled", ranks[0], lrs[0], 98, "diverged")))
    return paths


def _write(directory: Path, record: dict) -> Path:
    path = directory / f"{record['run_id'].replace('/', '__')}.json"
    path.write_text(json.dumps(record))
    return path


@pytest.fixture
def tables(tmp_path: Path) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    return aggregate(write_grid(tmp_path))


def test_results_have_one_row_per_run_with_flattened_columns(tables) -> None:
    results, _, _ = tables
    assert len(results) == (1 + 5 * 2) * 2 * 3 + 2
    assert results["run_id"].is_unique
    for column in [
        "trainable_params", "total_params", "train_seconds", "step_ms", "peak_mem_added_mb", "memory_method",
        "mem_params_mb", "mem_grads_mb", "mem_optimizer_mb", "mem_activations_mb", "mem_account_mb",
        "timing_method", "target_acc_before", "target_acc_after", "forgetting", "device",
        "source_acc_before__arith", "source_acc_after__copy", "forgetting__copy",
        "extra__validation_accuracy", "extra__lm_eval__piqa",
    ]:  # fmt: skip
        assert column in results.columns, column
    assert "extra__note" not in results.columns


def test_values_are_carried_over_and_memory_added_is_peak_minus_baseline(tables) -> None:
    results, _, _ = tables
    row = results.set_index("run_id").loc["tiny-a/add/lora/r8/lr0.001/seed2"]
    assert row["step_ms"] == pytest.approx(182.0)
    assert row["peak_mem_added_mb"] == pytest.approx(108.0)
    assert row["target_acc_after"] == pytest.approx(0.70 + 0.02 + 0.008)
    assert row["forgetting__arith"] == pytest.approx(0.22)
    assert row["source_acc_after__copy"] == pytest.approx(0.9 - 0.22)
    assert row["trainable_params"] == 16_000


def test_memory_account_becomes_mib_columns_and_is_empty_without_one(tables, tmp_path: Path) -> None:
    results, _, _ = tables
    row = results.set_index("run_id").loc["tiny-a/add/lora/r8/lr0.001/seed2"]
    assert row["mem_optimizer_mb"] == 8 * 16_000 / 2**20
    assert row["mem_activations_mb"] == 1.0
    assert row["mem_account_mb"] == (16 * 16_000 + 2**20) / 2**20
    old = make_record("tiny-a", "add", "lora", 8, GOOD_LR, 0)
    del old["memory"]["account"]  # written before the account existed: still valid, no numbers
    (tmp_path / "old.json").write_text(json.dumps(old))
    assert aggregate([tmp_path / "old.json"])[0][list(ACCOUNT_COLUMNS.values())].isna().all().all()


def test_failed_and_diverged_runs_are_kept_with_null_metrics(tables) -> None:
    results, curves, _ = tables
    bad = results[results["status"] != "ok"].set_index("status")
    assert sorted(bad.index) == ["diverged", "failed"]
    assert bad.loc["failed", "error"].startswith("RuntimeError: loss became nan")
    assert (bad.loc["diverged", "divergence_step"], bad.loc["diverged", "divergence_reason"]) == (3, "non-finite loss")
    assert bad.loc["failed", ["divergence_step", "divergence_reason"]].isna().all()
    assert bad[["target_acc_after", "forgetting", "step_ms", "peak_mem_added_mb"]].isna().all().all()
    assert curves.loc[curves["status"] == "failed", "loss"].isna().all()


def test_loss_curves_are_long_with_grid_columns(tables) -> None:
    results, curves, _ = tables
    grid = ["model", "task", "variant", "rank", "lr", "seed"]
    assert list(curves.columns) == ["run_id", *grid, "status", "step", "loss"]
    assert len(curves) == 5 * len(results)
    one = curves[curves["run_id"] == "tiny-a/add/full/r0/lr0.001/seed0"]
    assert one["step"].tolist() == [0, 10, 20, 30, 40]
    assert one["loss"].iloc[1] == pytest.approx(2.0 / 11)


def test_graded_forgetting_measures_get_columns_per_task_with_their_ceilings(tables) -> None:
    results, _, _ = tables
    row = results.set_index("run_id").loc["tiny-a/add/lora/r8/lr0.001/seed2"]
    assert (row["forgetting"], row["forgetting_char"], row["forgetting_ce"]) == pytest.approx((0.22, 0.11, 0.66))
    assert (row["forgetting_ceiling"], row["forgetting_char_ceiling"], row["forgetting_ce_ceiling"]) == (0.9, 0.95, 4.0)
    assert row["forgetting_ce__copy"] == pytest.approx(0.66) and row["source_ce_after__arith"] == pytest.approx(0.76)
    assert row["source_char_before__copy"] == 0.95 and row["forgetting_char__arith"] == pytest.approx(0.11)


def test_trajectories_are_long_one_row_per_evaluation(tables) -> None:
    results, _, trajectories = tables
    ok = results[results["status"] == "ok"]
    assert len(trajectories) == 2 * len(ok)
    one = trajectories[trajectories["run_id"] == "tiny-a/add/lora/r8/lr0.001/seed2"].sort_values("step")
    assert one["step"].tolist() == [25, 50]
    assert one["forgetting_ce"].tolist() == pytest.approx([0.22, 0.66])
    assert one["target_test"].iloc[-1] == ok.set_index("run_id").loc[one["run_id"].iloc[0], "target_acc_after"]


def test_write_tables_round_trips_through_csv(tables, tmp_path: Path) -> None:
    write_tables(*tables, tmp_path / "reports")
    results = pd.read_csv(tmp_path / "reports" / "results.csv")
    assert len(results) == len(tables[0])
    assert results["peak_mem_added_mb"].max() == pytest.approx(108.0)
    assert len(pd.read_csv(tmp_path / "reports" / "loss_curves.csv")) == len(tables[1])
    assert len(pd.read_csv(tmp_path / "reports" / "trajectories.csv")) == len(tables[2])


def test_invalid_record_names_file_and_field(tmp_path: Path) -> None:
    record = make_record("tiny-a", "add", "lora", 4, GOOD_LR, 0)
    record["timing"]["method"] = "stopwatch"
    path = _write(tmp_path, record)
    with pytest.raises(RecordError, match=r"lora__r4.*field 'timing/method'.*stopwatch"):
        aggregate([path])


def test_missing_required_field_is_named(tmp_path: Path) -> None:
    record = make_record("tiny-a", "add", "lora", 4, GOOD_LR, 0)
    del record["grid"]["seed"]
    with pytest.raises(RecordError, match=r"field 'grid'.*'seed' is a required property"):
        aggregate([_write(tmp_path, record)])


def test_duplicate_run_id_is_an_error(tmp_path: Path) -> None:
    path = _write(tmp_path, make_record("tiny-a", "add", "lora", 4, GOOD_LR, 0))
    copy = tmp_path / "copy.json"
    copy.write_text(path.read_text())
    with pytest.raises(RecordError, match="also in"):
        aggregate([path, copy])


def test_best_lr_chooses_on_validation_not_test(tables) -> None:
    results, _, _ = tables
    assert results.groupby("lr")["target_acc_after"].mean().idxmax() == BAD_LR  # test prefers BAD_LR
    chosen = best_lr(results)
    assert set(chosen["lr"]) == {GOOD_LR}
    assert len(chosen) == (1 + 5 * 2) * 3 + 2  # every seed of the chosen lr, failed/diverged kept


def test_best_lr_with_one_lr_needs_no_validation(tmp_path: Path) -> None:
    results, _, _ = aggregate(write_grid(tmp_path, lrs=(BAD_LR,)))
    results = results.drop(columns="extra__validation_accuracy")
    assert len(best_lr(results)) == len(results)


def test_best_lr_refuses_several_lrs_without_validation(tables) -> None:
    results = tables[0].drop(columns="extra__validation_accuracy")
    with pytest.raises(ValueError, match="no extra.validation_accuracy"):
        best_lr(results)


def test_best_lr_without_ok_runs_has_nothing_to_choose(tables) -> None:
    results = tables[0].assign(status="failed").drop(columns="extra__validation_accuracy")
    chosen = best_lr(results)
    assert set(chosen["lr"]) == {GOOD_LR} and len(chosen) == len(results) // 2 + 1


def test_aggregate_command_reads_the_records_it_is_given(tmp_path: Path) -> None:
    nested = tmp_path / "runs" / "tiny-a"
    nested.mkdir(parents=True)
    write_grid(nested, variants=("lora",), ranks=(4,), lrs=(GOOD_LR,), seeds=(0,))
    cli.main(["aggregate", *map(str, sorted(nested.rglob("*.json"))), "--out", str(tmp_path / "reports")])
    assert len(pd.read_csv(tmp_path / "reports" / "results.csv")) == 3


def test_aggregate_command_without_records_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(SystemExit):
        cli.main(["aggregate", "--out", str(tmp_path / "reports")])
