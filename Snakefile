# lorabench: every LoRA variant over a grid of models x ranks x tasks x learning rates x seeds,
# then one table and one report. Run `snakemake -c all` (embedded CPU default), or pass
# `--configfile workflow/config/<suite>.yaml`; the config is validated before any job runs.
import os
import sys
from pathlib import Path

from snakemake.utils import min_version

min_version("9.0")

# This working tree's lorabench (and variant modules) checks the config and runs every job, in the container too
# (lorabench/image.py: the images carry only the dependencies, and a job whose image's dependencies differ from
# the tree's pins stops).
sys.path.insert(0, workflow.basedir)

from lorabench.image import jobs_import_tree

jobs_import_tree(workflow.basedir, workflow.deployment_settings)

from lorabench.provenance import git_state, pretrain_code

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
    default_target: True
    input:
        rules.aggregate.input,
        rules.figures.output,
        missing_records(),  # a deleted record re-runs its job (one per job that lacks any)


onsuccess:
    note_bad_runs()


onerror:
    note_bad_runs()
