"""Large grids: one target per train job keeps Snakemake's DAG linear in the grid, the aggregate reads its records
from a list file, and `lorabench check` warns above the size this was measured at."""

from __future__ import annotations

import pytest
import yaml

from lorabench import cli, stages
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
def test_check_warns_above_the_large_grid_size(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture, limit: int
) -> None:
    monkeypatch.setattr(cli, "LARGE_GRID", limit)
    cli.main(["check", str(SMOKE), "--schema", str(SCHEMA)])
    captured = capsys.readouterr()
    assert "ok" in captured.out
    assert ("warning" in captured.err) == (limit == 10), captured.err


def test_the_code_hash_of_every_job_reads_each_module_once(smoke: dict, monkeypatch: pytest.MonkeyPatch) -> None:
    """The train rule hashes each job's code: per job, parsing the imports and scanning the variants folder made a
    10,000-job grid's dry run take minutes; jobs with the same variants share one hash, computed once."""
    import ast
    import pkgutil

    smoke["grid"]["seeds"] = list(range(50))
    smoke["jobs"] = {"batch": ["variant", "rank", "lr", "task"]}  # the default: one job per (model, seed)
    grid = load_grid(smoke, SCHEMA)
    calls = {"parse": 0, "scan": 0}
    parse, scan = ast.parse, pkgutil.iter_modules
    monkeypatch.setattr(ast, "parse", lambda *a, **k: calls.__setitem__("parse", calls["parse"] + 1) or parse(*a, **k))
    monkeypatch.setattr(
        pkgutil, "iter_modules", lambda *a, **k: calls.__setitem__("scan", calls["scan"] + 1) or scan(*a, **k)
    )
    hashes = {stages.train_job_code(grid, dict(zip(grid.unbatched(), key, strict=True))) for key in grid.jobs()}
    assert len(grid.jobs()) == 100 and len(hashes) == 1
    assert calls["parse"] <= 60 and calls["scan"] <= 1, calls  # at most each package file once, not per job
