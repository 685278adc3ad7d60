"""PyTorch reference models, with their attention maps exposed.

Neither timm's CaiT nor transformers' CvT returns attention maps. Rather than copy their
forward code (and test a copy), the reference runs their own modules and reads each map off
a module every attention layer passes its final map through (a dropout, identity in eval
mode), with forward hooks. Each family names those modules ("taps", FAMILIES[...]["torch_taps"])
and how its model is called ("torch_call"); the parity reference and the ONNX exporter both
use them. ClassAttn takes the fused SDPA path unless told otherwise, and SDPA never
materialises the map, so fused attention is switched off.
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


def timm_cait_taps(model: torch.nn.Module, intermediates: bool = False) -> dict[str, torch.nn.Module]:
    """Where each output is read: ``*.attn.attn_drop`` for every attention map (fused SDPA switched
    off, since it never materialises the map) and, with ``intermediates``, each block (modules
    named ``<list>.<index>``). Names follow the Keras model's: ``blocks.3.attn`` -> ``blocks_3_attn``,
    ``blocks.3`` -> ``blocks_3_out``."""
    taps = {}
    for name, module in model.named_modules():
        if name.endswith(".attn") and hasattr(module, "attn_drop"):
            if hasattr(module, "fused_attn"):
                module.fused_attn = False
            taps[name.replace(".", "_")] = module.attn_drop
        elif intermediates and name.rsplit(".", 1)[-1].isdigit() and "." in name:
            taps[name.replace(".", "_") + "_out"] = module
    return taps


def call_timm(model: torch.nn.Module, images_nchw: torch.Tensor) -> torch.Tensor:
    return model(images_nchw)


def call_hf_image_classifier(model: torch.nn.Module, images_nchw: torch.Tensor) -> torch.Tensor:
    return model(pixel_values=images_nchw).logits  # the classifier is Identity when num_classes == 0


class ModuleTaps:
    """Records the output of the given modules (``{output name: module}``) while active, or
    hands each to ``sink(name, tensor)`` as it is produced (nothing kept)."""

    def __init__(self, taps: dict[str, torch.nn.Module], sink=None):
        self.maps: dict[str, torch.Tensor] = {}
        self._sink = sink
        self._handles = [module.register_forward_hook(self._hook(key)) for key, module in taps.items()]

    def _hook(self, key: str):
        def record(_module, _inputs, output):
            if self._sink is not None:
                self._sink(key, output.detach())
            else:
                self.maps[key] = output.detach()
        return record

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()


def run_reference(model: torch.nn.Module, images_nhwc: np.ndarray, taps: dict[str, torch.nn.Module],
                  call=call_timm, output_name: str = "logits", dtype: torch.dtype = torch.float32,
                  device: str = "cpu", names: list[str] | None = None, sink=None) -> dict[str, np.ndarray]:
    """The head output of ``call(model, images)`` on NHWC images and the output of every tap
    (of the taps in ``names`` only, when given: the others are not kept). With ``sink``, each
    tap's output goes to ``sink(name, array)`` the moment it is computed and is not returned."""
    if names is not None:
        taps = {k: v for k, v in taps.items() if k in names}
    recorder = ModuleTaps(taps, None if sink is None else lambda key, t: sink(key, t.float().cpu().numpy()))
    model = model.to(device=device, dtype=dtype)
    try:
        with torch.no_grad():
            x = torch.from_numpy(np.ascontiguousarray(images_nhwc.transpose(0, 3, 1, 2))).to(device, dtype)
            out = call(model, x)
        result = {output_name: out.float().cpu().numpy()} if names is None or output_name in names else {}
        for key in list(recorder.maps):
            result[key] = recorder.maps.pop(key).float().cpu().numpy()
        return result
    finally:
        recorder.remove()


def reference_shapes(model: torch.nn.Module, taps: dict[str, torch.nn.Module], call, output_name: str,
                     image_shape_nhwc: tuple[int, int, int]) -> dict[str, tuple[int, ...]]:
    """Per-image shape of the head output and of every tap, from a forward pass on fake tensors
    (shapes only, no arithmetic, no memory): lets the reference split its outputs into calls
    that fit the memory budget before computing any of them."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    recorder = ModuleTaps(taps)
    try:
        h, w, c = image_shape_nhwc
        with torch.no_grad(), FakeTensorMode(allow_non_fake_inputs=True):
            out = call(model, torch.empty(1, c, h, w))
            shapes = {output_name: tuple(out.shape[1:])}
            shapes.update({k: tuple(v.shape[1:]) for k, v in recorder.maps.items()})
        return shapes
    finally:
        recorder.remove()


# -- CvT: Hugging Face transformers' CvtForImageClassification ------------------------------


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
