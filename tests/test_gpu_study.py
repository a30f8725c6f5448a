"""The GPU study (.ci/gpu-study) on the CPU: its whole `run` on a tiny slice (a tiny GGUF packed as the bundle packs
SmolLM2, the study's config cut to two seeds of two variants and two steps), and the deadline's rule for seeds."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml

from lorabench.report.measures import UNMEASURED
from tests.pipeline import REPO, ci_script
from tests.test_gguf_bundle import write_tiny_llama

SCRIPT = REPO / ".ci" / "gpu-study"
CONFIG = REPO / "workflow" / "config" / "gpu_study.yaml"


def tiny_config() -> dict:
    """The study's config with its generator, training and grid cut down: 2 seeds x (full, lora at 2 stacked lrs)."""
    config = yaml.safe_load(CONFIG.read_text())
    arithmetic = config["tasks"]["target"][0]["arithmetic"]
    arithmetic["generator"]["mathematics_dataset"].update(
        modules=["add_or_sub"], train_per_module=12, test_per_module=4
    )
    arithmetic.update(validation_size=4, max_new_tokens=4)
    config["train"].update(steps=2, batch_size=4, log_every=1, eval_at=[2], eval_batch_size=8)
    config["grid"].update(variants=["full", "lora"], seeds=[0, 1])
    config["variants"] = {"full": {"lrs": [1.0e-4]}, "lora": {"lrs": [1.0e-3, 3.0e-3]}}
    config["forgetting"]["heldout_ce"].update(n=4, batch_size=4)
    return config


def tiny_bundle(folder: Path) -> tuple[Path, Path]:
    """The tiny config as a file, and a bundle built from it (no wheels: this Python has every package)."""
    bundle, config = folder / "bundle", folder / "tiny.yaml"
    (bundle / "wheels").mkdir(parents=True)
    config.write_text(yaml.safe_dump(tiny_config()))
    with contextlib.chdir(folder):
        ci_script("gpu-study").bundle_model_and_config(tiny_config(), write_tiny_llama(folder / "tiny.gguf"), bundle)
    return config, bundle


def run_study(folder: Path, *arguments: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(SCRIPT), "run", *arguments, "--device", "cpu"],
        env=dict(os.environ, OUT=str(folder / "out"), HF_HUB_OFFLINE="1"),
        cwd=folder,  # not the repository root: the script finds its checkout itself
        capture_output=True,
        text=True,
        timeout=900,
    )


def test_the_study_runs_on_the_cpu_from_a_bundled_tiny_model(tmp_path: Path) -> None:
    config, bundle = tiny_bundle(tmp_path)
    result = run_study(tmp_path, "--config", str(config), "--bundle", str(bundle))
    out = tmp_path / "out"
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    with tarfile.open(out / "gpu-study.tgz") as archive:
        archive.extractall(tmp_path / "archive", filter="data")
    study = json.loads((tmp_path / "archive" / "study.json").read_text())
    assert list(study["seeds"]) == ["0", "1"] and all(value.startswith("ran") for value in study["seeds"].values())
    assert study["records"] == study["grid_points"] == 6 and study["reported"]
    rows = (tmp_path / "archive" / "reports" / "results.csv").read_text().splitlines()
    assert len(rows) == 1 + 6
    summary = (tmp_path / "archive" / "reports" / "summary.md").read_text()
    assert "held-out text's cross-entropy increase" in summary and UNMEASURED not in summary  # its forgetting probe
    stacked = [
        json.loads(path.read_text())
        for path in (tmp_path / "archive" / "results" / "runs").rglob("*.json")
        if "/lora/" in str(path)
    ]
    assert len(stacked) == 4 and all(record["timing"].get("stacked_members") == 2 for record in stacked)


def test_a_seed_starts_only_when_the_slowest_seed_so_far_fits_before_the_deadline(monkeypatch) -> None:
    module, clock, timeouts = ci_script("gpu-study"), [0.0], []

    def lorabench(*arguments: str, environment: dict, log: Path, timeout: float | None = None) -> bool:
        timeouts.append(timeout)
        clock[0] += 100.0  # each seed's job takes 100 s
        return True

    monkeypatch.setattr(module, "lorabench", lorabench)
    monkeypatch.setattr(module.time, "monotonic", lambda: clock[0])
    grid = SimpleNamespace(
        jobs=lambda: {("m", seed): [] for seed in ("0", "1", "2")},
        unbatched=lambda: ["model", "seed"],
        config={"device": "cpu"},
    )
    stages = SimpleNamespace(train_job=lambda grid, wildcards, device: SimpleNamespace(to_json=lambda: "{}"))
    seeds = module.train_seeds(grid, {}, stages, 250.0, [])
    assert [value.split(" ")[0] for value in seeds.values()] == ["ran", "ran", "not"]  # 50 s left < 100 s
    assert timeouts == [250.0, 150.0]  # each job is cut off at the deadline


def test_a_bundle_built_from_another_config_is_refused_before_any_work(tmp_path: Path) -> None:
    """An edit to the config after the bundle was built would be silently ignored: `run` refuses it, naming both."""
    _, bundle = tiny_bundle(tmp_path)
    result = run_study(tmp_path, "--bundle", str(bundle))  # the checkout's gpu_study.yaml, not the tiny one
    assert result.returncode != 0 and "differs from the config" in result.stderr and "gpu-study bundle" in result.stderr
    assert not (tmp_path / "out").exists()


def test_a_bundle_checked_under_another_schema_is_refused(tmp_path: Path) -> None:
    """Its checked config holds the schema's defaults of its time: a changed schema's would be silently ignored."""
    config, bundle = tiny_bundle(tmp_path)
    study = ci_script("gpu-study")
    assert study.bundled_config(config, bundle)["grid"]["seeds"] == [0, 1]
    stored = json.loads((bundle / "config.json").read_text())
    (bundle / "config.json").write_text(json.dumps(stored | {"schema_sha256": "0" * 64}))
    with pytest.raises(SystemExit, match="differs from the schema"):
        study.bundled_config(config, bundle)
