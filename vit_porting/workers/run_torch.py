"""PyTorch worker: source weights, reference outputs, and the round-trip check.

``python -m vit_porting.workers.run_torch JOB.json``; never imports TensorFlow.
"""

from __future__ import annotations

import numpy as np
import torch

from vit_porting.families.base import VariantSpec
from vit_porting.families.registry import get_family, variant_from_dict
from vit_porting.mapping.engine import MappingError, MappingFileError, family_mapping
from vit_porting.mapping.tensor_io import CheckpointError
from vit_porting.parity.outputs import OutputStore, run_on_inputs
from vit_porting.weights.checkpoint import open_checkpoint
from vit_porting.weights.sources import class_labels, refuse_other_family, resolve_weights
from vit_porting.workers.jobs import (
    FactsJob,
    FactsResult,
    OnnxExportJob,
    OnnxExportResult,
    ReferenceJob,
    ReferenceResult,
    RoundtripJob,
    RoundtripResult,
    SourceJob,
    SourceResult,
    StateShapesJob,
    StateShapesResult,
)
from vit_porting.workers.protocol import worker_main


def _reference_model(spec: VariantSpec, source: str) -> torch.nn.Module:
    """The source model holding the weights of ``source`` (strict), built without a random init:
    on the meta device, with the checkpoint's tensors assigned as its parameters, so the
    weights are in memory once (unless the model has state no checkpoint carries)."""
    builder = get_family(spec.family).torch().build_reference
    with torch.device("meta"):
        model = builder(spec)
    state = open_checkpoint(source)
    try:
        model.load_state_dict(state, strict=True, assign=True)
    except RuntimeError as exc:
        raise CheckpointError(f"{source}: does not load into the PyTorch {spec.name}: {exc}") from None
    if any(t.is_meta for t in [*model.parameters(), *model.buffers()]):  # non-persistent buffers
        model = builder(spec)
        model.load_state_dict(state, strict=True)
    return model.eval()


def job_source(job: SourceJob) -> SourceResult:
    """Resolve WEIGHTS= into one safetensors file in the family's canonical key layout.

    The mapping's declarative renames (e.g. a 'module.' prefix) are applied here, so that the
    reference, the converter and the round trip all read the same keys.
    """
    spec = variant_from_dict(job.spec)
    mapping = family_mapping(get_family(spec.family), job.mapping, spec.config)
    state, origin = resolve_weights(spec, job.weights, seed=job.seed, new_head=job.new_head)
    if origin.kind == "file":
        refuse_other_family(spec, state, mapping, origin)
    renamed: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        new = mapping.rename_key(key)
        if new in renamed:
            raise CheckpointError(f"{origin.description}: two keys become {new!r} after the mapping's renames")
        renamed[new] = value
    _save(renamed, job.out)
    return SourceResult(origin=origin.to_dict(), num_tensors=len(renamed),
                        num_params=int(sum(v.numel() for v in renamed.values())), labels=class_labels(spec))


def _save(state: dict[str, torch.Tensor], path: str) -> None:
    """Streamed (one tensor's bytes at a time) where numpy holds the dtypes, else safetensors'."""
    from vit_porting.mapping.tensor_io import UnsupportedDtype, write_safetensors

    try:
        write_safetensors({k: v.detach().contiguous().numpy() for k, v in state.items()}, path)
    except (UnsupportedDtype, TypeError):  # bfloat16 has no numpy dtype
        from safetensors.torch import save_file

        save_file({k: v.contiguous() for k, v in state.items()}, path)


def job_reference(job: ReferenceJob) -> ReferenceResult:
    """Reference outputs (fp32 unless the job says float64) on the shared inputs."""
    spec = variant_from_dict(job.spec)
    device = job.device
    if device.startswith("cuda"):
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
    dtype = {"float32": torch.float32, "float64": torch.float64}[job.dtype]
    model = _reference_model(spec, job.source)
    from vit_porting.families.torch_reference import reference_shapes, run_reference

    # the modules whose outputs are the attention maps (and block outputs), and how to call the model
    reference = get_family(spec.family).torch()
    taps = reference.reference_taps(model, job.intermediates)
    call = reference.call_reference
    output_name = spec.head_name

    def run(images: np.ndarray, names: list[str] | None = None, sink=None) -> dict[str, np.ndarray]:
        return run_reference(model, images, taps, call, output_name, dtype=dtype, device=device, names=names,
                             sink=sink)

    # the seeded batch (every output) and the sample photographs (head output), if present
    with np.load(job.inputs) as data:
        image_shape = data["images"].shape[1:]
    shapes = reference_shapes(model, taps, call, output_name, image_shape)
    calls = run_on_inputs(run, job.inputs, output_name, OutputStore(job.out), shapes, job.budget_mb, streams=True)
    return ReferenceResult(device=device, torch=torch.__version__, cuda_available=torch.cuda.is_available(),
                           calls=calls,
                           device_name=torch.cuda.get_device_name(device) if device.startswith("cuda") else None)


def job_roundtrip(job: RoundtripJob) -> RoundtripResult:
    """The mapping-run-backwards file must load into the reference strictly and equal the source
    bit for bit, except for keys the mapping drops on purpose (each with its reason, reported).

    The reference that loaded it then writes its library's own config file beside it
    (``hub_config_dir``: timm's config.json), so that the library's loader opens the folder."""
    spec = variant_from_dict(job.spec)
    model = _reference_model(spec, job.candidate)  # strict=True load
    reference = get_family(spec.family).torch()
    hub_config = (reference.write_hub_config(model, spec, job.hub_config_dir, job.labels)
                  if job.hub_config_dir else None)
    source = open_checkpoint(job.source)  # one tensor at a time
    loaded = model.state_dict()
    dropped = family_mapping(get_family(spec.family), job.mapping).dropped(source)
    mismatched = [k for k in source
                  if k not in dropped and (k not in loaded or not torch.equal(loaded[k], source[k]))]
    return RoundtripResult(strict_load=True, bit_exact=not mismatched, mismatched=mismatched[:20],
                           num_tensors=len(source), not_compared=len(dropped),
                           not_compared_reasons=sorted(set(dropped.values())), hub_config=hub_config)


def job_state_shapes(job: StateShapesJob) -> StateShapesResult:
    """Key -> shape of each reference model's state_dict, built on the meta device (no memory),
    so mapping coverage of the largest variants can be checked without their weights."""
    shapes, parameters = {}, {}
    for spec_dict in job.specs:
        spec = variant_from_dict(spec_dict)
        with torch.device("meta"):
            model = get_family(spec.family).torch().build_reference(spec)
        shapes[spec.name] = {k: list(v.shape) for k, v in model.state_dict().items()}
        parameters[spec.name] = sum(p.numel() for p in model.parameters())
    return StateShapesResult(shapes=shapes, parameters=parameters)


def onnx_metadata(spec: VariantSpec, labels: dict | None) -> dict[str, str]:
    """``metadata_props`` of both ONNX files: what a serving user needs to feed the model and
    read its output (values are strings; lists are JSON)."""
    import json

    from vit_porting.parity.images import resolve_preprocessing

    pre = resolve_preprocessing(spec.preprocessing, spec.image_size)
    meta = {"variant": spec.name, "layout": "NHWC",
            "input_size": json.dumps([pre["input_size"], pre["input_size"], spec.config.in_channels]),
            "mean": json.dumps(pre["mean"]), "std": json.dumps(pre["std"]), "interpolation": pre["interpolation"],
            "crop_pct": str(pre["crop_pct"]), "crop_mode": pre["crop_mode"], "output": spec.head_name}
    if labels:
        meta.update(labels=json.dumps(labels["descriptions"]), label_names=json.dumps(labels["names"]))
    return meta


def model_facts(spec: VariantSpec) -> dict:
    """Parameters, weight bytes (every state_dict tensor, as model.safetensors holds them) and FLOPs
    of one image (2 x multiply-adds of matmuls and convolutions) of the reference, on the meta
    device: no weights in memory, no arithmetic, about a second even for the largest variant."""
    from torch.utils.flop_counter import FlopCounterMode

    reference = get_family(spec.family).torch()
    with torch.device("meta"):
        model = reference.build_reference(spec).eval()
        x = torch.zeros(1, spec.config.in_channels, spec.image_size, spec.image_size)
    with FlopCounterMode(display=False) as counter:  # (its module tracker needs autograd on)
        reference.call_reference(model, x)
    return {"params": int(sum(p.numel() for p in model.parameters())),
            "weight_bytes": int(sum(t.numel() * t.element_size() for t in model.state_dict().values())),
            "flops_per_image": int(counter.get_total_flops())}


def job_facts(job: FactsJob) -> FactsResult:
    """``model_facts`` of each spec: what a collection schedules by (memory) and its card shows."""
    return FactsResult(facts={spec["name"]: model_facts(variant_from_dict(spec)) for spec in job.specs})


def job_onnx(job: OnnxExportJob) -> OnnxExportResult:
    """model.onnx and model_attention.onnx from the ported weights (``candidate``: the
    round-tripped model.safetensors, loaded strictly), vit_porting/export/onnx_export.py."""
    from vit_porting.export.onnx_export import export_onnx

    spec = variant_from_dict(job.spec)
    model = _reference_model(spec, job.candidate)  # strict=True load
    extra = {"external_data_bytes": job.external_data_bytes} if job.external_data_bytes is not None else {}
    return OnnxExportResult(**export_onnx(model, get_family(spec.family).torch(), job.out, spec.image_size,
                                          spec.config.in_channels, head_name=spec.head_name, opset=job.opset,
                                          metadata=onnx_metadata(spec, job.labels), **extra))


def main(argv: list[str] | None = None) -> None:
    worker_main({SourceJob: job_source, ReferenceJob: job_reference, RoundtripJob: job_roundtrip,
                 StateShapesJob: job_state_shapes, OnnxExportJob: job_onnx, FactsJob: job_facts},
                (CheckpointError, MappingError, MappingFileError), argv)


if __name__ == "__main__":
    main()
