"""Named variants of every model family: their configs, checkpoints and preprocessing.

This module imports neither torch nor TensorFlow. The CLI resolves names here before it
starts the per-runtime processes, and importing TensorFlow before torch in one process
aborts it (LLVM "Option registered more than once"), so nothing here may pull either in.
"""

from __future__ import annotations

import difflib
import importlib
from dataclasses import asdict, dataclass, field, replace
from typing import Any


class UnknownVariantError(ValueError):
    pass


@dataclass(frozen=True)
class CaiTConfig:
    image_size: int = 224
    patch_size: int = 16
    in_channels: int = 3
    num_classes: int = 1000
    embed_dim: int = 192
    depth: int = 24
    num_heads: int = 4
    mlp_ratio: float = 4.0
    qkv_bias: bool = True
    depth_token_only: int = 2
    mlp_ratio_token_only: float = 4.0
    init_values: float = 1e-5
    layer_norm_eps: float = 1e-6

    @property
    def num_patches(self) -> int:
        return (self.image_size // self.patch_size) ** 2


@dataclass(frozen=True)
class VariantSpec:
    """A named, buildable model: family, architecture config, source checkpoint, preprocessing."""

    name: str
    family: str
    config: Any
    timm_name: str | None = None
    pretrained_tag: str | None = None
    preprocessing: dict = field(default_factory=dict)
    paper: str = ""
    license: str = ""

    def with_config(self, **overrides: Any) -> VariantSpec:
        """The same variant with config fields changed (class count, reduced depth in tests)."""
        return replace(self, config=replace(self.config, **overrides))

    @property
    def image_size(self) -> int:
        return self.config.image_size

    def to_dict(self) -> dict:
        return {"name": self.name, "family": self.family, "config": asdict(self.config),
                "timm_name": self.timm_name, "pretrained_tag": self.pretrained_tag,
                "preprocessing": self.preprocessing, "paper": self.paper, "license": self.license}

    @classmethod
    def from_dict(cls, data: dict) -> VariantSpec:
        config_class = FAMILIES[data["family"]]["config_class"]
        return cls(**{**data, "config": config_class(**data["config"])})


_IMAGENET = {"mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}


def _cait(name: str, image_size: int, embed_dim: int, depth: int, num_heads: int,
          init_values: float) -> VariantSpec:
    return VariantSpec(
        name=name, family="cait",
        config=CaiTConfig(image_size=image_size, embed_dim=embed_dim, depth=depth,
                          num_heads=num_heads, init_values=init_values),
        timm_name=name, pretrained_tag=f"{name}.fb_dist_in1k",
        preprocessing={**_IMAGENET, "input_size": image_size, "crop_pct": 1.0, "interpolation": "bicubic"},
        paper="Touvron et al., Going deeper with Image Transformers, ICCV 2021 (arXiv:2103.17239)",
        license="apache-2.0",
    )


CAIT_VARIANTS = [
    _cait("cait_xxs24_224", 224, 192, 24, 4, 1e-5),
    _cait("cait_xxs24_384", 384, 192, 24, 4, 1e-5),
    _cait("cait_xxs36_224", 224, 192, 36, 4, 1e-5),
    _cait("cait_xxs36_384", 384, 192, 36, 4, 1e-5),
    _cait("cait_xs24_384", 384, 288, 24, 6, 1e-5),
    _cait("cait_s24_224", 224, 384, 24, 8, 1e-5),
    _cait("cait_s24_384", 384, 384, 24, 8, 1e-5),
    _cait("cait_s36_384", 384, 384, 36, 8, 1e-6),
    _cait("cait_m36_384", 384, 768, 36, 16, 1e-6),
    _cait("cait_m48_448", 448, 768, 48, 16, 1e-6),
]

# family -> where its pieces live. Modules are named, not imported, so that resolving a
# variant never imports a framework.
FAMILIES: dict[str, dict[str, Any]] = {
    "cait": {
        "config_class": CaiTConfig,
        "variants": {v.name: v for v in CAIT_VARIANTS},
        "keras_builder": "porting.cait:build_cait",
        "torch_reference": "parity.references:build_timm_cait",
        "mapping": "cait.yaml",
        "source_label": "timm",
    },
}


def all_variants() -> dict[str, VariantSpec]:
    return {name: spec for fam in FAMILIES.values() for name, spec in fam["variants"].items()}


def get_variant(name: str) -> VariantSpec:
    variants = all_variants()
    if name in variants:
        return variants[name]
    close = difflib.get_close_matches(name, list(variants), n=3, cutoff=0.5)
    hint = f" Did you mean: {', '.join(close)}?" if close else ""
    raise UnknownVariantError(f"unknown variant {name!r}.{hint} Known variants: {', '.join(sorted(variants))}")


def load_symbol(family: str, key: str) -> Any:
    """Import ``module:attr`` named in FAMILIES[family][key] (this is where frameworks load)."""
    module, attr = FAMILIES[family][key].split(":")
    return getattr(importlib.import_module(module), attr)
