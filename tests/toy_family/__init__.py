"""A fourth model family defined only in the tests: a two-block ViT on 32 px images.

It proves the plug-in contract from outside the package: nothing in ``vit_porting/``
knows it, and it is registered with ``--family toy_family:FAMILY`` or through the
``vit_porting.families`` entry point. Standard library only, like every family's ``__init__``.
"""

from __future__ import annotations

from dataclasses import dataclass

from vit_porting.families.base import Family, Perturbation, VariantSpec
from vit_porting.families.presentation import ClassAttention, Presentation


@dataclass(frozen=True)
class ToyConfig:
    image_size: int = 32
    patch_size: int = 8
    in_channels: int = 3
    num_classes: int = 10
    embed_dim: int = 16
    depth: int = 2
    num_heads: int = 2
    mlp_ratio: float = 2.0
    layer_norm_eps: float = 1e-6

    @property
    def num_patches(self) -> int:
        return (self.image_size // self.patch_size) ** 2


VARIANTS = (
    VariantSpec(name="toy_tiny", family="toy", config=ToyConfig(),
                preprocessing={"input_size": 32, "crop_pct": 1.0, "crop_mode": "center", "interpolation": "bicubic",
                               "mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5]},
                paper="(a test family)", license="apache-2.0"),
)


class ToyPresentation(Presentation):
    def class_attention(self, spec: VariantSpec) -> ClassAttention:
        return ClassAttention(r"blocks_(\d+)_attn", last_only=True)


FAMILY = Family(
    name="toy", title="Toy ViT", package=__name__, config_class=ToyConfig, variants=VARIANTS, mapping="toy.yaml",
    source_label="the tests' own PyTorch module",
    presentation=ToyPresentation(full_name="Toy ViT (a test-only family)"),
    perturbation=Perturbation(query_key=r"\.attn\.qkv\.weight$"),
)
