"""The PyTorch reference of CvT: transformers' ``CvtForImageClassification`` computing the
checkpoints' QuickGELU, its attention maps and block outputs read by forward hooks."""

from __future__ import annotations

import re

import torch

from vit_porting.families.base import VariantSpec
from vit_porting.families.cvt import hf_config_kwargs
from vit_porting.families.torch_reference import call_hf_image_classifier as call_reference

__all__ = ["build_reference", "call_reference", "hf_cvt_config", "reference_taps",
           "use_quick_gelu_", "write_hub_config"]


def hf_cvt_config(spec: VariantSpec):
    """transformers.CvtConfig of ``spec`` (refuses what transformers' CvT cannot compute)."""
    from transformers import CvtConfig

    c = spec.config
    if c.layer_norm_eps != 1e-5 or c.batch_norm_eps != 1e-5:
        raise ValueError("transformers' CvT uses LayerNorm and BatchNorm eps 1e-5 (PyTorch defaults); "
                         "a reference with another eps does not exist")
    short = [s for s in range(c.num_stages) if c.depths[s] <= s]
    if short:
        # CvtStage indexes its stage's drop-path schedule (depth entries) by the stage number.
        raise ValueError(f"transformers' CvT needs depth > stage index in every stage (stage {short[0]} has "
                         f"depth {c.depths[short[0]]}); use e.g. depths (1, 2, 3) for a reduced model")
    n = c.num_stages
    return CvtConfig(**hf_config_kwargs(c), attention_drop_rate=[0.0] * n, drop_rate=[0.0] * n,
                     drop_path_rate=[0.0] * n)


def use_quick_gelu_(model: torch.nn.Module) -> int:
    """Make transformers' CvT compute Microsoft's QuickGELU instead of exact GELU.

    Microsoft's ``cls_cvt.py`` builds every MLP with ``act_layer=QuickGELU``
    (x * sigmoid(1.702 x)); transformers' port uses ``nn.GELU()``. The checkpoints were trained
    with QuickGELU, so the reference swaps the activation module of each MLP
    (``CvtIntermediate.activation``). Returns how many were swapped.
    """
    from transformers.activations import QuickGELUActivation
    from transformers.models.cvt.modeling_cvt import CvtIntermediate

    count = 0
    for module in model.modules():
        if isinstance(module, CvtIntermediate):
            module.activation = QuickGELUActivation()
            count += 1
    return count


def build_reference(spec: VariantSpec) -> torch.nn.Module:
    """transformers' CvtForImageClassification for ``spec``, randomly initialised, eval mode,
    computing ``spec.config.activation``."""
    from transformers import CvtForImageClassification
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    model = CvtForImageClassification(hf_cvt_config(spec))
    if spec.config.activation == "quick_gelu":
        if use_quick_gelu_(model) != spec.config.depth:
            raise RuntimeError("transformers' CvT changed: not every block's MLP activation could be swapped")
    return model.eval()


_HF_CVT_BLOCK = re.compile(r"^cvt\.encoder\.stages\.(\d+)\.layers\.(\d+)$")


def reference_taps(model: torch.nn.Module, intermediates: bool = False) -> dict[str, torch.nn.Module]:
    """Where the reference's per-block outputs are read, named like the Keras model's.

    Attention maps: the output of ``attention.attention.dropout``, which every CvtSelfAttention
    passes its softmax map through (identity in eval mode). Block outputs: the CvtLayer itself.
    """
    taps = {}
    for name, module in model.named_modules():
        match = _HF_CVT_BLOCK.match(name)
        if match:
            block = f"stage{match[1]}_blocks_{match[2]}"
            taps[f"{block}_attn"] = module.attention.attention.dropout
            if intermediates:
                taps[f"{block}_out"] = module
    return taps


def write_hub_config(model: torch.nn.Module, spec: VariantSpec, folder: str, labels: dict | None) -> None:
    """Nothing: transformers' ``from_pretrained`` would read a CvT config.json and build
    ``CvtForImageClassification`` with exact GELU, 2e-2 away from the checkpoints' QuickGELU,
    without a warning (the family publishes its weights under a name that loader does not read,
    ``Family.hub_weights_name``); the card's snippet builds the model with the QuickGELU patch."""
    return None
