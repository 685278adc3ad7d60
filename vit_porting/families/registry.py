"""The registry of model families: one line per built-in family, and plug-ins from outside.

A family is a ``Family`` object (``vit_porting.families.base``) named as ``module:attribute``.
Families come from, in order:

1. ``BUILTIN`` below;
2. the ``vit_porting.families`` entry-point group of installed distributions, e.g. in a
   plug-in's pyproject.toml: ``[project.entry-points."vit_porting.families"] swin = "my_pkg:FAMILY"``;
3. ``VIT_PORTING_FAMILIES`` (comma-separated ``module:attribute``), which ``--family`` sets so
   that every worker process the command starts sees the same families.

Standard library only: importing this must not load a framework (see base.py).
"""

from __future__ import annotations

import difflib
import importlib
import os
from importlib import metadata

from vit_porting.families.base import Family, VariantSpec

BUILTIN = (
    "vit_porting.families.cait:FAMILY",
    "vit_porting.families.cvt:FAMILY",
    "vit_porting.families.vit:FAMILY",
)
ENTRY_POINT_GROUP = "vit_porting.families"
ENV_VAR = "VIT_PORTING_FAMILIES"

_loaded: dict[str, Family] = {}
_sources: dict[str, str] = {}
_scanned = False  # built-in and entry-point families are found once per process


class FamilyError(ValueError):
    """A family that cannot be found or loaded; the message names it."""


class UnknownVariantError(ValueError):
    pass


def _load_reference(reference: str) -> Family:
    module, _, attribute = reference.partition(":")
    if not module or not attribute:
        raise FamilyError(f"{reference!r}: a family is named as module:attribute (e.g. my_models.swin:FAMILY)")
    try:
        family = getattr(importlib.import_module(module), attribute)
    except (ImportError, AttributeError) as exc:
        raise FamilyError(f"family {reference!r} cannot be loaded: {type(exc).__name__}: {exc}") from None
    if not isinstance(family, Family):
        raise FamilyError(f"family {reference!r} is a {type(family).__name__}, not a vit_porting.families.base.Family")
    return family


def _register(family: Family, source: str) -> Family:
    if family.name in _loaded and _sources[family.name] != source:
        raise FamilyError(f"two families are named {family.name!r}: {_sources[family.name]} and {source}")
    clash = {v.name for v in family.variants} & {n for f in _loaded.values() if f.name != family.name
                                                 for n in f.variant_map()}
    if clash:
        raise FamilyError(f"family {family.name!r} ({source}) registers variant names another family has: "
                          f"{', '.join(sorted(clash))}")
    _loaded[family.name], _sources[family.name] = family, source
    return family


def families() -> dict[str, Family]:
    """Every registered family by name (built-in, entry points, then ``VIT_PORTING_FAMILIES``)."""
    global _scanned
    if not _scanned:
        for reference in (*BUILTIN, *(entry.value for entry in metadata.entry_points(group=ENTRY_POINT_GROUP))):
            if reference not in _sources.values():
                _register(_load_reference(reference), reference)
        _scanned = True
    for reference in filter(None, (r.strip() for r in os.environ.get(ENV_VAR, "").split(","))):
        if reference not in _sources.values():
            _register(_load_reference(reference), reference)
    return dict(_loaded)


def add_family(reference: str) -> Family:
    """Register ``module:attribute`` for this process and every worker it starts (``--family``)."""
    family = _register(_load_reference(reference), reference)
    known = [r for r in os.environ.get(ENV_VAR, "").split(",") if r]
    if reference not in known:
        os.environ[ENV_VAR] = ",".join([*known, reference])
    return family


def get_family(name: str) -> Family:
    found = families()
    if name not in found:
        raise FamilyError(f"unknown family {name!r}; known: {', '.join(sorted(found))} "
                          "(a plug-in family is added with --family module:attribute)")
    return found[name]


def all_variants() -> dict[str, VariantSpec]:
    return {name: spec for family in families().values() for name, spec in family.variant_map().items()}


def variant_from_dict(data: dict) -> VariantSpec:
    """A ``VariantSpec.to_dict()`` read back (a worker's job, a port's record), its config built by
    the registered family's config class."""
    config_class = get_family(data["family"]).config_class
    return VariantSpec(**{**data, "config": config_class(**data["config"]),
                          "datasets": tuple(data.get("datasets") or ())})


def get_variant(name: str) -> VariantSpec:
    variants = all_variants()
    if name in variants:
        return variants[name]
    close = difflib.get_close_matches(name, list(variants), n=3, cutoff=0.5)
    hint = f" Did you mean: {', '.join(close)}?" if close else ""
    raise UnknownVariantError(f"unknown variant {name!r}.{hint} Known variants: {', '.join(sorted(variants))}")
