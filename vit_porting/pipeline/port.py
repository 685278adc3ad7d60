"""One port, end to end: weights -> Keras -> artifacts -> parity, in per-runtime processes.

This process imports neither torch nor TensorFlow; it runs the steps (each a worker process), compares
their outputs with numpy, and writes the artifact folder under a temporary name that is renamed into
place only when everything in it is complete. A port locks its destination for its whole length, and
removes only what it made (``vit_porting/safety.py``).
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path

from vit_porting import __version__
from vit_porting.export.onnx_serving import GRAPH_MARGIN, GRAPHS
from vit_porting.export.saved_model import ONNX_ATTENTION_FILE, ONNX_FILE
from vit_porting.export.timing import pick
from vit_porting.families.base import VariantSpec
from vit_porting.families.registry import get_family
from vit_porting.manifest import PortRecord, runtime_versions, write_manifest, write_record
from vit_porting.parity.compare import compare_outputs, load_policy
from vit_porting.parity.outputs import OutputsView, read_outputs, split_photo_outputs
from vit_porting.parity.report import write_reports
from vit_porting.parity.verdict import ParityReport, RuntimeRun, photo_summary
from vit_porting.pipeline.destination import check_destination, prepare_root, replace_folder
from vit_porting.pipeline.options import PortError, PortOptions
from vit_porting.pipeline.runtimes import (
    Compare,
    CudaReference,
    Reference,
    artifact_steps,
    describe_inputs,
    prepare_inputs,
    skipped_backends,
)
from vit_porting.pipeline.steps import Context, Progress, Step
from vit_porting.publish.card import write_card
from vit_porting.safety import FolderLock, describe_os_error, make_scratch, remove_stale_scratch
from vit_porting.workers.jobs import (
    ConvertJob,
    LiteRTConvertJob,
    OnnxExportJob,
    OptimiseJob,
    RoundtripJob,
    SourceJob,
    WriteVariantsJob,
)
from vit_porting.workers.protocol import call


class Source(Step):
    """WEIGHTS= resolved (published, a file, or random) into one safetensors file in the canonical layout."""

    title = "loading source weights (PyTorch)"

    def run(self, ctx: Context):
        o = ctx.options
        result = call(SourceJob(spec=ctx.spec.to_dict(), weights=o.weights, seed=o.seed, mapping=o.mapping,
                                new_head=o.new_head, out=str(ctx.source)), ctx.work)
        ctx.origin, ctx.labels = result.origin, result.labels
        if ctx.origin.get("random_weights"):
            ctx.log("      NOTE: random weights: this port proves the conversion, not accuracy")
        return result


class Convert(Step):
    """The Keras model built, the mapped weights assigned, run eagerly; the mapping run backwards into
    model.safetensors; and, with exports, the SavedModel and model.keras written."""

    def __init__(self, exports: bool):
        self.title = "converting to Keras, running it" + (", writing SavedModel and model.keras" if exports else "")

    def run(self, ctx: Context):
        o = ctx.options
        exports = ({"saved_model_out": str(ctx.folder / "saved_model"), "keras_out": str(ctx.folder / "model.keras")}
                   if o.exports else {})
        result = call(ConvertJob(spec=ctx.spec.to_dict(), source=str(ctx.source), inputs=str(ctx.inputs),
                                 outputs=str(ctx.work / "keras_eager"), mapping=o.mapping, budget_mb=o.output_budget_mb,
                                 source_name=ctx.origin["description"], serving=o.serving,
                                 safetensors_out=str(ctx.folder / "model.safetensors"), **exports), ctx.work)
        if result.exports.get("saved_model"):
            sm = result.exports["saved_model"]
            ctx.log(f"      saved_model/ {sm['bytes'] / 1e6:.1f} MB = {sm['size_ratio']:.3f}x the weight bytes")
        ctx.runs.append(RuntimeRun("keras_eager", "cpu", ctx.work / "keras_eager", result.to_json()))
        ctx.output_order, ctx.weight_paths = result.output_order, result.weight_paths
        ctx.exports.update(result.exports)
        return result


class Roundtrip(Step):
    """model.safetensors (the Keras weights mapped back) loads strictly into the reference and equals
    the source bit for bit; the reference library's own config file is written beside it."""

    title = "checking the round trip (Keras -> safetensors -> PyTorch)"
    KEPT = ("bit_exact", "strict_load", "num_tensors", "mismatched", "not_compared", "not_compared_reasons")

    def run(self, ctx: Context):
        result = call(RoundtripJob(spec=ctx.spec.to_dict(), source=str(ctx.source), mapping=ctx.options.mapping,
                                   candidate=str(ctx.folder / "model.safetensors"), hub_config_dir=str(ctx.folder),
                                   labels=ctx.labels), ctx.work)
        ctx.roundtrip = {k: v for k, v in result.to_json().items() if k in self.KEPT}
        return result


class OnnxExport(Step):
    title = "exporting model.onnx from model.safetensors (PyTorch, dynamo)"

    def applies(self, ctx: Context) -> bool:
        return ctx.options.exports

    def run(self, ctx: Context):
        result = call(OnnxExportJob(spec=ctx.spec.to_dict(), candidate=str(ctx.folder / "model.safetensors"),
                                    out=str(ctx.folder), labels=ctx.labels), ctx.work)
        ctx.log(f"      {result.nodes} nodes, opset {result.opset}, {result.bytes / 1e6:.1f} MB"
                + (" (external data)" if result.external_data else ""))
        ctx.exports["onnx"] = {k: v for k, v in result.to_json().items() if k not in ("peak_rss_mb", "seconds")}
        return result


class OnnxServingGraph(Step):
    """The candidate serving graphs of model.onnx (``vit_porting/export/onnx_serving.py``) timed, and
    each checked on the parity inputs against the fp32 reference (head output and photographs, the fp32
    tolerance): the fastest that passes is chosen (a less portable graph must win by a margin).
    ``standard`` in the record is the fastest passing graph in standard ONNX ops: the source of the
    reduced-precision variants."""

    title = "choosing model.onnx's serving graph (candidates timed and checked)"

    def applies(self, ctx: Context) -> bool:
        return ctx.options.exports

    def run(self, ctx: Context):
        result = call(OptimiseJob(folder=str(ctx.folder), model=str(ctx.folder / ONNX_FILE),
                                  attention_model=str(ctx.folder / ONNX_ATTENTION_FILE), inputs=str(ctx.inputs),
                                  outputs=str(ctx.work / "onnx_graphs"), budget_mb=ctx.options.output_budget_mb),
                      ctx.work)
        candidates = self._check(ctx, result.graphs)
        passing = [g for g in GRAPHS if candidates.get(g, {}).get("parity", {}).get("passed")]
        relative = result.timing["relative_time"]
        chosen = pick(relative, passing, GRAPH_MARGIN) if passing else "exported"
        standard = [g for g in passing if not candidates[g].get("non_standard_ops")]
        record = {"graph": chosen, "standard": pick(relative, standard, GRAPH_MARGIN) if standard else "exported",
                  "chosen_by": (f"the fastest within the fp32 tolerance, timed on this machine; a less portable "
                                f"graph must win by {GRAPH_MARGIN:.0%}" if passing
                                else "no candidate passed parity: the exported graph is kept"),
                  "timing": result.timing, "candidates": candidates,
                  "checker": candidates[chosen].get("checker"),
                  "non_standard_ops": candidates[chosen].get("non_standard_ops", {})}
        ctx.exports["onnx"]["serving"] = record
        ctx.log(f"      model.onnx: {record['graph']} graph ({record['chosen_by'].split(',')[0]})")
        return result

    def _check(self, ctx: Context, graphs: dict) -> dict:
        """Each candidate that passed the ONNX checker, against the CPU reference; keeps the paths of
        those checked (``ctx.onnx_candidates``) for the install step."""
        policy, head = load_policy(), ctx.spec.head_name
        ref_main, ref_photos = split_photo_outputs(ctx.cpu_reference())
        candidates = {}
        for name, graph in graphs.items():
            candidates[name] = {k: v for k, v in graph.items() if k != "path"}
            if "path" not in graph or not str(graph.get("checker", "")).startswith("passed"):
                continue
            ctx.onnx_candidates[name] = graph["path"]
            main, photos = split_photo_outputs(read_outputs(ctx.work / "onnx_graphs" / name))
            (c,) = compare_outputs(OutputsView(ref_main, {head: head}), main, "cpu", policy)
            photo = photo_summary(ref_photos, photos, "cpu", policy) if ref_photos else None
            candidates[name]["parity"] = {"passed": c.passed and (photo is None or photo["passed"]),
                                          "max_normalized_diff": c.max_normalized_diff,
                                          "photos_max_normalized_diff": photo and photo["max_normalized_diff"],
                                          "tolerance": c.tolerance}
        return candidates


class WriteOnnxVariants(Step):
    """int8 and fp16 ONNX files from the fastest passing serving graph in standard ops."""

    title = "writing model_int8.onnx, model_fp16.onnx (ONNX Runtime)"

    def applies(self, ctx: Context) -> bool:
        return ctx.options.exports and ctx.options.reduced_precision

    def run(self, ctx: Context):
        standard = ctx.exports["onnx"]["serving"]["standard"]
        result = call(WriteVariantsJob(folder=str(ctx.folder), source=ctx.onnx_candidates[standard]), ctx.work)
        ctx.variant_files.update(result.variants)
        return result


class InstallServingGraph(Step):
    """The chosen candidate renamed to model.onnx; the other candidate files (this port's) removed."""

    title = "installing the chosen serving graph as model.onnx"

    def applies(self, ctx: Context) -> bool:
        return ctx.options.exports

    def run(self, ctx: Context):
        chosen = ctx.exports["onnx"]["serving"]["graph"]
        for name, path in ctx.onnx_candidates.items():
            if name == "exported":
                continue
            if name == chosen:
                os.replace(path, ctx.folder / ONNX_FILE)
            else:
                Path(path).unlink()
        return None


class WriteLiteRT(Step):
    title = "writing model.tflite, model_fp16.tflite, model_int8.tflite (LiteRT)"

    def applies(self, ctx: Context) -> bool:
        return ctx.options.exports and ctx.options.reduced_precision

    def run(self, ctx: Context):
        result = call(LiteRTConvertJob(folder=str(ctx.folder), saved_model=str(ctx.folder / "saved_model")),
                      ctx.work)
        ctx.variant_files.update(result.variants)
        ctx.exports["variants"] = ctx.variant_files
        return result


def port_steps(ctx: Context) -> list[Step]:
    """The port, in order."""
    o = ctx.options
    return [Source(), Convert(o.exports), Reference(), CudaReference(), Roundtrip(), OnnxExport(), OnnxServingGraph(),
            WriteOnnxVariants(), InstallServingGraph(), WriteLiteRT(),
            *artifact_steps(ctx, reduced_precision=o.reduced_precision),
            Compare(o.mapping, {"options": {"batch": o.batch, "input_seed": o.input_seed, "photos": o.photos,
                                            "output_budget_mb": o.output_budget_mb}})]


def finish(report: ParityReport, folder: Path, spec: VariantSpec, origin: dict, inputs_detail: dict,
           progress: Progress) -> None:
    """The end a port and a re-check share: the verdict (a round trip that was not bit-exact fails it),
    then parity.json/.md, the card, and the manifest last, since it lists every other file."""
    report.inputs = describe_inputs(inputs_detail)
    if report.roundtrip and not report.roundtrip.get("bit_exact"):
        report.passed = False
    report.steps = progress.timings
    write_reports(report.to_json(), folder)
    versions = runtime_versions(__version__, get_family(spec.family).reference_libraries)
    write_card(folder, versions=versions)
    write_manifest(folder, spec.name, spec.family, origin, report.passed, __version__, versions=versions,
                   exports=report.exports)


def _port_into(spec: VariantSpec, options: PortOptions, scratch: Path, final: Path) -> ParityReport:
    """The port's work in ``scratch`` (this process's: artifact/ and work/), ending with
    artifact/ renamed into place as ``final``."""
    tmp, work = scratch / "artifact", scratch / "work"
    tmp.mkdir()
    work.mkdir()
    options.log(f"Porting {spec.name} (weights: {options.weights}) into {final}")
    ctx = Context(spec=spec, options=options, folder=tmp, work=work, inputs=work / "inputs.npz",
                  source=work / "source.safetensors")
    ctx.inputs_detail = prepare_inputs(ctx.inputs, spec, options.batch, options.input_seed, options.photos)
    ctx.skipped = skipped_backends(ctx)
    for skip in ctx.skipped:
        options.log(f"      skipped {skip['runtime']}: {skip['reason']}")
    progress = Progress(options.log)
    progress.run(port_steps(ctx), ctx)
    shutil.rmtree(work)
    write_record(tmp, PortRecord(spec, ctx.origin, ctx.labels))
    finish(ctx.report, tmp, spec, ctx.origin, ctx.inputs_detail, progress)
    replace_folder(tmp, final, options.force)
    return ctx.report


def port(spec: VariantSpec, options: PortOptions) -> dict:
    """Port ``spec`` into ``options.out_root/<variant>``; returns the parity report as parity.json holds it.

    Writes model.safetensors, and with ``options.exports`` saved_model/, model.keras and
    model.onnx, each then loaded from disk by its own runtime process and compared with the
    PyTorch reference; then parity.json/.md, vit_porting.json and manifest.json. Raises PortError
    (nothing written) when the weights or the mapping are refused, or the destination exists
    (without ``force``), is not a port's folder, or is being ported by another process.
    """
    log, start = options.log, time.perf_counter()
    final = options.out_root / spec.name
    check_destination(final, options.force)  # before any work
    prepare_root(options.out_root)
    with FolderLock(final, f"vit-port port {spec.name}"):
        check_destination(final, options.force)  # a port that held the lock may have just finished
        for stale in remove_stale_scratch(options.out_root):
            log(f"Removed {stale}: left by a port that was killed")
        scratch = make_scratch(options.out_root, f"{spec.name}.tmp")
        try:
            report = _port_into(spec, options, scratch, final)
        except OSError as exc:  # a full disk or a folder taken away: one line naming where
            raise PortError(f"{describe_os_error(exc, scratch)} (writing the port of {spec.name} in "
                            f"{options.out_root}); nothing was replaced") from None
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
    log_verdict(log, report.passed, final, start)
    return report.to_json()


def log_verdict(log: Callable[[str], None], passed: bool, folder: Path, start: float) -> None:
    minutes, seconds = divmod(round(time.perf_counter() - start), 60)
    took = f"{minutes} min {seconds} s" if minutes else f"{seconds} s"
    log(f"Parity {'PASSED' if passed else 'FAILED'} in {took}: {folder / 'parity.md'}")
