"""CvT (Wu et al., "CvT: Introducing Convolutions to Vision Transformers"): the seven released
checkpoints (Hugging Face ``microsoft/cvt-*``, Microsoft's original ``.pth``).

The family object, its config and variants. Standard library only (see ``vit_porting.families.base``);
the Keras model is ``model.py``, the transformers reference ``reference.py``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from vit_porting.families.base import Family, Layout, Perturbation, VariantSpec
from vit_porting.families.presentation import ClassAttention, Presentation, ReferenceSnippet


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


# The three CvT architectures (Microsoft's experiments/imagenet/cvt/*.yaml); every other field
# (patch 7/3/3, stride 4/2/2, kernel 3, k/v stride 2, class token in stage 3) is shared.
ARCHITECTURES = {
    "cvt-13": {"embed_dims": (64, 192, 384), "num_heads": (1, 3, 6), "depths": (1, 2, 10)},
    "cvt-21": {"embed_dims": (64, 192, 384), "num_heads": (1, 3, 6), "depths": (1, 4, 16)},
    "cvt-w24": {"embed_dims": (192, 768, 1024), "num_heads": (3, 12, 16), "depths": (2, 2, 20)},
}


def _preprocessing(image_size: int) -> dict:
    # Hugging Face's ConvNextImageProcessor of the microsoft/cvt-* repos: bicubic; below 384 px
    # resize the short side to size / 0.875 and centre-crop, at 384 px resize straight to 384x384
    # without keeping the aspect ratio (timm's "squash").
    if image_size < 384:
        geometry = {"crop_pct": 0.875, "crop_mode": "center"}
    else:
        geometry = {"crop_pct": 1.0, "crop_mode": "squash"}
    return {"mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225], "input_size": image_size,
            "interpolation": "bicubic", **geometry}


_IN1K = ("ImageNet-1k", ("imagenet-1k",))
_IN22K = ("ImageNet-22k, fine-tuned on ImageNet-1k", ("imagenet-21k", "imagenet-1k"))


# Published ImageNet-1k top-1 (%), from the authors' "Main results" tables (github.com/microsoft/CvT
# README.md; the same tables are on each microsoft/cvt-* model card): ImageNet-1k pre-trained and
# ImageNet-22k pre-trained, fine-tuned on ImageNet-1k.
_TOP1_SOURCE = "authors' results (github.com/microsoft/CvT README.md, Main results)"
TOP1 = {"cvt-13-224": 81.6, "cvt-13-384": 83.0, "cvt-13-384-22k": 83.3, "cvt-21-224": 82.5, "cvt-21-384": 83.3,
        "cvt-21-384-22k": 84.9, "cvt-w24-384-22k": 87.6}


def _cvt(name: str, architecture: str, image_size: int, hf_repo: str, pretraining: tuple) -> VariantSpec:
    return VariantSpec(
        name=name, family="cvt",
        config=CvTConfig(image_size=image_size, **ARCHITECTURES[architecture]),
        pretrained_tag=hf_repo, preprocessing=_preprocessing(image_size),
        paper="Wu et al., CvT: Introducing Convolutions to Vision Transformers, ICCV 2021 (arXiv:2103.15808)",
        license="apache-2.0 (Hugging Face model cards; Microsoft's original code is MIT)",
        pretraining=pretraining[0], datasets=pretraining[1], label_set="imagenet-1k",
        published_top1=TOP1[name], published_top1_source=_TOP1_SOURCE,
    )


VARIANTS = (
    _cvt("cvt-13-224", "cvt-13", 224, "microsoft/cvt-13", _IN1K),
    _cvt("cvt-13-384", "cvt-13", 384, "microsoft/cvt-13-384", _IN1K),
    _cvt("cvt-13-384-22k", "cvt-13", 384, "microsoft/cvt-13-384-22k", _IN22K),
    _cvt("cvt-21-224", "cvt-21", 224, "microsoft/cvt-21", _IN1K),
    _cvt("cvt-21-384", "cvt-21", 384, "microsoft/cvt-21-384", _IN1K),
    _cvt("cvt-21-384-22k", "cvt-21", 384, "microsoft/cvt-21-384-22k", _IN22K),
    _cvt("cvt-w24-384-22k", "cvt-w24", 384, "microsoft/cvt-w24-384-22k", _IN22K),
)


def hf_config_kwargs(config: CvTConfig) -> dict:
    """transformers.CvtConfig keywords of ``config`` (the reference and the card's snippet)."""
    c, n = config, config.num_stages
    return {"num_channels": c.in_channels, "patch_sizes": list(c.patch_sizes), "patch_stride": list(c.patch_strides),
            "patch_padding": list(c.patch_paddings), "embed_dim": list(c.embed_dims), "num_heads": list(c.num_heads),
            "depth": list(c.depths), "mlp_ratio": list(c.mlp_ratios), "qkv_bias": list(c.qkv_bias),
            "cls_token": list(c.cls_token), "qkv_projection_method": ["dw_bn"] * n, "kernel_qkv": list(c.kernel_qkv),
            "padding_kv": list(c.padding_kv), "stride_kv": list(c.stride_kv), "padding_q": list(c.padding_q),
            "stride_q": list(c.stride_q), "num_labels": c.num_classes}


class CvTPresentation(Presentation):
    def reference_snippet(self, spec: VariantSpec) -> ReferenceSnippet:
        args = ", ".join(f"{k}={v!r}" for k, v in hf_config_kwargs(spec.config).items())
        build = [f"model = CvtForImageClassification(CvtConfig({args}))",
                 "model.load_state_dict(load_file(\"model.safetensors\"), strict=True)"]
        imports = ["from safetensors.torch import load_file",
                   "from transformers import CvtConfig, CvtForImageClassification"]
        if spec.config.activation == "quick_gelu":
            imports += ["from transformers.activations import QuickGELUActivation",
                        "from transformers.models.cvt.modeling_cvt import CvtIntermediate"]
            build += ["# Microsoft's checkpoints were trained with QuickGELU; transformers' CvT computes exact GELU",
                      "for module in model.modules():",
                      "    if isinstance(module, CvtIntermediate):",
                      "        module.activation = QuickGELUActivation()"]
        return ReferenceSnippet(title="PyTorch with Hugging Face transformers (`model.safetensors`)",
                                imports=tuple(imports), build=(*build, "model.eval()"),
                                call="model(pixel_values=x).logits")

    def class_attention(self, spec: VariantSpec) -> ClassAttention:
        last = spec.config.num_stages - 1
        return ClassAttention(rf"stage{last}_blocks_(\d+)_attn", last_only=True,
                              title=f"class-token attention of stage {last} (keys: the class token and the "
                                    "stride-2 key/value grid; no attention rollout: Nq x Nkv maps do not multiply)")


FAMILY = Family(
    name="cvt", title="CvT", package=__name__, config_class=CvTConfig, variants=VARIANTS, mapping="cvt.yaml",
    source_label="Hugging Face transformers", reference_libraries=("transformers",), classifier="classifier",
    pretrained_from="hf-hub",
    presentation=CvTPresentation(full_name="CvT (Convolutional vision Transformer)",
                                 hub_weights_name="model_quickgelu.safetensors"),
    layouts=(Layout("microsoft", r"^(module\.)?stage\d+\.", "cvt_microsoft.yaml",
                    "Microsoft's original CvT checkpoints (github.com/microsoft/CvT)"),),
    perturbation=Perturbation(query_key=r"\.attention\.attention\.projection_(query|key)\.weight$"),
)
