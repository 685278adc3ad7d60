"""CaiT (Touvron et al., "Going deeper with Image Transformers"): timm's ``models/cait.py``.

The family object, its config and its ten timm variants. Standard library only (see
``vit_porting.families.base``); the Keras model is ``model.py``, the timm reference ``reference.py``.
"""

from __future__ import annotations

from dataclasses import dataclass

from vit_porting.families.base import Family, Perturbation, VariantSpec
from vit_porting.families.presentation import ClassAttention
from vit_porting.families.timm import TIMM_HUB_REPO, TimmPresentation, timm_keywords
from vit_porting.families.timm import timm_model_args as changed_timm_args


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


# CaiTConfig field -> timm Cait keyword; the reference and the card's timm snippet both use it
TIMM_KWARGS = {"image_size": "img_size", "patch_size": "patch_size", "in_channels": "in_chans",
               "num_classes": "num_classes", "embed_dim": "embed_dim", "depth": "depth", "num_heads": "num_heads",
               "mlp_ratio": "mlp_ratio", "qkv_bias": "qkv_bias", "depth_token_only": "depth_token_only",
               "mlp_ratio_token_only": "mlp_ratio_token_only", "init_values": "init_values"}


def timm_kwargs(config: CaiTConfig) -> dict:
    return timm_keywords(config, TIMM_KWARGS)


def timm_model_args(spec: VariantSpec) -> dict:
    return changed_timm_args(spec, VARIANTS, TIMM_KWARGS)


_IMAGENET = {"mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}


# Published ImageNet-1k top-1 (%) of each fb_dist_in1k checkpoint. The authors list six of the ten
# in their model zoo (facebookresearch/deit, README_cait.md, "Model Zoo": S24 224 83.5, XS24 384 84.1,
# S24 384 85.1, S36 384 85.4, M36 384 86.1, M48 448 86.5); the four XXS checkpoints are not in it, so
# theirs is timm's evaluation of the same checkpoint (huggingface/pytorch-image-models,
# results/results-imagenet.csv, column top1).
_AUTHORS = "authors' model zoo (facebookresearch/deit README_cait.md)"
_TIMM = "timm's evaluation (pytorch-image-models results/results-imagenet.csv); the authors' zoo lists no XXS model"
TOP1 = {
    "cait_xxs24_224": (78.384, _TIMM), "cait_xxs24_384": (80.972, _TIMM),
    "cait_xxs36_224": (79.746, _TIMM), "cait_xxs36_384": (82.204, _TIMM),
    "cait_xs24_384": (84.1, _AUTHORS), "cait_s24_224": (83.5, _AUTHORS), "cait_s24_384": (85.1, _AUTHORS),
    "cait_s36_384": (85.4, _AUTHORS), "cait_m36_384": (86.1, _AUTHORS), "cait_m48_448": (86.5, _AUTHORS),
}


def _cait(name: str, image_size: int, embed_dim: int, depth: int, num_heads: int,
          init_values: float) -> VariantSpec:
    top1, source = TOP1[name]
    return VariantSpec(
        name=name, family="cait",
        config=CaiTConfig(image_size=image_size, embed_dim=embed_dim, depth=depth,
                          num_heads=num_heads, init_values=init_values),
        timm_name=name, pretrained_tag=f"{name}.fb_dist_in1k",
        preprocessing={**_IMAGENET, "input_size": image_size, "crop_pct": 1.0, "interpolation": "bicubic"},
        paper="Touvron et al., Going deeper with Image Transformers, ICCV 2021 (arXiv:2103.17239)",
        license="apache-2.0", datasets=("imagenet-1k",),
        pretraining="ImageNet-1k (with distillation)", label_set="imagenet-1k",
        published_top1=top1, published_top1_source=source,
    )


VARIANTS = (
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
)


class CaiTPresentation(TimmPresentation):
    def class_attention(self, spec: VariantSpec) -> ClassAttention:
        return ClassAttention(r"blocks_token_only_(\d+)_attn", title="class-attention blocks")


FAMILY = Family(
    name="cait", title="CaiT", package=__name__, config_class=CaiTConfig, variants=VARIANTS, mapping="cait.yaml",
    source_label="timm", reference_libraries=("timm",), hub_repo_format=TIMM_HUB_REPO,
    presentation=CaiTPresentation(full_name="CaiT (Class-Attention in Image Transformers)"),
    perturbation=Perturbation(layer_scale=r"\.gamma_[12]$", query_key=r"\.attn\.(qkv|q|k)\.weight$",
                              head_mix=r"\.attn\.proj_[lw]\.weight$"),
)
