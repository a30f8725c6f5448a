"""A blown-up learning rate through the whole pipeline: the runs are recorded as diverged, the grid completes,
and the pipeline's last lines say how many runs diverged and why."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from tests.pipeline import SMOKE, load_records, snakemake

pytestmark = pytest.mark.e2e


def test_blown_up_learning_rates_are_diverged_and_named_at_the_end(tmp_path: Path) -> None:
    config = yaml.safe_load(SMOKE.read_text())
    config["grid"] |= {"variants": ["full", "lora"], "lrs": [1e30]}
    config["variants"] = {"full": {"lrs": [1e4]}}
    path = tmp_path / "blown-up.yaml"
    path.write_text(yaml.safe_dump(config))
    result = snakemake(tmp_path, config=path)
    records = load_records(tmp_path)
    assert len(records) == 8 and {record["status"] for record in records.values()} == {"diverged"}
    for record in records.values():
        assert 0 < record["divergence"]["step"] < config["train"]["steps"], record["run_id"]
    last_lines = result.stderr.splitlines()[-12:]  # the note (1 + 8 lines), Snakemake's log path and run time
    assert any(line.startswith("lorabench: 8 diverged of 8 runs") for line in last_lines), last_lines
