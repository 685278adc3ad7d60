"""PyTorch reference models, with their attention maps exposed.

timm's CaiT does not return attention maps. Rather than copy its forward code (and test a
copy), the reference runs timm's own modules and reads each map off the ``attn_drop``
module, the one place every attention layer passes its final map through (identity in
eval mode). ClassAttn takes the fused SDPA path unless told otherwise, and SDPA never
materialises the map, so fused attention is switched off on the reference.
"""

from __future__ import annotations

import re

import numpy as np
import torch

from porting.variants import VariantSpec


def timm_cait_kwargs(spec: VariantSpec) -> dict:
    c = spec.config
    return {"img_size": c.image_size, "patch_size": c.patch_size, "in_chans": c.in_channels,
            "num_classes": c.num_classes, "embed_dim": c.embed_dim, "depth": c.depth,
            "num_heads": c.num_heads, "mlp_ratio": c.mlp_ratio, "qkv_bias": c.qkv_bias,
            "depth_token_only": c.depth_token_only, "mlp_ratio_token_only": c.mlp_ratio_token_only,
            "init_values": c.init_values}


def build_timm_cait(spec: VariantSpec) -> torch.nn.Module:
    import timm

    if spec.config.layer_norm_eps != 1e-6:
        raise ValueError("timm's CaiT has LayerNorm eps 1e-6; a reference with another eps does not exist")
    model = timm.create_model(spec.timm_name, pretrained=False, **timm_cait_kwargs(spec))
    return model.eval()


class AttentionRecorder:
    """Collects attention maps from every ``*.attn.attn_drop`` module while active, and with
    ``intermediates`` each block's output (modules named ``<list>.<index>``).

    Output names follow the Keras model's: ``blocks.3.attn`` -> ``blocks_3_attn``,
    ``blocks.3`` -> ``blocks_3_out``.
    """

    def __init__(self, model: torch.nn.Module, intermediates: bool = False):
        self.maps: dict[str, torch.Tensor] = {}
        self._handles = []
        for name, module in model.named_modules():
            if name.endswith(".attn") and hasattr(module, "attn_drop"):
                if hasattr(module, "fused_attn"):
                    module.fused_attn = False
                key = name.replace(".", "_")
                self._handles.append(module.attn_drop.register_forward_hook(self._hook(key)))
            elif intermediates and name.rsplit(".", 1)[-1].isdigit() and "." in name:
                self._handles.append(module.register_forward_hook(self._hook(name.replace(".", "_") + "_out")))

    def _hook(self, key: str):
        def record(_module, _inputs, output):
            self.maps[key] = output.detach()
        return record

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()


def run_reference(model: torch.nn.Module, images_nhwc: np.ndarray, output_name: str = "logits",
                  dtype: torch.dtype = torch.float32, device: str = "cpu",
                  intermediates: bool = False) -> dict[str, np.ndarray]:
    """Outputs of the reference on NHWC images: the head output and every attention map."""
    recorder = AttentionRecorder(model, intermediates)
    model = model.to(device=device, dtype=dtype)
    try:
        with torch.no_grad():
            x = torch.from_numpy(np.ascontiguousarray(images_nhwc.transpose(0, 3, 1, 2))).to(device, dtype)
            out = model(x)
        result = {output_name: out.float().cpu().numpy()}
        result.update({k: v.float().cpu().numpy() for k, v in recorder.maps.items()})
        return result
    finally:
        recorder.remove()


# -- CvT: Hugging Face transformers' CvtForImageClassification ------------------------------


class ModuleTaps:
    """Records the output of given modules while active: ``{output name: module}``.

    The general form of AttentionRecorder, for references whose module names do not follow
    timm's (``attn.attn_drop``) convention.
    """

    def __init__(self, taps: dict[str, torch.nn.Module]):
        self.maps: dict[str, torch.Tensor] = {}
        self._handles = [module.register_forward_hook(self._hook(key)) for key, module in taps.items()]

    def _hook(self, key: str):
        def record(_module, _inputs, output):
            self.maps[key] = output.detach()
        return record

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()


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
    return CvtConfig(
        num_channels=c.in_channels, patch_sizes=list(c.patch_sizes), patch_stride=list(c.patch_strides),
        patch_padding=list(c.patch_paddings), embed_dim=list(c.embed_dims), num_heads=list(c.num_heads),
        depth=list(c.depths), mlp_ratio=list(c.mlp_ratios), qkv_bias=list(c.qkv_bias), cls_token=list(c.cls_token),
        qkv_projection_method=["dw_bn"] * n, kernel_qkv=list(c.kernel_qkv), padding_kv=list(c.padding_kv),
        stride_kv=list(c.stride_kv), padding_q=list(c.padding_q), stride_q=list(c.stride_q),
        attention_drop_rate=[0.0] * n, drop_rate=[0.0] * n, drop_path_rate=[0.0] * n, num_labels=c.num_classes)


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


def build_hf_cvt(spec: VariantSpec) -> torch.nn.Module:
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


def hf_cvt_taps(model: torch.nn.Module, intermediates: bool = False) -> dict[str, torch.nn.Module]:
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


def run_hf_cvt_reference(model: torch.nn.Module, images_nhwc: np.ndarray, output_name: str = "logits",
                         dtype: torch.dtype = torch.float32, device: str = "cpu",
                         intermediates: bool = False) -> dict[str, np.ndarray]:
    """Outputs of transformers' CvT on NHWC images: logits (or features), attention maps, and
    with ``intermediates`` every block's output."""
    recorder = ModuleTaps(hf_cvt_taps(model, intermediates))
    model = model.to(device=device, dtype=dtype)
    try:
        with torch.no_grad():
            x = torch.from_numpy(np.ascontiguousarray(images_nhwc.transpose(0, 3, 1, 2))).to(device, dtype)
            out = model(pixel_values=x).logits  # the classifier is Identity when num_classes == 0
        result = {output_name: out.float().cpu().numpy()}
        result.update({k: v.float().cpu().numpy() for k, v in recorder.maps.items()})
        return result
    finally:
        recorder.remove()
