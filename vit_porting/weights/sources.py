"""Where a port's source weights come from (published, a local file, or explicitly random), carried
into the family's canonical key layout and checked to be that family's. PyTorch side only; never
import TensorFlow here.

Whatever the origin, the result is written as one safetensors file in the family's canonical
key layout, which every later step (mapping, reference, round trip) reads.
"""

from __future__ import annotations

import re
from collections.abc import Mapping as MappingABC
from pathlib import Path

import torch

from vit_porting.families.base import Origin, VariantSpec
from vit_porting.families.registry import families, get_family
from vit_porting.manifest import sha256_file
from vit_porting.mapping.engine import MappingFileError, RenameError, family_mapping, family_renames
from vit_porting.mapping.tensor_io import CheckpointError
from vit_porting.weights.checkpoint import choose_checkpoint_file, load_checkpoint
from vit_porting.weights.pretrained import LOADERS
from vit_porting.weights.random import perturb_


def class_labels(spec: VariantSpec) -> dict | None:
    """The class names of ``spec``'s head from timm's ``ImageNetInfo`` (WordNet synsets and their
    descriptions), or None when the head is not that label set's (another class count)."""
    if not spec.label_set or spec.config.num_classes <= 0:
        return None
    from timm.data import ImageNetInfo

    info = ImageNetInfo(spec.label_set)
    if info.num_classes() != spec.config.num_classes:
        return None
    return {"set": spec.label_set, "names": list(info.label_names()),
            "descriptions": list(info.label_descriptions())}


def _reset_classifier(state: dict[str, torch.Tensor], new_model, classifier: str | tuple[str, ...],
                      num_classes: int, origin: Origin, new_head: bool = False) -> dict[str, torch.Tensor]:
    """``state`` with its classifier(s) fitted to ``num_classes`` (a distilled DeiT has two heads:
    both are replaced or dropped together); ``new_model()`` builds the model whose freshly
    initialised heads replace them (only when needed)."""
    prefixes = (classifier,) if isinstance(classifier, str) else classifier
    classifier = prefixes[0]

    def is_head(key: str) -> bool:
        return any(key == p or key.startswith(p + ".") for p in prefixes)

    head_keys = [k for k in state if is_head(k)]
    weight = state.get(f"{classifier}.weight")
    if weight is None or weight.shape[0] == num_classes:
        return state
    if not new_head:
        # A checkpoint fine-tuned to another class count must not get a random head silently.
        raise CheckpointError(
            f"{origin.description}: {classifier}.weight has shape {tuple(weight.shape)}, i.e. "
            f"{weight.shape[0]} classes, but the variant has {num_classes}. Pass --num-classes "
            f"{weight.shape[0]} to port this head, or --num-classes N to replace it with a "
            f"new N-class head for fine-tuning (0 for a feature extractor).")
    state = {k: v for k, v in state.items() if k not in head_keys}
    if num_classes > 0:
        state.update({k: v for k, v in new_model().state_dict().items() if is_head(k)})
        origin.notes.append(f"classifier replaced: checkpoint has {weight.shape[0]} classes, port has "
                            f"{num_classes}; the new head is randomly initialised (for fine-tuning)")
    else:
        origin.notes.append(f"classifier dropped ({weight.shape[0]} classes): feature-extractor port")
    return state


def resolve_weights(spec: VariantSpec, weights: str, seed: int = 0,
                    new_head: bool = False) -> tuple[dict[str, torch.Tensor], Origin]:
    """Weights for ``spec`` in canonical layout, and where they came from.

    ``weights`` is ``"pretrained"``, ``"random"`` or a file path. The family's reference model
    is built for random weights, and for a new classifier head only when one is needed.
    """
    torch.manual_seed(seed)
    family = get_family(spec.family)
    reference = family.torch()
    if weights == "random":
        model = reference.build_reference(spec)
        perturb_(model, seed, family.perturbation)
        origin = Origin("random", f"random initialisation ({family.source_label} init, perturbed), seed {seed}",
                        seed=seed)
        # the model's own tensors, not copies: the model is dropped on return (1.4 GB for m48)
        return {k: v.detach() for k, v in model.state_dict().items()}, origin
    if weights == "pretrained":
        state, origin = LOADERS[family.pretrained_from](spec)
    else:
        path, note = choose_checkpoint_file(Path(weights).expanduser())
        state = load_checkpoint(path)
        origin = Origin("file", str(path), file=str(path.resolve()), sha256=sha256_file(path))
        if note:
            origin.notes.append(note)
    state = to_canonical_layout(spec, state, origin)
    # the PyTorch model is built only if a new head is needed (seconds and GBs for cait_m48_448)
    return _reset_classifier(state, lambda: reference.build_reference(spec), family.classifier,
                             spec.config.num_classes, origin, new_head), origin


def to_canonical_layout(spec: VariantSpec, state: dict[str, torch.Tensor], origin: Origin) -> dict[str, torch.Tensor]:
    """Rename a checkpoint in one of the family's other key layouts into the canonical one.

    Each of the family's ``layouts`` has a ``detect`` regex (matched against the keys) and a
    declarative rename file (package data, see vit_porting.mapping.engine.RenameSpec).
    """
    family = get_family(spec.family)
    hits = [layout for layout in family.layouts if any(re.search(layout.detect, k) for k in state)]
    if not hits:
        return state
    if len(hits) > 1:
        raise CheckpointError(f"{origin.description}: keys match several {family.title} layouts "
                              f"({', '.join(h.name for h in hits)}); a checkpoint must be in one layout")
    (layout,) = hits
    try:
        state = family_renames(family, layout).apply(state)
    except (RenameError, MappingFileError) as exc:
        raise CheckpointError(f"{origin.description}: looks like the {layout.name} layout "
                              f"({layout.description}), but {exc}") from None
    origin.notes.append(f"{layout.name} key layout ({layout.description}) renamed into the canonical "
                        f"{family.source_label} layout by {family.package}/{layout.renames}")
    return state


def guess_family(shapes: MappingABC[str, tuple], exclude: str, image_size: int) -> dict | None:
    """The registered family (other than ``exclude``) a checkpoint belongs to, when its mapping
    (after the family's layout renames) takes most of the checkpoint's keys; else None.

    Returns {"family", "name", "matched", "total", "mapping", "variant"}: ``variant`` is the
    family's variant whose state_dict (built on the meta device) shares the most keys and shapes
    with the checkpoint, the nearest image size breaking ties. The one place that walks the
    registry of families to recognise a checkpoint.
    """
    best = None
    for name, family in families().items():
        if name == exclude:
            continue
        renames = [family_renames(family, layout) for layout in family.layouts
                   if any(re.search(layout.detect, key) for key in shapes)]
        mapping = family_mapping(family)
        canonical = {}
        for key, shape in shapes.items():
            for rename in renames:
                key = rename.rename_key(key)
            canonical[key] = tuple(shape)
        matched = sum(mapping.accounts_for(key) for key in canonical)
        if best is None or matched > best["matched"]:
            best = {"family": name, "name": family.title, "matched": matched, "total": len(shapes),
                    "mapping": family.mapping,
                    "keys": {mapping.rename_key(k): v for k, v in canonical.items()}}
    if best is None or 2 * best["matched"] <= best["total"]:
        return None
    keys = best.pop("keys")
    family = get_family(best["family"])
    build = family.torch().build_reference

    def fit(spec: VariantSpec) -> tuple[float, int]:
        with torch.device("meta"):
            reference = {k: tuple(v.shape) for k, v in build(spec).state_dict().items()}
        same = sum(reference.get(k) == shape for k, shape in keys.items())
        return same / len(set(reference) | set(keys)), -abs(spec.image_size - image_size)

    best["variant"] = max(family.variants, key=fit).name
    return best


def refuse_other_family(spec: VariantSpec, state: MappingABC[str, torch.Tensor], mapping, origin: Origin) -> None:
    """A checkpoint of another family fails on every key, which the mapping engine would list
    by the dozen; when most of its keys fit another registered family, say that in one line."""
    if not state or 2 * sum(mapping.accounts_for(key) for key in state) > len(state):
        return
    guess = guess_family({k: tuple(v.shape) for k, v in state.items()}, spec.family, spec.image_size)
    if guess:
        raise CheckpointError(
            f"{origin.description}: this looks like a {guess['name']} checkpoint ({guess['matched']} of "
            f"{guess['total']} keys match {guess['mapping']}), not {spec.name}; did you mean "
            f"{guess['variant']} (vit-port port {guess['variant']})?")
