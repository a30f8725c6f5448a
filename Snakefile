# lorabench: every LoRA variant over a grid of models x ranks x tasks x learning rates x seeds,
# then one table and one report. Run `snakemake -c all` (embedded CPU default), or pass
# `--configfile workflow/config/<suite>.yaml`; the config is validated before any job runs.
import os
import sys
from pathlib import Path

from snakemake.settings.types import DeploymentMethod

# This working tree's lorabench (and variant modules) checks the config and runs every job, in the
# container too: the images carry only the dependencies, so the tree goes first on sys.path and
# PYTHONPATH, and each job's container gets it read-only at TREE_IN_JOBS, first on its PYTHONPATH.
# Not at the tree's own path: run from the repository root, that is the working directory, which
# Apptainer binds writable and a read-only bind of the same path would replace (Read-only file system).
# lorabench/image.py stops a job whose image's dependencies differ from the tree's pins.
TREE_IN_JOBS = "/lorabench-tree"
sys.path.insert(0, workflow.basedir)
os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [workflow.basedir, os.environ.get("PYTHONPATH")]))
if DeploymentMethod.APPTAINER in workflow.deployment_settings.deployment_method:
    _tree = f" --bind {workflow.basedir}:{TREE_IN_JOBS}:ro --env PYTHONPATH={TREE_IN_JOBS}"
    if _tree not in workflow.deployment_settings.apptainer_args:  # a SLURM job's snakemake parses this again
        workflow.deployment_settings.apptainer_args += _tree

from lorabench.provenance import git_state, pretrain_code
from lorabench.records import bad_runs_note

if tree_commit := git_state()["commit"]:  # jobs in an image without git record it too
    os.environ.setdefault("LORABENCH_COMMIT", tree_commit)


if not config:  # a --configfile replaces the embedded default instead of being merged into it
    configfile: Path(workflow.basedir) / "workflow/config/default.yaml"


include: "workflow/rules/common.smk"

container: config["container"]



include: "workflow/rules/pretrain.smk"
include: "workflow/rules/assets.smk"
include: "workflow/rules/train.smk"


if config["cost"]["enabled"]:  # config `cost.enabled` (default true)

    include: "workflow/rules/cost.smk"

include: "workflow/rules/report.smk"


rule all:
    input:
        rules.aggregate.input,
        rules.figures.output,
        missing_records(),  # a deleted record re-runs its job (one per job that lacks any)
    default_target: True


def note_bad_runs():
    """The pipeline's last lines name the grid's failed and diverged runs (it still exits 0: they are results)."""
    if note := bad_runs_note([Path(point.record) for point in GRID.points()]):
        print(note, file=sys.stderr)


onsuccess:
    note_bad_runs()


onerror:
    note_bad_runs()
