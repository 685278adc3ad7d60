"""ViT (Dosovitskiy et al.) as timm's ``VisionTransformer``: DeiT, distilled DeiT, DeiT III and AugReg ViT.

The family object, its config and its timm variants. Standard library only (see
``vit_porting.families.base``); the Keras model is ``model.py``, the timm reference ``reference.py``.

One config covers the four kinds of checkpoint, because timm builds them all from one class
(``VisionTransformerDistilled`` adds the distillation token and head to it):

* DeiT: class token, position embedding over [class token, patches];
* distilled DeiT: class and distillation tokens, two heads averaged in eval;
* DeiT III: LayerScale (``ls1``/``ls2``) and ``no_embed_class`` (the position embedding
  covers the patches only; the tokens are prepended after adding it);
* AugReg ViT: DeiT's architecture with other weights and preprocessing (mean/std 0.5).

The pretrained tags are timm's default for each name (``timm.models.get_pretrained_cfg``),
written out because this module may not import timm; ``tests/test_vit_parity.py`` checks them,
the preprocessing and the architecture against timm's own registry.
"""

from __future__ import annotations

from dataclasses import dataclass

from vit_porting.families.base import Family, Perturbation, VariantSpec
from vit_porting.families.presentation import ClassAttention, Rollout
from vit_porting.families.timm import TIMM_HUB_REPO, TimmPresentation, timm_keywords
from vit_porting.families.timm import timm_model_args as changed_timm_args

POOLS = ("token", "avg")


@dataclass(frozen=True)
class ViTConfig:
    """timm ``VisionTransformer`` keywords, as far as the checkpoints of this family use them.

    ``init_values`` is LayerScale's initial value (None: no LayerScale, as in DeiT and ViT);
    ``fc_norm`` None means timm's default (the final norm moves after pooling for ``avg``).
    """

    image_size: int = 224
    patch_size: int = 16
    in_channels: int = 3
    num_classes: int = 1000
    embed_dim: int = 768
    depth: int = 12
    num_heads: int = 12
    mlp_ratio: float = 4.0
    qkv_bias: bool = True
    class_token: bool = True
    distilled: bool = False  # DeiT's distillation token and head_dist (timm's VisionTransformerDistilled)
    no_embed_class: bool = False
    init_values: float | None = None
    pre_norm: bool = False
    global_pool: str = "token"
    fc_norm: bool | None = None
    layer_norm_eps: float = 1e-6

    def __post_init__(self):
        if self.global_pool not in POOLS:
            raise ValueError(f"ViTConfig.global_pool must be one of {POOLS}, not {self.global_pool!r}")
        if self.global_pool == "token" and not self.class_token:
            raise ValueError("ViTConfig: token pooling needs the class token (use global_pool='avg')")
        if self.distilled and (not self.class_token or self.global_pool != "token"):
            raise ValueError("ViTConfig: a distilled model reads its class and distillation tokens (token pooling)")

    @property
    def num_patches(self) -> int:
        return (self.image_size // self.patch_size) ** 2

    @property
    def num_prefix_tokens(self) -> int:
        """Tokens before the patches: the class token, then the distillation token."""
        return int(self.class_token) + int(self.distilled)

    @property
    def use_fc_norm(self) -> bool:
        return self.global_pool == "avg" if self.fc_norm is None else self.fc_norm


# ViTConfig field -> timm VisionTransformer keyword; the reference and the card's timm snippet use it
# (``distilled`` picks the class, ``layer_norm_eps`` is timm's fixed 1e-6)
TIMM_KWARGS = {"image_size": "img_size", "patch_size": "patch_size", "in_channels": "in_chans",
               "num_classes": "num_classes", "embed_dim": "embed_dim", "depth": "depth", "num_heads": "num_heads",
               "mlp_ratio": "mlp_ratio", "qkv_bias": "qkv_bias", "class_token": "class_token",
               "no_embed_class": "no_embed_class", "init_values": "init_values", "pre_norm": "pre_norm",
               "global_pool": "global_pool", "fc_norm": "fc_norm"}


def timm_kwargs(config: ViTConfig) -> dict:
    return timm_keywords(config, TIMM_KWARGS)


_IMAGENET = {"mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}
_INCEPTION = {"mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5]}  # AugReg (Google's JAX training)
_WIDTHS = {"tiny": (192, 12, 3), "small": (384, 12, 6), "medium": (512, 12, 8), "base": (768, 12, 12),
           "large": (1024, 24, 16), "huge": (1280, 32, 16)}  # embed_dim, depth, heads
_DEIT = "Touvron et al., Training data-efficient image transformers & distillation through attention, ICML 2021 " \
        "(arXiv:2012.12877)"
_DEIT3 = "Touvron et al., DeiT III: Revenge of the ViT, ECCV 2022 (arXiv:2204.07118)"
_AUGREG = "Steiner et al., How to train your ViT? Data, Augmentation, and Regularization in Vision Transformers, " \
          "TMLR 2022 (arXiv:2106.10270)"
_IN1K = ("imagenet-1k",)
_IN21K = ("imagenet-21k", "imagenet-1k")


def _spec(name: str, width: str, patch: int, size: int, tag: str, normalisation: dict, paper: str,
          datasets: tuple[str, ...], pretraining: str, **config) -> VariantSpec:
    embed_dim, depth, heads = _WIDTHS[width]
    # timm's default cfgs: crop_pct 0.9 at 224 px (a 248 px short side, centre-cropped), 1.0 at 384 px
    return VariantSpec(
        name=name, family="vit",
        config=ViTConfig(image_size=size, patch_size=patch, embed_dim=embed_dim, depth=depth, num_heads=heads,
                         **config),
        timm_name=name, pretrained_tag=f"{name}.{tag}",
        preprocessing={**normalisation, "input_size": size, "crop_pct": 1.0 if size >= 384 else 0.9,
                       "crop_mode": "center", "interpolation": "bicubic"},
        paper=paper, license="apache-2.0", datasets=datasets, pretraining=pretraining, label_set="imagenet-1k")


def _deit(width: str, size: int = 224) -> VariantSpec:
    return _spec(f"deit_{width}_patch16_{size}", width, 16, size, "fb_in1k", _IMAGENET, _DEIT, _IN1K, "ImageNet-1k")


def _deit_distilled(width: str, size: int = 224) -> VariantSpec:
    return _spec(f"deit_{width}_distilled_patch16_{size}", width, 16, size, "fb_in1k", _IMAGENET, _DEIT, _IN1K,
                 "ImageNet-1k, distilled from a RegNetY-16GF teacher through the distillation token", distilled=True)


def _deit3(width: str, size: int = 224, patch: int = 16) -> VariantSpec:
    return _spec(f"deit3_{width}_patch{patch}_{size}", width, patch, size, "fb_in1k", _IMAGENET, _DEIT3, _IN1K,
                 "ImageNet-1k", no_embed_class=True, init_values=1e-6)


def _augreg(width: str, patch: int, size: int, tag: str = "augreg_in21k_ft_in1k") -> VariantSpec:
    pretraining = "ImageNet-21k, fine-tuned on ImageNet-1k (AugReg" + (" 2" if tag.startswith("augreg2") else "") + ")"
    return _spec(f"vit_{width}_patch{patch}_{size}", width, patch, size, tag, _INCEPTION, _AUGREG, _IN21K,
                 pretraining)


def timm_model_args(spec: VariantSpec) -> dict:
    return changed_timm_args(spec, VARIANTS, TIMM_KWARGS)


VARIANTS = (
    _deit("tiny"), _deit("small"), _deit("base"), _deit("base", 384),
    _deit_distilled("tiny"), _deit_distilled("small"), _deit_distilled("base"), _deit_distilled("base", 384),
    _deit3("small"), _deit3("small", 384), _deit3("medium"), _deit3("base"), _deit3("base", 384),
    _deit3("large"), _deit3("large", 384), _deit3("huge", patch=14),
    _augreg("tiny", 16, 224), _augreg("tiny", 16, 384), _augreg("small", 16, 224), _augreg("small", 16, 384),
    _augreg("small", 32, 224), _augreg("small", 32, 384), _augreg("base", 16, 224, "augreg2_in21k_ft_in1k"),
    _augreg("base", 16, 384), _augreg("base", 32, 224), _augreg("base", 32, 384),
    _augreg("base", 8, 224, "augreg2_in21k_ft_in1k"), _augreg("large", 16, 224), _augreg("large", 16, 384),
)


class ViTPresentation(TimmPresentation):
    def class_attention(self, spec: VariantSpec) -> ClassAttention | None:
        if not spec.config.class_token:
            return None
        return ClassAttention(r"blocks_(\d+)_attn", last_only=True, prefix_tokens=spec.config.num_prefix_tokens,
                              title="class-token attention of the last block")

    def rollout(self, spec: VariantSpec) -> Rollout | None:
        # every block attends over all tokens, [prefix tokens, patches], in one order throughout
        if not spec.config.class_token:
            return None
        return Rollout(r"blocks_(\d+)_attn", prefix_tokens=spec.config.num_prefix_tokens)


FAMILY = Family(
    name="vit", title="ViT", package=__name__, config_class=ViTConfig, variants=VARIANTS, mapping="vit.yaml",
    source_label="timm", reference_libraries=("timm",), hub_repo_format=TIMM_HUB_REPO,
    classifier=("head", "head_dist"), keras_heads=("head", "head_dist"),
    presentation=ViTPresentation(full_name="ViT (Vision Transformer: DeiT, DeiT III, AugReg)"),
    perturbation=Perturbation(layer_scale=r"\.ls[12]\.gamma$", fused_qkv=r"\.attn\.qkv\.weight$"),
)
