"""Large grids: one target per train job keeps Snakemake's DAG linear in the grid, the aggregate reads its records
from a list file, and `lorabench check` warns above the size this was measured at."""

from __future__ import annotations


import pytest
import yaml

from lorabench import cli
from lorabench.checks import load_grid
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
    targets = [records[0] for records in grid.records_by_job()]
    unbatched = [axis for axis in ("model", "task", "variant", "rank", "lr", "seed") if axis not in batch]
    jobs = {tuple(getattr(point, axis) for axis in unbatched) for point in grid.points()}
    assert len(targets) == len(jobs) and set(targets) <= {point.record for point in grid.points()}
    assert (len(targets) == len(grid.points())) == (batch == [])


@pytest.mark.parametrize("limit", [10, cli.LARGE_GRID])
def test_check_warns_above_the_large_grid_size(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture,
                                              limit: int) -> None:
    monkeypatch.setattr(cli, "LARGE_GRID", limit)
    cli.main(["check", str(SMOKE), "--schema", str(SCHEMA)])
    captured = capsys.readouterr()
    assert "ok" in captured.out
    assert ("warning" in captured.err) == (limit == 10), captured.err
