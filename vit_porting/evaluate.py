"""``vit-port eval``: top-1 / top-5 of each runtime's artifact on a labelled image folder.

This process imports neither torch nor TensorFlow. It lists the images, preprocesses each
once (``vit_porting.parity.images.resize_and_crop``: the variant's own transform, timm's arithmetic, in
PIL) into one uint8 array on disk, and starts one worker per runtime (``vit_porting.workers.run_eval``)
that normalises those same pixels batch by batch and writes its logits. Every runtime
therefore sees identical inputs, and a top-1 disagreement is the runtimes', not the data's.

Layouts of ``DATA``:

- class subfolders, ``DATA/<class>/<image>`` (torchvision/timm ImageFolder): the class index
  is the subfolder's position in sorted order, or its entry in ``class_map``;
- flat files with a labels file (ImageNet-val style): lines ``<file> <label>`` (whitespace or
  comma separated; file relative to DATA), where the label is an integer class index or a
  class name looked up in ``class_map``.

``class_map``: a JSON object ``{name: index}``, or a text file with one class name per line
(index = line number, e.g. the 1000 sorted ImageNet wnids).

Reports go to ``<artifact folder>/eval/`` (eval.json, eval.md): outputs written after the
port, which the manifest documents and ``verify`` leaves out (vit_porting/manifest.py).
"""

from __future__ import annotations

import json
import shutil
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from vit_porting import __version__
from vit_porting.families.base import VariantSpec
from vit_porting.manifest import EVAL_DIR, PortRecord, read_record, verify_manifest
from vit_porting.parity.images import resize_and_crop, resolve_preprocessing
from vit_porting.safety import make_scratch, write_text_atomic
from vit_porting.workers.jobs import PredictJob, PredictResult
from vit_porting.workers.protocol import call
from vit_porting.workers.run_eval import RUNTIMES

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".ppm", ".tif", ".tiff", ".gif")
# what each runtime loads, relative to the artifact folder
RUNTIME_FILES = {"pytorch": "model.safetensors", "keras": "model.keras", "savedmodel": "saved_model",
                 "onnxruntime": "model.onnx"}
RUNTIME_LOADS = {
    "pytorch": "model.safetensors loaded strictly into the PyTorch reference model (timm / transformers)",
    "keras": "model.keras (keras.saving.load_model), head output, tf.function",
    "savedmodel": "saved_model/ via tf.saved_model.load, signature serving_default",
    "onnxruntime": "model.onnx in ONNX Runtime, CPUExecutionProvider",
}


class EvalError(RuntimeError):
    """An evaluation that cannot start; the message says why."""


@dataclass
class Dataset:
    root: Path
    layout: str  # "class_folders" or "labels_file"
    files: list[str]  # relative to root, posix
    labels: np.ndarray  # int64 class index per file
    classes: dict[str, int]  # class name -> index (names seen in the data, or the class map)
    source: dict = field(default_factory=dict)


def _is_image(path: Path) -> bool:
    return path.is_file() and path.suffix.lower() in IMAGE_EXTENSIONS and not path.name.startswith(".")


def read_class_map(path: Path | str) -> dict[str, int]:
    """{name: index} from a JSON object or a text file of names (index = line number)."""
    path = Path(path)
    text = path.read_text()
    if path.suffix.lower() == ".json":
        data = json.loads(text)
        if isinstance(data, list):
            return {str(name): i for i, name in enumerate(data)}
        return {str(k): int(v) for k, v in data.items()}
    names = [line.strip() for line in text.splitlines() if line.strip() and not line.startswith("#")]
    return {name.split()[0]: i for i, name in enumerate(names)}


def model_class_map(labels: dict | None) -> dict[str, int]:
    """The names a dataset may use for the model's classes: WordNet synsets (``n01440764``, the
    ImageNet folder names), full descriptions and their first name (``tench``), any case."""
    cmap: dict[str, int] = {}
    for index, (name, description) in enumerate(zip(labels["names"], labels["descriptions"], strict=True)):
        for key in (name, description, description.split(",")[0]):
            cmap.setdefault(key.strip().lower(), index)
    return cmap


def _label(value: str, class_map: dict[str, int] | None, where: str) -> int:
    if class_map and value in class_map:
        return class_map[value]
    try:
        return int(value)
    except ValueError:
        raise EvalError(f"{where}: label {value!r} is neither an integer nor a name in the class map") from None


_CLASS_MAP_HINT = ("pass --class-map FILE: a JSON object {\"folder\": class index} or a text file of class names, "
                   "one per line in index order")


def discover(data: Path | str, class_map: Path | str | None = None, labels: Path | str | None = None,
             model_labels: dict | None = None) -> Dataset:
    """The images of ``data`` and their class indices (layouts: see the module docstring).

    Without a class map, class folders are matched to ``model_labels`` (the model's class names)
    by name; a model without class names (a head of its own) takes them in sorted order, the
    ImageFolder convention. Folders that name no class of the model are refused: scoring them
    by their position would compare against the wrong classes."""
    root = Path(data)
    if not root.is_dir():
        raise EvalError(f"{root}: not a folder of images")
    cmap = read_class_map(class_map) if class_map else None
    if labels is not None:
        entries = []
        for number, line in enumerate(Path(labels).read_text().splitlines(), 1):
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            parts = line.replace(",", " ").split()
            if len(parts) != 2:
                raise EvalError(f"{labels}:{number}: expected '<file> <label>', got {line!r}")
            rel, value = parts
            if not _is_image(root / rel):
                raise EvalError(f"{labels}:{number}: {root / rel} is not an image file")
            entries.append((Path(rel).as_posix(), _label(value, cmap, f"{labels}:{number}")))
        if not entries:
            raise EvalError(f"{labels}: no labelled images")
        files, targets = zip(*entries, strict=True)
        names = cmap or {str(t): t for t in sorted(set(targets))}
        return Dataset(root, "labels_file", list(files), np.asarray(targets, np.int64), names,
                       {"labels_file": str(labels), "class_map": str(class_map) if class_map else None})
    folders = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not folders:
        raise EvalError(f"{root}: no class subfolders; for a flat folder pass a labels file (--labels FILE)")
    mapping_source = str(class_map) if class_map else None
    if cmap is None and model_labels:
        names = model_class_map(model_labels)
        unknown = [f for f in folders if f.lower() not in names]
        if unknown:
            shown = ", ".join(unknown[:3]) + (" ..." if len(unknown) > 3 else "")
            example = model_labels["descriptions"][0].split(",")[0]
            raise EvalError(f"{root}: subfolders {shown} are not class names of the model ({model_labels['set']}: "
                            f"synsets such as {model_labels['names'][0]} or names such as {example!r}); "
                            + _CLASS_MAP_HINT)
        cmap = {f: names[f.lower()] for f in folders}
        mapping_source = f"folder names matched to the model's {model_labels['set']} class names"
    elif cmap is None:
        cmap = {name: i for i, name in enumerate(folders)}
        mapping_source = "sorted subfolder names (the model has no class names)"
    else:
        unknown = [f for f in folders if f not in cmap]
        if unknown:
            raise EvalError(f"{root}: subfolders not in the class map {class_map}: {', '.join(unknown[:5])}")
    files, targets = [], []
    for name in folders:
        for path in sorted(p for p in (root / name).rglob("*") if _is_image(p)):
            files.append(path.relative_to(root).as_posix())
            targets.append(cmap[name])
    if not files:
        raise EvalError(f"{root}: no images ({', '.join(IMAGE_EXTENSIONS)}) in its subfolders")
    return Dataset(root, "class_folders", files, np.asarray(targets, np.int64), cmap, {"class_map": mapping_source})


def spec_preprocessing(spec: VariantSpec) -> dict:
    """The transform each checkpoint was trained with: the variant's timm-style data config
    (its family declares crop mode and size), with every field the transform reads filled in."""
    return resolve_preprocessing(spec.preprocessing, spec.image_size)


def prepare_pixels(dataset: Dataset, preprocessing: dict, out: Path, progress: bool = True) -> np.ndarray:
    """uint8 (N, size, size, 3) at ``out`` (.npy, memory-mapped): each image decoded and
    resized/cropped once, read by every runtime."""
    from tqdm import tqdm

    size = preprocessing["input_size"]
    pixels = np.lib.format.open_memmap(out, mode="w+", dtype=np.uint8, shape=(len(dataset.files), size, size, 3))
    for i, rel in enumerate(tqdm(dataset.files, desc="preprocessing", unit="img", disable=not progress,
                                 file=sys.stderr)):
        try:
            pixels[i] = resize_and_crop(dataset.root / rel, preprocessing)
        except (OSError, ValueError) as exc:
            raise EvalError(f"{dataset.root / rel}: cannot be read as an image ({exc})") from None
    pixels.flush()
    return pixels


def _run_with_progress(job: PredictJob, work: Path, total: int, desc: str, progress: bool) -> PredictResult:
    """The job in a thread; the bar follows the count the worker writes after each batch."""
    from tqdm import tqdm

    result: dict = {}

    def target():
        try:
            result["value"] = call(job, work)
        except BaseException as exc:  # re-raised in the caller's thread
            result["error"] = exc

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    counter = Path(job.progress)
    with tqdm(total=total, desc=desc, unit="img", disable=not progress, file=sys.stderr) as bar:
        while thread.is_alive():
            thread.join(0.5)
            try:
                done = int(counter.read_text())
            except (OSError, ValueError):
                continue
            bar.update(done - bar.n)
        if "value" in result:
            bar.update(total - bar.n)
    if "error" in result:
        raise result["error"]
    return result["value"]


def topk(logits: np.ndarray, k: int = 5) -> np.ndarray:
    """Indices of the k largest logits per row, largest first (ties: lower index first)."""
    k = min(k, logits.shape[-1])
    chunks = [np.argsort(-logits[i:i + 4096], axis=-1, kind="stable")[:, :k] for i in range(0, len(logits), 4096)]
    return np.concatenate(chunks) if chunks else np.zeros((0, k), np.int64)


def softmax(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


def summarise(logits: dict[str, np.ndarray], labels: np.ndarray, files: list[str], worst: int = 10) -> dict:
    """Accuracy per runtime and where the runtimes disagree. The first runtime is the reference
    for the logit differences."""
    names = list(logits)
    reference = names[0]
    per_runtime, top1 = {}, {}
    for name, out in logits.items():
        tk = topk(out, 5)
        top1[name] = tk[:, 0]
        hit1 = tk[:, 0] == labels
        hit5 = (tk == labels[:, None]).any(axis=1)
        per_runtime[name] = {"top1": float(hit1.mean()), "top5": float(hit5.mean()),
                             "correct_top1": int(hit1.sum()), "correct_top5": int(hit5.sum())}
    stacked = np.stack([top1[n] for n in names])
    disagree = (stacked != stacked[0]).any(axis=0)
    diffs = np.zeros(len(labels), np.float64)
    pairwise = {}
    for name in names[1:]:
        # per image, in chunks (50k x 1000 logits are 200 MB a runtime)
        delta = np.concatenate([np.abs(logits[name][i:i + 4096] - logits[reference][i:i + 4096]).max(axis=-1)
                                for i in range(0, len(labels), 4096)]).astype(np.float64)
        diffs = np.maximum(diffs, delta)
        pairwise[f"{name} vs {reference}"] = {
            "top1_agreement": float((top1[name] == top1[reference]).mean()),
            "top1_disagreements": int((top1[name] != top1[reference]).sum()),
            "max_abs_logit_diff": float(delta.max()), "mean_image_max_abs_logit_diff": float(delta.mean())}
    # top-1 disagreements first, then the largest logit differences
    order = sorted(range(len(labels)), key=lambda i: (not disagree[i], -diffs[i]))[:worst]
    worst_rows = []
    for i in order:
        probs = {n: softmax(logits[n][i:i + 1].astype(np.float64))[0] for n in names}
        worst_rows.append({"image": files[i], "label": int(labels[i]), "top1_disagree": bool(disagree[i]),
                           "max_abs_logit_diff": float(diffs[i]), "top1": {n: int(top1[n][i]) for n in names},
                           "top1_prob": {n: round(float(probs[n][top1[n][i]]), 6) for n in names}})
    return {"runtimes": per_runtime,
            "agreement": {"reference": reference, "top1_disagreements": int(disagree.sum()),
                          "images_all_agree": int((~disagree).sum()), "pairwise": pairwise,
                          "worst": worst_rows}}


@dataclass
class EvalOptions:
    runtimes: list[str] | None = None  # None: every runtime whose artifact is in the folder
    batch: int = 32
    limit: int | None = None  # evaluate the first N images only
    class_map: str | None = None
    labels: str | None = None
    worst: int = 10
    progress: bool = True
    verify: bool = True  # refuse a folder that no longer matches its manifest
    log: Callable[[str], None] = field(default=lambda msg: print(msg, file=sys.stderr, flush=True))


def load_record(folder: Path) -> PortRecord:
    try:
        return read_record(folder)
    except FileNotFoundError as exc:
        raise EvalError(f"{exc} (vit-port port <variant> writes it)") from None


def _runtimes(folder: Path, asked: list[str] | None) -> list[str]:
    """The runtimes to evaluate: those asked for (each file present), else every one whose file is there."""
    if not asked:
        found = [r for r in RUNTIMES if (folder / RUNTIME_FILES[r]).exists()]
        if not found:
            raise EvalError(f"{folder} holds no model file ({', '.join(RUNTIME_FILES.values())})")
        return found
    unknown = [r for r in asked if r not in RUNTIMES]
    if unknown:
        raise EvalError(f"unknown runtime(s) {', '.join(unknown)}; choose from {', '.join(RUNTIMES)}")
    missing = [r for r in asked if not (folder / RUNTIME_FILES[r]).exists()]
    if missing:
        raise EvalError(f"{folder} lacks {', '.join(RUNTIME_FILES[r] for r in missing)} for "
                        f"{', '.join(missing)}; port with exports, or choose RUNTIMES=")
    return list(dict.fromkeys(asked))


def _check_labels(spec: VariantSpec, dataset: Dataset) -> None:
    num_classes = spec.config.num_classes
    if num_classes <= 0:
        raise EvalError(f"{spec.name} has no classifier (num_classes {num_classes}); nothing to score")
    if dataset.labels.min() < 0 or dataset.labels.max() >= num_classes:
        raise EvalError(f"labels run {dataset.labels.min()}..{dataset.labels.max()}; "
                        f"{spec.name} has {num_classes} classes")


def _predict(folder: Path, spec: VariantSpec, dataset: Dataset, pre: dict, runtimes: list[str],
             options: EvalOptions) -> tuple[dict[str, np.ndarray], dict[str, PredictResult], float]:
    """Each runtime's logits on the images prepared once; what each worker said; the preparation's seconds."""
    work = make_scratch(folder.parent, f"{folder.name}.eval")
    try:
        start = time.perf_counter()
        prepare_pixels(dataset, pre, work / "pixels.npy", options.progress)
        prep_seconds = time.perf_counter() - start
        logits, results = {}, {}
        for runtime in runtimes:
            job = PredictJob(runtime=runtime, spec=spec.to_dict(), model=str(folder / RUNTIME_FILES[runtime]),
                             pixels=str(work / "pixels.npy"), mean=pre["mean"], std=pre["std"], batch=options.batch,
                             out=str(work / f"{runtime}.npy"), progress=str(work / f"{runtime}.progress"))
            results[runtime] = _run_with_progress(job, work, len(dataset.files), runtime, options.progress)
            logits[runtime] = np.load(work / f"{runtime}.npy")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return logits, results, prep_seconds


def _runtime_row(runtime: str, result: PredictResult) -> dict:
    info = result.info
    return {"loads": RUNTIME_LOADS[runtime], "seconds": round(result.seconds, 3),
            "load_seconds": round(info["load_seconds"], 3), "run_seconds": round(info["run_seconds"], 3),
            "warmup_seconds": round(info["warmup_seconds"], 3),
            "images_per_second": (round(info["timed_images"] / info["timed_seconds"], 2) if info["timed_images"]
                                  else None),
            "peak_rss_mb": round(result.peak_rss_mb, 1),
            "versions": {k: v for k, v in info.items() if k in ("torch", "keras", "tensorflow", "onnxruntime")}}


def evaluate(folder: Path | str, data: Path | str, options: EvalOptions | None = None) -> dict:
    """Evaluate the artifacts of ``folder`` on ``data``; writes folder/eval/eval.json and
    eval.md and returns the eval.json content."""
    options = options or EvalOptions()
    folder = Path(folder)
    record = load_record(folder)
    spec, origin = record.spec, record.origin
    if options.verify:
        problems = verify_manifest(folder)
        if problems:
            raise EvalError(f"{folder} does not match its manifest:\n  " + "\n  ".join(problems[:10]))
    runtimes = _runtimes(folder, options.runtimes)
    dataset = discover(data, options.class_map, options.labels, record.labels)
    if options.limit:
        dataset.files, dataset.labels = dataset.files[:options.limit], dataset.labels[:options.limit]
    _check_labels(spec, dataset)
    pre = spec_preprocessing(spec)
    options.log(f"Evaluating {folder} on {len(dataset.files)} images of {dataset.root} ({dataset.layout}); "
                f"runtimes: {', '.join(runtimes)}")
    logits, results, prep_seconds = _predict(folder, spec, dataset, pre, runtimes, options)
    summary = summarise(logits, dataset.labels, dataset.files, options.worst)
    for row in summary["agreement"]["worst"]:
        row["label_name"] = record.label(row["label"])
        row["top1_name"] = {n: record.label(i) for n, i in row["top1"].items()}
    for runtime in runtimes:
        summary["runtimes"][runtime].update(_runtime_row(runtime, results[runtime]))
    report = {
        "variant": spec.name, "family": spec.family, "artifact_folder": str(folder),
        "random_weights": bool(origin.get("random_weights")), "origin": origin,
        "class_names": (record.labels or {}).get("set"),
        "dataset": {"path": str(dataset.root), "layout": dataset.layout, "num_images": len(dataset.files),
                    "num_classes_in_data": int(len(np.unique(dataset.labels))), "limit": options.limit,
                    **dataset.source},
        "preprocessing": {**pre, "implementation": "vit_porting.parity.images.resize_and_crop + normalize "
                                                   "(PIL, numpy), done once and shared by every runtime",
                          "seconds": round(prep_seconds, 3)},
        "batch": options.batch,
        **summary,
        "time": datetime.now(timezone.utc).isoformat(timespec="seconds"), "toolkit_version": __version__,
    }
    out = folder / EVAL_DIR
    out.mkdir(exist_ok=True)
    write_text_atomic(out / "eval.json", json.dumps(report, indent=1) + "\n")
    write_text_atomic(out / "eval.md", render_markdown(report))
    options.log(f"Wrote {out / 'eval.json'} and {out / 'eval.md'}")
    return report


def render_markdown(report: dict) -> str:
    ds, pre, agree = report["dataset"], report["preprocessing"], report["agreement"]
    lines = [f"# Evaluation of {report['variant']}", ""]
    if report["random_weights"]:
        lines += ["**Random weights: the accuracy below is meaningless; the runtimes' agreement is what "
                  "this run checks.**", ""]
    lines += [f"- data: `{ds['path']}` ({ds['layout'].replace('_', ' ')}), {ds['num_images']} images, "
              f"{ds['num_classes_in_data']} classes" + (f" (first {ds['limit']} only)" if ds.get("limit") else ""),
              f"- preprocessing: {pre['interpolation']} resize to {pre['scale_size']} px "
              f"({'short side' if pre['crop_mode'] == 'center' else 'both sides'}), centre crop "
              f"{pre['input_size']} px (crop_pct {pre['crop_pct']}), mean {pre['mean']}, std {pre['std']}; "
              "done once, the same pixels for every runtime",
              f"- {report['time']}, toolkit {report['toolkit_version']}", "",
              "| runtime | top-1 | top-5 | images/s (after the first batch) | loads |", "|---|---|---|---|---|"]
    for name, r in report["runtimes"].items():
        lines.append(f"| {name} | {100 * r['top1']:.2f} % ({r['correct_top1']}) | {100 * r['top5']:.2f} % "
                     f"({r['correct_top5']}) | {r.get('images_per_second') or '— (one batch)'} | "
                     f"{r.get('loads', '')} |")
    lines += ["", f"Images on which the runtimes disagree about top-1: **{agree['top1_disagreements']}** of "
              f"{ds['num_images']} (logit differences against `{agree['reference']}`).", ""]
    if agree["pairwise"]:
        lines += ["| pair | top-1 agreement | max abs logit diff |", "|---|---|---|"]
        lines += [f"| {pair} | {100 * p['top1_agreement']:.2f} % ({p['top1_disagreements']} differ) | "
                  f"{p['max_abs_logit_diff']:.3g} |" for pair, p in agree["pairwise"].items()]
        lines.append("")
    if agree["worst"]:
        names = list(report["runtimes"])
        lines += ["Worst disagreements (top-1 disagreements first, then the largest logit difference):", "",
                  "| image | label | " + " | ".join(f"{n} top-1 (p)" for n in names) + " | max abs logit diff |",
                  "|---|---|" + "---|" * len(names) + "---|"]
        for w in agree["worst"]:
            cells = " | ".join(f"{w['top1'][n]} {w['top1_name'][n]} ({w['top1_prob'][n]:.3f})" for n in names)
            mark = " **differs**" if w["top1_disagree"] else ""
            lines.append(f"| `{w['image']}`{mark} | {w['label']} {w['label_name']} | {cells} "
                         f"| {w['max_abs_logit_diff']:.3g} |")
        lines.append("")
    return "\n".join(lines)
