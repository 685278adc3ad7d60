"""Running a PyTorch reference model with its attention maps exposed (shared by every family).

Reference libraries (timm, transformers) do not return attention maps. Rather than copy their
forward code (and test a copy), the reference runs their own modules and reads each map off
a module every attention layer passes its final map through (a dropout, identity in eval
mode), with forward hooks. Each family's ``reference.py`` names those modules
(``reference_taps``) and how its model is called (``call_reference``); the parity reference and
the ONNX exporter both use them. timm's attention takes the fused SDPA path unless told
otherwise, and SDPA never materialises the map, so fused attention is switched off.
"""

from __future__ import annotations

import numpy as np
import torch


def timm_attention_taps(model: torch.nn.Module, intermediates: bool = False) -> dict[str, torch.nn.Module]:
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


def write_timm_config(model: torch.nn.Module, folder: str, model_args: dict, labels: dict | None) -> str:
    """timm's own config.json for ``model`` (``save_config_for_hf``, what ``push_to_hf_hub``
    writes): ``timm.create_model("local-dir:<folder>")`` and ``"hf-hub:owner/name"`` read it.
    ``model_args`` are the keywords that differ from timm's registered variant."""
    from pathlib import Path

    from timm.models._hub import save_config_for_hf

    model_config = {}
    if labels:
        model_config = {"label_names": labels["names"],
                        "label_descriptions": dict(zip(labels["names"], labels["descriptions"], strict=True))}
    save_config_for_hf(model, Path(folder) / "config.json", model_config=model_config, model_args=model_args or None)
    return "config.json"


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
