"""Large grids: one target per train job keeps Snakemake's DAG linear in the grid, the aggregate reads its records
from a list file, and `lorabench check` warns above the size this was measured at."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from lorabench import cli
from lorabench.config import load_grid
from tests.pipeline import REPO, SMOKE

SCHEMA = REPO / "workflow/schemas/config.schema.yaml"


@pytest.fixture
def smoke() -> dict:
    return yaml.safe_load(SMOKE.read_text())


@pytest.mark.parametrize("batch", [["task", "seed"], ["seed"], []])
def test_one_target_record_per_train_job(smoke: dict, batch: list[str]) -> None:
    smoke["grid"]["seeds"] = list(range(40))
    smoke["jobs"] = {"batch": batch}
    grid = load_grid(smoke, SCHEMA)
    targets = grid.job_records()
    unbatched = [axis for axis in ("model", "task", "variant", "rank", "lr", "seed") if axis not in batch]
    jobs = {tuple(getattr(point, axis) for axis in unbatched) for point in grid.points()}
    assert len(targets) == len(jobs) and set(targets) <= {point.record for point in grid.points()}
    assert (len(targets) == len(grid.points())) == (batch == [])


def test_record_list_is_rewritten_only_when_the_grid_changes(smoke: dict, tmp_path: Path) -> None:
    listing = tmp_path / "records.txt"
    load_grid(dict(smoke), SCHEMA).write_record_list(listing)
    assert listing.read_text().splitlines() == [point.record for point in load_grid(smoke, SCHEMA).points()]
    written = listing.stat().st_mtime_ns
    load_grid(yaml.safe_load(SMOKE.read_text()), SCHEMA).write_record_list(listing)
    assert listing.stat().st_mtime_ns == written  # an unchanged grid does not re-run the aggregate
    smoke["grid"]["seeds"] = [0, 1, 2]
    load_grid(smoke, SCHEMA).write_record_list(listing)
    assert len(listing.read_text().splitlines()) == len(load_grid(smoke, SCHEMA).points())


@pytest.mark.parametrize("limit", [10, cli.LARGE_GRID])
def test_check_warns_above_the_large_grid_size(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture,
                                              limit: int) -> None:
    monkeypatch.setattr(cli, "LARGE_GRID", limit)
    cli.main(["check", str(SMOKE), "--schema", str(SCHEMA)])
    captured = capsys.readouterr()
    assert "ok" in captured.out
    assert ("warning" in captured.err) == (limit == 10), captured.err


def test_missing_records_name_the_first_missing_record_of_each_incomplete_job(
    smoke: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    grid = load_grid(smoke, SCHEMA)
    monkeypatch.chdir(tmp_path)
    assert grid.missing_records() == grid.job_records()  # nothing written yet
    for point in grid.points():
        Path(point.record).parent.mkdir(parents=True, exist_ok=True)
        Path(point.record).touch()
    assert grid.missing_records() == []
    deleted = grid.points()[-1].record  # not the first record of its job (seeds 0 and 1 share one)
    Path(deleted).unlink()
    assert deleted not in grid.job_records() and grid.missing_records() == [deleted]
