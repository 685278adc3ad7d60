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


def _per_stage(value: Any) -> tuple:
    return tuple(value) if isinstance(value, (list, tuple)) else value


@dataclass(frozen=True)
class CvTConfig:
    """CvT architecture (Microsoft's ``MODEL.SPEC``): one entry per stage in each tuple.

    ``activation`` is the MLP non-linearity: ``"quick_gelu"`` (x * sigmoid(1.702 x), what
    Microsoft's checkpoints were trained with) or ``"gelu"`` (exact, what Hugging Face's
    CvtForImageClassification computes). The two differ by up to ~3e-2 per activation.
    The q/k/v projection is always Microsoft's ``dw_bn`` (depthwise conv + BatchNorm), the
    only method of every released checkpoint.
    """

    image_size: int = 224
    in_channels: int = 3
    num_classes: int = 1000
    patch_sizes: tuple = (7, 3, 3)
    patch_strides: tuple = (4, 2, 2)
    patch_paddings: tuple = (2, 1, 1)
    embed_dims: tuple = (64, 192, 384)
    num_heads: tuple = (1, 3, 6)
    depths: tuple = (1, 2, 10)
    mlp_ratios: tuple = (4.0, 4.0, 4.0)
    qkv_bias: tuple = (True, True, True)
    cls_token: tuple = (False, False, True)
    kernel_qkv: tuple = (3, 3, 3)
    stride_q: tuple = (1, 1, 1)
    padding_q: tuple = (1, 1, 1)
    stride_kv: tuple = (2, 2, 2)
    padding_kv: tuple = (1, 1, 1)
    activation: str = "quick_gelu"
    layer_norm_eps: float = 1e-5
    batch_norm_eps: float = 1e-5

    def __post_init__(self):
        # JSON round trips (VariantSpec.from_dict) hand lists back; keep tuples.
        stages = len(self.depths)
        for name in ("patch_sizes", "patch_strides", "patch_paddings", "embed_dims", "num_heads", "depths",
                     "mlp_ratios", "qkv_bias", "cls_token", "kernel_qkv", "stride_q", "padding_q", "stride_kv",
                     "padding_kv"):
            value = _per_stage(getattr(self, name))
            object.__setattr__(self, name, value)
            if len(value) != stages:
                raise ValueError(f"CvTConfig.{name} has {len(value)} entries for {stages} stages")
        if self.activation not in ("quick_gelu", "gelu"):
            raise ValueError(f"CvTConfig.activation must be 'quick_gelu' or 'gelu', not {self.activation!r}")
        if any(self.cls_token[:-1]):
            raise ValueError("CvT has a class token in the last stage only")

    @property
    def num_stages(self) -> int:
        return len(self.depths)

    @property
    def embed_dim(self) -> int:
        return self.embed_dims[-1]

    @property
    def depth(self) -> int:
        return sum(self.depths)


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

# The three CvT architectures (Microsoft's experiments/imagenet/cvt/*.yaml); every other field
# (patch 7/3/3, stride 4/2/2, kernel 3, k/v stride 2, class token in stage 3) is shared.
CVT_ARCHITECTURES = {
    "cvt-13": {"embed_dims": (64, 192, 384), "num_heads": (1, 3, 6), "depths": (1, 2, 10)},
    "cvt-21": {"embed_dims": (64, 192, 384), "num_heads": (1, 3, 6), "depths": (1, 4, 16)},
    "cvt-w24": {"embed_dims": (192, 768, 1024), "num_heads": (3, 12, 16), "depths": (2, 2, 20)},
}


def _cvt_preprocessing(image_size: int) -> dict:
    # Hugging Face's ConvNextImageProcessor of the microsoft/cvt-* repos: bicubic; below 384 px
    # resize the short side to size / 0.875 and centre-crop, at 384 px resize straight to 384x384.
    crop_pct = 0.875 if image_size < 384 else 1.0
    return {**_IMAGENET, "input_size": image_size, "crop_pct": crop_pct, "interpolation": "bicubic",
            "resize_short_side": round(image_size / crop_pct)}


def _cvt(name: str, architecture: str, image_size: int, hf_repo: str, pretraining: str) -> VariantSpec:
    return VariantSpec(
        name=name, family="cvt",
        config=CvTConfig(image_size=image_size, **CVT_ARCHITECTURES[architecture]),
        pretrained_tag=hf_repo,
        preprocessing={**_cvt_preprocessing(image_size), "pretraining": pretraining},
        paper="Wu et al., CvT: Introducing Convolutions to Vision Transformers, ICCV 2021 (arXiv:2103.15808)",
        license="apache-2.0 (Hugging Face model cards; Microsoft's original code is MIT)",
    )


_IN1K, _IN22K = "ImageNet-1k", "ImageNet-22k, fine-tuned on ImageNet-1k"
CVT_VARIANTS = [
    _cvt("cvt-13-224", "cvt-13", 224, "microsoft/cvt-13", _IN1K),
    _cvt("cvt-13-384", "cvt-13", 384, "microsoft/cvt-13-384", _IN1K),
    _cvt("cvt-13-384-22k", "cvt-13", 384, "microsoft/cvt-13-384-22k", _IN22K),
    _cvt("cvt-21-224", "cvt-21", 224, "microsoft/cvt-21", _IN1K),
    _cvt("cvt-21-384", "cvt-21", 384, "microsoft/cvt-21-384", _IN1K),
    _cvt("cvt-21-384-22k", "cvt-21", 384, "microsoft/cvt-21-384-22k", _IN22K),
    _cvt("cvt-w24-384-22k", "cvt-w24", 384, "microsoft/cvt-w24-384-22k", _IN22K),
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
        "torch_taps": "parity.references:timm_cait_taps",
        "torch_call": "parity.references:call_timm",
    },
    "cvt": {
        "config_class": CvTConfig,
        "variants": {v.name: v for v in CVT_VARIANTS},
        "keras_builder": "porting.cvt:build_cvt",
        "torch_reference": "parity.references:build_hf_cvt",
        "torch_taps": "parity.references:hf_cvt_taps",
        "torch_call": "parity.references:call_hf_image_classifier",
        "mapping": "cvt.yaml",
        "source_label": "Hugging Face transformers",
        # state_dict prefix of the classifier (a new head replaces it for another class count)
        "classifier": "classifier",
        # WEIGHTS=pretrained: the Hugging Face repo named by pretrained_tag
        "pretrained_loader": "porting.sources:load_hf_hub_pretrained",
        # other checkpoint layouts accepted by WEIGHTS=<file>: detected by a key regex, renamed
        # into the canonical (Hugging Face) layout by a declarative rename file
        "layouts": {"microsoft": {"detect": r"^(module\.)?stage\d+\.", "renames": "cvt_microsoft.yaml",
                                  "description": "Microsoft's original CvT checkpoints (github.com/microsoft/CvT)"}},
        # attention projections scaled up by WEIGHTS=random so that maps are peaked (sources.perturb_)
        "perturb_query_key": r"\.attention\.attention\.projection_(query|key)\.weight$",
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
