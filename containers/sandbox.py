#!/usr/bin/env python3
"""Build an Apptainer definition's image as a sandbox folder where no apptainer exists.

    python containers/sandbox.py build containers/lorabench-cpu.def DEST    # from the repository root

Reads the definition itself (no second copy of the recipe): the header's Debian release, mirror and
packages go to mmdebstrap, then `%files` are copied in, `%post` runs inside the new root (bubblewrap,
with network), `%environment` is written where Apptainer keeps it (/.singularity.d/env/90-environment.sh,
which tests/stand_in/apptainer sources) and `%test` runs. Needs root, mmdebstrap and bubblewrap.

pip inside the root uses this machine's pip configuration: its config files, the local indexes and
certificates they name and the PIP_* variables travel in read-only (an index reached through a
proxy with its own CA fails without them, with a misleading ResolutionImpossible).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

ENVIRONMENT_SCRIPT = ".singularity.d/env/90-environment.sh"
CERTIFICATES = "/etc/ssl/certs/ca-certificates.crt"
ROOT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def parse(definition: Path) -> tuple[dict[str, str], dict[str, str]]:
    """The header (``Key: value``) and the sections (``%name`` -> body) of a definition file."""
    header: dict[str, str] = {}
    sections: dict[str, list[str]] = {}
    current = None
    for line in definition.read_text().splitlines():
        if match := re.match(r"^%(\w+)", line):
            current = sections.setdefault(match.group(1), [])
        elif current is not None:
            current.append(line)
        elif match := re.match(r"^(\w+):\s*(.*?)\s*$", line):
            header[match.group(1)] = match.group(2)
    return header, {name: "\n".join(lines) for name, lines in sections.items()}


def bootstrap(header: dict[str, str], root: Path) -> None:
    if header.get("Bootstrap") != "debootstrap":
        sys.exit(f"sandbox.py builds `Bootstrap: debootstrap` definitions only, not {header.get('Bootstrap')!r}")
    packages = ",".join(header.get("Include", "").replace(",", " ").split())
    subprocess.run(
        [
            "mmdebstrap",
            "--variant=minbase",
            f"--include={packages}",
            header["OSVersion"],
            str(root),
            header["MirrorURL"],
        ],
        check=True,
    )


def copy_files(body: str, root: Path) -> None:
    """`%files` lines are ``source [destination]``, sources relative to the working directory."""
    for line in body.splitlines():
        if not line.strip() or line.strip().startswith("#"):
            continue
        source, *rest = line.split()
        target = root / (rest[0] if rest else source).lstrip("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        if Path(source).is_dir():
            shutil.copytree(source, target, dirs_exist_ok=True)
        else:
            shutil.copy2(source, target)


def host_pip_paths() -> list[str]:
    """Existing files and folders this machine's pip configuration uses (config files, indexes, CAs)."""
    listing = subprocess.run([sys.executable, "-m", "pip", "config", "debug"], capture_output=True, text=True).stdout
    words = re.findall(r"(?:file://)?(/[^\s',:]+)", listing)
    words += [value for key, value in os.environ.items() if key.startswith("PIP_")]
    paths = {word.removeprefix("file://").rstrip("/") for word in words}
    # a local index's pages (…/simple) link to files beside them
    paths |= {str(Path(path).parent) for path in paths if path.endswith("/simple")}
    return sorted(path for path in paths if os.path.exists(path) and not path.startswith(("/proc", "/dev")))


def run_inside(root: Path, script: str) -> None:
    """Run a `%post`/`%test` script as root inside ``root``, with network and the host's pip settings."""
    binds = [
        argument
        for path in [*host_pip_paths(), CERTIFICATES, "/etc/resolv.conf"]
        if os.path.exists(path)
        for argument in ("--ro-bind", path, path)
    ]
    passed = {
        key: value
        for key, value in os.environ.items()
        if key.startswith("PIP_")
        or key
        in (
            "SSL_CERT_FILE",
            "REQUESTS_CA_BUNDLE",
            "HTTP_PROXY",
            "HTTPS_PROXY",
            "http_proxy",
            "https_proxy",
            "NO_PROXY",
            "no_proxy",
        )
    }
    environment = [
        argument
        for key, value in {**passed, "PATH": ROOT_PATH, "HOME": "/root"}.items()
        for argument in ("--setenv", key, value)
    ]
    created = [path for path in binds[1::3] if not (root / path.lstrip("/")).exists()]
    try:
        subprocess.run(
            [
                "bwrap",
                "--bind",
                str(root),
                "/",
                "--proc",
                "/proc",
                "--dev",
                "/dev",
                "--tmpfs",
                "/tmp",
                *binds,
                "--clearenv",
                *environment,
                "--die-with-parent",
                "/bin/sh",
                "-e",
                "-c",
                script,
            ],
            check=True,
        )
    finally:  # bwrap leaves the mount points it made for host paths
        for path in created:
            remove_empty_chain(root, Path(path))


def remove_empty_chain(root: Path, path: Path) -> None:
    """Remove the mount point ``path`` under ``root`` and its parents while they are empty."""
    target = root / str(path).lstrip("/")
    if target.is_file() and target.stat().st_size == 0:
        target.unlink()
        target = target.parent
    while target != root and target.is_dir() and not any(target.iterdir()):
        target.rmdir()
        target = target.parent


def build(definition: Path, root: Path) -> None:
    header, sections = parse(definition)
    if root.exists():
        sys.exit(f"{root} exists; remove it first")
    bootstrap(header, root)
    copy_files(sections.get("files", ""), root)
    run_inside(root, sections.get("post", ""))
    environment = root / ENVIRONMENT_SCRIPT
    environment.parent.mkdir(parents=True, exist_ok=True)
    environment.write_text(sections.get("environment", "") + "\n")
    run_inside(root, f". /{ENVIRONMENT_SCRIPT}\n{sections.get('test', '')}")


if __name__ == "__main__":
    if len(sys.argv) != 4 or sys.argv[1] != "build":
        sys.exit(__doc__)
    build(Path(sys.argv[2]), Path(sys.argv[3]))
