"""``vit-port eval`` and ``vit-port attention`` on a depth-1 random-weights CaiT port.

The labelled folder is built from photographs scikit-image ships (skimage.data): three
classes, each a full photograph, a horizontal flip and an off-centre crop (odd, non-square
sizes), one greyscale copy. With random weights accuracy means nothing, so these tests check
the machinery: the shared preprocessing against timm's own transform (in a torch worker),
counts, exact top-1/top-5 on labels chosen from the model's own predictions, agreement of the
four runtimes, the eval.json schema, the labels-file layout, the manifest staying verified,
and that the attention picture draws exactly the model's attention outputs.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from vit_porting.attention import class_attention_maps
from vit_porting.evaluate import EvalError, EvalOptions, discover, evaluate, spec_preprocessing
from vit_porting.families.registry import get_variant
from vit_porting.manifest import read_manifest, verify_manifest
from vit_porting.parity.images import preprocess_image, resize_and_crop
from vit_porting.pipeline import PortOptions, port
from vit_porting.workers.protocol import run_worker

ROOT = Path(__file__).resolve().parent.parent
VARIANT = "cait_xxs24_224"
# measured: 0.0 (bit-identical float32) on every test image, for CaiT (timm's own config) and both
# CvT geometries; the bound leaves room for float32 rounding in another numpy/torch build only
PIXEL_TOLERANCE = 1e-5
# folders named as ImageNet names them: a description ("tabby", "espresso") or a synset (744: "projectile, missile")
CLASSES = {"tabby": "chelsea", "espresso": "coffee", "n04008634": "rocket"}
IMAGENET_INDEX = {"tabby": 281, "espresso": 967, "n04008634": 744}
HEADS = 4  # cait_xxs24: 4 heads, 2 class-attention blocks, a 14x14 patch grid


def _write_images(root: Path) -> list[Path]:
    import skimage.data
    from PIL import Image

    paths = []
    for cls, name in CLASSES.items():
        img = getattr(skimage.data, name)()
        h, w = img.shape[:2]
        variants = {"full.jpg": img, "flip.png": img[:, ::-1], "crop.jpg": img[h // 8: h - h // 5, w // 6: w - w // 9]}
        if cls == "espresso":
            variants["grey.png"] = img.mean(axis=-1).astype(np.uint8)  # a one-channel file: converted to RGB
        (root / cls).mkdir(parents=True)
        for fname, arr in variants.items():
            Image.fromarray(np.ascontiguousarray(arr)).save(root / cls / fname, quality=90)
            paths.append(root / cls / fname)
    (root / "tabby" / "notes.txt").write_text("not an image")
    return paths


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> tuple[Path, list[Path]]:
    root = tmp_path_factory.mktemp("data") / "images"
    return root, _write_images(root)


@pytest.fixture(scope="module")
def ported(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("artifacts")
    spec = get_variant(VARIANT).with_config(depth=1)
    report = port(spec, PortOptions(weights="random", out_root=out, log=lambda m: None))
    assert report["passed"]
    return out / VARIANT


@pytest.fixture(scope="module")
def evaluated(ported, data) -> dict:
    return evaluate(ported, data[0], EvalOptions(batch=4, progress=False, log=lambda m: None))


# -- preprocessing --------------------------------------------------------------------------


def test_shared_preprocessing_matches_timm(data, tmp_path):
    """timm.data.create_transform(**resolve_data_config(model)) in a torch worker vs ours."""
    files = [str(p) for p in data[1]]
    cfg = {"mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225], "interpolation": "bicubic"}
    cases = {
        VARIANT: {"timm_model": VARIANT},  # the config timm resolves for its own CaiT
        "cvt-13-224": {"config": {**cfg, "input_size": [3, 224, 224], "crop_pct": 0.875}},
        "cvt-13-384": {"config": {**cfg, "input_size": [3, 384, 384], "crop_pct": 1.0, "crop_mode": "squash"}},
    }
    for name, job in cases.items():
        result = run_worker("eval", {"job": "timm_preprocess", "images": files,
                                                "out": str(tmp_path / f"{name}.npy"), **job}, tmp_path)
        theirs = np.load(tmp_path / f"{name}.npy")
        pre = spec_preprocessing(get_variant(name))
        timm_cfg = result["config"]
        assert timm_cfg["input_size"][1:] == [pre["input_size"]] * 2
        assert (timm_cfg["crop_pct"], timm_cfg["interpolation"]) == (pre["crop_pct"], pre["interpolation"])
        assert timm_cfg.get("crop_mode", "center") == pre["crop_mode"]
        assert np.allclose(timm_cfg["mean"], pre["mean"]) and np.allclose(timm_cfg["std"], pre["std"])
        ours = np.stack([preprocess_image(f, pre) for f in files])
        assert ours.shape == theirs.shape == (len(files), pre["input_size"], pre["input_size"], 3)
        diff = float(np.abs(ours - theirs).max())
        assert diff <= PIXEL_TOLERANCE, (name, diff)


def test_card_preprocessing_snippet_is_timms_transform(data, tmp_path):
    """The card's PIL + numpy snippet against timm's create_transform on real photographs
    (scikit-image's, at their own sizes): identical, max |Δ| 0, for each crop mode and for a
    crop_pct whose resize timm floors (224 / 0.9 = 248.9: 248 px, where rounding gives 249)."""
    from dataclasses import replace

    from PIL import Image

    from vit_porting.publish.card import preprocessing_snippet

    files = [str(p) for p in data[1] if p.suffix == ".jpg"]
    cfg = {"mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225], "interpolation": "bicubic"}
    cait = get_variant(VARIANT)
    cases = {
        "cait": (cait, {"timm_model": VARIANT}),
        "crop_pct_0.9": (replace(cait, preprocessing={**cait.preprocessing, "crop_pct": 0.9}),
                         {"config": {**cfg, "input_size": [3, 224, 224], "crop_pct": 0.9}}),
        "cvt-13-224": (get_variant("cvt-13-224"), {"config": {**cfg, "input_size": [3, 224, 224], "crop_pct": 0.875}}),
        "cvt-13-384": (get_variant("cvt-13-384"),
                       {"config": {**cfg, "input_size": [3, 384, 384], "crop_pct": 1.0, "crop_mode": "squash"}}),
    }
    for name, (spec, job) in cases.items():
        run_worker("eval", {"job": "timm_preprocess", "images": files,
                                       "out": str(tmp_path / f"{name}.npy"), **job}, tmp_path)
        theirs = np.load(tmp_path / f"{name}.npy")
        namespace: dict = {}
        exec(preprocessing_snippet(spec), namespace)  # noqa: S102 - the card's own code, as a user runs it
        ours = np.stack([namespace["preprocess"](Image.open(f)) for f in files])
        assert ours.shape == theirs.shape and ours.dtype == np.float32, name
        assert float(np.abs(ours - theirs).max()) == 0.0, name


def test_preprocessing_geometry():
    cait, cvt224, cvt384 = (spec_preprocessing(get_variant(n)) for n in (VARIANT, "cvt-13-224", "cvt-13-384"))
    assert (cait["crop_pct"], cait["scale_size"], cait["crop_mode"]) == (1.0, 224, "center")
    assert (cvt224["crop_pct"], cvt224["scale_size"], cvt224["crop_mode"]) == (0.875, 256, "center")
    assert (cvt384["scale_size"], cvt384["crop_mode"]) == (384, "squash")
    # a 300x200 image: short side to 224 (336x224), centre crop; squash keeps all of it
    ramp = np.tile(np.linspace(0, 255, 300).astype(np.uint8)[None, :, None], (200, 1, 3))
    center = resize_and_crop(ramp, cait)
    squash = resize_and_crop(ramp, {**cait, "crop_mode": "squash"})
    assert center.shape == squash.shape == (224, 224, 3) and center.dtype == np.uint8
    assert squash[:, 0].mean() < center[:, 0].mean() and squash[:, -1].mean() > center[:, -1].mean()


# -- dataset layouts ------------------------------------------------------------------------


def test_discover_class_folders_and_labels_file(data, tmp_path):
    root, paths = data
    ds = discover(root)
    assert ds.layout == "class_folders" and len(ds.files) == len(paths) == 10
    assert "tabby/notes.txt" not in ds.files
    # a model without class names (a head of its own): sorted subfolder order
    assert ds.classes == {"espresso": 0, "n04008634": 1, "tabby": 2}
    assert [ds.labels[ds.files.index(f"{c}/full.jpg")] for c in ("espresso", "n04008634", "tabby")] == [0, 1, 2]
    cmap = tmp_path / "classes.json"
    cmap.write_text(json.dumps({"tabby": 281, "espresso": 967, "n04008634": 812}))
    assert sorted(set(discover(root, class_map=cmap).labels.tolist())) == [281, 812, 967]
    names = tmp_path / "names.txt"  # one class name per line: index = line number
    names.write_text("n04008634\ntabby\nespresso\n")
    assert discover(root, class_map=names).labels[ds.files.index("n04008634/flip.png")] == 0
    # flat ImageNet-val style: '<file> <label>', the label an index or a class-map name
    labels = tmp_path / "labels.txt"
    labels.write_text("# file label\ntabby/full.jpg 5\nespresso/grey.png,espresso\n\nn04008634/crop.jpg 7\n")
    flat = discover(root, class_map=cmap, labels=labels)
    assert flat.layout == "labels_file"
    assert flat.files == ["tabby/full.jpg", "espresso/grey.png", "n04008634/crop.jpg"]
    assert flat.labels.tolist() == [5, 967, 7]
    labels.write_text("tabby/full.jpg zebra\n")
    with pytest.raises(EvalError, match="zebra"):
        discover(root, class_map=cmap, labels=labels)
    labels.write_text("tabby/missing.jpg 1\n")
    with pytest.raises(EvalError, match="not an image file"):
        discover(root, labels=labels)
    with pytest.raises(EvalError, match="no class subfolders"):
        discover(root / "tabby")


def test_class_folders_are_matched_to_the_models_class_names(ported, data, tmp_path):
    """ImageNet folder names (synsets or names, any case) go to the model's indices; folders
    that are not its class names are refused in one line saying how to map them."""
    from PIL import Image

    from vit_porting.manifest import read_record

    labels = read_record(ported).labels
    assert labels["set"] == "imagenet-1k" and len(labels["names"]) == 1000
    ds = discover(data[0], model_labels=labels)
    assert ds.classes == IMAGENET_INDEX
    assert ds.source["class_map"] == "folder names matched to the model's imagenet-1k class names"
    odd = tmp_path / "odd"
    for name in ("Tabby", "cat", "dog"):
        (odd / name).mkdir(parents=True)
        Image.new("RGB", (8, 8)).save(odd / name / "0.png")
    with pytest.raises(EvalError) as refused:
        discover(odd, model_labels=labels)
    message = str(refused.value)
    assert "\n" not in message and "cat, dog are not class names" in message and "--class-map" in message
    cmap = tmp_path / "map.json"
    cmap.write_text(json.dumps({"Tabby": 281, "cat": 285, "dog": 207}))
    assert discover(odd, class_map=cmap, model_labels=labels).classes == {"Tabby": 281, "cat": 285, "dog": 207}


def test_class_attention_maps_cvt_layout():
    """CvT: row 0 of the last stage's maps, over the stride-2 key/value grid (14x14 -> 7x7)."""
    spec = get_variant("cvt-13-224")
    rng = np.random.default_rng(0)
    outputs = {f"stage2_blocks_{j}_attn": rng.random((1, 6, 1 + 196, 1 + 49)).astype(np.float32) for j in range(10)}
    outputs["stage1_blocks_0_attn"] = rng.random((1, 3, 784, 196)).astype(np.float32)
    maps, last = class_attention_maps(spec, outputs)
    assert list(maps) == ["stage2_blocks_9_attn"] and last == "stage2_blocks_9_attn"
    assert np.array_equal(maps[last], outputs[last][0, :, 0, 1:].reshape(6, 7, 7))
    every, _ = class_attention_maps(spec, outputs, blocks="all")
    assert list(every) == [f"stage2_blocks_{j}_attn" for j in range(10)]


# -- evaluation -----------------------------------------------------------------------------


def test_eval_every_runtime_agrees(evaluated, ported, data):
    report = evaluated
    n = len(data[1])
    assert set(report) >= {"variant", "family", "artifact_folder", "random_weights", "origin", "dataset",
                           "preprocessing", "batch", "runtimes", "agreement", "time", "toolkit_version"}
    assert report["variant"] == VARIANT and report["random_weights"] is True
    assert report["dataset"] == {**report["dataset"], "layout": "class_folders", "num_images": n,
                                 "num_classes_in_data": 3,
                                 "class_map": "folder names matched to the model's imagenet-1k class names"}
    assert report["class_names"] == "imagenet-1k"
    assert all(w["label_name"] in ("tabby", "espresso", "projectile") for w in report["agreement"]["worst"])
    assert report["preprocessing"]["crop_pct"] == 1.0 and report["preprocessing"]["interpolation"] == "bicubic"
    assert list(report["runtimes"]) == ["pytorch", "keras", "savedmodel", "onnxruntime"]
    for name, r in report["runtimes"].items():
        assert set(r) >= {"top1", "top5", "correct_top1", "correct_top5", "loads", "images_per_second"}, name
        assert r["top1"] == pytest.approx(r["correct_top1"] / n) and r["top5"] == pytest.approx(r["correct_top5"] / n)
        assert 0 <= r["correct_top1"] <= r["correct_top5"] <= n
        assert 0 < r["run_seconds"] <= r["seconds"] and 0 < r["load_seconds"] <= r["seconds"], name
    agree = report["agreement"]
    assert agree["reference"] == "pytorch"
    assert agree["top1_disagreements"] <= 1 and agree["images_all_agree"] == n - agree["top1_disagreements"]
    assert set(agree["pairwise"]) == {f"{r} vs pytorch" for r in ("keras", "savedmodel", "onnxruntime")}
    for pair, p in agree["pairwise"].items():
        assert p["max_abs_logit_diff"] < 1e-4 and p["top1_agreement"] >= (n - 1) / n, pair
    assert len(agree["worst"]) == min(10, n)
    assert all(set(w["top1"]) == set(report["runtimes"]) for w in agree["worst"])
    # written next to the artifacts, under eval/, which the manifest documents and verify leaves out
    on_disk = json.loads((ported / "eval" / "eval.json").read_text())
    assert on_disk["agreement"]["top1_disagreements"] == agree["top1_disagreements"]
    md = (ported / "eval" / "eval.md").read_text()
    assert "Random weights" in md and "| onnxruntime |" in md
    assert "eval/" in read_manifest(ported)["not_checksummed"]
    assert not any(f.startswith("eval/") for f in read_manifest(ported)["files"])
    assert verify_manifest(ported) == []


def test_eval_labels_file_counts_exactly(ported, data, tmp_path):
    """Labels chosen from the model's own ranking (ONNX Runtime in this process: no torch), so
    the expected top-1/top-5 counts are known: via the CLI, flat layout, one runtime."""
    import onnxruntime as ort

    root, paths = data
    pre = spec_preprocessing(get_variant(VARIANT))
    rel = [p.relative_to(root).as_posix() for p in paths]
    images = np.stack([preprocess_image(p, pre) for p in paths])
    session = ort.InferenceSession(str(ported / "model.onnx"), providers=["CPUExecutionProvider"])
    logits = session.run(["logits"], {session.get_inputs()[0].name: images})[0]
    ranked = np.argsort(-logits, axis=-1)
    # image i: label = its top-1 (i % 3 == 0), its 3rd choice (i % 3 == 1), its 100th (i % 3 == 2)
    labels = [int(ranked[i, (0, 2, 99)[i % 3]]) for i in range(len(rel))]
    (tmp_path / "labels.txt").write_text("".join(f"{f} {lab}\n" for f, lab in zip(rel, labels, strict=True)))
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, "-m", "vit_porting.cli", "eval", str(ported), str(root), "--labels",
                           str(tmp_path / "labels.txt"), "--runtimes", "onnxruntime", "--batch", "3", "--no-progress"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    report = json.loads((ported / "eval" / "eval.json").read_text())
    assert report["dataset"]["layout"] == "labels_file" and report["dataset"]["num_images"] == len(rel)
    r = report["runtimes"]["onnxruntime"]
    expected_top1 = sum(1 for i in range(len(rel)) if i % 3 == 0)
    expected_top5 = sum(1 for i in range(len(rel)) if i % 3 in (0, 1))
    assert (r["correct_top1"], r["correct_top5"]) == (expected_top1, expected_top5)
    assert report["agreement"]["pairwise"] == {} and report["agreement"]["top1_disagreements"] == 0
    assert "top-1" in proc.stdout and "RANDOM weights" in proc.stdout
    assert verify_manifest(ported) == []
    # a file outside eval/ is still caught
    (ported / "stray.txt").write_text("x")
    try:
        assert any("stray.txt" in p for p in verify_manifest(ported))
    finally:
        (ported / "stray.txt").unlink()


def test_eval_refuses_unknown_runtime_and_bad_labels(ported, data, tmp_path):
    with pytest.raises(EvalError, match="unknown runtime"):
        evaluate(ported, data[0], EvalOptions(runtimes=["tflite"], progress=False, log=lambda m: None))
    (tmp_path / "labels.txt").write_text("tabby/full.jpg 1000\n")
    with pytest.raises(EvalError, match="1000 classes"):
        evaluate(ported, data[0], EvalOptions(labels=str(tmp_path / "labels.txt"), progress=False,
                                              log=lambda m: None))


# -- attention pictures ---------------------------------------------------------------------


def test_attention_png_draws_the_model_outputs(ported, data, tmp_path):
    import keras
    from PIL import Image

    import vit_porting.families.cait.model  # noqa: F401  (registers the layers for load_model)
    from vit_porting.attention import attention_figure

    image = data[0] / "n04008634" / "crop.jpg"  # non-square
    results = {}
    for source in ("keras", "savedmodel"):
        results[source] = attention_figure(ported, image, out=tmp_path / f"{source}.png", source=source,
                                           log=lambda m: None)
    res = results["keras"]
    blocks = ["blocks_token_only_0_attn", "blocks_token_only_1_attn"]
    assert list(res["maps"]) == blocks and res["saliency_block"] == blocks[-1]
    kinds = [p["kind"] for p in res["panels"]]
    assert len(res["panels"]) == 2 + len(blocks) * HEADS
    assert kinds.count("input") == 1 and kinds.count("saliency") == 1 and kinds.count("head") == 8
    assert {(p["block"], p["head"]) for p in res["panels"] if p["kind"] == "head"} == \
        {(b, h) for b in blocks for h in range(HEADS)}
    with Image.open(res["png"]) as png:
        assert png.format == "PNG" and png.size[0] > 200 and png.size[1] > 200
    # the image the model saw is the shared preprocessing's
    pre = spec_preprocessing(get_variant(VARIANT))
    assert np.array_equal(res["input"], preprocess_image(image, pre))
    assert np.array_equal(res["pixels"], resize_and_crop(image, pre))
    # the maps drawn are the model's own attention outputs on that image (model.keras, in this process)
    model = keras.saving.load_model(ported / "model.keras", compile=False)
    outputs = {k: keras.ops.convert_to_numpy(v) for k, v in model(res["input"][None], training=False).items()}
    for name in blocks:
        assert outputs[name].shape == (1, HEADS, 1, 197)
        expected = outputs[name][0, :, 0, 1:].reshape(HEADS, 14, 14)
        np.testing.assert_allclose(res["maps"][name], expected, rtol=0, atol=1e-6)
        np.testing.assert_allclose(results["savedmodel"]["maps"][name], expected, rtol=0, atol=1e-5)
    np.testing.assert_allclose(res["saliency"], outputs[blocks[-1]][0, :, 0, 1:].mean(axis=0).reshape(14, 14),
                               atol=1e-6)
    assert res["top5"][0] == int(np.argmax(outputs["logits"][0]))
    assert results["savedmodel"]["source"] == "savedmodel" and Path(results["savedmodel"]["png"]).is_file()
