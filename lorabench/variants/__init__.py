"""The variant registry: every module in this package registers one variant by name.

Adding a variant is adding one module here with a ``@register("name")`` class; nothing else
changes, because the grid's ``variants: all`` and ``lorabench variants`` read this registry.
"""

from __future__ import annotations

import importlib
import pkgutil
from typing import Callable, TypeVar

from lorabench.variants.base import AdapterSpec, Variant

V = TypeVar("V", bound=type[Variant])
_REGISTRY: dict[str, type[Variant]] = {}


def register(name: str) -> Callable[[V], V]:
    """Class decorator that files a :class:`Variant` subclass under ``name``."""

    def decorate(cls: V) -> V:
        if name in _REGISTRY and _REGISTRY[name] is not cls:
            raise ValueError(f"variant {name!r} is registered twice: {_REGISTRY[name]} and {cls}")
        cls.name = name
        _REGISTRY[name] = cls
        return cls

    return decorate


def _import_all() -> None:
    for module in pkgutil.iter_modules(__path__):
        if not module.name.startswith("_") and module.name != "base":
            importlib.import_module(f"{__name__}.{module.name}")


def registry() -> dict[str, type[Variant]]:
    """All registered variants, by name, in a stable order."""
    _import_all()
    return dict(sorted(_REGISTRY.items()))


def get(name: str) -> type[Variant]:
    """The variant class registered as ``name``, or a ``KeyError`` that lists the known names."""
    variants = registry()
    if name not in variants:
        raise KeyError(f"unknown variant {name!r}; registered variants: {', '.join(variants)}")
    return variants[name]


__all__ = ["AdapterSpec", "Variant", "get", "register", "registry"]
