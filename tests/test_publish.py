"""Model card and publishing (issue 7): the card of a real port, every usage snippet run as
written in a staged Hugging Face folder, the refusals of a push, staging contents, tokens
kept out of every output, and the upload calls at the libraries' network boundary."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from fnmatch import fnmatch
from pathlib import Path

import huggingface_hub
import kagglehub
import pytest

from porting.card import CARD_NAME, RANDOM_LINE, parse_card, python_blocks, render_card
from porting.manifest import read_manifest, sha256_file, verify_manifest, write_manifest
from porting.pipeline import TOOLKIT_VERSION, PortOptions, port
from porting.publish import PublishError, parse_target, publish, stage
from porting.safety import STAGING_MARKER
from porting.variants import get_variant

from conftest import ROOT

SPEC = get_variant("cait_xxs24_224").with_config(depth=1)
HF_TARGET = "hf://vit-porting-tests/cait-xxs24-depth1"
KAGGLE_TARGET = "kaggle://vit-porting-tests/cait-xxs24/keras/depth1"
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
    return subprocess.run([sys.executable, "-m", "porting.cli", "publish", *args], cwd=ROOT, capture_output=True,
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
    assert f"vit-porting {TOOLKIT_VERSION}" in body

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

    # a snippet per format, the timm one with this port's reduced depth
    blocks = python_blocks(body)
    joined = "\n".join(blocks)
    for needle in ("keras.saving.load_model(\"model.keras\"", "import porting.cait", "tf.saved_model.load(",
                   "keras.layers.TFSMLayer(", "ort.InferenceSession(\"model.onnx\"",
                   "timm.create_model('cait_xxs24_224', pretrained=False, num_classes=1000, depth=1)",
                   "load_file(\"model.safetensors\")"):
        assert needle in joined, needle


def test_card_of_a_trained_checkpoint_and_of_cvt(ported):
    """Front matter for trained weights (datasets, base_model; no random line), and a CvT card
    whose snippets at least compile."""
    folder, report = ported
    config = json.loads((folder / "config.json").read_text())
    trained = {**report, "random_weights": False}
    origin = {"kind": "pretrained", "description": "timm cait_xxs24_224.fb_dist_in1k (hf://timm/x)",
              "random_weights": False}
    meta, body = parse_card(render_card({**config, "origin": origin}, trained, {"toolkit": "9.9"}))
    assert meta["datasets"] == ["imagenet-1k"] and meta["base_model"] == "timm/cait_xxs24_224.fb_dist_in1k"
    assert "random-weights" not in meta["tags"] and "RANDOM" not in body

    cvt = get_variant("cvt-13-384-22k")
    meta, body = parse_card(render_card({**cvt.to_dict(), "origin": origin}, trained, {"toolkit": "9.9"}))
    assert meta["license"] == "apache-2.0" and meta["datasets"] == ["imagenet-21k", "imagenet-1k"]
    assert meta["base_model"] == "microsoft/cvt-13-384-22k" and "transformers" in meta["tags"]
    blocks = python_blocks(body)
    assert any("CvtForImageClassification" in b and "QuickGELUActivation" in b for b in blocks)
    assert any("import porting.cvt" in b for b in blocks)
    for block in blocks:
        compile(block, "<card>", "exec")


def test_every_card_snippet_runs_in_the_staged_hf_folder(ported, tmp_path):
    """The staged Hugging Face folder loads back offline in every format: each ```python block
    of its card, run as written in its own process (some import torch, some TensorFlow); every
    format prints the same predictions."""
    folder, _ = ported
    staged = stage(folder, HF_TARGET, tmp_path / "stage")
    card = (staged.folder / CARD_NAME).read_text()
    blocks = python_blocks(card)
    assert blocks == python_blocks((folder / CARD_NAME).read_text())  # the port's card: same snippets
    assert len(blocks) == 5  # preprocessing, Keras, SavedModel, ONNX Runtime, timm
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "TF_CPP_MIN_LOG_LEVEL": "3",
           "KERAS_BACKEND": "tensorflow", "CUDA_VISIBLE_DEVICES": ""}
    procs = [subprocess.Popen([sys.executable, "-c", block], cwd=staged.folder, env=env, text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE) for block in blocks]
    predictions: dict[str, list[list[int]]] = {}
    for block, proc in zip(blocks, procs, strict=True):
        stdout, stderr = proc.communicate(timeout=300)
        assert proc.returncode == 0, f"snippet failed:\n{block}\n--- stderr:\n{stderr[-3000:]}"
        found = [json.loads(m) for m in re.findall(r"^top-5 classes: (\[.*\])$", stdout, re.M)]
        if "from PIL import Image" in block:
            assert "(1, 224, 224, 3) float32" in stdout
            continue
        assert found, f"no prediction printed by:\n{block}\n{stdout}"
        key = next(k for k in ("timm", "onnxruntime", "TFSMLayer", "load_model") if k in block)
        predictions[key] = found
    assert set(predictions) == {"timm", "onnxruntime", "TFSMLayer", "load_model"}
    assert len(predictions["TFSMLayer"]) == 2  # tf.saved_model.load and TFSMLayer
    everything = [p for runs in predictions.values() for p in runs]
    assert all(len(p) == 5 for p in everything)
    assert len({p[0] for p in everything}) == 1, predictions  # same top-1 in every format
    assert all(len(set(p) & set(everything[0])) >= 4 for p in everything), predictions


# --- staging -----------------------------------------------------------------------------------

def test_dry_run_stages_exactly_the_upload_and_leaks_no_token(ported, tmp_path):
    folder, _ = ported
    before = read_manifest(folder)
    for target in (HF_TARGET, KAGGLE_TARGET):
        stage_dir = tmp_path / parse_target(target).slug
        result = _cli(str(folder), "--target", target, "--stage-dir", str(stage_dir), env=TOKEN_ENV)
        assert result.returncode == 0, result.stderr
        output = result.stdout + result.stderr
        staged = {p.relative_to(stage_dir).as_posix(): p for p in stage_dir.rglob("*") if p.is_file()}
        # exactly the port's files (byte for byte), the card rendered for the target, the manifest;
        # and publish's marker (its proof it made the folder), which no upload sends
        assert staged.pop(STAGING_MARKER).is_file()
        assert set(staged) == set(before["files"]) | {"manifest.json"}
        for rel, entry in before["files"].items():
            if rel != CARD_NAME:
                assert sha256_file(staged[rel]) == entry["sha256"], rel
        assert verify_manifest(stage_dir) == []
        assert read_manifest(stage_dir)["published"]["target"] == target
        # the listing names every staged file with its size; dry run says nothing was sent
        for rel, path in staged.items():
            assert re.search(rf"^\s+{path.stat().st_size:,d}\s+{re.escape(rel)}$", output, re.M), rel
        assert "PUSH=1 would be refused" in output and "random" in output
        card = staged[CARD_NAME].read_text()
        assert parse_card(card)[1].lstrip("\n").splitlines()[0] == RANDOM_LINE
        handle = target.split("://", 1)[1]
        assert (f"hf download {handle}" if target.startswith("hf") else f'kagglehub.model_download("{handle}")') \
            in card
        # no token anywhere: output, staged files
        for secret in (FAKE_HF_TOKEN, FAKE_KAGGLE_KEY):
            assert secret not in output
            for path in staged.values():
                assert secret.encode() not in path.read_bytes(), path
    assert verify_manifest(folder) == [] and read_manifest(folder) == before  # the port is untouched


def test_default_staging_folder_and_targets(ported, tmp_path):
    folder = _copy(ported[0], tmp_path)
    staged = stage(folder, KAGGLE_TARGET)
    assert staged.folder == tmp_path / "artifacts" / ".staging" / "kaggle-vit-porting-tests--cait-xxs24--keras--depth1"
    assert staged.random_weights and any("random" in r for r in staged.refusals)
    assert parse_target("hf://owner/name").id == "owner/name"
    for bad in ("owner/name", "hf://owner", "hf://a/b/c", "kaggle://a/b/c", "kaggle://a/b/c/d/1", "s3://a/b"):
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
    write_manifest(folder, manifest["variant"], manifest["family"], manifest["origin"], False, TOOLKIT_VERSION)
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
    (name1, create), (name2, upload) = fake_network.calls
    assert name1 == "create_repo" and create["repo_id"] == "vit-porting-tests/cait-xxs24-depth1"
    assert create["repo_type"] == "model" and create["exist_ok"] is True and create["private"] is True
    assert name2 == "upload_folder" and upload["repo_id"] == create["repo_id"] and upload["repo_type"] == "model"
    assert Path(upload["folder_path"]) == staged.folder == tmp_path / "s"
    assert upload["_listing"] == sorted(staged.files)  # exactly what the dry run listed
    assert "cait_xxs24_224" in upload["commit_message"]
    for _, kwargs in fake_network.calls:
        assert "token" not in kwargs  # the library finds it itself
    meta, body = parse_card((staged.folder / CARD_NAME).read_text())
    assert body.lstrip("\n").splitlines()[0] == RANDOM_LINE and meta["pipeline_tag"] == "image-classification"
    assert verify_manifest(staged.folder) == []
    log = "\n".join(lines)
    assert "Uploaded: https://huggingface.co/vit-porting-tests/cait-xxs24-depth1" in log
    assert FAKE_HF_TOKEN not in log and FAKE_KAGGLE_KEY not in log


def test_push_to_kaggle_calls_model_upload(ported, tmp_path, tokens, fake_network):
    lines: list[str] = []
    staged = publish(ported[0], KAGGLE_TARGET, push=True, allow_random=True, stage_dir=tmp_path / "k",
                     log=lines.append)
    ((name, call),) = fake_network.calls
    assert name == "model_upload" and call["handle"] == "vit-porting-tests/cait-xxs24/keras/depth1"
    assert Path(call["local_model_dir"]) == staged.folder and call["license_name"] == "Apache 2.0"
    assert call["_listing"] == sorted(staged.files) and "token" not in call
    assert "kagglehub.model_download(\"vit-porting-tests/cait-xxs24/keras/depth1\")" in (
        staged.folder / CARD_NAME).read_text()
    log = "\n".join(lines)
    assert "Uploaded: https://www.kaggle.com/models/vit-porting-tests/cait-xxs24" in log
    assert FAKE_KAGGLE_KEY not in log and FAKE_HF_TOKEN not in log
