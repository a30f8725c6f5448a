"""lorabench compare: a fresh results.csv against the shipped reference, within stated tolerances."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
from test_aggregate import write_grid

from lorabench import cli
from lorabench.aggregate import aggregate
from lorabench.reference import compare


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> pd.DataFrame:
    return aggregate(write_grid(tmp_path_factory.mktemp("runs")))[0]


def test_the_same_results_agree(reference: pd.DataFrame) -> None:
    comparison = compare(reference.copy(), reference)
    assert comparison.agrees and comparison.points == len(reference)


def test_a_mean_beyond_the_tolerance_is_named(reference: pd.DataFrame) -> None:
    fresh = reference.copy()
    lora = (fresh["variant"] == "lora") & (fresh["rank"] == 8)
    fresh.loc[lora, "target_acc_after"] += 0.04
    assert compare(fresh, reference).agrees  # within 0.05
    fresh.loc[lora, "target_acc_after"] += 0.02
    assert compare(fresh, reference).differences == [
        "tiny-a/lora/r8: mean target_acc_after 0.778, reference 0.718 (tolerance 0.05)"
    ]


def test_statuses_choices_and_grid_points_must_match(reference: pd.DataFrame) -> None:
    fresh = reference.copy()
    first = fresh.index[fresh["status"] == "ok"][0]
    fresh.loc[first, "status"] = "diverged"
    assert f"{fresh.loc[first, 'run_id']}: status diverged, reference ok" in compare(fresh, reference).differences
    assert compare(reference.drop(index=first), reference).differences == [
        f"grid point missing from this run: {reference.loc[first, 'run_id']}"
    ]
    flipped = reference.copy()
    flipped["extra__validation_accuracy"] = -flipped["extra__validation_accuracy"]  # the other lr wins validation
    assert any("chose lr 0.01, reference 0.001" in line for line in compare(flipped, reference).differences)


def test_the_command_exits_non_zero_on_a_difference(
    reference: pd.DataFrame, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    reference.to_csv(tmp_path / "reference.csv", index=False)
    reference.to_csv(tmp_path / "same.csv", index=False)
    cli.main(["compare", str(tmp_path / "same.csv"), "--reference", str(tmp_path / "reference.csv")])
    assert "agrees with" in capsys.readouterr().out
    reference.assign(forgetting=reference["forgetting"] + 0.2).to_csv(tmp_path / "other.csv", index=False)
    with pytest.raises(SystemExit, match="difference"):
        cli.main(["compare", str(tmp_path / "other.csv"), "--reference", str(tmp_path / "reference.csv")])
