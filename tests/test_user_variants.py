"""A variant from the user's own folder, exactly as README's "Add a variant" walks through it."""

from __future__ import annotations

import re
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from lorabench import stages, variants
from lorabench.checks import ConfigError, load_grid
from lorabench.cli import main
from lorabench.job import format_lr
from lorabench.runner import adapter_directory
from tests.pipeline import REPO, SMOKE

SCHEMA = REPO / "workflow" / "schemas" / "config.schema.yaml"


def readme_steps() -> tuple[str, str, dict]:
    """The section's variant file (its path from the first line's comment, and its code) and its config line."""
    section = (REPO / "README.md").read_text().split("## Add a variant")[1].split("\n## ")[0]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    path = re.match(r"# (\S+)\n", code).group(1)
    config_line = yaml.safe_load(re.search(r"```yaml\n(.*?)```", section, re.S).group(1))
    return path, code, config_line


@pytest.fixture
def user_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """The README's file in a fresh working directory, the smoke config plus its line; the registry is
    restored afterwards so other tests see only the shipped variants."""
    monkeypatch.setattr(variants, "_REGISTRY", dict(variants.registry()))
    monkeypatch.setattr(variants, "_USER_MODULES", set())
    monkeypatch.chdir(tmp_path)
    path, code, config_line = readme_steps()
    (tmp_path / path).parent.mkdir(parents=True)
    (tmp_path / path).write_text(code)
    config = yaml.safe_load(SMOKE.read_text()) | config_line
    (tmp_path / "my.yaml").write_text(yaml.safe_dump(config))
    yield tmp_path
    for name in [name for name in sys.modules if name.startswith("lorabench_user_variants.")]:
        del sys.modules[name]


def test_readme_variant_is_checked_listed_and_keeps_the_contract(
    user_folder: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    main(["check", "my.yaml", "--schema", str(SCHEMA)])
    assert "my.yaml: ok" in capsys.readouterr().out
    main(["variants", "--config", "my.yaml"])
    assert re.search(r"^tied_a\s+[\d,]+\s+my own", capsys.readouterr().out, re.M)
    main(["test-variant", "tied_a", "--config", "my.yaml"])
    assert capsys.readouterr().out.splitlines() == [
        "tied_a on tiny llama (adamw, 20 steps): ok",
        "tied_a on tiny gpt2 (adamw, 20 steps): ok",
    ]


def test_readme_variant_joins_the_grid_and_every_job_carries_its_module(user_folder: Path) -> None:
    grid = load_grid(yaml.safe_load(Path("my.yaml").read_text()), SCHEMA)
    assert "tied_a" in grid.variants()
    point = next(p for p in grid.points() if p.variant == "tied_a")
    job = stages.train_job(
        grid,
        {"model": point.model, "variant": point.variant, "rank": str(point.rank), "lr": format_lr(point.lr)},
        "cpu",
    )
    assert job.variant_modules == (readme_steps()[0],) and point.record in [p.record for p in job.points]
    lora = next(p for p in grid.points() if p.variant == "lora")
    job = stages.train_job(
        grid, {"model": lora.model, "variant": "lora", "rank": str(lora.rank), "lr": format_lr(lora.lr)}, "cpu"
    )
    assert job.variant_modules == ()  # only the modules defining the job's own variants: others' jobs stay as they are


def test_the_shared_factor_counts_once_in_the_model(user_folder: Path) -> None:
    from lorabench.contract import make_spec, tiny_model

    variants.load_modules([readme_steps()[0]])
    model = variants.get("tied_a")(make_spec("llama", "tied_a", rank=4)).apply(tiny_model("llama"))
    # 2 widths (64 in, 128 in: down_proj), so 2 shared A; one B per adapted layer (7 per block, 2 blocks)
    outputs = {
        "q_proj": 64,
        "k_proj": 64,
        "v_proj": 64,
        "o_proj": 64,
        "gate_proj": 128,
        "up_proj": 128,
        "down_proj": 64,
    }
    expected = 4 * (64 + 128) + 2 * 4 * sum(outputs.values())
    assert sum(p.numel() for p in model.parameters() if p.requires_grad) == expected


@pytest.mark.parametrize(("entry", "reason"), [("no_such_file.py", "is not a .py file"), ("broken.py", "SyntaxError")])
def test_a_bad_variant_module_is_refused_naming_the_entry(user_folder: Path, entry: str, reason: str) -> None:
    Path("broken.py").write_text("def oops(:\n")
    config = yaml.safe_load(Path("my.yaml").read_text()) | {"variant_modules": [entry]}
    with pytest.raises(
        ConfigError, match=rf"`variant_modules/0`: '{re.escape(entry)}'.*{reason}.*Expected a Python file"
    ):
        load_grid(config, SCHEMA)


def test_a_module_that_reuses_a_shipped_name_is_refused(user_folder: Path) -> None:
    Path("clash.py").write_text(
        "from lorabench.variants import register\nfrom lorabench.variants.lora import LoRA\n\n"
        "@register('lora')\nclass Mine(LoRA):\n    pass\n"
    )
    config = yaml.safe_load(Path("my.yaml").read_text()) | {"variant_modules": ["clash.py"]}
    with pytest.raises(ConfigError, match=r"variant 'lora' is taken \(by lorabench\.variants\.lora\.LoRA\)"):
        load_grid(config, SCHEMA)


def test_installed_packages_add_variants_through_the_entry_point_group(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(variants, "_REGISTRY", dict(variants.registry()))
    (tmp_path / "pkg_variant.py").write_text(
        "from lorabench.variants import register\n"
        "from lorabench.variants.lora import LoRA\n\n"
        "@register('from_package')\nclass FromPackage(LoRA):\n"
        "    source = 'an installed package'\n"
    )
    dist = tmp_path / "pkg_variant-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: pkg-variant\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text(f"[{variants.ENTRY_POINT_GROUP}]\nfrom_package = pkg_variant\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    variants._load_entry_points.cache_clear()
    try:
        assert variants.registry()["from_package"].source == "an installed package"
    finally:
        variants._load_entry_points.cache_clear()
        sys.modules.pop("pkg_variant", None)


def test_save_adapters_is_refused_for_a_variant_that_does_not_save(user_folder: Path) -> None:
    config = yaml.safe_load(Path("my.yaml").read_text())
    config["train"]["save_adapters"] = True
    with pytest.raises(ConfigError, match=r"`train/save_adapters`: true, but variant\(s\) \['tied_a'\] implement no"):
        load_grid(config, SCHEMA)
    config["grid"]["variants"] = ["lora", "loraplus"]
    job = {"model": "llama-tiny", "variant": "lora", "rank": "2", "lr": "0.003"}  # the smoke grid's jobs.batch
    assert stages.train_job(load_grid(config, SCHEMA), job, "cpu").save_adapters is True


def test_adapters_are_kept_beside_the_records_path() -> None:
    record = "results/runs/llama-tiny/sort/lora/r2/lr0.003/seed0.json"
    assert adapter_directory(record) == Path("results/adapters/llama-tiny/sort/lora/r2/lr0.003/seed0")


@pytest.mark.e2e
def test_readme_variant_runs_through_the_pipeline_into_table_summary_and_figures(tmp_path: Path) -> None:
    """The user's steps end to end: their file and config line, then `snakemake`; beside LoRA+ (its colour too)."""
    import pandas as pd

    from tests.pipeline import snakemake

    path, code, config_line = readme_steps()
    (tmp_path / path).parent.mkdir(parents=True)
    (tmp_path / path).write_text(code)
    config = yaml.safe_load(SMOKE.read_text()) | config_line
    config["grid"] |= {"variants": ["tied_a", "loraplus"], "seeds": [0]}
    (tmp_path / "my.yaml").write_text(yaml.safe_dump(config))
    snakemake(tmp_path, config=tmp_path / "my.yaml")
    results = pd.read_csv(tmp_path / "reports" / "results.csv")
    assert set(results["variant"]) == {"tied_a", "loraplus"} and set(results["status"]) == {"ok"}
    assert set(results["model"]) == {"llama-tiny", "gpt2-tiny"}
    assert "tied_a" in (tmp_path / "reports" / "summary.md").read_text()
    assert (tmp_path / "reports" / "accuracy_vs_rank.png").stat().st_size > 0
