"""Faster ONNX serving graphs and reduced-precision ONNX variants, made from the exported ``model.onnx``.
Runs in an ONNX Runtime worker (onnx and onnxruntime only; never torch or TensorFlow).

Serving graphs, in order of preference (``GRAPHS``); the port times them and keeps the fastest that
passes fp32 parity (``vit_porting/pipeline.py``):

- ``exported``: the file torch.onnx wrote, logits only;
- ``rewritten``: standard ONNX ops only, with one rewrite (``mix_channels_first``). A channel mix over
  axis 1 written as Transpose(0,2,3,1) -> MatMul(W) -> Add(b) -> Transpose(0,3,1,2) (talking-heads
  attention mixes its heads so, on (batch, heads, N, N)) becomes Reshape -> MatMul(Wᵀ, x) -> Add ->
  Reshape: no transposes, and the bias added along the long axis instead of a last axis as short as
  the number of heads, where ONNX Runtime's broadcast Add is slow (each port times it: parity.md);
- ``ort_fused``: ``rewritten`` plus ONNX Runtime's transformer fusions
  (``onnxruntime.transformers.optimizer``'s encoder fusions, no hardware-specific level): GELU
  as ``com.microsoft`` ``BiasGelu``, attention and skip-LayerNorm where their patterns match. Contrib
  ops load in any ONNX Runtime and pass ``onnx.checker`` (an unknown domain is not checked), but
  other ONNX runtimes may not run them, so this one must be faster by a margin.

Reduced-precision variants (``VARIANT_FILES``), extra files beside the fp32 ones and never replacing
them: ``model_int8.onnx`` (dynamic quantisation of the weight MatMuls, ``onnxruntime.quantization``:
int8 weights, activations quantised per call; VNNI kernels where the CPU has them) and
``model_fp16.onnx`` (fp16 weights and compute, fp32 input and output).
"""

from __future__ import annotations

import contextlib
import io
import logging
from collections import Counter
from pathlib import Path

GRAPHS = ("exported", "rewritten", "ort_fused")
# a graph later in GRAPHS is chosen only when it is faster than the earlier ones by this much
GRAPH_MARGIN = 0.03
VARIANT_FILES = {"onnx_int8": "model_int8.onnx", "onnx_fp16": "model_fp16.onnx"}
STANDARD_DOMAINS = ("", "ai.onnx")


def _perm(node) -> list[int] | None:
    return next((list(a.ints) for a in node.attribute if a.name == "perm"), None)


def mix_channels_first(model, base_dir: Path | str) -> int:
    """Rewrite, in place, every Transpose(0,2,3,1) -> MatMul(constant W) -> Add(constant b) ->
    Transpose(0,3,1,2) chain whose intermediates nothing else reads, as a product from the left on
    the (batch, C, rest...) tensor flattened to (batch, C, -1); returns how many were rewritten.
    Same products and sums (over C), another memory order. ``base_dir``: the model file's folder,
    where W and b are read from when they are external data (loaded without it)."""
    import numpy as np
    from onnx import TensorProto, helper, numpy_helper

    graph = model.graph
    consumers: dict[str, list] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    constants = {i.name: i for i in graph.initializer}
    graph_outputs = {o.name for o in graph.output}

    def only_consumer(name: str, op: str):
        found = consumers.get(name, [])
        return found[0] if len(found) == 1 and found[0].op_type == op and name not in graph_outputs else None

    replaced: dict[int, list] = {}  # id(first node of a chain) -> its replacement
    dropped: set[int] = set()
    for node in graph.node:
        if node.op_type != "Transpose" or _perm(node) != [0, 2, 3, 1]:
            continue
        matmul = only_consumer(node.output[0], "MatMul")
        if matmul is None or matmul.input[0] != node.output[0] or matmul.input[1] not in constants:
            continue
        add = only_consumer(matmul.output[0], "Add")
        if add is None:
            continue
        bias = [name for name in add.input if name != matmul.output[0]]
        back = only_consumer(add.output[0], "Transpose")
        if len(bias) != 1 or bias[0] not in constants or back is None or _perm(back) != [0, 3, 1, 2]:
            continue
        weight = numpy_helper.to_array(constants[matmul.input[1]], str(base_dir))
        offset = numpy_helper.to_array(constants[bias[0]], str(base_dir))
        if weight.ndim != 2 or offset.shape != (weight.shape[1],) or weight.shape[0] != weight.shape[1]:
            continue
        prefix = f"{back.output[0]}__mix"
        graph.initializer.extend([numpy_helper.from_array(np.ascontiguousarray(weight.T), prefix + "_wt"),
                                  numpy_helper.from_array(offset.reshape(-1, 1), prefix + "_b"),
                                  helper.make_tensor(prefix + "_flat_shape", TensorProto.INT64, [3], [0, 0, -1])])
        source = node.input[0]
        replaced[id(node)] = [
            helper.make_node("Shape", [source], [prefix + "_shape"], name=prefix + "_shape"),
            helper.make_node("Reshape", [source, prefix + "_flat_shape"], [prefix + "_flat"], name=prefix + "_flat"),
            helper.make_node("MatMul", [prefix + "_wt", prefix + "_flat"], [prefix + "_mm"], name=prefix + "_mm"),
            helper.make_node("Add", [prefix + "_mm", prefix + "_b"], [prefix + "_add"], name=prefix + "_add"),
            helper.make_node("Reshape", [prefix + "_add", prefix + "_shape"], [back.output[0]], name=prefix)]
        dropped |= {id(node), id(matmul), id(add), id(back)}
    if not replaced:
        return 0
    nodes = []
    for node in graph.node:
        nodes += replaced.get(id(node), [])
        if id(node) not in dropped:
            nodes.append(node)
    del graph.node[:]
    graph.node.extend(nodes)
    used = {name for node in graph.node for name in node.input}
    kept = [i for i in graph.initializer if i.name in used]
    del graph.initializer[:]
    graph.initializer.extend(kept)
    return len(replaced)


def ort_fusions(model):
    """``model`` with ONNX Runtime's transformer fusions (no graph-level optimisation: the file stays
    independent of the CPU it was made on); returns (model, {fused op: count})."""
    import onnx
    from onnxruntime.transformers.optimizer import optimize_model

    logging.getLogger("onnxruntime.transformers").setLevel(logging.ERROR)
    with contextlib.redirect_stdout(io.StringIO()):  # its shape-inference notes are printed
        # ORT's encoder fusions (BertOnnxModel: its model types "bert" and "vit" are the same class);
        # num_heads/hidden_size 0: read from the graph
        fused = optimize_model(model, model_type="bert", num_heads=0, hidden_size=0, opt_level=0)
    stats = {op: n for op, n in fused.get_fused_operator_statistics().items() if n}
    model = fused.model
    for domain in {n.domain for n in model.graph.node} - {*STANDARD_DOMAINS, *(o.domain for o in model.opset_import)}:
        model.opset_import.append(onnx.helper.make_opsetid(domain, 1))  # contrib ops are at version 1
    return model, stats


def non_standard_ops(model) -> dict[str, int]:
    """{domain:op: count} of the nodes outside the standard ONNX domain (ONNX Runtime's contrib ops)."""
    return dict(Counter(f"{n.domain}:{n.op_type}" for n in model.graph.node if n.domain not in STANDARD_DOMAINS))


def uses_external_data(model) -> bool:
    from onnx.external_data_helper import uses_external_data as external

    return any(external(t) for t in model.graph.initializer)


def write_graphs(folder: Path | str, source: str) -> dict[str, dict]:
    """Write the candidate serving graphs beside ``source`` (``.candidate-<graph>.onnx``: a graph whose
    weights are in external data must lie beside the data file); {graph: {path, ...}} with
    ``exported`` the source itself. ``ort_fused`` is not made for a model with external data: the
    fusions rewrite initializers, which would need a second copy of every weight on disk."""
    import onnx

    folder = Path(folder)
    model = onnx.load(source, load_external_data=False)
    graphs = {"exported": {"path": source, "nodes": len(model.graph.node)}}
    rewrites = mix_channels_first(model, Path(source).parent)
    if rewrites:
        path = folder / ".candidate-rewritten.onnx"
        onnx.save(model, str(path))
        graphs["rewritten"] = {"path": str(path), "nodes": len(model.graph.node),
                               "rewrites": {"channel mix without transposes": rewrites}}
    if uses_external_data(model):
        graphs["ort_fused"] = {"skipped": "external data: the fusions would need a second copy of the weights"}
        return graphs
    fused, stats = ort_fusions(model)
    if stats and non_standard_ops(fused):
        path = folder / ".candidate-ort_fused.onnx"
        onnx.save(fused, str(path))
        graphs["ort_fused"] = {"path": str(path), "nodes": len(fused.graph.node), "fusions": stats,
                               "rewrites": graphs.get("rewritten", {}).get("rewrites", {})}
    else:
        graphs["ort_fused"] = {"skipped": "no ONNX Runtime fusion matched this graph"}
    return graphs


def _without_value_info(source: str):
    """``source`` loaded whole, without its intermediate shape annotations: torch.onnx annotates the
    initializers too, and one of them disagrees with what onnx's shape inference derives (the
    classifier's weight: 192 vs 1000 on cait_xxs24_224), which stops the quantiser. They are
    optional; the tools infer them again."""
    import onnx

    model = onnx.load(source)
    del model.graph.value_info[:]
    return model


def write_int8(source: str, out: Path | str) -> dict:
    """Dynamic int8 quantisation of the MatMuls with a constant (weight) operand; the rest stays fp32."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    logging.getLogger().setLevel(logging.ERROR)  # the quantiser warns on the root logger ("run pre-processing")
    with contextlib.redirect_stdout(io.StringIO()):
        quantize_dynamic(_without_value_info(source), str(out), op_types_to_quantize=["MatMul"],
                         weight_type=QuantType.QInt8, extra_options={"MatMulConstBOnly": True})
    return {"method": "onnxruntime.quantization.quantize_dynamic: int8 weights of the weight MatMuls "
                      "(symmetric, per tensor), uint8 activations quantised per call"}


def write_fp16(source: str, out: Path | str) -> dict:
    """fp16 weights and compute; the input stays float32 ``images`` and the output float32."""
    import onnx
    from onnxruntime.transformers.float16 import convert_float_to_float16
    from onnxruntime.transformers.onnx_model import OnnxModel

    converted = OnnxModel(convert_float_to_float16(_without_value_info(source), keep_io_types=True))
    converted.topological_sort()  # the input's Cast is appended last; onnx.checker wants producers first
    onnx.save(converted.model, str(out))
    return {"method": "onnxruntime.transformers.float16.convert_float_to_float16 (keep_io_types)"}
