"""The steps a port and a re-check share: the parity inputs, the PyTorch reference, every artifact
loaded from disk in its own process, and the comparison that gives the verdict."""

from __future__ import annotations

from pathlib import Path

from vit_porting.export.litert import LITERT_FILES
from vit_porting.export.onnx_serving import VARIANT_FILES
from vit_porting.export.saved_model import ONNX_ATTENTION_FILE, ONNX_FILE
from vit_porting.families.base import VariantSpec
from vit_porting.parity.compare import load_policy
from vit_porting.parity.images import sample_photos, write_parity_inputs
from vit_porting.parity.inputs import random_images
from vit_porting.parity.outputs import read_outputs
from vit_porting.parity.verdict import RuntimeRun, build_report
from vit_porting.pipeline.options import backend_missing
from vit_porting.pipeline.steps import Context, Step
from vit_porting.workers.jobs import (
    LiteRTRunJob,
    OnnxRunJob,
    OnnxVariantsJob,
    ReferenceJob,
    RunFileJob,
    SavedModelJob,
)
from vit_porting.workers.protocol import WorkerError, call


def prepare_inputs(path: Path, spec: VariantSpec, batch: int, seed: int, photos: bool) -> dict:
    """inputs.npz for every runtime: the seeded batch and (optionally) the sample photographs; returns
    what they are, for the report."""
    images = random_images(spec.image_size, batch, seed, spec.config.in_channels)
    described = {"random": {"batch": batch, "seed": seed, "distribution": "N(0,1)"}}
    pics, names = None, None
    if photos and spec.config.in_channels == 3:
        pre = spec.preprocessing
        pics, names = sample_photos(spec.image_size, pre.get("mean"), pre.get("std"))
        described["photos"] = {"source": "scikit-image sample images (skimage.data)", "names": names,
                               "preprocessing": "centre square crop, bicubic resize, mean/std of the variant"}
    write_parity_inputs(path, images, pics, names)
    return described


def describe_inputs(described: dict) -> str:
    text = f"seeded N(0,1) images (batch {described['random']['batch']}, seed {described['random']['seed']})"
    if "photos" in described:
        text += f" + {len(described['photos']['names'])} sample photographs (scikit-image)"
    return text


class Reference(Step):
    """PyTorch fp32 on the CPU (every output, block outputs included, to localise a divergence); it
    also says whether the machine has CUDA, for the next step."""

    def __init__(self, label: str = ""):
        self.title = f"running the PyTorch reference{label}"

    def _job(self, ctx: Context, device: str) -> ReferenceJob:
        return ReferenceJob(spec=ctx.spec.to_dict(), source=str(ctx.source), inputs=str(ctx.inputs),
                            out=str(ctx.work / f"reference{'' if device == 'cpu' else '_' + device}"),
                            intermediates=True, budget_mb=ctx.options.output_budget_mb, device=device)

    def run(self, ctx: Context):
        result = call(self._job(ctx, "cpu"), ctx.work)
        ctx.references["cpu"] = read_outputs(ctx.work / "reference")
        ctx.devices = {"cpu": True, "cuda": result.cuda_available}
        return result


class CudaReference(Reference):
    """The same on CUDA with TF32 off, when there is a GPU: runtimes that run there are held to it."""

    title = "running the PyTorch reference on CUDA (TF32 off)"

    def __init__(self):
        pass

    def applies(self, ctx: Context) -> bool:
        return bool(ctx.devices.get("cuda"))

    def run(self, ctx: Context):
        result = call(self._job(ctx, "cuda"), ctx.work)
        ctx.references["cuda"] = read_outputs(ctx.work / "reference_cuda")
        ctx.devices["cuda_device_name"] = result.device_name
        return result


class KerasFile(Step):
    """model.keras reloaded from disk: compiled (XLA where it works, else a tf.function) or eagerly."""

    def __init__(self, compiled: bool):
        self.compiled = compiled
        self.runtime = "keras_compiled" if compiled else "keras_file"
        self.title = (f"running {self.runtime} (model.keras, jit_compile)" if compiled
                      else f"running {self.runtime} (model.keras reloaded)")

    def applies(self, ctx: Context) -> bool:
        return ctx.options.exports

    def run(self, ctx: Context):
        result = call(RunFileJob(spec=ctx.spec.to_dict(), model=str(ctx.folder / "model.keras"),
                                 inputs=str(ctx.inputs), outputs=str(ctx.work / self.runtime), compiled=self.compiled,
                                 budget_mb=ctx.options.output_budget_mb), ctx.work)
        if self.compiled:
            ctx.log(f"      compiled with {result.mode}"
                    + (f" (XLA failed: {result.xla_error})" if result.xla_error else ""))
        ctx.output_order, ctx.weight_paths = result.output_order, result.weight_paths
        ctx.runs.append(RuntimeRun(self.runtime, "cpu", ctx.work / self.runtime, result.to_json()))
        return result


class KerasBackend(Step):
    """model.keras on another Keras backend: the backend is fixed at import, so each gets its own
    process; one whose package is missing is skipped, and the report says why."""

    def __init__(self, backend: str):
        self.backend, self.runtime = backend, f"keras_{backend}"
        self.title = f"running {self.runtime} (model.keras on Keras' {backend} backend)"

    def applies(self, ctx: Context) -> bool:
        return ctx.options.exports and backend_missing(self.backend) is None

    def run(self, ctx: Context):
        job = RunFileJob(spec=ctx.spec.to_dict(), model=str(ctx.folder / "model.keras"), inputs=str(ctx.inputs),
                         outputs=str(ctx.work / self.runtime), budget_mb=ctx.options.output_budget_mb)
        result = call(job, ctx.work, env={"KERAS_BACKEND": self.backend})
        ctx.runs.append(RuntimeRun(self.runtime, result.device, ctx.work / self.runtime, result.to_json()))
        return result


def skipped_backends(ctx: Context) -> list[dict]:
    """The Keras backends asked for that cannot run here, each with why."""
    return [{"runtime": f"keras_{b}", "device": "any", "reason": backend_missing(b)}
            for b in ctx.options.backends if b != "tensorflow" and backend_missing(b)]


class SavedModel(Step):
    title = "running savedmodel (tf.saved_model.load)"

    def applies(self, ctx: Context) -> bool:
        return ctx.options.exports

    def run(self, ctx: Context):
        result = call(SavedModelJob(saved_model=str(ctx.folder / "saved_model"), inputs=str(ctx.inputs),
                                    outputs=str(ctx.work / "savedmodel"), budget_mb=ctx.options.output_budget_mb),
                      ctx.work)
        ctx.runs.append(RuntimeRun("savedmodel", "cpu", ctx.work / "savedmodel", result.to_json()))
        return result


class OnnxRuntime(Step):
    """model.onnx and model_attention.onnx in ONNX Runtime; on CUDA only where the machine has one, and
    skipped (with the reason in the report) where ONNX Runtime has no CUDA provider."""

    def __init__(self, device: str):
        self.device = device
        self.title = f"running onnxruntime ({'CUDA' if device == 'cuda' else 'CPU'}ExecutionProvider)"

    def applies(self, ctx: Context) -> bool:
        return ctx.options.exports and (self.device == "cpu" or bool(ctx.devices.get("cuda")))

    def run(self, ctx: Context):
        out = ctx.work / ("onnxruntime" if self.device == "cpu" else f"onnxruntime_{self.device}")
        job = OnnxRunJob(model=str(ctx.folder / ONNX_FILE), attention_model=str(ctx.folder / ONNX_ATTENTION_FILE),
                         inputs=str(ctx.inputs), outputs=str(out), device=self.device,
                         budget_mb=ctx.options.output_budget_mb)
        try:
            result = call(job, ctx.work)
        except WorkerError as exc:
            if self.device == "cpu" or not exc.user_error:
                raise
            ctx.log(f"      skipped: {exc.message}")
            ctx.skipped.append({"runtime": "onnxruntime", "device": self.device, "reason": exc.message})
            return None
        ctx.runs.append(RuntimeRun("onnxruntime", self.device, out, result.to_json()))
        return result


class VariantFiles(Step):
    """The reduced-precision ONNX files (ONNX Runtime) or the LiteRT files (ai-edge-litert) the folder
    holds, in their own process, on the parity inputs (head output and photographs)."""

    KINDS = {"onnx": (VARIANT_FILES, "ONNX Runtime", OnnxVariantsJob),
             "litert": (LITERT_FILES, "ai-edge-litert", LiteRTRunJob)}

    def __init__(self, kind: str, planned: bool = False):
        """``planned``: the port writes these files in an earlier step, so they count before they exist."""
        self.kind, self.planned = kind, planned
        files, label, _ = self.KINDS[kind]
        self.title = f"running {', '.join(files)} ({label})"

    def _present(self, ctx: Context) -> dict[str, str]:
        files = self.KINDS[self.kind][0]
        return {name: str(ctx.folder / file) for name, file in files.items() if (ctx.folder / file).is_file()}

    def applies(self, ctx: Context) -> bool:
        return ctx.options.exports and (self.planned or bool(self._present(ctx)))

    def run(self, ctx: Context):
        present = self._present(ctx)
        job_class = self.KINDS[self.kind][2]
        result = call(job_class(files=present, inputs=str(ctx.inputs), outputs=str(ctx.work / "variants"),
                                budget_mb=ctx.options.output_budget_mb), ctx.work)
        ctx.variant_runs += [RuntimeRun(name, "cpu", ctx.work / "variants" / name, result.variants[name])
                             for name in present]
        return result


class Compare(Step):
    """Every runtime against the reference of its device: the verdict."""

    title = "comparing outputs"

    def __init__(self, mapping: str | None, details: dict | None = None):
        self.mapping, self.details = mapping, details or {}

    def run(self, ctx: Context):
        details = {**self.details, "devices": ctx.devices, "inputs_detail": ctx.inputs_detail,
                   "mapping": self.mapping, "skipped": ctx.skipped or None,
                   "roundtrip": ctx.roundtrip, "exports": ctx.exports or None}
        ctx.report = build_report(ctx.spec, ctx.origin, ctx.runs, ctx.references, ctx.output_order,
                                  ctx.weight_paths, self.mapping, load_policy(), variants=ctx.variant_runs,
                                  **details)
        return None


def artifact_steps(ctx: Context, reduced_precision: bool = False) -> list[Step]:
    """Each artifact loaded from disk in its own process, after the reference: model.keras (compiled and
    eager), on each other Keras backend asked for, the SavedModel, ONNX Runtime on CPU (and CUDA), and the
    reduced-precision and LiteRT files (written by this port when ``reduced_precision``, else found)."""
    return [KerasFile(compiled=True), KerasFile(compiled=False),
            *(KerasBackend(b) for b in ctx.options.backends if b != "tensorflow"),
            SavedModel(), OnnxRuntime("cpu"), OnnxRuntime("cuda"),
            VariantFiles("onnx", planned=reduced_precision), VariantFiles("litert", planned=reduced_precision)]
