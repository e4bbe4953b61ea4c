"""Kinds of enrichment as plug-ins: one module per kind behind one protocol (``kinds.base.Kind``).

Every module of this package that defines a concrete ``Kind`` is found at import: adding a kind
means its module here, its expectation suite in ``schemas/expectations/``, and its value and
options in ``schemas.params`` (the form). The rest of the pipeline asks ``kind_of(params)`` and
never which kind it is handling.
"""

from __future__ import annotations

import importlib
import inspect
import pkgutil
from typing import TYPE_CHECKING

from kinds.base import ANSWER_ERROR, GATE_ONLY, Kind, Packing

if TYPE_CHECKING:
    from schemas.params import EnrichParams


def _discover() -> dict[str, Kind]:
    found: dict[str, Kind] = {}
    for module in pkgutil.iter_modules(__path__):
        loaded = importlib.import_module(f"{__name__}.{module.name}")
        for _, cls in inspect.getmembers(loaded, inspect.isclass):
            if issubclass(cls, Kind) and not inspect.isabstract(cls) and "name" in vars(cls):
                found[cls.name] = cls()
    return found


REGISTRY: dict[str, Kind] = _discover()


def get(name: str) -> Kind:
    """The kind called ``name`` (a ``schemas.params.Kind`` value)."""
    return REGISTRY[str(name)]


def kind_of(params: EnrichParams) -> Kind:
    return REGISTRY[params.kind.value]


__all__ = ["ANSWER_ERROR", "GATE_ONLY", "REGISTRY", "Kind", "Packing", "get", "kind_of"]
