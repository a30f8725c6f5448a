"""Turn run records (one JSON file per grid point) into the three tidy tables the report reads.

``results`` has one row per run, failed and diverged runs included (their metrics are NaN), so
the report can show what did not work. ``loss_curves`` is long: one row per logged step; ``trajectories`` too:
one row per evaluation during training (``train.eval_at``) and the final one.
Every record is validated against ``record.schema.json`` first, because a silently missing
field would otherwise surface as a blank cell in a figure.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import jsonschema
import pandas as pd

from lorabench import records

MIB = 2**20
GRID_COLUMNS = ["model", "task", "variant", "rank", "lr", "seed"]
SELECTION_GROUP = ["model", "task", "variant", "rank"]
VALIDATION_COLUMN = "extra__validation_accuracy"
ACCOUNT_COLUMNS = {
    "trainable_parameters": "mem_params_mb",
    "gradients": "mem_grads_mb",
    "optimizer_state": "mem_optimizer_mb",
    "saved_activations": "mem_activations_mb",
    "variant_state": "mem_variant_state_mb",
    "total": "mem_account_mb",
}
"""``memory.account`` part -> its column in MiB (exact byte counts, so identical across seeds)."""
FORGETTING_COLUMNS = {None: "forgetting", "char_accuracy_drop": "forgetting_char", "ce_increase": "forgetting_ce"}
"""Forgetting measure (record ``forgetting``, or its ``graded`` entry) -> its column: the mean over source tasks
(``forgetting``: and benchmarks); ``<column>__<task>`` per task and ``<column>_ceiling`` its value at total
forgetting."""
RECORD_FIELDS = {
    "trainable_params": ("parameters", "trainable"), "total_params": ("parameters", "total"),
    "train_seconds": ("timing", "train_seconds"), "step_ms": ("timing", "step_ms_median"),
    "step_ms_mean": ("timing", "step_ms_mean"), "steps_done": ("timing", "steps_done"),
    "timing_method": ("timing", "method"),
    "peak_mem_mb": ("memory", "peak_mb"), "baseline_mem_mb": ("memory", "baseline_mb"),
    "memory_method": ("memory", "method"),
    "target_acc_before": ("target", "accuracy_before"), "target_acc_after": ("target", "accuracy_after"),
}  # fmt: skip
"""``results`` column -> (record section, field): the one place a record's name for a value meets the table's.

A table column names its unit or section where the record's nesting did (``step_ms`` is ``timing.step_ms_median``,
``peak_mem_mb`` is ``memory.peak_mb``); :data:`ACCOUNT_COLUMNS`, :data:`FORGETTING_COLUMNS` and
:data:`SOURCE_COLUMNS` map the record's nested parts the same way."""
RESULT_COLUMNS = [
    "run_id", *GRID_COLUMNS, "status", "error",
    "trainable_params", "total_params",
    "train_seconds", "step_ms", "step_ms_mean", "steps_done", "timing_method", "stacked_members",
    "peak_mem_mb", "baseline_mem_mb", "peak_mem_added_mb", "memory_method", *ACCOUNT_COLUMNS.values(),
    "target_acc_before", "target_acc_after", *FORGETTING_COLUMNS.values(),
    *(f"{column}_ceiling" for column in FORGETTING_COLUMNS.values()),
    "device", "device_name",
]  # fmt: skip
CURVE_COLUMNS = ["run_id", *GRID_COLUMNS, "status", "step", "loss"]
TRAJECTORY_MEASURES = ["target_validation", "target_test", *FORGETTING_COLUMNS.values()]
TRAJECTORY_COLUMNS = ["run_id", *GRID_COLUMNS, "status", "step", *TRAJECTORY_MEASURES]


class RecordError(ValueError):
    """A record file that is not valid JSON or does not match the schema."""


def read_record(path: Path) -> dict[str, Any]:
    """The parsed record at ``path``; a :class:`RecordError` names the file and the bad field."""
    try:
        record = json.loads(Path(path).read_text())
    except (OSError, ValueError) as error:  # missing, cut short (JSONDecodeError), not text (UnicodeDecodeError)
        raise RecordError(f"{path}: not a readable JSON record: {error}") from None
    try:
        records.validate(record)
    except jsonschema.ValidationError as problem:
        field = "/".join(str(part) for part in problem.absolute_path) or "<record>"
        raise RecordError(f"{path}: field '{field}': {problem.message}") from None
    return record


def _difference(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else a - b


def _numeric_leaves(tree: dict[str, Any], prefix: str) -> Iterator[tuple[str, float]]:
    """Numbers of a nested dict as ``prefix__key__subkey``; booleans and text are not metrics."""
    for key, value in tree.items():
        name = f"{prefix}__{key}"
        if isinstance(value, dict):
            yield from _numeric_leaves(value, name)
        elif isinstance(value, int | float) and not isinstance(value, bool):
            yield name, value


def _account_columns(account: dict[str, int] | None) -> dict[str, float | None]:
    """The memory account in MiB; None (NaN) where a run has none (stopped before its first step, older records)."""
    return {
        column: None if account is None or part not in account else account[part] / MIB
        for part, column in ACCOUNT_COLUMNS.items()
    }


def _divergence_columns(divergence: dict[str, Any] | None) -> dict[str, Any]:
    """Where and why a diverged run stopped (empty for the others): the report lists them beside the status."""
    divergence = divergence or {}
    return {f"divergence_{key}": divergence.get(key) for key in ("step", "loss", "reason")}


def result_row(record: dict[str, Any]) -> dict[str, Any]:
    """One flat row of ``results`` for one validated record."""
    memory = record["memory"]
    row = {
        "run_id": record["run_id"],
        **record["grid"],
        "status": record["status"],
        "error": record["error"],
        **_divergence_columns(record["divergence"]),
        "optimizer": record["hyperparameters"]["train"].get("optimizer", "adamw"),  # records before it was a setting
        "replay": record["hyperparameters"]["train"].get("replay", 0.0),  # records before it was a setting: none
        **{column: record[part][key] for column, (part, key) in RECORD_FIELDS.items()},
        "peak_mem_added_mb": _difference(memory["peak_mb"], memory["baseline_mb"]),
        **_account_columns(memory.get("account")),
        "device": record["environment"]["device"],
        "device_name": record["environment"].get("device_name"),
    }
    for task, scores in record["source"].items():
        for key, name in SOURCE_COLUMNS.items():
            row[f"{name}__{task}"] = scores.get(key)
    for measure, column in FORGETTING_COLUMNS.items():
        measured = record["forgetting"] if measure is None else record["forgetting"].get("graded", {}).get(measure, {})
        row[column], row[f"{column}_ceiling"] = measured.get("mean"), measured.get("ceiling")
        for task, value in measured.get("per_task", {}).items():
            row[f"{column}__{task}"] = value
    row.update(_numeric_leaves(record.get("extra", {}), "extra"))
    return row | _stacked_columns(row, record["timing"].get("stacked_members", 1))


def _stacked_columns(row: dict[str, Any], members: int) -> dict[str, Any]:
    """``stacked_members`` (1: trained alone); a stacked run's step times and peak memory are its stack's, not its
    cost, so they are left empty (the cost stage measures each variant's), and ``train_seconds`` is its share of the
    stack's loop, so that summing a column of runs counts each loop once (the harness's training share)."""
    if members == 1:
        return {"stacked_members": 1}
    return {
        "stacked_members": members,
        "train_seconds": _share(row["train_seconds"], members),
        "step_ms": None,
        "step_ms_mean": None,
        "peak_mem_mb": None,
        "peak_mem_added_mb": None,
    }


def _share(seconds: float | None, members: int) -> float | None:
    return None if seconds is None else seconds / members


SOURCE_COLUMNS = {
    "accuracy_before": "source_acc_before",
    "accuracy_after": "source_acc_after",
    "char_accuracy_before": "source_char_before",
    "char_accuracy_after": "source_char_after",
    "ce_before": "source_ce_before",
    "ce_after": "source_ce_after",
}
"""A source task's record field -> its column prefix (``<prefix>__<task>``); NaN in records without it."""


def trajectory_rows(record: dict[str, Any]) -> pd.DataFrame:
    """The record's trajectory in long form (none in records written before it existed), tagged like a curve."""
    trajectory = record.get("trajectory") or {"step": [], **{measure: [] for measure in TRAJECTORY_MEASURES}}
    frame = pd.DataFrame({column: pd.array(trajectory[column], dtype="Float64") for column in TRAJECTORY_MEASURES})
    frame["step"] = trajectory["step"]
    for column, value in {"run_id": record["run_id"], **record["grid"], "status": record["status"]}.items():
        frame[column] = value
    return frame[TRAJECTORY_COLUMNS]


def curve_rows(record: dict[str, Any]) -> pd.DataFrame:
    """The record's loss curve in long form, tagged with its grid point and status."""
    curve = record["loss_curve"]
    if len(curve["step"]) != len(curve["loss"]):
        raise RecordError(
            f"{record['run_id']}: field 'loss_curve': {len(curve['step'])} steps but {len(curve['loss'])} losses"
        )
    frame = pd.DataFrame({"step": curve["step"], "loss": pd.array(curve["loss"], dtype="Float64")})
    for column, value in {"run_id": record["run_id"], **record["grid"], "status": record["status"]}.items():
        frame[column] = value
    return frame[CURVE_COLUMNS]


def aggregate(record_paths: Iterable[Path]) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """(results, loss_curves, trajectories) of the records at ``record_paths``; duplicate run ids are an error."""
    rows, curves, trajectories, seen = [], [], [], {}
    for path in record_paths:
        record = read_record(path)
        run_id = record["run_id"]
        if run_id in seen:
            raise RecordError(f"{path}: run_id {run_id!r} also in {seen[run_id]}")
        seen[run_id] = path
        rows.append(result_row(record))
        curves.append(curve_rows(record))
        trajectories.append(trajectory_rows(record))
    results = pd.DataFrame(rows)
    per_task_and_extra = [column for column in results.columns if column not in RESULT_COLUMNS]
    results = results.reindex(columns=RESULT_COLUMNS + per_task_and_extra)
    loss_curves = pd.concat(curves, ignore_index=True) if curves else pd.DataFrame(columns=CURVE_COLUMNS)
    trajectory = (
        pd.concat(trajectories, ignore_index=True) if trajectories else pd.DataFrame(columns=TRAJECTORY_COLUMNS)
    )
    return (
        results,
        loss_curves.astype({"loss": "float64"}),
        trajectory.astype(dict.fromkeys(TRAJECTORY_MEASURES, "float64")),
    )


def write_tables(results: pd.DataFrame, loss_curves: pd.DataFrame, trajectories: pd.DataFrame, out_dir: Path) -> None:
    """Write ``results.csv``, ``loss_curves.csv`` and ``trajectories.csv`` into ``out_dir``."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    results.to_csv(out_dir / "results.csv", index=False)
    loss_curves.to_csv(out_dir / "loss_curves.csv", index=False)
    trajectories.to_csv(out_dir / "trajectories.csv", index=False)


def _chosen_lr(key: tuple, group: pd.DataFrame) -> float:
    """The lr with the best mean validation accuracy over ok seeds (ties: the smaller lr).

    With one lr, or no ok run to compare, there is nothing to choose. Test accuracy is never looked at: choosing on it
    would report an optimistically biased number.
    """
    lrs = sorted(group["lr"].unique())
    ok = group[group["status"] == "ok"]
    if len(lrs) == 1 or ok.empty:
        return lrs[0]
    if VALIDATION_COLUMN not in group:
        where = dict(zip(SELECTION_GROUP, key, strict=True))
        raise ValueError(f"{where}: {len(lrs)} learning rates but no extra.validation_accuracy to choose by")
    validation = ok.groupby("lr")[VALIDATION_COLUMN].mean().reindex(lrs)
    return lrs[0] if validation.isna().all() else validation.idxmax()


def lr_choices(results: pd.DataFrame) -> pd.DataFrame:
    """Per (model, task, variant, rank): the learning rates swept, the one chosen on validation, and whether the
    choice sits at an edge of the sweep (then the best lr may lie outside it: the report flags it)."""
    rows = []
    for key, group in results.groupby(SELECTION_GROUP):
        lrs = sorted(group["lr"].unique())
        chosen = _chosen_lr(key, group)
        rows.append((*key, chosen, len(lrs), lrs[0], lrs[-1], len(lrs) > 1 and chosen in (lrs[0], lrs[-1])))
    return pd.DataFrame(rows, columns=[*SELECTION_GROUP, "chosen_lr", "n_lrs", "lr_min", "lr_max", "at_edge"])


def best_lr(results: pd.DataFrame) -> pd.DataFrame:
    """Rows of ``results`` at the lr chosen per (model, task, variant, rank) on validation accuracy."""
    if results.empty:
        return results
    chosen = lr_choices(results)[[*SELECTION_GROUP, "chosen_lr"]]
    merged = results.merge(chosen, on=SELECTION_GROUP)
    return merged[merged["lr"] == merged["chosen_lr"]].drop(columns="chosen_lr").reset_index(drop=True)
