"""Model cards and publishing: the card of a real port, every usage snippet run as written in
each staged form's folder, each form opened by its own ecosystem's loader, the refusals of a
push, staging contents, tokens kept out of every output, and the upload calls at the libraries'
network boundary."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import zipfile
from fnmatch import fnmatch
from pathlib import Path

import huggingface_hub
import kagglehub
import numpy as np
import pytest

from vit_porting import __version__
from vit_porting.families.registry import get_variant
from vit_porting.manifest import PortRecord, read_manifest, read_record, sha256_file, verify_manifest, write_manifest
from vit_porting.pipeline import PortOptions, port
from vit_porting.publish.card import CARD_NAME, RANDOM_LINE, parse_card, python_blocks, render_card
from vit_porting.publish.forms import FORMATS
from vit_porting.publish.upload import PublishError, parse_target, publish, stage
from vit_porting.safety import STAGING_MARKER

from conftest import ROOT

SPEC = get_variant("cait_xxs24_224").with_config(depth=1)
HF_TARGET = "hf://vit-porting-tests/cait-xxs24-depth1"
KAGGLE_TARGET = "kaggle://vit-porting-tests/cait-xxs24"
FORMS = ["keras", "onnx", "pytorch", "savedmodel"]
FAKE_HF_TOKEN = "hf_FAKEtokenFORtests0123456789abcdefXYZ"
FAKE_KAGGLE_KEY = "fakekagglekey0123456789abcdef4242"
TOKEN_ENV = {"HF_TOKEN": FAKE_HF_TOKEN, "KAGGLE_USERNAME": "vit-porting-tests", "KAGGLE_KEY": FAKE_KAGGLE_KEY,
             "HF_HUB_OFFLINE": "1"}


@pytest.fixture(scope="module")
def ported(tmp_path_factory) -> tuple[Path, dict]:
    """One random-weights port of depth-1 cait_xxs24_224 with every export (the snippets need them)."""
    root = tmp_path_factory.mktemp("publish") / "artifacts"
    report = port(SPEC, PortOptions(weights="random", out_root=root, log=lambda m: None))
    return root / SPEC.name, report


@pytest.fixture
def tokens(monkeypatch):
    for key, value in TOKEN_ENV.items():
        monkeypatch.setenv(key, value)


class Recorder:
    """Stands in for the network boundary: records each call and what the folder held then,
    less what the call's ignore_patterns keep back (as both libraries do)."""

    def __init__(self):
        self.calls: list[tuple[str, dict]] = []

    def record(self, name: str, kwargs: dict, folder: str | None = None) -> None:
        ignored = kwargs.get("ignore_patterns") or []
        listing = sorted(rel for rel in (p.relative_to(folder).as_posix() for p in Path(folder).rglob("*")
                                         if p.is_file()) if not any(fnmatch(rel, pat) for pat in ignored)) \
            if folder else None
        self.calls.append((name, {**kwargs, "_listing": listing}))


@pytest.fixture
def fake_network(monkeypatch) -> Recorder:
    rec = Recorder()

    def create_repo(self, repo_id, **kwargs):
        rec.record("create_repo", {"repo_id": repo_id, **kwargs})
        return f"https://huggingface.co/{repo_id}"

    def upload_folder(self, **kwargs):
        rec.record("upload_folder", kwargs, kwargs["folder_path"])
        return "commit"

    def model_upload(handle, local_model_dir, license_name=None, version_notes="", ignore_patterns=None, **kw):
        rec.record("model_upload", {"handle": handle, "local_model_dir": local_model_dir,
                                    "license_name": license_name, "version_notes": version_notes,
                                    "ignore_patterns": ignore_patterns, **kw}, local_model_dir)

    monkeypatch.setattr(huggingface_hub.HfApi, "create_repo", create_repo)
    monkeypatch.setattr(huggingface_hub.HfApi, "upload_folder", upload_folder)
    monkeypatch.setattr(kagglehub, "model_upload", model_upload)
    return rec


def _copy(folder: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "artifacts" / folder.name
    shutil.copytree(folder, copy)
    return copy


def _cli(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "vit_porting.cli", "publish", *args], cwd=ROOT, capture_output=True,
                          text=True, env={**os.environ, **(env or {})}, timeout=300)


# --- the card ---------------------------------------------------------------------------------

def test_port_writes_a_card_the_manifest_covers(ported):
    folder, report = ported
    assert (folder / CARD_NAME).is_file()
    assert verify_manifest(folder) == []
    manifest = read_manifest(folder)
    assert CARD_NAME in manifest["files"]

    meta, body = parse_card((folder / CARD_NAME).read_text())
    assert meta["library_name"] == "keras"
    assert meta["pipeline_tag"] == "image-classification"
    assert meta["license"] == "apache-2.0"
    assert {"image-classification", "cait", "keras", "onnx", "safetensors", "timm", "random-weights"} <= set(
        meta["tags"])
    assert "datasets" not in meta and "base_model" not in meta  # random weights were trained on nothing
    assert body.lstrip("\n").splitlines()[0] == RANDOM_LINE

    # what the model is, its source checkpoint and paper, preprocessing, toolkit version
    assert "cait_xxs24_224" in body and "depth 1" in body
    assert "timm/cait_xxs24_224.fb_dist_in1k" in body
    assert "Touvron et al., Going deeper with Image Transformers" in body and "arXiv:2103.17239" in body
    assert "mean: `[0.485, 0.456, 0.406]`" in body and "std: `[0.229, 0.224, 0.225]`" in body
    assert "shorter side to 224 px, `bicubic` interpolation" in body and "centre 224x224 (crop_pct 1.0)" in body
    assert f"vit-porting {__version__}" in body

    # the parity table: one row per runtime of parity.json with its numbers
    assert report["passed"] and "**PASSED**" in body
    rows = {line.split("|")[1].strip(): [c.strip() for c in line.split("|")[1:-1]]
            for line in body.splitlines() if line.startswith("| ") and line.count("|") == 11}
    for r in report["runtimes"]:
        row = rows[r["runtime"]]
        head = next(o for o in r["outputs"] if o["output"] == r["head_output"])
        assert row[1] == r["device"] and row[2] == "pass"
        assert row[3] == f"{r['head_max_abs_diff']:.2e}" and row[5] == f"{head['tolerance']:.2e}"
        assert row[6] == f"{r['top1_agreement']:.0%}"
    assert {"keras_eager", "keras_compiled", "keras_file", "savedmodel", "onnxruntime"} <= set(rows)

    # a snippet per format; timm reads the folder's config.json (this port's reduced depth in it)
    blocks = python_blocks(body)
    joined = "\n".join(blocks)
    for needle in ("keras.saving.load_model(\"model.keras\"", "import vit_porting.families.cait.model",
                   "tf.saved_model.load(", "keras.layers.TFSMLayer(", "ort.InferenceSession(\"model.onnx\"",
                   "timm.create_model(\"local-dir:.\", pretrained=True)", "def preprocess(image"):
        assert needle in joined, needle
    timm_config = json.loads((folder / "config.json").read_text())
    assert timm_config["architecture"] == "cait_xxs24_224" and timm_config["model_args"] == {"depth": 1}
    assert timm_config["label_names"][281] == "n02123045" and timm_config["pretrained_cfg"]["crop_pct"] == 1.0


def test_card_of_a_trained_checkpoint_and_of_cvt(ported):
    """Front matter for trained weights (datasets, base_model, model-index from an evaluation; no
    random line), and a CvT card whose snippets at least compile."""
    folder, report = ported
    record = read_record(folder)
    trained = {**report, "random_weights": False}
    origin = {"kind": "pretrained", "description": "timm cait_xxs24_224.fb_dist_in1k (hf://timm/x)",
              "random_weights": False}
    evaluation = {"runtimes": {"pytorch": {"top1": 0.8125, "top5": 0.9375}, "onnxruntime": {"top1": 0.8, "top5": 0.9}},
                  "dataset": {"path": "/data/imagenet-val", "num_images": 16}}
    pytorch = FORMATS["pytorch"]
    meta, body = parse_card(render_card(PortRecord(record.spec, origin, record.labels), trained, {"toolkit": "9.9"},
                                        fmt=pytorch, evaluation=evaluation))
    assert meta["datasets"] == ["imagenet-1k"] and meta["base_model"] == "timm/cait_xxs24_224.fb_dist_in1k"
    assert meta["library_name"] == "timm" and "random-weights" not in meta["tags"] and "RANDOM" not in body
    (entry,) = meta["model-index"]
    metrics = entry["results"][0]["metrics"]
    assert entry["results"][0]["dataset"]["name"] == "imagenet-val"
    assert [m["value"] for m in metrics] == [81.25, 93.75] and "pytorch" in metrics[0]["name"]

    cvt = get_variant("cvt-13-384-22k")
    meta, body = parse_card(render_card(PortRecord(cvt, origin), trained, {"toolkit": "9.9"}))
    assert meta["license"] == "apache-2.0" and meta["datasets"] == ["imagenet-21k", "imagenet-1k"]
    # transformers' loader would compute exact GELU on these checkpoints: not advertised
    assert meta["base_model"] == "microsoft/cvt-13-384-22k" and "transformers" not in meta["tags"]
    assert "library_name" not in parse_card(render_card(PortRecord(cvt, origin), trained, {"toolkit": "9.9"},
                                                        fmt=pytorch))[0]
    blocks = python_blocks(body)
    assert any("CvtForImageClassification" in b and "QuickGELUActivation" in b for b in blocks)
    assert any("import vit_porting.families.cvt.model" in b for b in blocks)
    for block in blocks:
        compile(block, "<card>", "exec")


def _run_blocks(card: Path, env: dict) -> dict[str, list[list[int]]]:
    """Each ```python block of ``card``, run as written in the card's folder, each in its own
    process; the top-5 classes each printed, by the loader it used."""
    blocks = python_blocks(card.read_text())
    procs = [subprocess.Popen([sys.executable, "-c", block], cwd=card.parent, env=env, text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE) for block in blocks]
    predictions: dict[str, list[list[int]]] = {}
    for block, proc in zip(blocks, procs, strict=True):
        stdout, stderr = proc.communicate(timeout=300)
        assert proc.returncode == 0, f"snippet failed:\n{block}\n--- stderr:\n{stderr[-3000:]}"
        if "def preprocess(" in block:
            assert "(1, 224, 224, 3) float32" in stdout
            continue
        found = [json.loads(m) for m in re.findall(r"^top-5 classes: (\[.*\])$", stdout, re.M)]
        assert found and "names: [" in stdout, f"no prediction printed by:\n{block}\n{stdout}"
        loaders = (("pytorch", "import torch"), ("onnxruntime", "onnxruntime"), ("TFSMLayer", "TFSMLayer"),
                   ("load_model", "load_model"))
        key = next(name for name, needle in loaders if needle in block)
        predictions[key] = found
    return predictions


def test_every_card_snippet_runs_in_each_staged_form(ported, tmp_path):
    """Each staged form (a repository of its own) loads back offline: every ```python block of
    its card runs as written in its folder, and every form prints the same predictions as the
    artifact folder's card does."""
    folder, _ = ported
    staged = stage(folder, HF_TARGET, tmp_path / "stage")
    assert sorted(staged.forms) == FORMS
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "TF_CPP_MIN_LOG_LEVEL": "3",
           "KERAS_BACKEND": "tensorflow", "CUDA_VISIBLE_DEVICES": ""}
    predictions = {"folder": _run_blocks(folder / CARD_NAME, env)}
    assert set(predictions["folder"]) == {"pytorch", "onnxruntime", "TFSMLayer", "load_model"}
    for key, form in staged.forms.items():
        predictions[key] = _run_blocks(form.folder / CARD_NAME, env)
    assert list(predictions["keras"]) == ["load_model"] and list(predictions["pytorch"]) == ["pytorch"]
    assert list(predictions["onnx"]) == ["onnxruntime"] and len(predictions["savedmodel"]["TFSMLayer"]) == 2
    everything = [p for card in predictions.values() for runs in card.values() for p in runs]
    assert all(len(p) == 5 for p in everything)
    assert len({p[0] for p in everything}) == 1, predictions  # same top-1 in every format
    assert all(len(set(p) & set(everything[0])) >= 4 for p in everything), predictions


_OUTSIDE_THE_TOOLKIT = '''
import importlib.abc, json, sys
import numpy as np


class NoToolkit(importlib.abc.MetaPathFinder):
    """The porting stack stays out; a Keras user's `pip install vit-porting` (the family's Keras
    layers, which import Keras alone) is let in where the form needs it."""

    def find_spec(self, name, path=None, target=None):
        top = name.split(".")[0]
        family_module = name.startswith("vit_porting.families.") and (
            name.count(".") == 2 and name.rsplit(".", 1)[1] not in ("registry", "torch_reference")
            or name.count(".") == 3 and name.endswith(".model"))
        allowed = ALLOW_KERAS_LAYERS and (name in ("vit_porting", "vit_porting.families") or family_module)
        if top == "vit_porting" and not allowed:
            raise ImportError(f"the toolkit was imported: {name}")


sys.meta_path.insert(0, NoToolkit())
images = np.load(IMAGES)
'''

_LOADERS = {
    # form: (code computing `logits` from `images` in the staged form's folder, whether Keras layers are needed)
    "keras": ("""
import keras
import vit_porting.families.{family}.model
logits = keras.ops.convert_to_numpy(keras.saving.load_model(FOLDER, compile=False)(images)["logits"])
""", True),
    "savedmodel": ("""
import tensorflow as tf
serve = tf.saved_model.load(FOLDER + "/saved_model").signatures["serving_default"]
logits = serve(images=tf.constant(images))["logits"].numpy()
""", False),
    "onnx": ("""
import onnxruntime as ort
session = ort.InferenceSession(FOLDER + "/model.onnx", providers=["CPUExecutionProvider"])
logits = session.run(None, {{"images": images}})[0]
""", False),
    "pytorch": ("""
import timm, torch
model = timm.create_model("local-dir:" + FOLDER, pretrained=True).eval()
with torch.no_grad():
    logits = model(torch.from_numpy(images).permute(0, 3, 1, 2)).numpy()
""", False),
}


def _reference_logits(folder: Path, images: np.ndarray, work: Path) -> np.ndarray:
    """The port's PyTorch fp32 reference on ``images``, from the folder's model.safetensors."""
    from vit_porting.parity.outputs import read_outputs
    from vit_porting.workers.protocol import run_worker

    work.mkdir(parents=True, exist_ok=True)
    np.savez(work / "inputs.npz", images=images)
    run_worker("torch", {"job": "reference", "spec": read_record(folder).spec.to_dict(),
                                    "source": str(folder / "model.safetensors"), "inputs": str(work / "inputs.npz"),
                                    "out": str(work / "reference")}, work)
    return np.asarray(read_outputs(work / "reference")["logits"])


@pytest.fixture(scope="module")
def cvt_ported(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("cvt") / "artifacts"
    spec = get_variant("cvt-13-224").with_config(depths=(1, 2, 3), image_size=64)
    report = port(spec, PortOptions(weights="random", out_root=root, photos=False, log=lambda m: None))
    assert report["passed"]
    return root / spec.name


def test_each_staged_form_opens_with_its_ecosystems_loader(ported, cvt_ported, tmp_path):
    """What publish stages for a CaiT and a CvT port, each form opened by its ecosystem's own
    loader in a process that cannot import the toolkit (Keras: only the family's Keras layers,
    what `pip install vit-porting` gives), agrees with the port's PyTorch reference within the
    parity tolerance. CvT's PyTorch form has no config.json: transformers' from_pretrained
    would compute exact GELU instead of the checkpoints' QuickGELU, so it must fail loudly."""
    from vit_porting.parity.compare import load_policy

    tolerance = load_policy()["cpu"]["logits"]["max_normalized_diff"]
    env = {**{k: v for k, v in os.environ.items() if k != "PYTHONPATH"}, "HF_HUB_OFFLINE": "1",
           "TF_CPP_MIN_LOG_LEVEL": "3", "KERAS_BACKEND": "tensorflow"}
    for folder in (ported[0], cvt_ported):
        spec = read_record(folder).spec
        staged = stage(folder, "hf://vit-porting-tests/" + spec.name.replace("_", "-"), tmp_path / spec.name)
        images = np.random.default_rng(3).standard_normal((2, spec.image_size, spec.image_size, 3)).astype(np.float32)
        np.save(tmp_path / f"{spec.name}.npy", images)
        reference = _reference_logits(folder, images, tmp_path / f"{spec.name}-work")
        expected = set(FORMS) - ({"pytorch"} if spec.family == "cvt" else set())
        for key, (code, keras_layers) in _LOADERS.items():
            if key not in expected:
                continue
            script = (f"IMAGES = {str(tmp_path / f'{spec.name}.npy')!r}\nFOLDER = {str(staged.forms[key].folder)!r}\n"
                      f"ALLOW_KERAS_LAYERS = {keras_layers}\n" + _OUTSIDE_THE_TOOLKIT
                      + code.format(family=spec.family) + "\nnp.save(IMAGES + '.out.npy', logits)\n"
                      + "print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] == 'vit_porting')))")
            proc = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, env=env, capture_output=True,
                                  text=True, timeout=300)
            assert proc.returncode == 0, (spec.name, key, proc.stderr[-3000:])
            toolkit = json.loads(proc.stdout.splitlines()[-1])
            stack = ("vit_porting.parity", "vit_porting.workers", "vit_porting.pipeline", "vit_porting.weights")
            assert not any(m.startswith(stack) for m in toolkit), toolkit
            logits = np.load(tmp_path / f"{spec.name}.npy.out.npy")
            diff = float(np.abs(logits - reference).max() / np.abs(reference).max())
            assert diff <= tolerance, (spec.name, key, diff)
    # transformers 5 builds a default CvtConfig when a folder has no config.json, and a cvt-13's
    # weights then load into exact GELU: the weights are published under a name it does not read
    cvt_pytorch = tmp_path / "cvt-13-224" / "pytorch"
    assert sorted(p.name for p in cvt_pytorch.iterdir()) == [
        "README.md", "manifest.json", "model_quickgelu.safetensors", "parity.json", "parity.md", "vit_porting.json"]
    proc = subprocess.run([sys.executable, "-c", "from transformers import CvtForImageClassification as C; "
                           f"C.from_pretrained({str(cvt_pytorch)!r}, num_labels=1000)"], env=env, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode != 0 and "model.safetensors" in proc.stderr, proc.stderr[-2000:]
    # the card's snippet (explicit CvtConfig, the QuickGELU patch, the published name) predicts as ONNX does
    runs = {key: _run_blocks(tmp_path / "cvt-13-224" / key / CARD_NAME, env) for key in ("pytorch", "onnx")}
    assert runs["pytorch"]["pytorch"] == runs["onnx"]["onnxruntime"]


# --- staging -----------------------------------------------------------------------------------

def test_dry_run_stages_exactly_the_upload_and_leaks_no_token(ported, tmp_path):
    folder, _ = ported
    before = read_manifest(folder)
    for target, places in ((HF_TARGET, {"keras": "hf://vit-porting-tests/cait-xxs24-depth1",
                                        "onnx": "hf://vit-porting-tests/cait-xxs24-depth1-onnx"}),
                           (KAGGLE_TARGET, {"keras": "kaggle://vit-porting-tests/cait-xxs24/keras/cait-xxs24-224",
                                            "savedmodel": "kaggle://vit-porting-tests/cait-xxs24/tensorFlow2/"
                                                          "cait-xxs24-224"})):
        stage_dir = tmp_path / parse_target(target).slug
        result = _cli(str(folder), "--target", target, "--stage-dir", str(stage_dir), env=TOKEN_ENV)
        assert result.returncode == 0, result.stderr
        output = result.stdout + result.stderr
        assert (stage_dir / STAGING_MARKER).is_file()  # publish's proof it made the folder, never uploaded
        assert sorted(p.name for p in stage_dir.iterdir() if p.is_dir()) == FORMS
        common = {CARD_NAME, "manifest.json", "vit_porting.json", "parity.json", "parity.md"}
        wanted = {"keras": {"config.json", "metadata.json", "model.weights.h5"},
                  "savedmodel": {f for f in before["files"] if f.startswith("saved_model/")},
                  "onnx": {"model.onnx", "model_attention.onnx"}, "pytorch": {"model.safetensors", "config.json"}}
        for key in FORMS:
            form = stage_dir / key
            staged = {p.relative_to(form).as_posix(): p for p in form.rglob("*") if p.is_file()}
            assert set(staged) == common | wanted[key], key
            # the port's files byte for byte (model.keras unpacked), the card rendered for the form
            for rel in staged.keys() & before["files"].keys() - {CARD_NAME, "config.json"}:
                assert sha256_file(staged[rel]) == before["files"][rel]["sha256"], rel
            assert verify_manifest(form) == []
            # the listing names every staged file with its size
            for rel, path in staged.items():
                assert re.search(rf"^\s+{path.stat().st_size:,d}\s+{re.escape(key + '/' + rel)}$", output, re.M), rel
            card = staged[CARD_NAME].read_text()
            assert parse_card(card)[1].lstrip("\n").splitlines()[0] == RANDOM_LINE
            # no token anywhere: output, staged files
            for secret in (FAKE_HF_TOKEN, FAKE_KAGGLE_KEY):
                assert secret not in output
                for path in staged.values():
                    assert secret.encode() not in path.read_bytes(), path
        for key, place in places.items():
            assert read_manifest(stage_dir / key)["published"]["target"] == place and f"-> {place}" in output
            handle = place.split("://", 1)[1]
            card = (stage_dir / key / CARD_NAME).read_text()
            assert (f"hf download {handle}" if target.startswith("hf") else f'kagglehub.model_download("{handle}")') \
                in card
        assert "--push would be refused" in output and "random" in output
    with zipfile.ZipFile(folder / "model.keras") as archive:  # the Keras form is model.keras, unpacked
        assert (tmp_path / parse_target(HF_TARGET).slug / "keras" / "model.weights.h5").read_bytes() == archive.read(
            "model.weights.h5")
    assert verify_manifest(folder) == [] and read_manifest(folder) == before  # the port is untouched


def test_default_staging_folder_and_targets(ported, tmp_path):
    folder = _copy(ported[0], tmp_path)
    staged = stage(folder, KAGGLE_TARGET)
    assert staged.folder == tmp_path / "artifacts" / ".staging" / "kaggle-vit-porting-tests--cait-xxs24"
    assert staged.random_weights and any("random" in r for r in staged.refusals)
    assert parse_target("hf://owner/name").id == "owner/name"
    named = parse_target("kaggle://owner/model/v2")
    assert named.place(FORMATS["onnx"], "cait_xxs24_224") == "owner/model/onnx/v2"
    for bad in ("owner/name", "hf://owner", "hf://a/b/c", "kaggle://a", "kaggle://a/b/c/d", "s3://a/b"):
        with pytest.raises(PublishError):
            parse_target(bad)


# --- refusals ----------------------------------------------------------------------------------

def test_push_refuses_random_weights_without_the_force_flag(ported, tmp_path, tokens, fake_network):
    with pytest.raises(PublishError, match="weights are random"):
        publish(ported[0], HF_TARGET, push=True, stage_dir=tmp_path / "s", log=lambda m: None)
    assert fake_network.calls == [] and not (tmp_path / "s").exists()
    result = _cli(str(ported[0]), "--target", HF_TARGET, "--push", "--stage-dir", str(tmp_path / "s2"),
                  env=TOKEN_ENV)
    assert result.returncode == 2 and "refusing to upload" in result.stderr and "--allow-random" in result.stderr
    assert FAKE_HF_TOKEN not in result.stdout + result.stderr


def test_push_refuses_files_changed_since_the_port(ported, tmp_path, tokens, fake_network):
    folder = _copy(ported[0], tmp_path)
    data = bytearray((folder / "model.safetensors").read_bytes())
    data[-1] ^= 1
    (folder / "model.safetensors").write_bytes(bytes(data))
    (folder / "notes.txt").write_text("added after the port")
    with pytest.raises(PublishError, match="files changed since the port") as info:
        publish(folder, HF_TARGET, push=True, allow_random=True, log=lambda m: None)
    assert "model.safetensors: sha256" in str(info.value) and "notes.txt: present but not in the manifest" in str(
        info.value)
    assert fake_network.calls == []


def test_push_refuses_failed_parity(ported, tmp_path, tokens, fake_network):
    """A port whose parity failed, recorded consistently (parity.json and the manifest agree, so
    the checksums verify): refused even with the random-weights flag."""
    folder = _copy(ported[0], tmp_path)
    report = json.loads((folder / "parity.json").read_text())
    report["passed"] = False
    report["runtimes"][-1]["passed"] = False
    (folder / "parity.json").write_text(json.dumps(report, indent=1))
    manifest = read_manifest(folder)
    write_manifest(folder, manifest["variant"], manifest["family"], manifest["origin"], False, __version__)
    assert verify_manifest(folder) == []
    with pytest.raises(PublishError, match="parity did not pass") as info:
        publish(folder, KAGGLE_TARGET, push=True, allow_random=True, log=lambda m: None)
    assert report["runtimes"][-1]["runtime"] in str(info.value)
    assert fake_network.calls == []


def test_push_refuses_without_a_token(ported, tmp_path, monkeypatch, fake_network):
    for key in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setattr(huggingface_hub.constants, "HF_TOKEN_PATH", str(tmp_path / "no-token"))
    with pytest.raises(PublishError, match="no Hugging Face token"):
        publish(ported[0], HF_TARGET, push=True, allow_random=True, stage_dir=tmp_path / "s", log=lambda m: None)
    assert fake_network.calls == []


# --- uploads at the network boundary -------------------------------------------------------------

def test_push_to_hugging_face_calls_create_repo_and_upload_folder(ported, tmp_path, tokens, fake_network):
    lines: list[str] = []
    staged = publish(ported[0], HF_TARGET, push=True, allow_random=True, stage_dir=tmp_path / "s",
                     private=True, log=lines.append)
    repo = "vit-porting-tests/cait-xxs24-depth1"
    repos = {"keras": repo, "savedmodel": f"{repo}-savedmodel", "onnx": f"{repo}-onnx", "pytorch": f"{repo}-pytorch"}
    assert len(fake_network.calls) == 2 * len(repos)
    for (name1, create), (name2, upload), (key, form) in zip(fake_network.calls[::2], fake_network.calls[1::2],
                                                             staged.forms.items(), strict=True):
        assert name1 == "create_repo" and create["repo_id"] == repos[key]
        assert create["repo_type"] == "model" and create["exist_ok"] is True and create["private"] is True
        assert name2 == "upload_folder" and upload["repo_id"] == repos[key] and upload["repo_type"] == "model"
        assert Path(upload["folder_path"]) == form.folder == tmp_path / "s" / key
        assert upload["_listing"] == sorted(form.files)  # exactly what the dry run listed
        assert "cait_xxs24_224" in upload["commit_message"] and "token" not in upload and "token" not in create
        meta, body = parse_card((form.folder / CARD_NAME).read_text())
        assert body.lstrip("\n").splitlines()[0] == RANDOM_LINE and meta["pipeline_tag"] == "image-classification"
        assert all(f"https://huggingface.co/{r}" in body for r in repos.values())  # each card links every form
        assert verify_manifest(form.folder) == []
    assert parse_card((tmp_path / "s" / "keras" / CARD_NAME).read_text())[0]["library_name"] == "keras"
    assert parse_card((tmp_path / "s" / "pytorch" / CARD_NAME).read_text())[0]["library_name"] == "timm"
    log = "\n".join(lines)
    assert all(f"Uploaded: https://huggingface.co/{r}" in log for r in repos.values())
    assert FAKE_HF_TOKEN not in log and FAKE_KAGGLE_KEY not in log


def test_push_to_kaggle_calls_model_upload(ported, tmp_path, tokens, fake_network):
    lines: list[str] = []
    staged = publish(ported[0], KAGGLE_TARGET, push=True, allow_random=True, stage_dir=tmp_path / "k",
                     log=lines.append)
    frameworks = {"keras": "keras", "savedmodel": "tensorFlow2", "onnx": "onnx", "pytorch": "pyTorch"}
    assert [name for name, _ in fake_network.calls] == ["model_upload"] * 4
    for (_, call), (key, form) in zip(fake_network.calls, staged.forms.items(), strict=True):
        handle = f"vit-porting-tests/cait-xxs24/{frameworks[key]}/cait-xxs24-224"
        assert call["handle"] == handle and Path(call["local_model_dir"]) == form.folder
        assert call["license_name"] == "Apache 2.0" and call["_listing"] == sorted(form.files) and "token" not in call
        assert f"kagglehub.model_download(\"{handle}\")" in (form.folder / CARD_NAME).read_text()
    log = "\n".join(lines)
    assert "Uploaded: https://www.kaggle.com/models/vit-porting-tests/cait-xxs24 (onnx)" in log
    assert FAKE_KAGGLE_KEY not in log and FAKE_HF_TOKEN not in log


_BLOCK_PORTING_STACK = '''
import sys


class _Refuse:
    """A meta-path finder refusing the porting stack: what a Keras user has not installed."""

    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {"torch", "torchvision", "timm", "transformers", "onnx", "onnxruntime",
                                  "onnxscript", "yaml", "safetensors", "huggingface_hub", "kagglehub"}:
            raise ModuleNotFoundError(f"No module named {name!r} (refused by the test)")


sys.meta_path.insert(0, _Refuse())
'''


def test_keras_snippet_runs_without_the_porting_stack(ported, tmp_path):
    """The card's own Keras snippet, run where torch, timm, transformers, ONNX, yaml and
    safetensors cannot be imported, opens model.keras and gives the logits the card's timm
    snippet computes from model.safetensors (within the parity tolerance)."""
    from vit_porting.parity.compare import load_policy

    folder, _ = ported
    card = (folder / CARD_NAME).read_text()
    keras_block = next(b for b in python_blocks(card) if "keras.saving.load_model" in b)
    timm_block = next(b for b in python_blocks(card) if "timm.create_model" in b)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TF_CPP_MIN_LOG_LEVEL": "3", "KERAS_BACKEND": "tensorflow"}
    logits = {}
    for name, code in (("keras", _BLOCK_PORTING_STACK + keras_block), ("timm", timm_block)):
        out = tmp_path / f"{name}.json"
        code += f"\nimport json\njson.dump(logits.tolist(), open({str(out)!r}, 'w'))\n"
        proc = subprocess.run([sys.executable, "-c", code], cwd=folder, env=env, capture_output=True, text=True,
                              timeout=300)
        assert proc.returncode == 0, f"{name} snippet failed:\n{proc.stderr[-3000:]}"
        logits[name] = np.asarray(json.loads(out.read_text()))
    tolerance = load_policy()["cpu"]["logits"]["max_normalized_diff"]
    assert logits["keras"].shape == logits["timm"].shape == (1, 1000)
    assert np.abs(logits["keras"] - logits["timm"]).max() / np.abs(logits["timm"]).max() <= tolerance


# --- reduced-precision variants ------------------------------------------------------------------

def _with_variants(folder: Path, random_weights: bool) -> dict[str, float | None]:
    """``folder`` given reduced-precision and LiteRT files and a parity report that measures them
    (crafted: staging reads the report, not the bytes), its manifest rewritten so that it verifies.
    Returns {file: photos top-1 agreement, None where the report has no row for it}."""
    agreements = {"model_int8.onnx": 0.97, "model_fp16.onnx": 1.0, "model.tflite": 1.0, "model_int8.tflite": 0.5,
                  "model_fp16.tflite": None}
    report = json.loads((folder / "parity.json").read_text())
    floor = {"photos": {"top1_agreement": 0.99}}
    names = {"model_int8.onnx": "onnx_int8", "model_fp16.onnx": "onnx_fp16", "model.tflite": "litert_fp32",
             "model_int8.tflite": "litert_int8"}
    rows = []
    for file, top1 in agreements.items():
        (folder / file).write_bytes((folder / "model.onnx").read_bytes()[:1000])
        if top1 is not None:
            measured = {"valid": True, "top1_agreement": top1, "top5_agreement": 1.0, "prob_max_abs_diff": 0.01,
                        "prob_mean_abs_diff": 0.001, "max_normalized_diff": 0.01}
            rows.append({"variant": names[file], "file": file, "head_output": "logits", "random": measured,
                         "photos": measured, "within_fp32_tolerance": False, "publish_floor": floor,
                         "meets_publish_floor": top1 >= 0.99})
    report.update(random_weights=random_weights, variants=rows)
    (folder / "parity.json").write_text(json.dumps(report, indent=1))
    manifest = read_manifest(folder)
    write_manifest(folder, manifest["variant"], manifest["family"],
                   {**manifest["origin"], "random_weights": random_weights}, True, __version__)
    assert verify_manifest(folder) == []
    return agreements


@pytest.mark.parametrize("random_weights", [False, True])
def test_variants_below_the_floor_or_unmeasured_are_not_staged_from_a_trained_port(ported, tmp_path,
                                                                                     random_weights):
    """A trained port stages its fp32 forms and only the variants that reach the publish floor (a
    variant its report never measured counts as below); a random-weights port, whose agreement says
    nothing, stages them all, its card saying the weights are random."""
    folder = _copy(ported[0], tmp_path)
    agreements = _with_variants(folder, random_weights)
    messages: list[str] = []
    staged = publish(folder, HF_TARGET, stage_dir=tmp_path / "stage", allow_random=True, log=messages.append)
    below = {f for f, a in agreements.items() if a is None or a < 0.99}
    expected = set() if random_weights else below
    assert set(staged.withheld) == expected
    assert not staged.refusals  # fp32 parity passed: withholding a variant never refuses the port
    files = {rel for form in staged.forms.values() for rel in form.files}
    assert sorted(staged.forms) == sorted([*FORMS, "litert"])
    assert files & set(agreements) == set(agreements) - expected
    assert {"model.onnx", "model_attention.onnx", "model.safetensors"} <= files  # the fp32 forms go regardless
    for file in expected:
        assert any(m.startswith(f"NOT staged: {file}: ") for m in messages), messages
    if not random_weights:
        card = (staged.forms["onnx"].folder / CARD_NAME).read_text()
        assert "- `model_int8.onnx` is not published: onnx_int8 is below the publish floor" in card
        assert "| onnx_fp16 | `model_fp16.onnx` |" in card and "model_int8.tflite" not in card
        assert staged.withheld["model_fp16.tflite"].startswith("no agreement with the fp32 reference")
        litert = (staged.forms["litert"].folder / CARD_NAME).read_text()
        assert "- `model_fp16.tflite` is not published: no agreement with the fp32 reference" in litert
        assert "- `model_int8.tflite` is not published: litert_int8 is below the publish floor" in litert
