"""Inside a container, the code is the working tree's and the dependencies are the image's.

The images carry lorabench's pinned dependencies only; every job imports lorabench from the working
tree it was launched from (the Snakefile binds it in and puts it on PYTHONPATH). What can still
differ is a dependency: a tree whose containers/constraints.txt moved since the image was built.
Such a job stops before it trains, naming both versions and the fix, instead of producing numbers
from another environment.
"""

from __future__ import annotations

import os
from importlib import metadata
from pathlib import Path

TREE = Path(__file__).resolve().parent.parent
CONSTRAINTS = TREE / "containers" / "constraints.txt"


def container() -> str | None:
    """The image this process runs in (Apptainer and Singularity set these inside), else None."""
    return os.environ.get("APPTAINER_CONTAINER") or os.environ.get("SINGULARITY_CONTAINER")


def mismatches(pins: dict[str, str]) -> list[str]:
    """``name installed (image) != pinned`` for every pin this environment does not satisfy."""
    found = []
    for name, pinned in sorted(pins.items()):
        try:
            installed = metadata.version(name)
        except metadata.PackageNotFoundError:
            installed = "missing"
        if installed.split("+")[0] != pinned:  # a local build (torch 2.13.0+cpu) is its version
            found.append(f"{name} {installed} in the image, {pinned} pinned")
    return found


def check_image_matches_tree() -> None:
    """Stop (SystemExit) when the container's dependencies are not those the working tree pins."""
    image = container()
    if image is None or not CONSTRAINTS.is_file():
        return
    lines = CONSTRAINTS.read_text().splitlines()
    pins = dict(line.split("==", 1) for line in lines if "==" in line and not line.startswith("#"))
    if differ := mismatches(pins):
        raise SystemExit(
            f"the image {image} does not carry the dependencies the working tree {TREE} pins in "
            f"containers/constraints.txt: {'; '.join(differ)}. Rebuild the image from this tree "
            "(containers/README.md), or run the tree whose pins it was built from."
        )
