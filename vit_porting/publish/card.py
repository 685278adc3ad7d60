"""Model card (README.md of an artifact folder) from its vit_porting.json, parity.json and manifest.

The card is what the Hugging Face Hub shows for a repo: YAML front matter the Hub reads
(library_name, tags, license, datasets, pipeline_tag), then what the model is, where its
weights come from, the preprocessing, the parity table of the port, and a usage snippet per
format. Every ```python block runs as written in a folder holding the artifacts (the tests
execute each one); downloads are ```bash blocks.

stdlib + yaml only: it runs in the orchestrating process, which imports no framework.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path

import yaml

from vit_porting.families.base import VariantSpec
from vit_porting.families.registry import get_family
from vit_porting.manifest import (
    EVAL_DIR,
    MANIFEST_NAME,
    METADATA_NAME,
    PortRecord,
    file_table,
    read_record,
    runtime_versions,
)
from vit_porting.parity.images import resolve_preprocessing
from vit_porting.parity.report import fmt_float, fmt_share, serving_lines, variants_table
from vit_porting.publish.forms import FORMATS, SAFETENSORS_FILE, Format, withheld_files

CARD_NAME = "README.md"
RANDOM_LINE = ("> **RANDOM WEIGHTS: not a trained model.** This port was made from randomly initialised "
               "weights to prove the conversion; its predictions are meaningless.")

_HUB_LICENSES = {"apache-2.0", "mit", "bsd-3-clause", "cc-by-4.0", "cc-by-nc-4.0", "other"}
# Kaggle Models' license names for the Hub ids above (kagglehub.model_upload(license_name=...))
KAGGLE_LICENSES = {"apache-2.0": "Apache 2.0", "mit": "MIT", "bsd-3-clause": "BSD-3-Clause",
                   "cc-by-4.0": "CC BY 4.0", "cc-by-nc-4.0": "CC BY-NC 4.0"}


def hub_license(spec: VariantSpec) -> str:
    """The Hub license id of the variant ('apache-2.0 (...)' -> 'apache-2.0'; unknown -> 'other')."""
    first = (spec.license or "").split(" ", 1)[0].strip().lower()
    return first if first in _HUB_LICENSES else "other"


def _is_random(report: dict, origin: dict, manifest: dict | None) -> bool:
    return bool(report.get("random_weights") or origin.get("random_weights")
                or ((manifest or {}).get("origin") or {}).get("random_weights"))


def forms_present(report: dict) -> list[Format]:
    """The forms a port has: every fp32 form, and LiteRT where it wrote (and may publish) LiteRT files."""
    withheld = withheld_files(report)
    litert = {row["file"] for row in report.get("variants") or []
              if row["file"] in FORMATS["litert"].files and row["file"] not in withheld}
    return [f for key, f in FORMATS.items() if key != "litert" or litert]


def front_matter(record: PortRecord, random: bool, fmt: Format | None = None, evaluation: dict | None = None,
                 forms: list[Format] | None = None) -> dict:
    """The Hub's metadata. ``library_name`` names only a loader the tests run on what is published:
    Keras for the Keras form, the reference library (timm) for the PyTorch form where the family
    writes its config; ``tags`` likewise (of ``fmt``, else of ``forms``: by default every fp32 form)."""
    spec, origin = record.spec, record.origin
    head = spec.config.num_classes > 0
    family = get_family(spec.family)
    pipeline = "image-classification" if head else "image-feature-extraction"
    forms = [fmt] if fmt else (forms or [f for key, f in FORMATS.items() if key != "litert"])
    library_tag = family.presentation.library_tag
    library = {"keras": "keras", "pytorch": library_tag or None}.get(fmt.key) if fmt else "keras"
    meta = {**({"library_name": library} if library else {}), "pipeline_tag": pipeline, "license": hub_license(spec),
            "tags": [pipeline, "vision-transformer", spec.family, *(t for f in forms for t in f.tags),
                     *([library_tag] if library_tag and (fmt is None or fmt.key == "pytorch") else []),
                     "vit-porting"]}
    if meta["license"] == "other":
        meta["license_name"] = "see-model-card"
    if random:
        meta["tags"].append("random-weights")
        return meta
    if spec.datasets:
        meta["datasets"] = list(spec.datasets)
    if origin.get("kind") == "pretrained" and family.hub_repo(spec):
        meta["base_model"] = family.hub_repo(spec)
    if evaluation:
        meta["model-index"] = model_index(spec, evaluation, fmt)
    return meta


# the eval runtime whose scores a form's card reports (eval/eval.json)
_EVAL_RUNTIME = {"keras": "keras", "savedmodel": "savedmodel", "onnx": "onnxruntime", "pytorch": "pytorch",
                 "litert": "litert"}


def model_index(spec: VariantSpec, evaluation: dict, fmt: Format | None) -> list[dict]:
    """The Hub's ``model-index`` from ``vit-port eval``: top-1/top-5 of this form's runtime on the
    evaluated data (the PyTorch reference's on the artifact folder's card)."""
    runtimes = evaluation["runtimes"]
    runtime = _EVAL_RUNTIME[fmt.key] if fmt and _EVAL_RUNTIME[fmt.key] in runtimes else next(iter(runtimes))
    scores, data = runtimes[runtime], evaluation["dataset"]
    name = Path(data["path"]).name
    return [{"name": spec.name, "results": [{
        "task": {"type": "image-classification", "name": "Image Classification"},
        "dataset": {"name": name, "type": name},
        "metrics": [{"type": "accuracy", "name": f"top-1 accuracy ({runtime}, {data['num_images']} images)",
                     "value": round(100 * scores["top1"], 2)},
                    {"type": "accuracy", "name": f"top-5 accuracy ({runtime}, {data['num_images']} images)",
                     "value": round(100 * scores["top5"], 2)}]}]}]


def parity_table(report: dict) -> list[str]:
    lines = ["| runtime | device | verdict | max abs diff | max normalised diff | tolerance | top-1 agreement "
             "| top-5 agreement | photos: top-1 | attention maps (worst normalised diff) |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in report.get("runtimes", []):
        head = next((o for o in r.get("outputs", []) if o.get("output") == r.get("head_output")), {})
        photos = r.get("photos") or {}
        lines.append(
            f"| {r['runtime']} | {r['device']} | {'pass' if r['passed'] else '**FAIL**'} "
            f"| {fmt_float(r.get('head_max_abs_diff'))} | {fmt_float(r.get('head_max_normalized_diff'))} "
            f"| {fmt_float(head.get('tolerance'))} | {fmt_share(r.get('top1_agreement'))} "
            f"| {fmt_share(r.get('top5_agreement'))} "
            f"| {fmt_share(photos.get('top1_agreement'))} "
            f"| {r.get('attention_maps', 0)} ({fmt_float(r.get('attention_worst_normalized_diff'))}) |")
    return lines


def _source_text(spec: VariantSpec, origin: dict) -> str:
    kind = origin.get("kind")
    if kind == "pretrained":
        return f"the published checkpoint {origin.get('description')}"
    if kind == "file":
        name = Path(origin.get("file") or origin.get("description") or "?").name
        return f"a local checkpoint file `{name}` (sha256 `{origin.get('sha256')}`)"
    return f"{origin.get('description', 'random initialisation')} (no checkpoint)"


def _checkpoint_link(spec: VariantSpec) -> str:
    repo = get_family(spec.family).hub_repo(spec)
    return f"[{repo}](https://huggingface.co/{repo})" if repo else "—"


def preprocessing_lines(spec: VariantSpec) -> list[str]:
    pre = resolve_preprocessing(spec.preprocessing, spec.image_size)
    size, scale = pre["input_size"], pre["scale_size"]
    resize = (f"shorter side to {scale} px" if pre["crop_mode"] == "center"
              else f"both sides to {scale} px (aspect ratio not kept)")
    return [
        f"- input: float32 NHWC `[batch, {size}, {size}, {spec.config.in_channels}]` (the ONNX and SavedModel "
        f"input is named `images`); RGB scaled to [0, 1], then normalised",
        f"- mean: `{pre['mean']}`",
        f"- std: `{pre['std']}`",
        f"- resize: {resize}, `{pre['interpolation']}` interpolation",
        f"- crop: centre {size}x{size} (crop_pct {pre['crop_pct']})",
        "- exactly timm's evaluation transform (`timm.data.create_transform(**resolve_data_config(...))`): "
        "the snippet below gives the same numbers, without torch",
    ]


def _example_input(spec: VariantSpec) -> list[str]:
    n = spec.image_size
    return [f"# stands in for a preprocessed image (see Preprocessing): float32 NHWC, 1 x {n} x {n} x 3",
            f"images = np.random.default_rng(0).standard_normal((1, {n}, {n}, 3)).astype(np.float32)"]


def _print_result(expr: str, record: PortRecord) -> list[str]:
    if record.spec.config.num_classes <= 0:
        return [f'print("features:", {expr}.shape)']
    lines = [f"top5 = np.argsort(-{expr}[0])[:5].tolist()", 'print("top-5 classes:", top5)']
    if record.labels:
        lines += [f'names = json.load(open("{METADATA_NAME}"))["labels"]["descriptions"]',
                  'print("names:", [names[i] for i in top5])']
    return lines


def _imports(record: PortRecord, *modules: str) -> list[str]:
    """``modules``, and json where ``_print_result`` reads the class names."""
    names = record.labels and record.spec.config.num_classes > 0 and "import json" not in modules
    return [*(["import json"] if names else []), *modules]


def preprocessing_snippet(spec: VariantSpec) -> str:
    """``preprocess(image)``: timm's evaluation transform of ``spec`` in PIL and numpy, step for
    step (torchvision's Resize and CenterCrop arithmetic, ToTensor and Normalize in float32)."""
    pre = resolve_preprocessing(spec.preprocessing, spec.image_size)
    size, scale, interpolation = pre["input_size"], pre["scale_size"], pre["interpolation"].upper()
    if pre["crop_mode"] == "squash":
        resize = [f"    new_size = ({scale}, {scale})  # both sides (timm's crop_mode 'squash')"]
    else:
        resize = [f"    # the shorter side to {scale} px, the longer one floored (torchvision's Resize)",
                  "    short, long = min(image.size), max(image.size)",
                  f"    new_short, new_long = {scale}, int({scale} * long / short)",
                  "    new_size = (new_short, new_long) if image.width <= image.height else (new_long, new_short)"]
    return "\n".join([
        "import numpy as np",
        "from PIL import Image",
        "",
        f"MEAN = np.array({pre['mean']}, dtype=np.float32)",
        f"STD = np.array({pre['std']}, dtype=np.float32)",
        "",
        "",
        "def preprocess(image: Image.Image) -> np.ndarray:",
        f'    """float32 ({size}, {size}, 3): resize, centre crop {size} px, scale to [0, 1], normalise."""',
        "    image = image.convert(\"RGB\")",
        *resize,
        "    if new_size != image.size:",
        f"        image = image.resize(new_size, Image.{interpolation})",
        f"    left, top = int(round((image.width - {size}) / 2.0)), int(round((image.height - {size}) / 2.0))",
        f"    image = image.crop((left, top, left + {size}, top + {size}))",
        "    return (np.asarray(image, dtype=np.float32) / np.float32(255.0) - MEAN) / STD",
        "",
        "",
        "# your photograph: Image.open(path); a flat colour stands in for it here",
        "images = preprocess(Image.new(\"RGB\", (640, 480), (200, 120, 60)))[None]  # NHWC batch of one",
        "print(images.shape, images.dtype)",
    ])


def snippets(record: PortRecord, fmt: Format | None = None, repos: dict[str, str] | None = None,
             present: list[Format] | None = None) -> list[tuple[str, str]]:
    """Usage snippets, [(title, code)]: preprocessing, then each form's (only ``fmt``'s on the card
    of a published form). Each runs as written in the folder holding that form's files (the
    tests run every one); ``repos`` (form -> hf://... or kaggle://...) adds the one-liner that
    loads straight from there as a comment. ``present``: the port's forms (``forms_present``); LiteRT's
    snippet only where it has LiteRT files."""
    spec = record.spec
    family = get_family(spec.family)
    head = spec.head_name
    remote = {key: (url[len("hf://"):] if url.startswith("hf://") else None) for key, url in (repos or {}).items()}
    out = [("Preprocessing a photograph (PIL + numpy)", preprocessing_snippet(spec))]
    keras_source = "\".\"" if fmt else "\"model.keras\""
    keras_lines = _imports(record, "import keras", "import numpy as np", "")
    keras_lines += [f"import {family.keras_module}  # registers the {family.title} layers that the model needs "
                    "(pip install vit-porting: Keras and numpy only)", ""]
    if remote.get("keras"):
        keras_lines.append(f"# straight from the Hub: keras.saving.load_model(\"hf://{remote['keras']}\", "
                           "compile=False)")
    keras_lines += [f"model = keras.saving.load_model({keras_source}, compile=False)", *_example_input(spec),
                    f"outputs = model(images, training=False)  # dict: {head} and one <block>_attn map per attention "
                    "layer",
                    f"{head} = keras.ops.convert_to_numpy(outputs[\"{head}\"])", *_print_result(head, record)]
    forms = {"keras": ("Keras 3 (`model.keras`)" if not fmt else "Keras 3", keras_lines)}
    forms["savedmodel"] = ("TensorFlow SavedModel (`saved_model/`): `tf.saved_model.load`, `keras.layers.TFSMLayer`", [
        *_imports(record, "import keras", "import numpy as np", "import tensorflow as tf"), "",
        *_example_input(spec),
        "loaded = tf.saved_model.load(\"saved_model\")",
        f"{head} = loaded.signatures[\"serving_default\"](images=tf.constant(images))[\"{head}\"].numpy()",
        *_print_result(head, record),
        "features = loaded.signatures[\"features\"](images=tf.constant(images))[\"features\"].numpy()  # pooled",
        "maps = loaded.signatures[\"attention\"](images=tf.constant(images))  # the head output and every map",
        "",
        "# serving_default as a Keras 3 layer (no project code needed)",
        "layer = keras.layers.TFSMLayer(\"saved_model\", call_endpoint=\"serving_default\")",
        f"{head} = keras.ops.convert_to_numpy(layer(images)[\"{head}\"])",
        *_print_result(head, record)])
    forms["onnx"] = ("ONNX Runtime (`model.onnx`; `model_attention.onnx` adds every attention map)", [
        *_imports(record, "import json", "import numpy as np", "import onnxruntime as ort"), "",
        *_example_input(spec),
        "session = ort.InferenceSession(\"model.onnx\", providers=[\"CPUExecutionProvider\"])",
        "meta = session.get_modelmeta().custom_metadata_map  # mean, std, input_size, layout, labels (JSON)",
        f"({head},) = session.run([\"{head}\"], {{\"images\": images}})",
        *_print_result(head, record),
        "print(\"input:\", meta[\"layout\"], json.loads(meta[\"input_size\"]), \"mean\", json.loads(meta[\"mean\"]))"])
    if any(f.key == "litert" for f in (present or [])) or (fmt and fmt.key == "litert"):
        forms["litert"] = ("LiteRT (`model.tflite`; `model_fp16.tflite` and `model_int8.tflite` alike)", [
            *_imports(record, "import numpy as np", "from ai_edge_litert.interpreter import Interpreter"), "",
            *_example_input(spec),
            "interpreter = Interpreter(model_path=\"model.tflite\")  # pip install ai-edge-litert; no TensorFlow",
            "runner = interpreter.get_signature_runner(\"serving_default\")  # resizes the batch to the input's",
            f"{head} = runner(images=images)[\"{head}\"]",
            *_print_result(head, record)])
    pytorch = _pytorch_snippet(record, fmt, remote.get("pytorch"))
    if pytorch:
        forms["pytorch"] = pytorch
    for key, (title, lines) in forms.items():
        if fmt is None or fmt.key == key:
            out.append((title, "\n".join(lines)))
    return out


def _pytorch_snippet(record: PortRecord, fmt: Format | None, repo: str | None) -> tuple[str, list[str]] | None:
    """The reference library's snippet for model.safetensors (None where the family has none); a published
    PyTorch form (``fmt``) holds the weights under the family's published name."""
    spec, head = record.spec, record.spec.head_name
    presentation = get_family(spec.family).presentation
    reference = presentation.reference_snippet(spec)
    if reference is None:
        return None
    hub = ([f"# straight from the Hub: {reference.hub_line.format(repo=repo)}"] if reference.hub_line and repo
           else [])
    weights_name = presentation.hub_weights_name
    build = [line.replace(SAFETENSORS_FILE, weights_name) if fmt else line for line in reference.build]
    title = reference.title.replace(SAFETENSORS_FILE, weights_name) if fmt else reference.title
    return title, [*_imports(record, "import numpy as np", "import torch", *reference.imports), "",
                   *hub, *build, *_example_input(spec),
                   "x = torch.from_numpy(images).permute(0, 3, 1, 2)  # PyTorch models take NCHW",
                   "with torch.no_grad():",
                   f"    {head} = {reference.call}.numpy()",
                   *_print_result(head, record)]


def _download_lines(fmt: Format | None, repos: dict[str, str] | None, spec: VariantSpec) -> list[str]:
    url = (repos or {}).get(fmt.key) if fmt else None
    if url and url.startswith("hf://"):
        repo = url[len("hf://"):]
        return ["Download the repository and run the snippets inside it:", "", "```bash",
                f"hf download {repo} --local-dir {repo.split('/')[-1]} && cd {repo.split('/')[-1]}", "```", "",
                f"or in Python: `huggingface_hub.snapshot_download(\"{repo}\")`, then change into the "
                "folder it returns."]
    if url and url.startswith("kaggle://"):
        handle = url[len("kaggle://"):]
        return ["Download the model and run the snippets inside the folder it prints:", "", "```bash",
                f"python -c 'import kagglehub; print(kagglehub.model_download(\"{handle}\"))'", "```"]
    return ["Run the snippets inside this folder (the artifact folder of the port, or a download of it)."]


def _forms_lines(fmt: Format, repos: dict[str, str]) -> list[str]:
    """Where each published form of the port is; every one was checked in the parity table."""
    lines = ["| form | where | loads with |", "|---|---|---|"]
    loaders = {"keras": "`keras.saving.load_model`", "savedmodel": "`tf.saved_model.load`, `keras.layers.TFSMLayer`",
               "onnx": "ONNX Runtime", "pytorch": "the reference library (see its card)",
               "litert": "`ai_edge_litert.interpreter.Interpreter`"}
    for key, url in repos.items():
        here = " (this repository)" if key == fmt.key else ""
        link = (f"[{url[len('hf://'):]}](https://huggingface.co/{url[len('hf://'):]})" if url.startswith("hf://")
                else f"`{url}`")
        lines.append(f"| {FORMATS[key].title}{here} | {link} | {loaders[key]} |")
    return lines


def _variants_lines(report: dict, fmt: Format | None, folder_files: Iterable[str] = ()) -> list[str]:
    """The reduced-precision and LiteRT files (of ``fmt`` only, on a form's card) and their agreement
    with the fp32 reference, in a table of their own; those withheld from publishing, and why, the
    port's files (``folder_files``) that the report never measured included."""
    rows = [r for r in report.get("variants") or [] if fmt is None or r["file"] in fmt.files]
    withheld = {file: why for file, why in withheld_files(report, folder_files).items()
                if fmt is None or file in fmt.files}
    if not rows and not withheld:
        return []
    lines = ["## Reduced-precision and LiteRT variants", "",
             "Extra files beside the fp32 ones, never replacing them, and not held to the fp32 tolerance: each was "
             "run in its own process on the same inputs and compared with the PyTorch fp32 reference by agreement.",
             "", *variants_table({**report, "variants": rows}), ""]
    lines += [f"- `{file}` is not published: {why}." for file, why in withheld.items()]
    return lines + ([""] if withheld else [])


def _size(n: int) -> str:
    return f"{n / 1e6:.1f} MB" if n >= 100_000 else f"{n / 1e3:.1f} kB"


def _file_lines(files: dict[str, dict], report: dict, fmt: Format | None, weights_name: str) -> list[str]:
    top: dict[str, int] = {}
    for rel, entry in files.items():
        key = rel.split("/", 1)[0] + ("/" if "/" in rel else "")
        top[key] = top.get(key, 0) + int(entry["size"])
    opset = ((report.get("exports") or {}).get("onnx") or {}).get("opset", "?")
    keras_config = fmt is not None and fmt.key == "keras"
    what = {weights_name: "weights in the source (PyTorch) layout, under a name the reference library's own loader "
                          "does not read: it would compute another function on them (use the snippet below)",
            "model.safetensors": "weights in the source (PyTorch) layout, bit-exact round trip",
            "model.keras": "Keras 3 model (architecture + weights)",
            "saved_model/": "TensorFlow SavedModel: signatures `serving_default`, `features`, `attention`",
            "model.onnx": f"ONNX model, opset {opset}, input `images`, output the head only (its fastest graph)",
            "model_attention.onnx": "the same ONNX graph with every attention map as an output",
            "model.onnx.data": "ONNX external weights (both ONNX files read them)",
            "model_int8.onnx": "ONNX, int8 weights of the weight MatMuls (dynamic quantisation); see variants",
            "model_fp16.onnx": "ONNX, fp16 weights and compute, fp32 input and output; see the variants table",
            "model.tflite": "LiteRT (TFLite) of `serving_default`, fp32",
            "model_fp16.tflite": "LiteRT, fp16 weights; see the variants table",
            "model_int8.tflite": "LiteRT, dynamic-range int8; see the variants table",
            "parity.json": "parity report (machine-readable)", "parity.md": "parity report",
            METADATA_NAME: "variant, architecture, weights origin and class names (vit-porting's record)",
            "config.json": ("Keras' model config" if keras_config else
                            "timm's model config: `timm.create_model(\"local-dir:<folder>\", pretrained=True)`"),
            "metadata.json": "Keras' save metadata", "model.weights.h5": "Keras weights",
            MANIFEST_NAME: "size and sha256 of every file, versions, parity verdict", CARD_NAME: "this card"}
    lines = ["| file | size | what |", "|---|---|---|"]
    lines += [f"| `{name}` | {_size(size)} | {what.get(name, '')} |" for name, size in sorted(top.items())]
    return lines


def render_card(record: PortRecord, report: dict, versions: dict, files: dict[str, dict] | None = None,
                manifest: dict | None = None, fmt: Format | None = None, repos: dict[str, str] | None = None,
                evaluation: dict | None = None) -> str:
    """README.md text: of the artifact folder (every form), or with ``fmt`` of one published form,
    whose card links the other forms of ``repos`` (form -> hf://... / kaggle://...)."""
    spec, origin = record.spec, record.origin
    random = _is_random(report, origin, manifest)
    present = forms_present(report)
    meta = front_matter(record, random, fmt, evaluation, present)
    c = spec.config
    family = get_family(spec.family).presentation.full_name
    passed = bool(report.get("passed"))
    toolkit = versions.get("toolkit") or report.get("toolkit_version")
    body: list[str] = []
    if random:
        body += [RANDOM_LINE, ""]
    form = f" ({fmt.title})" if fmt else ""
    body += [f"# {spec.name}{form}", "",
             f"{family} image classifier `{spec.name}`, ported from PyTorch to Keras 3, TensorFlow SavedModel, "
             f"ONNX and safetensors by vit-porting {toolkit}, with every format checked "
             f"against the PyTorch reference ({report.get('reference', 'PyTorch fp32')}).", "",
             f"- architecture: {get_family(spec.family).title}, {c.image_size} px, depth {getattr(c, 'depth', '?')}, "
             f"width {getattr(c, 'embed_dim', '?')}, {c.num_classes} classes"
             + (" (feature extractor)" if c.num_classes == 0 else ""),
             f"- classes: {record.labels['set'] + ' (names in ' + METADATA_NAME + ')' if record.labels else 'indices'}",
             f"- weights: {_source_text(spec, origin)}"]
    for note in origin.get("notes") or []:
        body.append(f"- note: {note}")
    body += [f"- source checkpoint of this variant: {_checkpoint_link(spec)}"
             + (f" ({spec.pretraining})" if spec.pretraining else ""),
             f"- license: {spec.license or 'unknown'}",
             f"- parity: **{'PASSED' if passed else 'FAILED'}** on {report.get('inputs', '?')}", ""]
    if fmt and repos:
        body += ["## Forms", "", "Each form of this port is a repository of its own (a repository holds one "
                 "`config.json`, and each loader reads its own from the root):", "", *_forms_lines(fmt, repos), ""]
    body += ["## Citation", "", spec.paper or "—", ""]
    body += ["## Preprocessing", "", *preprocessing_lines(spec), ""]
    body += ["## Parity", "",
             f"Every runtime below loaded its artifact from disk in its own process and was compared with "
             f"{report.get('reference', 'the PyTorch reference')}. Metric: max |candidate − reference| "
             f"(normalised: divided by max |reference|) on the `{spec.head_name}` output; top-1/top-5: agreement "
             f"of the predicted classes with the reference's.", "", *parity_table(report), ""]
    rt = report.get("roundtrip")
    if rt:
        body += [f"Round trip Keras → safetensors → strict PyTorch load: "
                 f"{'bit-exact' if rt.get('bit_exact') else 'MISMATCH'} over {rt.get('num_tensors')} tensors.", ""]
    body += _variants_lines(report, fmt, (manifest or {}).get("files", ()))
    exports = report.get("exports") or {}
    chosen = serving_lines({k: v for k, v in exports.items() if not fmt or (k, fmt.key) in
                            (("saved_model", "savedmodel"), ("onnx", "onnx"))})
    if chosen:
        body += ["## Serving graphs", "", "Each format's serving graph is the fastest of its candidates that passed "
                 "the parity check above, timed on the machine that made the port:", "", *chosen, ""]
    body += ["Full report: `parity.md` / `parity.json`.", ""]
    body += ["## Usage", "", *_download_lines(fmt, repos, spec), "",
             "Each snippet uses the same stand-in input and prints the same top-5 classes (within the "
             "parity tolerance).", ""]
    for title, code in snippets(record, fmt, repos, present):
        body += [f"### {title}", "", "```python", code, "```", ""]
    if files:
        weights_name = get_family(spec.family).presentation.hub_weights_name
        body += ["## Files", "", *_file_lines(files, report, fmt, weights_name), "",
                 f"Check them with `vit-port verify <folder>` (sha256 in `{MANIFEST_NAME}`).", ""]
    shown = ("toolkit", *(k for k in versions if k != "toolkit"))
    body += ["## Versions", "", ", ".join(f"{k} {versions[k]}" for k in shown if versions.get(k)), "",
             f"Generated by vit-porting {toolkit}.", ""]
    return "---\n" + yaml.safe_dump(meta, sort_keys=False) + "---\n\n" + "\n".join(body)


def read_evaluation(folder: Path) -> dict | None:
    """``vit-port eval``'s report of the folder, when it was evaluated."""
    path = folder / EVAL_DIR / "eval.json"
    return json.loads(path.read_text()) if path.is_file() else None


def write_card(folder: Path | str, versions: dict | None = None) -> Path:
    """Write ``folder/README.md`` from its vit_porting.json and parity.json (and manifest.json when
    there is one: versions, random-weights flag); returns its path. A port passes the
    ``versions`` that its manifest records next."""
    folder = Path(folder)
    record = read_record(folder)
    report = json.loads((folder / "parity.json").read_text())
    manifest = json.loads((folder / MANIFEST_NAME).read_text()) if (folder / MANIFEST_NAME).exists() else None
    if versions is None:
        versions = (manifest or {}).get("versions") or runtime_versions(report.get("toolkit_version", "?"))
    files = {k: v for k, v in file_table(folder).items() if k != CARD_NAME}
    text = render_card(record, report, versions, files, manifest, evaluation=read_evaluation(folder))
    path = folder / CARD_NAME
    if path.exists():
        path.unlink()  # never write through a hard link into another folder
    path.write_text(text)
    return path


def parse_card(text: str) -> tuple[dict, str]:
    """(front matter, body) of a card."""
    if not text.startswith("---\n"):
        raise ValueError("no YAML front matter")
    end = text.index("\n---\n", 4)
    return yaml.safe_load(text[4:end]), text[end + 5:]


def python_blocks(text: str) -> list[str]:
    """The ```python blocks of a card, in order."""
    blocks, current = [], None
    for line in text.splitlines():
        if current is None and line.strip() == "```python":
            current = []
        elif current is not None and line.strip() == "```":
            blocks.append("\n".join(current))
            current = None
        elif current is not None:
            current.append(line)
    return blocks
