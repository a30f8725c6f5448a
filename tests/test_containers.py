"""The container path: pins agree across pyproject, lock and image definitions, and the smoke grid
(two variants: the path is the same for all) runs under --use-singularity with the GPU profile, every
job through a stand-in `apptainer`, with the records a local run gives."""

from __future__ import annotations

import json
import os
import re
import sys

import pytest
from packaging.utils import canonicalize_name
from packaging.version import Version

from tests.pipeline import REPO, assert_same_results, load_records, smoke_with_variants, snakemake

STAND_IN = REPO / "tests" / "stand_in"
DEFINITIONS = sorted((REPO / "containers").glob("*.def"))
DEFAULT_IMAGE = "containers/lorabench-gpu.sif"  # config schema default, relative to the workdir

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
    base = re.search(r"^From:\s*pytorch/pytorch:([^-\s]+)-cuda", (REPO / "containers/lorabench-gpu.def").read_text(), re.M)
    assert base, "the GPU image must start from a CUDA PyTorch base"
    assert base.group(1) == lock.read_constraints()["torch"]


def test_definitions_point_hugging_face_at_the_bound_cache():
    profile = (REPO / "workflow/profiles/gpu/config.yaml").read_text()
    assert ":/hf-cache" in profile
    for definition in DEFINITIONS:
        assert "export HF_HOME=/hf-cache" in definition.read_text()


# --- the smoke grid through the container code path -----------------------------------------

@pytest.fixture(scope="module")
def container_run(tmp_path_factory):
    """The smoke grid with the GPU profile on a pretend 2-GPU box, apptainer replaced by the stand-in."""
    workdir = tmp_path_factory.mktemp("container_run")
    config = smoke_with_variants(workdir, ["lora", "resampled"])
    (workdir / DEFAULT_IMAGE).parent.mkdir()
    (workdir / DEFAULT_IMAGE).write_text("not a real image: the stand-in runs commands on the host\n")
    with pytest.MonkeyPatch.context() as env:
        env.setenv("PATH", f"{STAND_IN}{os.pathsep}{os.environ['PATH']}")
        env.setenv("APPTAINER_STANDIN_LOG", str(workdir / "apptainer-calls.jsonl"))
        env.setenv("HF_HOME", str(workdir / "hf-home"))
        env.setenv("LORABENCH_GPU_LOCK_DIR", str(workdir / "gpu-locks"))
        snakemake(workdir, "--workflow-profile", str(REPO / "workflow" / "profiles" / "gpu"), "--resources", "gpu=2",
                  config=config)
    calls = [json.loads(line) for line in (workdir / "apptainer-calls.jsonl").read_text().splitlines()]
    return workdir, calls


@pytest.mark.e2e
def test_workflow_completes_in_the_container(container_run):
    workdir, _ = container_run
    assert (workdir / "reports" / "summary.md").is_file()
    assert (workdir / "reports" / "results.csv").is_file()


@pytest.mark.e2e
def test_every_training_job_ran_through_apptainer(container_run):
    workdir, calls = container_run
    trained = set()
    for call in calls:
        shell_command = call["command"][-1]
        if match := re.search(r"lorabench train --job '([^']*)'", shell_command):
            trained.update(point["record"] for point in json.loads(match.group(1))["points"])
    records = load_records(workdir)
    assert records, "no records written"
    assert trained == set(records), "a training job ran outside the container"
    subcommands = {re.search(r"lorabench (\w+)", call["command"][-1]).group(1) for call in calls}
    assert subcommands == {"pretrain", "train", "aggregate", "report"}


@pytest.mark.e2e
def test_apptainer_gets_the_image_nv_and_cache_bind_from_the_gpu_profile(container_run):
    workdir, calls = container_run
    assert {call["verb"] for call in calls} == {"exec"}, "a local .sif must not be pulled"
    for call in calls:
        assert call["image"] == DEFAULT_IMAGE
        assert "--nv" in call["options"]
        binds = [call["options"][i + 1] for i, option in enumerate(call["options"]) if option == "--bind"]
        assert f"{workdir / 'hf-home'}:/hf-cache" in binds
        assert call["command"][:2] == ["bash", "-c"]


@pytest.mark.e2e
def test_container_records_name_their_device(container_run):
    workdir, _ = container_run
    for record in load_records(workdir).values():
        assert record["environment"]["device"] == "cpu"  # the smoke config asks for CPU
        assert record["environment"]["device_name"]
        assert record["environment"]["cuda_driver"] is None


@pytest.mark.e2e
def test_container_records_equal_a_local_run(container_run, smoke_run):
    assert_same_results(load_records(container_run[0]), load_records(smoke_run))
