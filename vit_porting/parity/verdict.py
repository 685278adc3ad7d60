"""The verdict of one port: every runtime's outputs compared with the PyTorch reference of its device,
under the tolerance policy, into the parity report (``ParityReport``; ``report.py`` writes it as
parity.json and parity.md). numpy only: it runs in the orchestrating process.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from vit_porting import __version__
from vit_porting.export.litert import LITERT_FILES
from vit_porting.export.onnx_serving import VARIANT_FILES
from vit_porting.families.base import VariantSpec
from vit_porting.families.registry import get_family
from vit_porting.mapping.engine import family_mapping
from vit_porting.parity.compare import agreement, compare_outputs, first_divergent_block, meets_floor, tolerance
from vit_porting.parity.outputs import OutputsView, read_outputs, split_photo_outputs
from vit_porting.parity.report import runtime_summary

# what each runtime loads (shown in the report)
RUNTIME_SOURCES = {
    "keras_eager": "Keras model converted in this port, called eagerly",
    "keras_compiled": "model.keras reloaded, compiled (XLA where it works)",
    "keras_file": "model.keras reloaded, called eagerly",
    "savedmodel": "saved_model/ via tf.saved_model.load: serving_default (head output; its graph as chosen), "
                  "attention (maps)",
    "onnxruntime": "ONNX Runtime: model.onnx (head output; the serving graph chosen), model_attention.onnx (maps)",
    "keras_torch": "model.keras reloaded on Keras' torch backend",
    "keras_jax": "model.keras reloaded on Keras' JAX backend",
}
# the reduced-precision and LiteRT variants: {variant: (file, precision, loaded by)}
VARIANTS = {
    **{name: (file, name.split("_")[1], "ONNX Runtime, CPUExecutionProvider") for name, file in VARIANT_FILES.items()},
    **{name: (file, name.split("_")[1], "ai-edge-litert Interpreter, serving_default signature runner")
       for name, file in LITERT_FILES.items()},
}
# what a runtime's worker said about itself that the report keeps
_INFO_KEYS = ("mode", "xla_error", "provider", "opset", "device_name", "signature_outputs", "backend", "calls")


@dataclass
class RuntimeRun:
    """One runtime's outputs on the parity inputs (or the folder holding them), and what it
    said about itself (its worker's result as JSON).

    Runs keep the folder, not the arrays: at 448 px one image's attention maps are 1.9 GB, so the
    report reads one output at a time (``vit_porting/parity/outputs.py``), compares it and lets it go.
    """

    runtime: str
    device: str
    outputs: dict[str, np.ndarray] | Path
    info: dict = field(default_factory=dict)

    def load(self) -> Mapping[str, np.ndarray]:
        return read_outputs(self.outputs) if isinstance(self.outputs, Path) else self.outputs


@dataclass(kw_only=True)
class ParityReport:
    """parity.json, as a record: the verdict over every runtime, and what the port was."""

    variant: str
    family: str
    config: dict
    passed: bool
    random_weights: bool
    origin: dict
    reference: str
    source_layout: str
    inputs: str
    runtimes: list[dict]
    time: str
    toolkit_version: str
    variants: list[dict] | None = None  # reduced precision and LiteRT, by agreement, outside the verdict
    roundtrip: dict | None = None
    devices: dict = field(default_factory=dict)
    inputs_detail: dict = field(default_factory=dict)
    mapping: str | None = None
    options: dict = field(default_factory=dict)
    recheck: bool | None = None
    exports: dict | None = None
    skipped: list[dict] | None = None
    steps: dict = field(default_factory=dict)

    def to_json(self) -> dict:
        """The report as parity.json holds it (optional parts only where present)."""
        return {k: v for k, v in asdict(self).items()
                if v is not None or k not in ("variants", "roundtrip", "recheck", "exports", "skipped")}


def localise(mapping_path: str | None, spec: VariantSpec, block: str | None, weight_paths: list[str]) -> dict | None:
    """The mapping rules feeding the first diverging block (for the report)."""
    if block is None:
        return None
    mapping = family_mapping(get_family(spec.family), mapping_path, spec.config)
    paths = [p for p in weight_paths if p.startswith(block + "/")]
    rules = mapping.rules_feeding(paths)
    return {"block": block, "rules": [{"line": r.line, "from": r.source, "to": r.target,
                                       "transform": r.transform} for r in rules]}


def photo_summary(reference: dict[str, np.ndarray], candidate: dict[str, np.ndarray], device: str,
                  policy: dict) -> dict | None:
    """The head output on the sample photographs, compared under the same tolerance."""
    if not reference:
        return None
    (c,) = compare_outputs(reference, candidate, device, policy)[:1]
    return {"count": int(next(iter(reference.values())).shape[0]), "output": c.output, "passed": c.passed,
            "max_abs_diff": c.max_abs_diff, "max_normalized_diff": c.max_normalized_diff, "tolerance": c.tolerance,
            "top1_agreement": c.top1_agreement, "top5_agreement": c.top5_agreement}


def variant_rows(reference: Mapping[str, np.ndarray], runs: list[RuntimeRun], policy: dict) -> list[dict]:
    """The agreement of each reduced-precision or LiteRT variant's head output with the fp32 reference,
    on the seeded batch and the photographs; whether it stays within the fp32 tolerance (said, never
    required) and whether it reaches the publish floor of ``vit_porting/parity/tolerances.yaml``."""
    floor = (policy.get("variants") or {}).get("publish_floor", {})
    ref_main, ref_photos = split_photo_outputs(reference)
    rows = []
    for run in runs:
        main, photos = split_photo_outputs(run.load())
        head = next(iter(main))
        file, precision, loads = VARIANTS[run.runtime]
        row = {"variant": run.runtime, "file": file, "precision": precision, "loads": loads, "head_output": head,
               "runtime_version": run.info.get("runtime"), "random": agreement(ref_main[head], main[head])}
        if head in photos and head in ref_photos:
            row["photos"] = agreement(ref_photos[head], photos[head])
        measured = [row["random"], *([row["photos"]] if "photos" in row else [])]
        row["fp32_tolerance"] = tolerance(policy, "cpu", head)
        row["within_fp32_tolerance"] = all(m["valid"] and m["max_normalized_diff"] <= row["fp32_tolerance"]
                                           for m in measured)
        row["publish_floor"] = floor
        row["meets_publish_floor"] = meets_floor(row, floor)
        rows.append(row)
    return rows


def _runtime_row(run: RuntimeRun, references: dict[str, Mapping], policy: dict, spec: VariantSpec,
                 output_order: list[str], weight_paths: list[str], mapping_path: str | None) -> dict:
    """One runtime against the reference of its device (a backend that found a GPU the PyTorch
    reference did not see is held to the CPU reference). A runtime without the diagnostic ``*_out``
    outputs (the exported artifacts) is compared on the outputs it has; its first diverging block is
    found from the attention maps."""
    ref_main, ref_photos = split_photo_outputs(references.get(run.device, references["cpu"]))
    main, photos = split_photo_outputs(run.load())
    ref_main = OutputsView(ref_main, {k: k for k in ref_main if k in main or not k.endswith("_out")})
    comparisons = compare_outputs(ref_main, main, run.device, policy)
    summary = runtime_summary(run.runtime, run.device, comparisons)
    summary["loads"] = RUNTIME_SOURCES.get(run.runtime, "")
    summary.update({k: run.info[k] for k in _INFO_KEYS if run.info.get(k) is not None})
    photo = photo_summary(ref_photos, photos, run.device, policy) if ref_photos else None
    if photo:
        summary["photos"] = photo
        if not photo["passed"]:
            summary["passed"] = False
            summary["failing_outputs"].append(f"photos:{photo['output']}")
    if not summary["passed"]:
        block = first_divergent_block(comparisons, output_order)
        summary["localisation"] = localise(mapping_path, spec, block, weight_paths)
    return summary


def build_report(spec: VariantSpec, origin: dict, runs: list[RuntimeRun], references: dict[str, Mapping],
                 output_order: list[str], weight_paths: list[str], mapping_path: str | None, policy: dict,
                 variants: list[RuntimeRun] | None = None, **details) -> ParityReport:
    """Compare every runtime with the PyTorch reference of its device ({device: outputs}). Outputs
    under ``photos:<head>`` are the head outputs on the sample photographs: compared under the same
    tolerance, with their own top-1/top-5 agreement. ``variants`` (reduced precision, LiteRT) are
    described by their agreement with the CPU reference and do not enter the verdict. ``details``
    are the report's other fields (roundtrip, devices, options, ...)."""
    summaries = [_runtime_row(run, references, policy, spec, output_order, weight_paths, mapping_path)
                 for run in runs]
    source_label = get_family(spec.family).source_label
    return ParityReport(
        variant=spec.name, family=spec.family, config=spec.to_dict()["config"],
        passed=bool(summaries) and all(s["passed"] for s in summaries),
        random_weights=bool(origin.get("random_weights")), origin=origin,
        reference=f"PyTorch ({source_label}) fp32 on {', '.join(sorted(references))}", source_layout=source_label,
        inputs="seeded N(0,1) images", runtimes=summaries,
        variants=variant_rows(references["cpu"], variants, policy) if variants else None,
        time=datetime.now(timezone.utc).isoformat(timespec="seconds"), toolkit_version=__version__, **details)
