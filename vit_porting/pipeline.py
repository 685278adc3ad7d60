"""One port, end to end: weights -> Keras -> artifacts -> parity, in per-runtime processes.

This process imports neither torch nor TensorFlow; it starts the workers, compares their
outputs with numpy, and writes the artifact folder under a temporary name that is renamed
into place only when everything in it is complete. A port locks its destination for its
whole length, and removes only what it made (``vit_porting/safety.py``).
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path

import numpy as np

from vit_porting.export.litert import LITERT_FILES
from vit_porting.export.onnx_serving import GRAPH_MARGIN, GRAPHS, VARIANT_FILES
from vit_porting.export.saved_model import ONNX_ATTENTION_FILE, ONNX_FILE
from vit_porting.export.timing import pick
from vit_porting.families.base import VariantSpec
from vit_porting.families.registry import get_family
from vit_porting.manifest import (
    METADATA_NAME,
    PortRecord,
    is_port_folder,
    read_record,
    runtime_versions,
    verify_manifest,
    write_manifest,
    write_record,
)
from vit_porting.mapping.engine import family_mapping
from vit_porting.parity.compare import (
    agreement,
    compare_outputs,
    first_divergent_block,
    load_policy,
    meets_floor,
    tolerance,
)
from vit_porting.parity.images import sample_photos, write_parity_inputs
from vit_porting.parity.inputs import random_images
from vit_porting.parity.outputs import DEFAULT_BUDGET_MB, OutputsView, read_outputs, split_photo_outputs
from vit_porting.parity.report import runtime_summary, write_reports
from vit_porting.publish.card import write_card
from vit_porting.safety import (
    FolderLock,
    describe_os_error,
    make_scratch,
    remove_stale_scratch,
)
from vit_porting.workers.protocol import WorkerError, run_worker

try:  # one version, the package's: pyproject.toml
    TOOLKIT_VERSION = metadata.version("vit-porting")
except metadata.PackageNotFoundError:  # a checkout on PYTHONPATH, never installed
    TOOLKIT_VERSION = "0+unknown"
DEFAULT_ARTIFACTS = Path("artifacts")


class PortError(RuntimeError):
    """A port that stopped; the message says why and what to do."""


@dataclass
class PortOptions:
    weights: str = "pretrained"
    seed: int = 0
    batch: int = 2
    input_seed: int = 0
    out_root: Path = DEFAULT_ARTIFACTS
    force: bool = False
    mapping: str | None = None  # override the family mapping (tests, custom checkpoints)
    exports: bool = True  # SavedModel, .keras, ONNX and their runtimes; False: safetensors + Keras eager only
    photos: bool = True  # also compare on scikit-image's sample photographs (top-1/top-5 agreement)
    new_head: bool = False  # the class count was asked for: replace a checkpoint head of another size
    backends: tuple[str, ...] = ("tensorflow",)  # Keras backends to run model.keras on (each its own process)
    output_budget_mb: float = DEFAULT_BUDGET_MB  # outputs a runtime holds at once (vit_porting/parity/outputs.py)
    serving: str = "auto"  # SavedModel serving graph: "auto" (timed), "xla" or "tf.function" (export/saved_model.py)
    reduced_precision: bool = False  # also int8/fp16 ONNX and LiteRT fp32/fp16/int8 files, checked by agreement
    log: Callable[[str], None] = field(default=lambda msg: print(msg, file=sys.stderr, flush=True))


class _Steps:
    """Numbered progress lines with timings, kept for the report."""

    def __init__(self, total: int, log: Callable[[str], None]):
        self.total, self.log, self.index, self.timings = total, log, 0, {}

    def run(self, name: str, fn: Callable[[], dict]) -> dict:
        self.index += 1
        self.log(f"[{self.index}/{self.total}] {name} ...")
        start = time.perf_counter()
        result = fn()
        seconds = time.perf_counter() - start
        self.timings[name] = {"seconds": round(seconds, 3), "peak_rss_mb": result.get("peak_rss_mb")}
        self.log(f"      done in {seconds:.1f} s" + (f", peak RSS {result['peak_rss_mb']:.0f} MB"
                                                      if result.get("peak_rss_mb") else ""))
        return result


def localise(mapping_path: str | None, spec: VariantSpec, block: str | None, weight_paths: list[str]) -> dict | None:
    """The mapping rules feeding the first diverging block (for the report)."""
    if block is None:
        return None
    mapping = family_mapping(get_family(spec.family), mapping_path, spec.config)
    paths = [p for p in weight_paths if p.startswith(block + "/")]
    rules = mapping.rules_feeding(paths)
    return {"block": block, "rules": [{"line": r.line, "from": r.source, "to": r.target,
                                       "transform": r.transform} for r in rules]}


@dataclass
class RuntimeRun:
    """One runtime's outputs on the parity inputs (or the folder holding them), and what it
    said about itself.

    Runs keep the folder, not the arrays: at 448 px one image's attention maps are 1.9 GB, so the
    report reads one output at a time (``vit_porting/parity/outputs.py``), compares it and lets it go.
    """

    runtime: str
    device: str
    outputs: dict[str, np.ndarray] | Path
    info: dict = field(default_factory=dict)

    def load(self) -> Mapping[str, np.ndarray]:
        return read_outputs(self.outputs) if isinstance(self.outputs, Path) else self.outputs


# what each runtime loads (shown in the report)
KERAS_BACKENDS = {"tensorflow": "tensorflow", "torch": "torch", "jax": "jax"}  # backend -> module it needs
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


def parse_backends(text: str | tuple[str, ...] | list[str]) -> tuple[str, ...]:
    names = tuple(b.strip() for b in (text.split(",") if isinstance(text, str) else text) if b.strip())
    unknown = [b for b in names if b not in KERAS_BACKENDS]
    if unknown:
        raise PortError(f"unknown Keras backend(s) {', '.join(unknown)}; known: {', '.join(KERAS_BACKENDS)}")
    return names or ("tensorflow",)


def backend_missing(backend: str) -> str | None:
    """Why a Keras backend cannot run here (its package is not installed), or None."""
    import importlib.util

    module = KERAS_BACKENDS[backend]
    if importlib.util.find_spec(module) is None:
        extra = " (pip install '.[jax]')" if backend == "jax" else ""
        return f"the {backend} backend needs the {module} package, which is not installed{extra}"
    return None
# the reduced-precision and LiteRT variants: {variant: (file, precision, loaded by)}
VARIANTS = {
    **{name: (file, name.split("_")[1], "ONNX Runtime, CPUExecutionProvider") for name, file in VARIANT_FILES.items()},
    **{name: (file, name.split("_")[1], "ai-edge-litert Interpreter, serving_default signature runner")
       for name, file in LITERT_FILES.items()},
}


# worker result keys worth keeping in the report
_INFO_KEYS = ("mode", "xla_error", "provider", "opset", "device_name", "signature_outputs", "backend", "calls")


def _photo_summary(reference: dict[str, np.ndarray], candidate: dict[str, np.ndarray], device: str,
                   policy: dict) -> dict | None:
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


def build_report(spec: VariantSpec, origin: dict, runtimes: dict[str, dict[str, np.ndarray]] | list[RuntimeRun],
                 reference: dict[str, np.ndarray] | dict[str, dict[str, np.ndarray]], output_order: list[str],
                 weight_paths: list[str], mapping_path: str | None, device: str = "cpu",
                 extra: dict | None = None, variants: list[RuntimeRun] | None = None) -> dict:
    """Compare every runtime with the PyTorch reference of its device.

    ``reference`` is one reference's outputs, or {device: outputs} when runtimes ran on more
    than one device. Outputs under ``photos:<head>`` are the head outputs on the sample
    photographs: compared under the same tolerance, with their own top-1/top-5 agreement.
    A runtime without the diagnostic ``*_out`` outputs (the exported artifacts) is compared
    on the outputs it has; its first diverging block is found from the attention maps.
    ``variants`` (reduced precision, LiteRT) are described by their agreement with the CPU
    reference (``variant_rows``) and do not enter the verdict.
    """
    policy = load_policy()
    if isinstance(runtimes, dict):
        runtimes = [RuntimeRun(name, device, outputs) for name, outputs in runtimes.items()]
    references = reference if all(isinstance(v, Mapping) for v in reference.values()) else {device: reference}
    summaries = []
    for run in runtimes:
        # a backend that found a GPU the PyTorch reference did not see is held to the CPU reference
        ref_main, ref_photos = split_photo_outputs(references.get(run.device, references["cpu"]))
        main, photos = split_photo_outputs(run.load())
        ref_main = OutputsView(ref_main, {k: k for k in ref_main if k in main or not k.endswith("_out")})
        comparisons = compare_outputs(ref_main, main, run.device, policy)
        summary = runtime_summary(run.runtime, run.device, comparisons)
        summary["loads"] = RUNTIME_SOURCES.get(run.runtime, "")
        summary.update({k: run.info[k] for k in _INFO_KEYS if run.info.get(k) is not None})
        photo = _photo_summary(ref_photos, photos, run.device, policy) if ref_photos else None
        if photo:
            summary["photos"] = photo
            if not photo["passed"]:
                summary["passed"] = False
                summary["failing_outputs"].append(f"photos:{photo['output']}")
        if not summary["passed"]:
            block = first_divergent_block(comparisons, output_order)
            summary["localisation"] = localise(mapping_path, spec, block, weight_paths)
        summaries.append(summary)
    devices = sorted(references)
    source_label = get_family(spec.family).source_label
    return {
        "variant": spec.name, "family": spec.family, "config": spec.to_dict()["config"],
        "passed": bool(summaries) and all(s["passed"] for s in summaries),
        "random_weights": bool(origin.get("random_weights")), "origin": origin,
        "reference": f"PyTorch ({source_label}) fp32 on {', '.join(devices)}",
        "source_layout": source_label,
        "inputs": "seeded N(0,1) images", "runtimes": summaries,
        **({"variants": variant_rows(references["cpu"], variants, policy)} if variants else {}),
        "time": datetime.now(timezone.utc).isoformat(timespec="seconds"), "toolkit_version": TOOLKIT_VERSION,
        **(extra or {}),
    }


def _check_destination(final: Path, force: bool) -> None:
    """Refuse, before any work, a destination the port must not replace: any existing folder
    without ``--force``, and with it anything that is not an artifact folder of a port."""
    if not (final.exists() or final.is_symlink()):
        return
    if not force:
        raise PortError(f"{final} already exists; pass --force to replace it")
    if final.is_symlink() or not is_port_folder(final):
        raise PortError(f"{final} is not an artifact folder of a port (no manifest.json of vit-porting); "
                        "--force replaces only those: move it away or choose another --out")


def _prepare_root(root: Path) -> None:
    """The artifacts root exists and is a writable folder, or the port stops naming it."""
    if root.exists() and not root.is_dir():
        raise PortError(f"{root}: the artifacts root (--out) is a file, not a folder")
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise PortError(f"{root}: cannot create the artifacts root (--out): {exc.strerror}") from None
    if not os.access(root, os.W_OK | os.X_OK):
        raise PortError(f"{root}: the artifacts root (--out) is not writable")


def _replace_folder(tmp: Path, final: Path, force: bool) -> None:
    """Rename ``tmp`` into place; a replaced port goes first to a unique hidden name beside it
    (a kill between the two renames leaves it there, never deleted) and is then removed."""
    if final.exists():
        _check_destination(final, force)
        old = final.with_name(f"{tmp.parent.name}.previous")
        final.rename(old)
        tmp.rename(final)
        shutil.rmtree(old, ignore_errors=True)
    else:
        tmp.rename(final)


def _write_inputs(path: Path, spec: VariantSpec, batch: int, seed: int, photos: bool) -> dict:
    """inputs.npz for every runtime: the seeded batch and (optionally) the sample photographs."""
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


def _describe_inputs(described: dict) -> str:
    text = f"seeded N(0,1) images (batch {described['random']['batch']}, seed {described['random']['seed']})"
    if "photos" in described:
        text += f" + {len(described['photos']['names'])} sample photographs (scikit-image)"
    return text


def _run_artifact_runtimes(spec: VariantSpec, folder: Path, inputs: Path, work: Path, steps: _Steps,
                           log: Callable[[str], None], devices: dict,
                           backends: tuple[str, ...] = ("tensorflow",),
                           budget_mb: float = DEFAULT_BUDGET_MB) -> tuple[list[RuntimeRun], dict]:
    """Each artifact loaded from disk in its own process: .keras (compiled and eager),
    SavedModel, ONNX Runtime on CPU; ONNX Runtime on CUDA when the machine has one; and
    model.keras on each other Keras backend asked for (the backend is fixed at import, so
    each gets its own process; one whose package is missing is skipped, and the report says why)."""
    job = {"spec": spec.to_dict(), "inputs": str(inputs), "budget_mb": budget_mb}
    runs, meta = [], {}

    def out(name: str) -> str:
        return str(work / name)

    r = steps.run("running keras_compiled (model.keras, jit_compile)", lambda: run_worker(
        "keras", {**job, "job": "run_file", "model": str(folder / "model.keras"), "compiled": True,
                             "outputs": out("keras_compiled")}, work))
    log(f"      compiled with {r['mode']}" + (f" (XLA failed: {r['xla_error']})" if r.get("xla_error") else ""))
    runs.append(RuntimeRun("keras_compiled", "cpu", Path(out("keras_compiled")), r))
    meta["output_order"], meta["weight_paths"] = r["output_order"], r["weight_paths"]
    r = steps.run("running keras_file (model.keras reloaded)", lambda: run_worker(
        "keras", {**job, "job": "run_file", "model": str(folder / "model.keras"),
                             "outputs": out("keras_file")}, work))
    runs.append(RuntimeRun("keras_file", "cpu", Path(out("keras_file")), r))
    for backend in backends:
        if backend == "tensorflow":
            continue  # keras_compiled and keras_file above
        name = f"keras_{backend}"
        reason = backend_missing(backend)
        if reason:
            log(f"      skipped {name}: {reason}")
            meta.setdefault("skipped", []).append({"runtime": name, "device": "any", "reason": reason})
            continue
        r = steps.run(f"running {name} (model.keras on Keras' {backend} backend)", lambda b=backend, n=name: run_worker(
            "keras", {**job, "job": "run_file", "model": str(folder / "model.keras"),
                                 "outputs": out(n)}, work, env={"KERAS_BACKEND": b}))
        runs.append(RuntimeRun(name, r.get("device", "cpu"), Path(out(name)), r))
    r = steps.run("running savedmodel (tf.saved_model.load)", lambda: run_worker(
        "savedmodel", {**job, "job": "run", "saved_model": str(folder / "saved_model"),
                                  "outputs": out("savedmodel")}, work))
    runs.append(RuntimeRun("savedmodel", "cpu", Path(out("savedmodel")), r))
    onnx_files = {"model": str(folder / ONNX_FILE), "attention_model": str(folder / ONNX_ATTENTION_FILE)}
    r = steps.run("running onnxruntime (CPUExecutionProvider)", lambda: run_worker(
        "onnx", {**job, "job": "run", **onnx_files, "device": "cpu", "outputs": out("onnxruntime")},
        work))
    runs.append(RuntimeRun("onnxruntime", "cpu", Path(out("onnxruntime")), r))
    meta["onnx"] = {k: r.get(k) for k in ("opset", "nodes", "inputs", "checker")}
    if devices.get("cuda"):
        try:
            r = steps.run("running onnxruntime (CUDAExecutionProvider)", lambda: run_worker(
                "onnx", {**job, "job": "run", **onnx_files, "device": "cuda",
                                    "outputs": out("onnxruntime_cuda")}, work))
            runs.append(RuntimeRun("onnxruntime", "cuda", Path(out("onnxruntime_cuda")), r))
        except WorkerError as exc:
            if not exc.user_error:
                raise
            log(f"      skipped: {exc.message}")
            meta.setdefault("skipped", []).append({"runtime": "onnxruntime", "device": "cuda",
                                                   "reason": exc.message})
    meta["variant_runs"] = _run_variants(folder, job, work, steps)
    return runs, meta


def _variant_files(folder: Path) -> dict[str, dict[str, str]]:
    """{worker: {variant: path}} of the reduced-precision ONNX and the LiteRT files in ``folder``."""
    found = {}
    for module, files in (("onnx", VARIANT_FILES), ("litert", LITERT_FILES)):
        present = {name: str(folder / file) for name, file in files.items() if (folder / file).is_file()}
        if present:
            found[module] = present
    return found


def _run_variants(folder: Path, job: dict, work: Path, steps: _Steps) -> list[RuntimeRun]:
    """The variant files the folder has, each kind in its own process (a step each, counted by the
    caller), on the parity inputs (head output and photographs)."""
    runs = []
    for module, present in _variant_files(folder).items():
        label = "ONNX Runtime" if module == "onnx" else "ai-edge-litert"
        r = steps.run(f"running {', '.join(present)} ({label})", lambda m=module, f=present: run_worker(
            m, {**job, "job": "variants" if m == "onnx" else "run", "files": f,
                "outputs": str(work / "variants")}, work))
        runs += [RuntimeRun(name, "cpu", work / "variants" / name, r["variants"][name]) for name in present]
    return runs


def _choose_onnx_graph(folder: Path, inputs: Path, work: Path, steps: _Steps, reference: Mapping[str, np.ndarray],
                       head: str, budget_mb: float) -> tuple[dict, dict[str, str]]:
    """Make the candidate serving graphs of model.onnx (``vit_porting/export/onnx_serving.py``), time them, and
    check each on the parity inputs against the fp32 reference (head output and photographs, the
    fp32 tolerance). Returns the record of the choice, and {graph: path} of the candidates (the
    caller installs the chosen one with ``_install_onnx_graph``). ``standard`` in the record is the
    fastest passing graph in standard ONNX ops: the source of the reduced-precision variants."""
    r = steps.run("choosing model.onnx's serving graph (candidates timed and checked)", lambda: run_worker(
        "onnx", {"job": "optimise", "folder": str(folder), "model": str(folder / ONNX_FILE),
                            "attention_model": str(folder / ONNX_ATTENTION_FILE), "inputs": str(inputs),
                            "outputs": str(work / "onnx_graphs"), "budget_mb": budget_mb}, work))
    policy = load_policy()
    ref_main, ref_photos = split_photo_outputs(reference)
    paths, candidates = {}, {}
    for name, graph in r["graphs"].items():
        candidates[name] = {k: v for k, v in graph.items() if k != "path"}
        if "path" not in graph or not str(graph.get("checker", "")).startswith("passed"):
            continue
        paths[name] = graph["path"]
        main, photos = split_photo_outputs(read_outputs(work / "onnx_graphs" / name))
        (c,) = compare_outputs(OutputsView(ref_main, {head: head}), main, "cpu", policy)
        photo = _photo_summary(ref_photos, photos, "cpu", policy) if ref_photos else None
        candidates[name]["parity"] = {"passed": c.passed and (photo is None or photo["passed"]),
                                      "max_normalized_diff": c.max_normalized_diff,
                                      "photos_max_normalized_diff": photo and photo["max_normalized_diff"],
                                      "tolerance": c.tolerance}
    passing = [g for g in GRAPHS if candidates.get(g, {}).get("parity", {}).get("passed")]
    timing = r["timing"]
    chosen = pick(timing["relative_time"], passing, GRAPH_MARGIN) if passing else "exported"
    standard = [g for g in passing if not candidates[g].get("non_standard_ops")]
    record = {"graph": chosen, "standard": pick(timing["relative_time"], standard, GRAPH_MARGIN) if standard
              else "exported",
              "chosen_by": (f"the fastest within the fp32 tolerance, timed on this machine; a less portable graph "
                            f"must win by {GRAPH_MARGIN:.0%}" if passing
                            else "no candidate passed parity: the exported graph is kept"),
              "timing": timing, "candidates": candidates,
              "checker": candidates[chosen].get("checker"),
              "non_standard_ops": candidates[chosen].get("non_standard_ops", {})}
    return record, paths


def _install_onnx_graph(folder: Path, chosen: str, paths: dict[str, str]) -> None:
    """The chosen candidate renamed to model.onnx; the other candidate files (this port's) removed."""
    for name, path in paths.items():
        if name == "exported":
            continue
        if name == chosen:
            os.replace(path, folder / ONNX_FILE)
        else:
            Path(path).unlink()


def _run_references(spec: VariantSpec, weights: Path, inputs: Path, work: Path, steps: _Steps,
                    label: str, budget_mb: float = DEFAULT_BUDGET_MB) -> tuple[dict[str, Mapping], dict]:
    """PyTorch fp32 reference on the CPU, and on CUDA (TF32 off) when there is one."""
    job = {"spec": spec.to_dict(), "job": "reference", "source": str(weights), "inputs": str(inputs),
           "intermediates": True, "budget_mb": budget_mb}
    cpu = steps.run(f"running the PyTorch reference{label}", lambda: run_worker(
        "torch", {**job, "out": str(work / "reference")}, work))
    references = {"cpu": read_outputs(work / "reference")}
    devices = {"cpu": True, "cuda": bool(cpu.get("cuda_available"))}
    if devices["cuda"]:
        gpu = steps.run("running the PyTorch reference on CUDA (TF32 off)", lambda: run_worker(
            "torch", {**job, "device": "cuda", "out": str(work / "reference_cuda")}, work))
        references["cuda"] = read_outputs(work / "reference_cuda")
        devices["cuda_device_name"] = gpu.get("device_name")
    return references, devices


def _port_into(spec: VariantSpec, options: PortOptions, scratch: Path, final: Path) -> dict:
    """The port's work in ``scratch`` (this process's: artifact/ and work/), ending with
    artifact/ renamed into place as ``final``."""
    log = options.log
    tmp, work = scratch / "artifact", scratch / "work"
    tmp.mkdir()
    work.mkdir()
    extra_backends = len([b for b in options.backends if b != "tensorflow"])
    # source, convert, reference, round trip, compare; with exports ONNX, its serving graph, keras_compiled,
    # keras_file, savedmodel, onnxruntime; with reduced precision, writing and running the ONNX variants
    # and the LiteRT files
    variant_steps = 4 if options.reduced_precision else 0
    steps = _Steps(5 + (6 + extra_backends + variant_steps if options.exports else 0), log)
    log(f"Porting {spec.name} (weights: {options.weights}) into {final}")
    inputs = work / "inputs.npz"
    described = _write_inputs(inputs, spec, options.batch, options.input_seed, options.photos)
    job = {"spec": spec.to_dict()}
    source = work / "source.safetensors"
    src = steps.run("loading source weights (PyTorch)", lambda: run_worker(
        "torch", {**job, "job": "source", "weights": options.weights, "seed": options.seed,
                             "mapping": options.mapping, "new_head": options.new_head, "out": str(source)},
        work))
    origin = src["origin"]
    if origin.get("random_weights"):
        log("      NOTE: random weights: this port proves the conversion, not accuracy")
    exports = {"saved_model_out": str(tmp / "saved_model"), "keras_out": str(tmp / "model.keras")} \
        if options.exports else {}
    conv = steps.run("converting to Keras, running it" + (", writing SavedModel and model.keras"
                                                          if options.exports else ""), lambda: run_worker(
        "keras", {**job, "job": "convert", "source": str(source), "inputs": str(inputs),
                             "outputs": str(work / "keras_eager"), "mapping": options.mapping,
                             "budget_mb": options.output_budget_mb,
                             "source_name": origin["description"], "serving": options.serving,
                             "safetensors_out": str(tmp / "model.safetensors"), **exports}, work))
    if conv.get("exports", {}).get("saved_model"):
        sm = conv["exports"]["saved_model"]
        log(f"      saved_model/ {sm['bytes'] / 1e6:.1f} MB = {sm['size_ratio']:.3f}x the weight bytes")
    references, devices = _run_references(spec, source, inputs, work, steps, "", options.output_budget_mb)
    steps.total += (2 if options.exports else 1) if devices["cuda"] else 0
    roundtrip = steps.run("checking the round trip (Keras -> safetensors -> PyTorch)", lambda: run_worker(
        "torch", {**job, "job": "roundtrip", "source": str(source), "mapping": options.mapping,
                             "candidate": str(tmp / "model.safetensors"), "hub_config_dir": str(tmp),
                             "labels": src.get("labels")}, work))
    runs = [RuntimeRun("keras_eager", "cpu", work / "keras_eager", conv)]
    meta: dict = {}
    if options.exports:
        onnx = steps.run("exporting model.onnx from model.safetensors (PyTorch, dynamo)", lambda: run_worker(
            "torch", {**job, "job": "onnx", "candidate": str(tmp / "model.safetensors"),
                                 "out": str(tmp), "labels": src.get("labels")}, work))
        log(f"      {onnx['nodes']} nodes, opset {onnx['opset']}, {onnx['bytes'] / 1e6:.1f} MB"
            + (" (external data)" if onnx["external_data"] else ""))
        serving, graphs = _choose_onnx_graph(tmp, inputs, work, steps, references["cpu"], spec.head_name,
                                             options.output_budget_mb)
        log(f"      model.onnx: {serving['graph']} graph ({serving['chosen_by'].split(',')[0]})")
        written = {}
        if options.reduced_precision:
            written.update(steps.run("writing model_int8.onnx, model_fp16.onnx (ONNX Runtime)", lambda: run_worker(
                "onnx", {"job": "write_variants", "folder": str(tmp), "source": graphs[serving["standard"]]},
                work))["variants"])
        _install_onnx_graph(tmp, serving["graph"], graphs)
        if options.reduced_precision:
            written.update(steps.run("writing model.tflite, model_fp16.tflite, model_int8.tflite (LiteRT)",
                                     lambda: run_worker("litert", {"job": "convert", "folder": str(tmp),
                                                                              "saved_model": str(tmp / "saved_model")},
                                                        work))["variants"])
        more, meta = _run_artifact_runtimes(spec, tmp, inputs, work, steps, log, devices, options.backends,
                                            options.output_budget_mb)
        runs += more
        meta["exports"] = {**conv["exports"], "onnx": {**{k: v for k, v in onnx.items()
                                                         if k not in ("ok", "peak_rss_mb", "seconds")},
                                                      "serving": serving},
                           **({"variants": written} if written else {})}
    extra = {"roundtrip": {k: roundtrip[k] for k in ("bit_exact", "strict_load", "num_tensors", "mismatched",
                                                      "not_compared", "not_compared_reasons") if k in roundtrip},
             "devices": devices, "inputs_detail": described, "mapping": options.mapping,
             "options": {"batch": options.batch, "input_seed": options.input_seed, "photos": options.photos,
                         "output_budget_mb": options.output_budget_mb},
             **{k: v for k, v in meta.items() if k in ("exports", "skipped")}}
    report = steps.run("comparing outputs", lambda: build_report(
        spec, origin, runs, references, conv["output_order"], conv["weight_paths"], options.mapping,
        extra=extra, variants=meta.get("variant_runs")))
    shutil.rmtree(work)
    write_record(tmp, PortRecord(spec, origin, src.get("labels")))
    _finish(report, tmp, spec, origin, described, steps, roundtrip)
    _replace_folder(tmp, final, options.force)
    return report
def _finish(report: dict, folder: Path, spec: VariantSpec, origin: dict, described: dict, steps: _Steps,
            roundtrip: dict | None) -> None:
    """The end both a port and a re-check share: the verdict (a round trip that was not
    bit-exact fails it), then parity.json/.md, the card, and the manifest last, since it lists
    every other file."""
    report["inputs"] = _describe_inputs(described)
    if roundtrip and not roundtrip.get("bit_exact"):
        report["passed"] = False
    report["steps"] = steps.timings
    write_reports(report, folder)
    versions = runtime_versions(TOOLKIT_VERSION, get_family(spec.family).reference_libraries)
    write_card(folder, versions=versions)
    write_manifest(folder, spec.name, spec.family, origin, report["passed"], TOOLKIT_VERSION, versions=versions,
                   exports=report.get("exports"))


def port(spec: VariantSpec, options: PortOptions) -> dict:
    """Port ``spec`` into ``options.out_root/<variant>``; returns the parity report.

    Writes model.safetensors, and with ``options.exports`` saved_model/, model.keras and
    model.onnx, each then loaded from disk by its own runtime process and compared with the
    PyTorch reference; then parity.json/.md, vit_porting.json and manifest.json. Raises PortError
    (nothing written) when the weights or the mapping are refused, or the destination exists
    (without ``force``), is not a port's folder, or is being ported by another process.
    """
    log, start = options.log, time.perf_counter()
    final = options.out_root / spec.name
    _check_destination(final, options.force)  # before any work
    _prepare_root(options.out_root)
    with FolderLock(final, f"vit-port port {spec.name}"):
        _check_destination(final, options.force)  # a port that held the lock may have just finished
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
    _log_verdict(log, report, final, start)
    return report


def _log_verdict(log: Callable[[str], None], report: dict, folder: Path, start: float) -> None:
    minutes, seconds = divmod(round(time.perf_counter() - start), 60)
    took = f"{minutes} min {seconds} s" if minutes else f"{seconds} s"
    log(f"Parity {'PASSED' if report['passed'] else 'FAILED'} in {took}: {folder / 'parity.md'}")


def recheck(folder: Path | str, log: Callable[[str], None] | None = None,
            backends: tuple[str, ...] = ("tensorflow",)) -> dict:
    """Re-run parity on an existing artifact folder without converting anything: the PyTorch
    reference loads its model.safetensors, every other runtime its artifact on disk. Rewrites
    parity.json/.md and the manifest (verdict and checksums); returns the report."""
    log = log or PortOptions().log
    folder = Path(folder)
    start = time.perf_counter()
    if not (folder / METADATA_NAME).exists():
        raise PortError(f"{folder} has no {METADATA_NAME}; port it first (vit-port port <variant>)")
    with FolderLock(folder, f"vit-port parity {folder.name}"):  # a port --force must not replace it meanwhile
        report = _recheck(folder, log, backends)
    _log_verdict(log, report, folder, start)
    return report


def _recheck(folder: Path, log: Callable[[str], None], backends: tuple[str, ...]) -> dict:
    variant = folder.name
    problems = [p for p in verify_manifest(folder) if not p.startswith(("parity.json", "parity.md"))]
    if problems:
        raise PortError(f"{folder} does not match its manifest ({len(problems)} problems):\n  "
                        + "\n  ".join(problems))
    record = read_record(folder)
    spec, origin = record.spec, record.origin
    previous = json.loads((folder / "parity.json").read_text()) if (folder / "parity.json").exists() else {}
    settings = {"batch": 2, "input_seed": 0, "photos": True, "output_budget_mb": DEFAULT_BUDGET_MB,
                **previous.get("options", {})}
    missing = [n for n in ("model.safetensors", "model.keras", "saved_model", ONNX_FILE, ONNX_ATTENTION_FILE)
               if not (folder / n).exists()]
    if missing:
        raise PortError(f"{folder} lacks {', '.join(missing)}; port it again with exports")
    remove_stale_scratch(folder.parent)
    work = make_scratch(folder.parent, f"{variant}.parity")
    steps = _Steps(6 + len([b for b in backends if b != "tensorflow"]) + len(_variant_files(folder)), log)
    log(f"Re-checking {folder} (no conversion: the artifacts on disk against PyTorch on model.safetensors)")
    try:
        inputs = work / "inputs.npz"
        described = _write_inputs(inputs, spec, settings["batch"], settings["input_seed"], settings["photos"])
        references, devices = _run_references(spec, folder / "model.safetensors", inputs, work, steps,
                                              " on model.safetensors", settings["output_budget_mb"])
        steps.total += 2 if devices["cuda"] else 0
        runs, meta = _run_artifact_runtimes(spec, folder, inputs, work, steps, log, devices, backends,
                                            settings["output_budget_mb"])
        extra = {"devices": devices, "inputs_detail": described, "mapping": previous.get("mapping"),
                 "options": settings, "recheck": True,
                 **{k: previous[k] for k in ("roundtrip", "exports") if k in previous},
                 **{k: v for k, v in meta.items() if k == "skipped"}}
        report = steps.run("comparing outputs", lambda: build_report(
            spec, origin, runs, references, meta["output_order"], meta["weight_paths"], previous.get("mapping"),
            extra=extra, variants=meta.get("variant_runs")))
        _finish(report, folder, spec, origin, described, steps, previous.get("roundtrip"))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return report
