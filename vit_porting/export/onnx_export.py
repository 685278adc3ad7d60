"""ONNX export from the ported weights, through PyTorch. Runs in a torch worker process only.

Route (measured, see docs/exports.md): the ported ``model.safetensors`` (the Keras weights
mapped back to the source layout) is loaded strictly into the source model (timm), wrapped
so that every attention map is a graph output, and exported with
``torch.onnx.export(dynamo=True)``.

The attention maps are read where the parity reference reads them (CaiT: the output of each
``attn_drop``, an identity in eval mode, through which every attention layer passes its final
map), by forward hooks that torch.export traces like any other Python; the wrapper returns
them as outputs. The fused (SDPA) path never materialises the map, so it is switched off, as
on the reference.

Two files share one graph: ``model_attention.onnx`` returns the head output (``logits`` or
``features``) and ``<block>_attn`` per attention layer, like the Keras model; ``model.onnx``, what
a serving user loads, returns the head output alone. Both take ``images`` float32 NHWC with a
dynamic batch named ``batch`` and carry the preprocessing and class names in ``metadata_props``;
past the external-data threshold both read their weights from one ``model.onnx.data``.
"""

from __future__ import annotations

from pathlib import Path

import torch

from vit_porting.export.saved_model import ONNX_ATTENTION_FILE as ATTENTION_FILE
from vit_porting.export.saved_model import ONNX_DATA_FILE as DATA_FILE
from vit_porting.export.saved_model import ONNX_FILE as MODEL_FILE
from vit_porting.families.base import TorchSide

DEFAULT_OPSET = 18
# Weights past this go to model.onnx.data beside model.onnx. protobuf caps one file at 2 GiB, and
# a single-file save serialises the whole model in memory first (about 3x the weights: 6.3 GB of
# peak RSS for cait_m48_448's 1.43 GB), while external data is written one tensor at a time.
EXTERNAL_DATA_BYTES = 512 * 2**20


class WithAttentionOutputs(torch.nn.Module):
    """``model`` on NHWC images, returning (head output, attention map per block...).

    A forward hook on each tap module hands its output to the wrapper, which returns it: the
    exported graph computes nothing the model does not already compute.
    """

    def __init__(self, model: torch.nn.Module, reference: TorchSide):
        super().__init__()
        self.model = model
        taps, self._call = reference.reference_taps(model), reference.call_reference
        if not taps:
            raise ValueError(f"{type(model).__name__}: found no attention modules to read maps from")
        self.attention_names = list(taps)
        self._maps: dict[str, torch.Tensor] = {}
        for key, module in taps.items():
            module.register_forward_hook(self._hook(key))

    def _hook(self, key: str):
        def record(_module, _inputs, output):
            self._maps[key] = output
        return record

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, ...]:
        self._maps.clear()
        head = self._call(self.model, images.permute(0, 3, 1, 2))
        return (head, *[self._maps[k] for k in self.attention_names])


def export_onnx(model: torch.nn.Module, reference: TorchSide, folder: Path | str, image_size: int,
                in_channels: int = 3, head_name: str = "logits", opset: int = DEFAULT_OPSET,
                external_data_bytes: int = EXTERNAL_DATA_BYTES, metadata: dict[str, str] | None = None) -> dict:
    """Write ``model_attention.onnx`` and ``model.onnx`` into ``folder`` (and ``model.onnx.data``
    past ``external_data_bytes`` of weights); returns what was written."""
    folder = Path(folder)
    wrapper = WithAttentionOutputs(model.eval(), reference).eval()
    names = [head_name, *wrapper.attention_names]
    weight_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    external = weight_bytes > external_data_bytes
    example = torch.randn(2, image_size, image_size, in_channels)
    batch = torch.export.Dim("batch", min=1, max=4096)
    with torch.no_grad():
        # torch.export first, then ONNX from the ExportedProgram: the same graph, but a third of
        # the peak memory of handing the module to torch.onnx.export (measured on cait_m48_448
        # at depth 24: 1.6 GB against 3.8 GB for 0.73 GB of weights)
        exported = torch.export.export(wrapper, (example,), dynamic_shapes={"images": {0: batch}})
        program = torch.onnx.export(exported, (example,), None, input_names=["images"], output_names=names,
                                    dynamo=True, opset_version=opset, optimize=True, verbose=False)
    nodes = len(program.model.graph)
    if external:
        # onnx_ir writes external data with up to 1 GB of tensor bytes in flight across threads
        # (ONNXProgram.save's default): 1.2 GB over the weights at cait_m48_448 depth 12. One
        # tensor at a time costs a few seconds and no memory.
        import onnx_ir as ir

        ir.save(program.model, str(folder / ATTENTION_FILE), external_data=DATA_FILE, max_workers=1,
                max_in_flight_bytes=64 << 20)
    else:
        program.save(str(folder / ATTENTION_FILE), external_data=False)
    del program, exported
    _name_batch_and_describe(folder, head_name, metadata or {})
    files = sorted(p.name for p in folder.iterdir() if p.name in (MODEL_FILE, ATTENTION_FILE, DATA_FILE))
    return {"opset": opset, "outputs": names, "external_data": external, "weight_bytes": weight_bytes,
            "files": files, "bytes": sum((folder / f).stat().st_size for f in files), "nodes": nodes}


def _name_batch_and_describe(folder: Path, head_name: str, metadata: dict[str, str]) -> None:
    """Both files from the exported one: the batch dimension named ``batch`` everywhere
    (torch.export calls it ``s34`` or the like), ``metadata`` as ``metadata_props``, and
    ``model.onnx`` with the head output alone. Weights in external data stay where they are:
    the protobuf is read without them and points at the same ``model.onnx.data``."""
    import re

    import onnx

    proto = onnx.load(str(folder / ATTENTION_FILE), load_external_data=False)
    symbol = proto.graph.input[0].type.tensor_type.shape.dim[0].dim_param
    pattern = re.compile(rf"\b{re.escape(symbol)}\b")
    for value in (*proto.graph.input, *proto.graph.output, *proto.graph.value_info):
        for dim in value.type.tensor_type.shape.dim:
            if dim.dim_param:
                dim.dim_param = pattern.sub("batch", dim.dim_param)
    del proto.metadata_props[:]
    for key, value in metadata.items():
        proto.metadata_props.add(key=key, value=value)
    onnx.save(proto, str(folder / ATTENTION_FILE))
    outputs = [o for o in proto.graph.output if o.name == head_name]
    del proto.graph.output[:]
    proto.graph.output.extend(outputs)
    onnx.save(proto, str(folder / MODEL_FILE))
