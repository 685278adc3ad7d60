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
from pathlib import Path

import yaml

from parity.images import resolve_preprocessing
from parity.report import fmt_float, fmt_share
from porting.families import get_family
from porting.families.base import VariantSpec
from porting.manifest import MANIFEST_NAME, METADATA_NAME, PortRecord, file_table, read_record, runtime_versions

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


def front_matter(spec: VariantSpec, origin: dict, random: bool) -> dict:
    head = spec.config.num_classes > 0
    family = get_family(spec.family)
    meta = {
        "library_name": "keras",
        "pipeline_tag": "image-classification" if head else "image-feature-extraction",
        "license": hub_license(spec),
        "tags": ["image-classification" if head else "image-feature-extraction", "vision-transformer", spec.family,
                 "keras", "tensorflow", "saved_model", "onnx", "safetensors",
                 *([family.library_tag] if family.library_tag else []), "vit-porting"],
    }
    if meta["license"] == "other":
        meta["license_name"] = "see-model-card"
    if random:
        meta["tags"].append("random-weights")
    else:
        if spec.datasets:
            meta["datasets"] = list(spec.datasets)
        if origin.get("kind") == "pretrained" and family.hub_repo(spec):
            meta["base_model"] = family.hub_repo(spec)
    return meta


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
    ]


def _example_input(spec: VariantSpec) -> list[str]:
    n = spec.image_size
    return [f"# stands in for a preprocessed image (see Preprocessing): float32 NHWC, 1 x {n} x {n} x 3",
            f"images = np.random.default_rng(0).standard_normal((1, {n}, {n}, 3)).astype(np.float32)"]


def _print_result(expr: str, spec: VariantSpec) -> str:
    if spec.config.num_classes > 0:
        return f'print("top-5 classes:", np.argsort(-{expr}[0])[:5].tolist())'
    return f'print("features:", {expr}.shape)'


def snippets(spec: VariantSpec) -> dict[str, tuple[str, str]]:
    """Usage snippets by format, {format: (title, code)}: each runs as written in a folder
    holding the artifacts."""
    family = get_family(spec.family)
    head = spec.head_name
    pre = resolve_preprocessing(spec.preprocessing, spec.image_size)
    size, scale = pre["input_size"], pre["scale_size"]
    out: dict[str, tuple[str, str]] = {}
    out["preprocessing"] = ("Preprocessing a photograph (PIL + numpy)", "\n".join([
        "import numpy as np",
        "from PIL import Image",
        "",
        "# your photograph: Image.open(path).convert(\"RGB\"); a flat colour stands in for it here",
        "image = Image.new(\"RGB\", (640, 480), (200, 120, 60))",
        f"scale = {scale} / min(image.size)",
        "image = image.resize((round(image.width * scale), round(image.height * scale)), "
        f"Image.{pre['interpolation'].upper()})",
        f"left, top = (image.width - {size}) // 2, (image.height - {size}) // 2",
        f"image = image.crop((left, top, left + {size}, top + {size}))",
        f"mean = np.array({pre['mean']}, dtype=np.float32)",
        f"std = np.array({pre['std']}, dtype=np.float32)",
        "images = ((np.asarray(image, dtype=np.float32) / 255.0 - mean) / std)[None]  # NHWC batch of one",
        "print(images.shape, images.dtype)",
    ]))
    out["keras"] = ("Keras 3 (`model.keras`)", "\n".join([
        "import keras",
        "import numpy as np",
        "",
        f"import {family.keras_module}  # registers the {family.title} layers that model.keras needs "
        "(pip install vit-porting: Keras and numpy only)",
        "",
        "model = keras.saving.load_model(\"model.keras\", compile=False)",
        *_example_input(spec),
        "outputs = model(images, training=False)  # dict: " + head + " and one <block>_attn map per attention layer",
        f"{head} = keras.ops.convert_to_numpy(outputs[\"{head}\"])",
        _print_result(head, spec),
    ]))
    out["savedmodel"] = ("TensorFlow SavedModel (`saved_model/`): `tf.saved_model.load` and `keras.layers.TFSMLayer`",
                         "\n".join([
        "import keras",
        "import numpy as np",
        "import tensorflow as tf",
        "",
        *_example_input(spec),
        "serve = tf.saved_model.load(\"saved_model\").signatures[\"serving_default\"]",
        f"{head} = serve(images=tf.constant(images))[\"{head}\"].numpy()",
        _print_result(head, spec),
        "",
        "# the same SavedModel as a Keras 3 layer (no project code needed)",
        "layer = keras.layers.TFSMLayer(\"saved_model\", call_endpoint=\"serving_default\")",
        f"{head} = keras.ops.convert_to_numpy(layer(images)[\"{head}\"])",
        _print_result(head, spec),
    ]))
    out["onnx"] = ("ONNX Runtime (`model.onnx`)", "\n".join([
        "import numpy as np",
        "import onnxruntime as ort",
        "",
        *_example_input(spec),
        "session = ort.InferenceSession(\"model.onnx\", providers=[\"CPUExecutionProvider\"])",
        "names = [o.name for o in session.get_outputs()]",
        "outputs = dict(zip(names, session.run(names, {\"images\": images})))",
        f"{head} = outputs[\"{head}\"]",
        _print_result(head, spec),
    ]))
    reference = family.reference_snippet(spec)
    if reference is not None:
        out["reference"] = (reference.title, "\n".join([
            "import numpy as np",
            "import torch",
            *reference.imports,
            "",
            *reference.build,
            *_example_input(spec),
            "x = torch.from_numpy(images).permute(0, 3, 1, 2)  # PyTorch models take NCHW",
            "with torch.no_grad():",
            f"    {head} = {reference.call}.numpy()",
            _print_result(head, spec),
        ]))
    return out


def _download_lines(target: str | None, spec: VariantSpec) -> list[str]:
    if target and target.startswith("hf://"):
        repo = target[len("hf://"):]
        return ["Download the repository and run the snippets inside it:", "", "```bash",
                f"hf download {repo} --local-dir {spec.name} && cd {spec.name}", "```", "",
                f"or in Python: `huggingface_hub.snapshot_download(\"{repo}\")`, then change into the "
                "folder it returns."]
    if target and target.startswith("kaggle://"):
        handle = target[len("kaggle://"):]
        return ["Download the model and run the snippets inside the folder it prints:", "", "```bash",
                f"python -c 'import kagglehub; print(kagglehub.model_download(\"{handle}\"))'", "```"]
    return ["Run the snippets inside this folder (the artifact folder of the port, or a download of it)."]


def _size(n: int) -> str:
    return f"{n / 1e6:.1f} MB" if n >= 100_000 else f"{n / 1e3:.1f} kB"


def _file_lines(files: dict[str, dict], report: dict) -> list[str]:
    top: dict[str, int] = {}
    for rel, entry in files.items():
        key = rel.split("/", 1)[0] + ("/" if "/" in rel else "")
        top[key] = top.get(key, 0) + int(entry["size"])
    what = {"model.safetensors": "weights in the source (PyTorch) layout, bit-exact round trip",
            "model.keras": "Keras 3 model (architecture + weights)",
            "saved_model/": "TensorFlow SavedModel, signature `serving_default`",
            "model.onnx": f"ONNX model, opset {((report.get('exports') or {}).get('onnx') or {}).get('opset', '?')}, "
                          "input `images`",
            "model.onnx.data": "ONNX external weights",
            "parity.json": "parity report (machine-readable)", "parity.md": "parity report",
            METADATA_NAME: "variant, architecture, weights origin and class names (vit-porting's record)",
            "config.json": "timm's model config: `timm.create_model(\"local-dir:<folder>\", pretrained=True)`",
            "model_attention.onnx": "ONNX model with every attention map as an output",
            MANIFEST_NAME: "size and sha256 of every file, versions, parity verdict", CARD_NAME: "this card"}
    lines = ["| file | size | what |", "|---|---|---|"]
    lines += [f"| `{name}` | {_size(size)} | {what.get(name, '')} |" for name, size in sorted(top.items())]
    return lines


def render_card(record: PortRecord, report: dict, versions: dict, files: dict[str, dict] | None = None,
                target: str | None = None, manifest: dict | None = None) -> str:
    """README.md text. ``target`` (hf://owner/name, kaggle://owner/model/framework/variation)
    adds how to download it from there."""
    spec, origin = record.spec, record.origin
    random = _is_random(report, origin, manifest)
    meta = front_matter(spec, origin, random)
    c = spec.config
    family = get_family(spec.family).full_name
    passed = bool(report.get("passed"))
    toolkit = versions.get("toolkit") or report.get("toolkit_version")
    body: list[str] = []
    if random:
        body += [RANDOM_LINE, ""]
    body += [f"# {spec.name}", "",
             f"{family} image classifier `{spec.name}`, ported from PyTorch to Keras 3, TensorFlow SavedModel, "
             f"ONNX and safetensors by vit-porting {toolkit}, with every format checked "
             f"against the PyTorch reference ({report.get('reference', 'PyTorch fp32')}).", "",
             f"- architecture: {get_family(spec.family).title}, {c.image_size} px, depth {getattr(c, 'depth', '?')}, "
             f"width {getattr(c, 'embed_dim', '?')}, {c.num_classes} classes"
             + (" (feature extractor)" if c.num_classes == 0 else ""),
             f"- weights: {_source_text(spec, origin)}"]
    for note in origin.get("notes") or []:
        body.append(f"- note: {note}")
    body += [f"- source checkpoint of this variant: {_checkpoint_link(spec)}"
             + (f" ({spec.pretraining})" if spec.pretraining else ""),
             f"- license: {spec.license or 'unknown'}",
             f"- parity: **{'PASSED' if passed else 'FAILED'}** on {report.get('inputs', '?')}",
             "", "## Citation", "", spec.paper or "—", ""]
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
    body += ["Full report: `parity.md` / `parity.json`.", ""]
    body += ["## Usage", "", *_download_lines(target, spec), "",
             "Each snippet uses the same stand-in input and prints the same top-5 classes (within the "
             "parity tolerance).", ""]
    for title, code in snippets(spec).values():
        body += [f"### {title}", "", "```python", code, "```", ""]
    if files:
        body += ["## Files", "", *_file_lines(files, report), "",
                 f"Check them with `vit-port verify <folder>` (sha256 in `{MANIFEST_NAME}`).", ""]
    shown = ("toolkit", *(k for k in versions if k != "toolkit"))
    body += ["## Versions", "", ", ".join(f"{k} {versions[k]}" for k in shown if versions.get(k)), "",
             f"Generated by vit-porting {toolkit}.", ""]
    return "---\n" + yaml.safe_dump(meta, sort_keys=False) + "---\n\n" + "\n".join(body)


def write_card(folder: Path | str, target: str | None = None, versions: dict | None = None) -> Path:
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
    text = render_card(record, report, versions, files, target, manifest)
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
