"""The PyTorch reference of ViT: timm's ``VisionTransformer`` (``VisionTransformerDistilled`` for
distilled DeiT), its attention maps and block outputs read by forward hooks."""

from __future__ import annotations

import torch

from vit_porting.families.base import VariantSpec
from vit_porting.families.torch_reference import call_timm as call_reference
from vit_porting.families.torch_reference import timm_attention_taps as reference_taps
from vit_porting.families.torch_reference import write_timm_config
from vit_porting.families.vit import timm_kwargs, timm_model_args

__all__ = ["build_reference", "call_reference", "reference_taps", "write_hub_config"]


def build_reference(spec: VariantSpec) -> torch.nn.Module:
    import timm
    from timm.models.deit import VisionTransformerDistilled

    if spec.config.layer_norm_eps != 1e-6:
        raise ValueError("timm's ViT has LayerNorm eps 1e-6; a reference with another eps does not exist")
    model = timm.create_model(spec.timm_name, pretrained=False, **timm_kwargs(spec.config))
    if isinstance(model, VisionTransformerDistilled) != spec.config.distilled:
        # timm picks the class by name: a distillation token cannot be switched on or off by keyword
        raise ValueError(f"{spec.timm_name} is {'' if spec.config.distilled else 'not '}distilled in timm; "
                         "its config cannot say otherwise")
    return model.eval()


def write_hub_config(model: torch.nn.Module, spec: VariantSpec, folder: str, labels: dict | None) -> str:
    return write_timm_config(model, folder, timm_model_args(spec), labels)
