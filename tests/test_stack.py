"""Stacked training (config ``jobs.stack``, lorabench/stack.py): a stacked member's record equals the record of the
same grid point run alone, for every registered variant that stacks; what cannot stack runs alone, saying why."""

from __future__ import annotations

import contextlib
import json
import logging
from pathlib import Path
from typing import Any

import pytest

from lorabench import aggregate, records, runner
from lorabench.job import TrainJob
from lorabench.variants import get, registry
from tests.jobs import tiny_checkpoint, tiny_job
from tests.test_memory_account import live_tensors
from tests.variants_fixtures import one_torch_thread  # noqa: F401  (autouse)

OPTIONS = {"relora": {"merge_every": 4}, "peft": {"peft_config": {"peft_type": "LOHA"}}}
"""Options that make a variant's hooks act within the test's 12 steps (relora merges twice), or that it needs."""
LRS = {"sgd": [0.05, 0.3], "adamw": [1e-3, 1e-2]}


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_checkpoint(tmp_path_factory.mktemp("stack") / "model")


def _job(
    checkpoint: Path,
    variant: str,
    points: list[tuple[float, int]],
    stack: bool,
    dropout: float = 0.0,
    forgetting: dict | None = None,
) -> TrainJob:
    return tiny_job(
        checkpoint,
        [(variant, 2, "sort", lr, seed) for lr, seed in points],
        OPTIONS,
        dropout=dropout,
        forgetting=forgetting or {},
        data={"train": 64, "validation": 8, "test": 12},
        eval_batch_size=16,
        train={"steps": 12, "weight_decay": 0.01, "eval_at": [4, 8], "replay": 0.25},
        stack=stack,
    )


def _records(job: TrainJob, folder: Path) -> list[dict[str, Any]]:
    """``job`` run in ``folder``, where its records go; its records."""
    folder.mkdir(parents=True, exist_ok=True)
    with contextlib.chdir(folder):
        runner.run_job(job)
        return [json.loads(Path(point.record).read_text()) for point in job.points]


def _lone_and_stacked(
    checkpoint: Path, tmp_path: Path, variant: str, points: list[tuple[float, int]], **settings: Any
) -> tuple[list[dict], list[dict]]:
    return (
        _records(_job(checkpoint, variant, points, False, **settings), tmp_path / "lone"),
        _records(_job(checkpoint, variant, points, True, **settings), tmp_path / "stacked"),
    )


def assert_same_run(lone: dict[str, Any], stacked: dict[str, Any]) -> None:
    """Everything a run measures of its model is its lone run's, to the bit: the stack does each member's arithmetic
    in the lone run's order (a float rounded otherwise would grow over a long run into other accuracies). Only the
    times and the peak memory, the stack's, differ."""
    assert stacked["timing"]["steps_done"] == lone["timing"]["steps_done"]
    assert stacked["memory"]["account"] == lone["memory"]["account"]
    assert _measured(stacked) == _measured(lone)


def _measured(record: dict[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in record.items() if key not in ("timing", "memory", "environment")}


STACKED = [name for name, cls in registry().items() if not cls.unstackable]


@pytest.mark.parametrize("variant", STACKED)
def test_a_stacked_member_records_what_it_records_alone(checkpoint: Path, tmp_path: Path, variant: str) -> None:
    """Two seeds by two learning rates: a stack per seed, each member with its own initialisation, optimizer state,
    learning rate and variant hooks."""
    points = [(lr, seed) for lr in LRS[get(variant).optimizer or "adamw"] for seed in (0, 1)]
    lone, stacked = _lone_and_stacked(checkpoint, tmp_path, variant, points)
    for alone, member in zip(lone, stacked, strict=True):
        records.validate(member)
        assert member["timing"]["stacked_members"] == 2  # one stack per seed
        assert "stacked_members" not in alone["timing"]
        assert member["status"] == "ok", member["error"]
        assert_same_run(alone, member)


def test_a_diverged_member_stops_alone_and_leaves_the_others_as_they_were(checkpoint: Path, tmp_path: Path) -> None:
    points = [(1e-3, 0), (1e30, 0), (1e-2, 0)]
    lone, stacked = _lone_and_stacked(checkpoint, tmp_path, "lora", points)
    assert [record["status"] for record in stacked] == ["ok", "diverged", "ok"]
    assert {record["timing"]["stacked_members"] for record in stacked} == {3}
    assert stacked[1]["timing"]["steps_done"] < stacked[0]["timing"]["steps_done"] == 12
    for alone, member in zip(lone, stacked, strict=True):
        assert_same_run(alone, member)


def test_a_stacked_member_takes_the_configs_forgetting_measures_as_it_does_alone(
    checkpoint: Path, tmp_path: Path
) -> None:
    texts = tmp_path / "texts.txt"
    texts.write_text("abc:cba\nhello:olleh\nsort:orst\n")
    heldout = {"heldout_ce": {"texts": str(texts), "n": 3, "max_length": 16, "batch_size": 2}}
    lone, stacked = _lone_and_stacked(checkpoint, tmp_path, "lora", [(1e-3, 0), (1e-2, 0)], forgetting=heldout)
    for alone, member in zip(lone, stacked, strict=True):
        assert member["timing"]["stacked_members"] == 2
        assert {"heldout_ce_before", "heldout_ce_after"} <= member["extra"].keys()
        assert "heldout_ce" in member["forgetting"]["graded"]["ce_increase"]["per_task"]
        assert_same_run(alone, member)


def test_a_stack_leaves_nothing_to_the_next(checkpoint: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The host, its members and their graphs are gone when a stack's records are written, as a lone point's are
    (tests/test_memory_account.py): else each stack would start higher than the one before."""
    after: list[tuple[int, int]] = []
    for variant in ("lora", "peft_lora", "lora"):
        _records(_job(checkpoint, variant, [(1e-3, 0), (1e-2, 0)], True), tmp_path)
        after.append(live_tensors())
    assert after[2] == after[0], f"(tensors, bytes) after each stack: {after}"


def test_what_cannot_stack_runs_alone_and_says_why(
    checkpoint: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Dropout draws would interleave across members; a variant not shown to stack stays alone."""
    caplog.set_level(logging.INFO, logger="lorabench.runner")
    points = [(1e-3, 0), (1e-2, 0)]
    dropped = _records(_job(checkpoint, "lora", points, True, dropout=0.1), tmp_path / "dropout")
    monkeypatch.setattr(get("lora"), "unstackable", "its hooks were never checked")
    unproven = _records(_job(checkpoint, "lora", points, True), tmp_path / "unproven")
    assert all("stacked_members" not in record["timing"] for record in dropped + unproven)
    assert all(record["status"] == "ok" for record in dropped + unproven)
    assert "not stacked: the model draws dropout" in caplog.text
    assert "not stacked: variant 'lora': its hooks were never checked" in caplog.text


def test_a_stacked_runs_times_are_not_its_cost_in_the_results(checkpoint: Path, tmp_path: Path) -> None:
    """Its step time and peak memory are the stack's: left empty in results.csv; its train_seconds a share."""
    member = _records(_job(checkpoint, "lora", [(1e-3, 0), (1e-2, 0)], True), tmp_path)[0]
    row = aggregate.result_row(member)
    assert row["stacked_members"] == 2 and row["step_ms"] is None and row["peak_mem_mb"] is None
    assert row["train_seconds"] == pytest.approx(member["timing"]["train_seconds"] / 2)
