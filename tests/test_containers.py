"""The container path: pins agree across pyproject, lock and image definitions; the CPU image is built
from its definition (containers/sandbox.py) and the smoke grid (two variants: the path is the same for
all) runs under --use-singularity with the GPU profile, every job inside that image through a bubblewrap
`apptainer` stand-in, with the host's Python out of sight and the records a local run gives; one run also
goes from the root of a checkout, whose working directory is the tree the jobs get (read-only elsewhere).

Building needs root, mmdebstrap and bubblewrap (skipped without them; LORABENCH_REQUIRE_CONTAINERS=1,
set by .ci/run, makes that a failure) and takes minutes: the image is kept in $LORABENCH_IMAGE_CACHE
(default ~/.cache/lorabench/images) under a hash of its definition and pins, so it is rebuilt only when
they change."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from packaging.utils import canonicalize_name
from packaging.version import Version

from lorabench.job import GridPoint
from tests.pipeline import REPO, SMOKE, assert_same_results, fresh_copy, load_records, smoke_with_variants, snakemake

STAND_IN = REPO / "tests" / "stand_in"
DEFINITIONS = sorted((REPO / "containers").glob("*.def"))
DEFAULT_IMAGE = "containers/lorabench-gpu.sif"  # config schema default, relative to the workdir
CPU_DEFINITION = REPO / "containers" / "lorabench-cpu.def"
BUILT = ["containers/lorabench-cpu", "containers/lorabench-cpu.sif", "containers/lorabench-gpu.sif"]
"""Where containers/README.md builds the images, inside the tree."""
TREE_IN_JOBS = "/lorabench-tree"
"""Where the Snakefile binds the tree in each job's container."""

sys.path.insert(0, str(REPO / "containers"))
import lock  # noqa: E402  (containers/ is not a package: the lock tool is a script)

# --- one source of truth for versions -------------------------------------------------------


def test_every_dependency_is_pinned_inside_its_range():
    pins = lock.read_constraints()
    for requirement in lock.direct_requirements():
        name = canonicalize_name(requirement.name)
        assert name in pins, f"{name} is a dependency but has no pin; run python containers/lock.py"
        assert requirement.specifier.contains(Version(pins[name])), f"{name}=={pins[name]} outside {requirement}"


def test_pins_are_the_tested_environment():
    tested = lock.installed_closure(lock.direct_requirements())
    assert lock.read_constraints() == tested, "constraints.txt is stale: run python containers/lock.py"


@pytest.mark.parametrize("definition", DEFINITIONS, ids=lambda path: path.name)
def test_definitions_install_through_the_constraints_and_pin_nothing(definition):
    text = definition.read_text()
    assert re.search(r"^\s*containers/constraints\.txt\s+(\S+)$", text, re.MULTILINE), "lock not copied in"
    installs = [line for line in text.splitlines() if "pip install" in line]
    assert installs and all("--constraint /opt/lorabench/constraints.txt" in line for line in installs)
    assert not re.search(r"[A-Za-z0-9_.-]+(==|>=|<=|~=)\d", text), "versions belong in constraints.txt"


def test_gpu_base_image_carries_the_pinned_torch():
    base = re.search(
        r"^From:\s*pytorch/pytorch:([^-\s]+)-cuda", (REPO / "containers/lorabench-gpu.def").read_text(), re.M
    )
    assert base, "the GPU image must start from a CUDA PyTorch base"
    assert base.group(1) == lock.read_constraints()["torch"]


def test_definitions_point_hugging_face_at_the_bound_cache():
    profile = (REPO / "workflow/profiles/gpu/config.yaml").read_text()
    assert ":/hf-cache" in profile
    for definition in DEFINITIONS:
        assert "export HF_HOME=/hf-cache" in definition.read_text()


def test_a_job_in_an_image_with_other_pins_stops_naming_both(monkeypatch, tmp_path):
    from lorabench import image

    monkeypatch.setenv("APPTAINER_CONTAINER", "/images/old.sif")
    image.check_image_matches_tree()  # this environment is the pinned one (test_pins_are_the_tested_environment)
    moved = tmp_path / "constraints.txt"
    moved.write_text(f"torch==0.0.1\npyyaml=={lock.read_constraints()['pyyaml']}\nno-such-package==1.0\n")
    monkeypatch.setattr(image, "CONSTRAINTS", moved)
    with pytest.raises(SystemExit) as stopped:
        image.check_image_matches_tree()
    message = str(stopped.value)
    assert "/images/old.sif" in message and "Rebuild the image" in message
    assert f"torch {lock.read_constraints()['torch']}" in message and "0.0.1 pinned" in message
    assert "no-such-package missing in the image" in message and "pyyaml" not in message


# --- the smoke grid through the container code path -----------------------------------------


def require(condition: bool, reason: str) -> None:
    if not condition:
        if os.environ.get("LORABENCH_REQUIRE_CONTAINERS") == "1":
            pytest.fail(f"LORABENCH_REQUIRE_CONTAINERS=1 but {reason}")
        pytest.skip(reason)


@pytest.fixture(scope="session")
def cpu_image() -> Path:
    """The CPU image as a sandbox folder, built from its definition unless this definition and these pins
    were built before."""
    require(all(map(shutil.which, ("mmdebstrap", "bwrap"))), "mmdebstrap or bubblewrap is not installed")
    require(os.geteuid() == 0, "building an image needs root")
    key = hashlib.sha256(CPU_DEFINITION.read_bytes() + (REPO / "containers/constraints.txt").read_bytes()).hexdigest()
    cache = Path(os.environ.get("LORABENCH_IMAGE_CACHE") or Path.home() / ".cache" / "lorabench" / "images")
    image = cache / f"lorabench-cpu-{key[:12]}"
    if not image.is_dir():
        partial = image.with_name(image.name + ".partial")
        shutil.rmtree(partial, ignore_errors=True)
        partial.parent.mkdir(parents=True, exist_ok=True)
        subprocess.run(
            [sys.executable, "containers/sandbox.py", "build", str(CPU_DEFINITION), str(partial)], cwd=REPO, check=True
        )
        partial.rename(image)
    return image


def in_image(image: Path, *command: str) -> str:
    """stdout of ``command`` run in the image through the stand-in."""
    stand_in = str(STAND_IN / "apptainer")
    return subprocess.run(
        [sys.executable, stand_in, "exec", str(image), *command], capture_output=True, text=True, check=True
    ).stdout


PROBE_VARIANT = """
from lorabench.variants import register
from lorabench.variants.lora import LoRA


@register("tree_probe")
class TreeProbe(LoRA):
    source = "LoRA under another name, added to the working tree after the image was built"
"""


USER_VARIANT = PROBE_VARIANT.replace('"tree_probe"', '"user_probe"').replace("the working tree", "the user's folder")


@pytest.fixture(scope="module")
def container_run(tmp_path_factory, cpu_image):
    """The smoke grid with the GPU profile on a pretend 2-GPU box, every job in the CPU image, run from a
    copy of the working tree to which a variant module was added after the image was built, plus a variant
    from the user's own folder named by the config's ``variant_modules`` (as README's "Add a variant" does)."""
    workdir, tree = tmp_path_factory.mktemp("container_run"), tmp_path_factory.mktemp("tree") / "lorabench"
    shutil.copytree(
        REPO,
        tree,
        ignore=shutil.ignore_patterns(
            ".git", ".venv", ".whl", ".bundle", ".snakemake", "results", "__pycache__", ".pytest_cache", "*.egg-info"
        ),
    )
    (tree / "lorabench" / "variants" / "tree_probe.py").write_text(PROBE_VARIANT)
    (workdir / "my_variants").mkdir()
    (workdir / "my_variants" / "user_probe.py").write_text(USER_VARIANT)
    config = smoke_with_variants(workdir, ["lora", "resampled", "tree_probe", "user_probe"])
    config.write_text(config.read_text() + "variant_modules: [my_variants/user_probe.py]\n")
    (workdir / DEFAULT_IMAGE).parent.mkdir()
    (workdir / DEFAULT_IMAGE).symlink_to(cpu_image)  # the config's default image path, as a user has it
    with pytest.MonkeyPatch.context() as env:
        env.setenv("PATH", f"{STAND_IN}{os.pathsep}{os.environ['PATH']}")
        env.setenv("APPTAINER_STANDIN_LOG", str(workdir / "apptainer-calls.jsonl"))
        env.setenv("HF_HOME", str(workdir / "hf-home"))
        env.setenv("LORABENCH_GPU_LOCK_DIR", str(workdir / "gpu-locks"))
        snakemake(
            workdir,
            "--workflow-profile",
            str(tree / "workflow" / "profiles" / "gpu"),
            "--resources",
            "gpu=2",
            config=config,
            snakefile=tree / "Snakefile",
        )
    calls = [json.loads(line) for line in (workdir / "apptainer-calls.jsonl").read_text().splitlines()]
    return workdir, calls, tree


@pytest.mark.e2e
def test_workflow_completes_in_the_container(container_run):
    workdir, _, _ = container_run
    assert (workdir / "reports" / "summary.md").is_file()
    assert (workdir / "reports" / "results.csv").is_file()


@pytest.mark.e2e
def test_every_training_job_ran_through_apptainer(container_run):
    workdir, calls, _ = container_run
    trained = set()
    for call in calls:
        shell_command = call["command"][-1]
        if match := re.search(r"lorabench train --job '([^']*)'", shell_command):
            trained.update(GridPoint(**point).record for point in json.loads(match.group(1))["points"])
    records = load_records(workdir)
    assert records, "no records written"
    assert trained == set(records), "a training job ran outside the container"
    subcommands = {re.search(r"lorabench (\w+)", call["command"][-1]).group(1) for call in calls}
    assert subcommands == {"pretrain", "train", "cost", "aggregate", "report"}


@pytest.mark.e2e
def test_apptainer_gets_the_image_nv_and_cache_bind_from_the_gpu_profile(container_run):
    workdir, calls, _ = container_run
    assert {call["verb"] for call in calls} == {"exec"}, "a local .sif must not be pulled"
    for call in calls:
        assert call["image"] == DEFAULT_IMAGE
        assert "--nv" in call["options"]
        binds = [call["options"][i + 1] for i, option in enumerate(call["options"]) if option == "--bind"]
        assert f"{workdir / 'hf-home'}:/hf-cache" in binds
        assert call["command"][:2] == ["bash", "-c"]


@pytest.mark.e2e
def test_container_records_name_their_device(container_run):
    workdir, _, _ = container_run
    for record in load_records(workdir).values():
        assert record["environment"]["device"] == "cpu"  # the smoke config asks for CPU
        assert record["environment"]["device_name"]
        assert record["environment"]["cuda_driver"] is None


@pytest.mark.e2e
def test_container_records_equal_a_local_run(container_run, smoke_run):
    records = {
        path: record
        for path, record in load_records(container_run[0]).items()
        if "/tree_probe/" not in path and "/user_probe/" not in path
    }
    assert_same_results(records, load_records(smoke_run))


@pytest.mark.e2e
def test_jobs_ran_with_the_images_python_and_the_trees_code(container_run, cpu_image):
    workdir, calls, tree = container_run
    image_python = in_image(
        cpu_image, "python", "-c", "import platform, sys; print(platform.python_version(), sys.prefix)"
    )
    assert image_python.split() == [image_python.split()[0], "/opt/venv"]
    # -I: the image's own packages only (no PYTHONPATH, no working directory)
    carried = in_image(
        cpu_image, "python", "-I", "-c", "import importlib.util; print(importlib.util.find_spec('lorabench'))"
    )
    assert carried.strip() == "None", "the image must not carry lorabench's code"
    for record in load_records(workdir).values():
        assert record["environment"]["python"] == image_python.split()[0]
        assert record["environment"]["container"] == str(workdir / DEFAULT_IMAGE)
    binds = {call["options"][i + 1] for call in calls for i, option in enumerate(call["options"]) if option == "--bind"}
    assert f"{tree}:{TREE_IN_JOBS}:ro" in binds, "the working tree is not bound into the jobs"
    assert all(f"PYTHONPATH={TREE_IN_JOBS}" in call["options"] for call in calls)


@pytest.mark.e2e
def test_a_variant_added_after_the_build_runs_in_the_image(container_run):
    workdir, _, _ = container_run
    probes = [record for path, record in load_records(workdir).items() if "/tree_probe/" in path]
    assert probes and all(record["status"] == "ok" for record in probes)
    assert all(record["environment"]["container"] == str(workdir / DEFAULT_IMAGE) for record in probes)


@pytest.mark.e2e
def test_a_variant_from_the_users_folder_runs_in_the_image(container_run):
    workdir, _, _ = container_run
    probes = {path: record for path, record in load_records(workdir).items() if "/user_probe/" in path}
    assert probes and all(record["status"] == "ok" for record in probes.values())
    assert all(
        record["hyperparameters"]["variant_modules"] == ["my_variants/user_probe.py"] for record in probes.values()
    )
    assert all(record["environment"]["container"] == str(workdir / DEFAULT_IMAGE) for record in probes.values())


# --- from the repository root, and what a build leaves in the tree ------------------------------


def test_a_record_made_after_a_build_is_not_dirty(tmp_path):
    """The images built where containers/README.md builds them are ignored by git, so the records of a checkout
    holding them say ``dirty: false`` (records take ``environment.commit``/``dirty`` from ``git_state``)."""
    tree = fresh_copy(tmp_path / "lorabench", commit=True)
    (tree / BUILT[0] / "opt" / "venv").mkdir(parents=True)  # a sandbox folder's files
    (tree / BUILT[0] / "opt" / "venv" / "pyvenv.cfg").write_text("home = /usr/bin\n")
    for image in BUILT[1:]:
        (tree / image).write_bytes(b"SIF")
    state = subprocess.run(
        [
            sys.executable,
            "-c",
            "import json; from lorabench.provenance import git_state; print(json.dumps(git_state()))",
        ],
        cwd=tree,
        env=os.environ | {"PYTHONPATH": str(tree)},
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=tree, capture_output=True, text=True).stdout.strip()
    assert json.loads(state) == {"commit": head, "dirty": False}


@pytest.fixture(scope="module")
def root_run(tmp_path_factory, cpu_image):
    """``snakemake --use-singularity`` run from the root of a checkout (the working directory is the tree the
    Snakefile binds into each job), with the CPU image built at containers/lorabench-cpu (a link to the built
    one) and a one-run grid: the working directory must stay writable inside the jobs."""
    tree = fresh_copy(tmp_path_factory.mktemp("root_run") / "lorabench", commit=True)
    (tree / BUILT[0]).symlink_to(cpu_image)
    config = yaml.safe_load(SMOKE.read_text())
    config["models"] = {"llama-tiny": config["models"]["llama-tiny"]}
    config["grid"] |= {"variants": ["lora"], "seeds": [0]}
    config["cost"] = {"enabled": False}
    config_file = tree.parent / "one-run.yaml"  # outside the tree, which stays clean
    config_file.write_text(yaml.safe_dump(config))
    calls = tree.parent / "apptainer-calls.jsonl"
    environment = os.environ | {
        "PATH": f"{STAND_IN}{os.pathsep}{os.environ['PATH']}",
        "APPTAINER_STANDIN_LOG": str(calls),
        "HF_HOME": str(tree.parent / "hf-home"),
    }
    result = subprocess.run(
        [
            "snakemake",
            "--use-singularity",
            "--cores",
            "2",
            "--configfile",
            str(config_file),
            "--config",
            f"container={BUILT[0]}",
        ],
        cwd=tree,
        env=environment,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, f"{result.stdout[-3000:]}\n{result.stderr[-6000:]}"
    return tree, [json.loads(line) for line in calls.read_text().splitlines()]


@pytest.mark.e2e
def test_the_container_run_works_from_the_repository_root(root_run):
    tree, calls = root_run
    records = load_records(tree)
    assert len(records) == 1 and all(record["status"] == "ok" for record in records.values())
    assert all(record["environment"]["container"] == str(tree / BUILT[0]) for record in records.values())
    assert {re.search(r"lorabench (\w+)", call["command"][-1]).group(1) for call in calls} == {
        "pretrain",
        "train",
        "aggregate",
        "report",
    }, "every job ran in the image"
    binds = {call["options"][i + 1] for call in calls for i, option in enumerate(call["options"]) if option == "--bind"}
    destinations = {(bind.split(":") + [bind])[1] for bind in binds}
    assert f"{tree}:{TREE_IN_JOBS}:ro" in binds
    assert not any(tree.is_relative_to(destination) for destination in destinations), "a bind shadows the workdir"
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=tree, capture_output=True, text=True).stdout.strip()
    assert all(record["environment"]["commit"] == head for record in records.values())
    assert not subprocess.run(["git", "status", "--porcelain"], cwd=tree, capture_output=True, text=True).stdout, (
        "the build and the run left files git does not ignore"
    )
