"""collection.json and the collection card (README.md) of a family, from its artifact folders.

A variant's record is read from the small files of its folder (``vit_porting.json``, ``parity.json``,
``manifest.json``), never from the models themselves, so the same code builds the table after a
``vit-port collection`` run, from the parity reports the CI jobs upload (``vit-port
collection-card``), and for a folder on a remote root (any fsspec file system).

numpy-free and framework-free: it runs in the orchestrating process. Parameters and FLOPs come
from one PyTorch worker on the meta device (``vit_porting.workers.run_torch``: ``facts``), cached in
collection.json so that a resumed collection does not start PyTorch again.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import yaml

from vit_porting.families.base import VariantSpec
from vit_porting.families.registry import get_family
from vit_porting.manifest import MANIFEST_NAME, METADATA_NAME
from vit_porting.parity.report import fmt_float
from vit_porting.publish.card import RANDOM_LINE, _size, hub_license
from vit_porting.workers.protocol import run_worker

COLLECTIONS = "collections"
COLLECTION_JSON = "collection.json"
CARD_NAME = "README.md"
# a format's files, recognised by name so that the sizes survive a change of folder layout
FORMATS = {"safetensors": lambda rel: rel.endswith(".safetensors"),
           "savedmodel": lambda rel: "saved_model/" in f"/{rel}",
           "keras": lambda rel: rel.endswith(".keras"),
           "onnx": lambda rel: rel.endswith((".onnx", ".onnx.data"))}
FORMAT_TITLES = {"safetensors": "safetensors", "savedmodel": "SavedModel", "keras": ".keras", "onnx": "ONNX"}


def collection_dir(root: str, family: str) -> str:
    """Where a family's collection.json and card live under an output root (a path or a URL)."""
    return f"{root.rstrip('/')}/{COLLECTIONS}/{family}"


def _read_json(fs: Any, path: str) -> dict:
    return json.loads(fs.cat_file(path))


def folder_summary(fs: Any, folder: str) -> dict:
    """What the collection shows of one artifact folder: verdict, worst normalised difference per
    runtime (head output and attention maps), sizes per format, port time and peak memory, origin."""
    report = _read_json(fs, f"{folder}/parity.json")
    config = _read_json(fs, f"{folder}/{METADATA_NAME}")
    files = _read_json(fs, f"{folder}/{MANIFEST_NAME}").get("files", {})
    runtimes = {}
    for r in report.get("runtimes", []):
        key = r["runtime"] if r.get("device", "cpu") == "cpu" else f"{r['runtime']} ({r['device']})"
        runtimes[key] = {"passed": bool(r.get("passed")), "head": r.get("head_max_normalized_diff"),
                         "attention": r.get("attention_worst_normalized_diff")}
    steps = (report.get("steps") or {}).values()
    origin = config.get("origin") or report.get("origin") or {}
    return {
        "verdict": "passed" if report.get("passed") else "failed",
        "head_output": next((r.get("head_output") for r in report.get("runtimes", [])), None),
        "worst": {kind: max((v[kind] for v in runtimes.values() if v[kind] is not None), default=None)
                  for kind in ("head", "attention")},
        "runtimes": runtimes,
        "sizes": {name: sum(int(e["size"]) for rel, e in files.items() if match(rel)) or None
                  for name, match in FORMATS.items()},
        "port_seconds": round(sum(s.get("seconds") or 0 for s in steps), 1) or None,
        "peak_rss_mb": max((s.get("peak_rss_mb") or 0 for s in steps), default=0) or None,
        "weights": {k: origin.get(k) for k in ("kind", "description", "seed")},
        "random_weights": bool(report.get("random_weights") or origin.get("random_weights")),
        "ported": report.get("time"),
    }


def model_facts(specs: Iterable[VariantSpec], work: Path, previous: dict | None = None) -> dict[str, dict]:
    """{variant: {params, weight_bytes, flops_per_image}}: from ``previous`` (an earlier
    collection.json's variants) where the architecture is the same, the rest from one PyTorch
    worker on the meta device."""
    specs = list(specs)
    facts, missing = {}, []
    for spec in specs:
        old = (previous or {}).get(spec.name) or {}
        if old.get("facts") and old.get("config") == _jsonable(spec.to_dict()["config"]):
            facts[spec.name] = old["facts"]
        else:
            missing.append(spec)
    if missing:
        work.mkdir(parents=True, exist_ok=True)
        result = run_worker("torch", {"job": "facts", "specs": [s.to_dict() for s in missing]}, work)
        facts.update(result["facts"])
    return facts


def _jsonable(value: Any) -> Any:
    return json.loads(json.dumps(value))


def variant_entry(spec: VariantSpec, facts: dict | None, summary: dict | None = None, **extra: Any) -> dict:
    """One variant of collection.json: the spec's facts, its folder's summary (None when there is
    no verified folder), and what this run did (``status``, ``error``, ``task``, ...)."""
    entry = {"variant": spec.name, "image_size": spec.image_size, "num_classes": spec.config.num_classes,
             "config": _jsonable(spec.to_dict()["config"]), "facts": facts,
             "params": (facts or {}).get("params"),
             "gflops": round(facts["flops_per_image"] / 1e9, 2) if facts else None,
             "published_top1": spec.published_top1, "published_top1_source": spec.published_top1_source,
             "folder": spec.name}
    entry.update(summary or {"verdict": None})
    entry.update(extra)
    return entry


def build_collection(family: str, entries: list[dict], **extra: Any) -> dict:
    """collection.json: the family, a summary and one entry per variant (sorted by name)."""
    entries = sorted(entries, key=lambda e: e["variant"])
    counts = {"variants": len(entries),
              "passed": sum(e.get("verdict") == "passed" for e in entries),
              "failed": sum(e.get("verdict") == "failed" for e in entries),
              "errors": sum(e.get("status") == "error" for e in entries)}
    return {"family": family, "title": get_family(family).presentation.full_name,
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "summary": counts, **extra, "variants": {e["variant"]: e for e in entries}}


def write_text(fs: Any, path: str, text: str) -> None:
    """Write under a temporary name beside ``path``, then move it into place (a reader never sees
    half a file; a local move is a rename)."""
    parent = path.rsplit("/", 1)[0]
    fs.makedirs(parent, exist_ok=True)
    tmp = f"{path}.tmp-{os.getpid()}"
    fs.pipe_file(tmp, text.encode())
    fs.mv(tmp, path)


def previous_collection(fs: Any, root: str, family: str) -> dict:
    """The variants of the family's last collection.json under ``root`` ({} when there is none)."""
    path = f"{collection_dir(root, family)}/{COLLECTION_JSON}"
    try:
        return json.loads(fs.cat_file(path)).get("variants", {})
    except (FileNotFoundError, json.JSONDecodeError):
        return {}


def write_collection(fs: Any, root: str, collection: dict) -> tuple[str, str]:
    """collection.json and README.md of ``collection`` under ``root``; returns their paths."""
    folder = collection_dir(root, collection["family"])
    json_path, card_path = f"{folder}/{COLLECTION_JSON}", f"{folder}/{CARD_NAME}"
    write_text(fs, json_path, json.dumps(collection, indent=1) + "\n")
    write_text(fs, card_path, render_collection_card(collection))
    return json_path, card_path


# -- the card ------------------------------------------------------------------------------------


def _mb(n: int | None) -> str:
    return _size(n) if n else "—"


def _local_link(variant: str) -> str:
    return f"../../{variant}/README.md"


def _verdict(entry: dict) -> str:
    if entry.get("status") == "error":
        return "**error**"
    return {"passed": "pass", "failed": "**FAIL**"}.get(entry.get("verdict"), "—")


def table(collection: dict, link: Callable[[str], str | None] | None = None) -> list[str]:
    """The variants table: size, compute, input, published accuracy, parity, file sizes, and a
    link to each variant's card (``link`` gives it, or None where there is none to link)."""
    link = link or _local_link
    lines = ["| variant | params | GFLOPs | input | top-1 published | parity | worst normalised diff: head / "
             "attention | " + " | ".join(FORMAT_TITLES.values()) + " | card |",
             "|---|---|---|---|---|---|---|" + "---|" * len(FORMAT_TITLES) + "---|"]
    sources: list[str] = []
    for e in collection["variants"].values():
        top1 = "—"
        if e.get("published_top1") is not None:
            if e["published_top1_source"] not in sources:
                sources.append(e["published_top1_source"])
            top1 = f"{e['published_top1']:.1f} %<sup>{sources.index(e['published_top1_source']) + 1}</sup>"
        worst = e.get("worst") or {}
        sizes = e.get("sizes") or {}
        url = link(e["variant"]) if e.get("verdict") else None
        card = f"[card]({url})" if url else "—"
        compute = f"{e['params'] / 1e6:.1f} M | {e['gflops']:.1f}" if e.get("params") else "— | —"
        lines.append(f"| `{e['variant']}` | {compute} | {e['image_size']} px | {top1} | {_verdict(e)} "
                     f"| {fmt_float(worst.get('head'))} / {fmt_float(worst.get('attention'))} | "
                     + " | ".join(_mb(sizes.get(name)) for name in FORMAT_TITLES) + f" | {card} |")
    notes = [f"<sup>{i}</sup> {source}" for i, source in enumerate(sources, 1)]
    return lines + ([""] + notes if notes else [])


def _usage(family: str, example: dict) -> list[str]:
    """How to use a variant's folder as a classifier and as a feature extractor."""
    keras_module = get_family(family).keras_module
    name, n = example["variant"], example["image_size"]
    images = ["# stands in for preprocessed images (each variant's card: Preprocessing): float32 NHWC",
              f"images = np.random.default_rng(0).standard_normal((1, {n}, {n}, 3)).astype(np.float32)"]
    return [
        "Each variant's folder (or its downloaded repository) holds every format; its own card has the "
        "preprocessing and a snippet per format (Keras, SavedModel, ONNX Runtime, PyTorch). The two forms, "
        f"with `{name}` as the example:", "",
        "```python", "import keras", "import numpy as np", "",
        f"import {keras_module}  # registers the layers model.keras needs (pip install vit-porting)", "",
        f"model = keras.saving.load_model(\"{name}/model.keras\", compile=False)", *images, "",
        "# classifier: ImageNet-1k logits (the model also returns every attention map)",
        "logits = keras.ops.convert_to_numpy(model(images, training=False)[\"logits\"])",
        "print(\"top-5 classes:\", np.argsort(-logits[0])[:5].tolist())", "",
        "# feature vector: the pooled representation the classifier reads (the input of its `head` layer),",
        "# for fine-tuning or retrieval",
        "features_model = keras.Model(model.inputs, model.get_layer(\"head\").input)",
        "features = keras.ops.convert_to_numpy(features_model(images, training=False))",
        "print(\"features:\", features.shape)", "```", "",
        "The classifier in TensorFlow alone (no project code), from the SavedModel:", "",
        "```python", "import numpy as np", "import tensorflow as tf", "", *images,
        f"serve = tf.saved_model.load(\"{name}/saved_model\").signatures[\"serving_default\"]",
        "logits = serve(images=tf.constant(images))[\"logits\"].numpy()",
        "print(\"top-5 classes:\", np.argsort(-logits[0])[:5].tolist())", "```", "",
        "A feature extractor in every format (a model whose output is `features`, no head): "
        f"`vit-port port {name} --num-classes 0`; a new head for fine-tuning: `--num-classes N`.",
    ]


def render_collection_card(collection: dict, link: Callable[[str], str | None] | None = None) -> str:
    """README.md of a collection: what the family is, the variants table, usage, how it was made."""
    family = get_family(collection["family"])
    entries = list(collection["variants"].values())
    specs = family.variant_map()
    example_spec = next((specs[e["variant"]] for e in entries if e["variant"] in specs), family.variants[0])
    example = next((e for e in entries if e.get("verdict") == "passed"), entries[0] if entries else
                   {"variant": example_spec.name, "image_size": example_spec.image_size})
    random = any(e.get("random_weights") for e in entries)
    meta = {"library_name": "keras", "license": hub_license(example_spec),
            "tags": ["vision-transformer", family.name, "collection", "keras", "saved_model", "onnx", "safetensors",
                     "vit-porting", *(["random-weights"] if random else [])]}
    counts = collection["summary"]
    engine = collection.get("engine") or {}
    body = [RANDOM_LINE, ""] if random else []
    body += [f"# {family.presentation.full_name}: the collection", "",
             f"{counts['variants']} {family.title} checkpoints ported from PyTorch ({family.source_label}) to Keras 3, "
             "TensorFlow SavedModel, ONNX and safetensors by vit-porting, every format checked against the PyTorch "
             f"reference in its own process: {counts['passed']} passed, {counts['failed']} failed parity, "
             f"{counts['errors']} did not port.", "",
             f"Paper: {example_spec.paper or '—'}. License: {example_spec.license or 'unknown'}.", "",
             "## Variants", "", *table(collection, link), "",
             "Parity: the worst, over every runtime (Keras eager and compiled, the reloaded `.keras`, the SavedModel, "
             "ONNX Runtime), of max |candidate − reference| / max |reference| on the head output and on the "
             "attention maps; the tolerances are 1e-5 and 5e-5 (vit_porting/parity/tolerances.yaml). GFLOPs: one "
             "image, 2 × multiply-adds, counted on the PyTorch model. Sizes in MB (10^6 bytes).", ""]
    problems = [e for e in entries if e.get("status") == "error" or e.get("verdict") == "failed"]
    if problems:
        body += ["Not published:", ""]
        body += [f"- `{e['variant']}`: " + (e.get("error") or "parity failed (see its parity.md)") for e in problems]
        body += [""]
    body += ["## Usage", "", *_usage(family.name, example), ""]
    makers = sorted({f"{p['engine']} {p['version']} at {p['address']} ({p['mode']})"
                     for e in entries if (p := e.get("ported_by"))})
    if engine.get("version"):
        ran = (f"- engine: {engine['name']} {engine['version']} at {engine['address']} ({engine['mode']}), "
               f"{engine['nodes']} node(s), {engine['cpus']:.0f} CPUs")
    else:
        ran = f"- this run started no engine: {engine.get('why', 'it ported nothing')}"
    made = [f"- command: `{collection['command']}`" if collection.get("command") else None, ran,
            f"- folders ported by: {'; '.join(makers)}" if makers else None,
            f"- finished {collection['created']}" + (f" in {collection['wall_s']:.0f} s" if collection.get("wall_s")
                                                    else "")]
    body += ["## How it was made", "", *[line for line in made if line], "",
             f"Machine-readable: `{COLLECTION_JSON}` beside this card.", ""]
    return "---\n" + yaml.safe_dump(meta, sort_keys=False) + "---\n\n" + "\n".join(body)
