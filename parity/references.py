"""PyTorch reference models, with their attention maps exposed.

timm's CaiT does not return attention maps. Rather than copy its forward code (and test a
copy), the reference runs timm's own modules and reads each map off the ``attn_drop``
module, the one place every attention layer passes its final map through (identity in
eval mode). ClassAttn takes the fused SDPA path unless told otherwise, and SDPA never
materialises the map, so fused attention is switched off on the reference.
"""

from __future__ import annotations

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
