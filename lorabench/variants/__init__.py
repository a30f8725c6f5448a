"""The variant registry: every module in this package registers one variant by name.

Adding a variant is one module with a ``@register("name")`` class: in this package, in a file of the
user's own named by the config's ``variant_modules`` (:func:`load_modules`), or in an installed package
that declares it under the entry point group :data:`ENTRY_POINT_GROUP`. Nothing else changes, because
the grid's ``variants: all``, ``lorabench variants`` and every job read this registry. The helpers a variant
of one's own needs are exported here too: :func:`find_targets` (the layers a spec targets), :func:`dense_weight`
(a layer's weight as an ``(m, n)`` view, GPT-2's transposed ``Conv1D`` too), :func:`wrap_targets` and
:func:`adapter_layers` (wrapping targets in an :class:`AdapterLayer` and finding the wrappers again),
:func:`merge_adapters`, :func:`reset_optimizer_state` and :func:`save_adapter_tensors`; docs/variants.md §6 shows how
they fit together.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import pkgutil
import sys
from collections.abc import Callable, Iterable
from functools import cache
from importlib.metadata import entry_points
from pathlib import Path
from typing import TypeVar

from lorabench.variants._layers import (
    AdapterLayer,
    adapter_layers,
    dense_weight,
    find_targets,
    layer_shape,
    merge_adapters,
    save_adapter_tensors,
    wrap_targets,
)
from lorabench.variants.base import AdapterSpec, Variant, reset_optimizer_state

V = TypeVar("V", bound=type[Variant])
_REGISTRY: dict[str, type[Variant]] = {}
_USER_MODULES: set[Path] = set()
ENTRY_POINT_GROUP = "lorabench.variants"
"""Installed packages add variants by naming their module here, e.g. in pyproject.toml:
``[project.entry-points."lorabench.variants"] tied_a = "my_pkg.tied_a"``."""


def register(name: str) -> Callable[[V], V]:
    """Class decorator that files a :class:`Variant` subclass under ``name``."""

    def decorate(cls: V) -> V:
        if not (isinstance(cls, type) and issubclass(cls, Variant)):
            raise TypeError(
                f"@register({name!r}) decorates {cls!r}, which is not a subclass of lorabench.variants.Variant: "
                "a variant subclasses Variant (or one of the shipped variants, e.g. LoRA) and overrides apply()"
            )
        if name in _REGISTRY and _REGISTRY[name] is not cls:
            raise ValueError(
                f"variant {name!r} is taken (by {_REGISTRY[name].__module__}.{_REGISTRY[name].__name__}), "
                f"so {cls.__module__}.{cls.__name__} cannot be registered under it: give yours a name of "
                "its own in @register(...)"
            )
        cls.name = name
        _REGISTRY[name] = cls
        return cls

    return decorate


def _import_all() -> None:
    _import_package_modules()
    _load_entry_points()


@cache
def _import_package_modules() -> None:
    """Import the package's variant modules once per process: the Snakefile looks variants up for every job of a
    grid (scanning the folder each time took half a minute for 10,000 jobs)."""
    for module in pkgutil.iter_modules(__path__):
        if not module.name.startswith("_") and module.name != "base":
            importlib.import_module(f"{__name__}.{module.name}")


@cache
def _load_entry_points() -> None:
    """Import every installed package's variant modules once per process."""
    for point in entry_points(group=ENTRY_POINT_GROUP):
        try:
            point.load()
        except Exception as error:
            raise ImportError(
                f"entry point {point.name!r} = {point.value!r} of group {ENTRY_POINT_GROUP!r} failed to load: {error}"
            ) from error


def load_modules(paths: Iterable[str | Path]) -> list[Path]:
    """Import the user's variant files (relative to the working directory), so their ``@register`` classes
    join the registry; each file once per process. Returns the files' resolved paths: what every job must
    import too, and what decides whether a changed file changes results."""
    resolved = []
    for path in paths:
        file = Path(path).resolve()
        if file.suffix != ".py" or not file.is_file():
            raise FileNotFoundError(
                f"variant module {str(path)!r} is not a .py file (looked for {file}); give "
                "the path of a Python file, relative to the working directory"
            )
        if file not in _USER_MODULES:
            _import_file(file)
            _USER_MODULES.add(file)
        resolved.append(file)
    return resolved


def _import_file(file: Path) -> None:
    """Execute ``file`` as a module under a name unique to its path (two folders may hold ``variants.py``)."""
    name = f"lorabench_user_variants.{file.stem}_{hashlib.sha1(str(file).encode()).hexdigest()[:8]}"
    spec = importlib.util.spec_from_file_location(name, file)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses and pickling look their module up here
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[name]
        raise


def registry() -> dict[str, type[Variant]]:
    """All registered variants, by name, in a stable order."""
    _import_all()
    return dict(sorted(_REGISTRY.items()))


def get(name: str) -> type[Variant]:
    """The variant class registered as ``name``, or a ``KeyError`` that lists the known names."""
    _import_all()
    if name not in _REGISTRY:
        raise KeyError(f"unknown variant {name!r}; registered variants: {', '.join(registry())}")
    return _REGISTRY[name]


__all__ = [
    "ENTRY_POINT_GROUP",
    "AdapterLayer",
    "AdapterSpec",
    "Variant",
    "adapter_layers",
    "dense_weight",
    "find_targets",
    "get",
    "layer_shape",
    "load_modules",
    "merge_adapters",
    "register",
    "registry",
    "reset_optimizer_state",
    "save_adapter_tensors",
    "wrap_targets",
]
