"""The PyTorch reference of CaiT: timm's ``Cait``, its attention maps read by forward hooks."""

from __future__ import annotations

import torch

from vit_porting.families.base import VariantSpec
from vit_porting.families.cait import timm_kwargs, timm_model_args
from vit_porting.families.torch_reference import call_timm as call_reference
from vit_porting.families.torch_reference import timm_attention_taps as reference_taps
from vit_porting.families.torch_reference import write_timm_config

__all__ = ["build_reference", "call_reference", "reference_taps", "write_hub_config"]


def build_reference(spec: VariantSpec) -> torch.nn.Module:
    import timm

    if spec.config.layer_norm_eps != 1e-6:
        raise ValueError("timm's CaiT has LayerNorm eps 1e-6; a reference with another eps does not exist")
    return timm.create_model(spec.timm_name, pretrained=False, **timm_kwargs(spec.config)).eval()


def write_hub_config(model: torch.nn.Module, spec: VariantSpec, folder: str, labels: dict | None) -> str:
    return write_timm_config(model, folder, timm_model_args(spec), labels)
