"""CaiT ports through the real pipeline (one process per runtime) against timm."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from vit_porting.families.cait import VARIANTS as CAIT_VARIANTS
from vit_porting.families.registry import get_family, get_variant
from vit_porting.mapping.engine import family_mapping
from vit_porting.parity.compare import compare_outputs, load_policy
from vit_porting.parity.inputs import random_images, write_inputs
from vit_porting.parity.outputs import read_outputs
from vit_porting.pipeline import PortError, PortOptions, port

from conftest import ROOT, run_keras_job, run_torch_job


def _port(spec, out_root: Path, **options):
    return port(spec, PortOptions(out_root=out_root, log=lambda _msg: None, **{"weights": "random", **options}))


def _cli(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "vit_porting.cli", *args], cwd=ROOT, capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, timeout=600)


@pytest.fixture(scope="module")
def full_port(tmp_path_factory):
    out = tmp_path_factory.mktemp("artifacts")
    # conversion parity of the full model; every exported runtime is covered at depth 2 in test_runtimes.py
    return _port(get_variant("cait_xxs24_224"), out, exports=False), out / "cait_xxs24_224"


def test_full_cait_xxs24_224_matches_timm(full_port):
    report, folder = full_port
    assert report["passed"] and report["random_weights"]
    (eager,) = report["runtimes"]
    outputs = {o["output"]: o for o in eager["outputs"]}
    assert len([k for k in outputs if k.endswith("_attn")]) == 24 + 2
    assert outputs["logits"]["top1_agreement"] == 1.0
    policy = load_policy()["cpu"]
    for o in outputs.values():
        assert o["tolerance"] == policy[o["kind"]]["max_normalized_diff"]
        assert o["max_normalized_diff"] <= o["tolerance"], o
    assert report["roundtrip"]["bit_exact"] and report["roundtrip"]["num_tensors"] == 476
    on_disk = json.loads((folder / "parity.json").read_text())
    assert on_disk["passed"] and on_disk["origin"]["kind"] == "random"
    md = (folder / "parity.md").read_text()
    assert "Random weights" in md and "| keras_eager | cpu | pass |" in md


def test_artifact_folder_is_complete_and_tidy(full_port):
    _, folder = full_port
    names = {p.name for p in folder.iterdir()}
    assert {"model.safetensors", "parity.json", "parity.md", "config.json"} <= names
    assert "_work" not in names
    assert not [p for p in folder.parent.iterdir() if p.name.startswith(".")]


def test_existing_folder_is_refused_without_force(full_port):
    report, folder = full_port
    before = (folder / "parity.json").read_bytes()
    with pytest.raises(PortError, match="already exists"):
        _port(get_variant("cait_xxs24_224"), folder.parent)
    assert (folder / "parity.json").read_bytes() == before


# each width once beside the full cait_xxs24_224 port (xs 288, s 384, m 768), at 384 and 448 px
@pytest.mark.parametrize("name, depth", [("cait_xs24_384", 2), ("cait_s36_384", 2), ("cait_m48_448", 1)])
def test_other_widths_and_depths_at_reduced_depth(tmp_path, name, depth):
    report = _port(get_variant(name).with_config(depth=depth), tmp_path, exports=False)
    assert report["passed"], report["runtimes"][0]["failing_outputs"]
    assert report["roundtrip"]["bit_exact"]


@pytest.mark.parametrize("num_classes, head", [(10, "logits"), (0, "features")])
def test_class_counts_and_feature_extractor(tmp_path, num_classes, head):
    report = _port(get_variant("cait_xxs24_224").with_config(depth=2, num_classes=num_classes), tmp_path,
                   exports=False)
    assert report["passed"]
    assert report["runtimes"][0]["head_output"] == head


def test_mapping_covers_full_size_state_dicts_of_all_variants(tmp_path):
    """Full-size timm state_dicts (meta device, no memory) against full-size Keras shapes."""
    import keras

    from vit_porting.families.cait.model import build_keras as build_cait

    mapping = family_mapping(get_family("cait"))
    all_shapes = run_torch_job({"job": "state_shapes", "specs": [s.to_dict() for s in CAIT_VARIANTS]},
                               tmp_path)["shapes"]
    for spec in CAIT_VARIANTS:
        shapes = all_shapes[spec.name]
        model = build_cait(spec.config, initializer="zeros")
        plan = mapping.plan(shapes, {w.path: tuple(w.shape) for w in model.weights})
        assert len(plan) == len(shapes) == len(model.weights), spec.name
        del model
        keras.backend.clear_session()


def test_policy_catches_a_layer_norm_eps_bug(tmp_path):
    """LayerNorm eps 1e-5 instead of timm's 1e-6 must fail the policy (it is a real porting bug)."""
    spec = get_variant("cait_xxs24_224")
    inputs = tmp_path / "inputs.npz"
    write_inputs(inputs, random_images(224, 2, 0))
    source = tmp_path / "source.safetensors"
    run_torch_job({"job": "source", "spec": spec.to_dict(), "weights": "random", "out": str(source)}, tmp_path)
    run_torch_job({"job": "reference", "spec": spec.to_dict(), "source": str(source), "inputs": str(inputs),
                   "out": str(tmp_path / "ref")}, tmp_path)
    results = {}
    for eps in (1e-6, 1e-5):
        out = tmp_path / f"keras-{eps}"
        run_keras_job({"job": "convert", "spec": spec.with_config(layer_norm_eps=eps).to_dict(),
                       "source": str(source), "inputs": str(inputs), "outputs": str(out),
                       "safetensors_out": str(tmp_path / "rt.safetensors")}, tmp_path)
        results[eps] = {c.output: c for c in compare_outputs(read_outputs(tmp_path / "ref"), read_outputs(out))}
    assert all(c.passed for c in results[1e-6].values())
    assert not results[1e-5]["logits"].passed, results[1e-5]["logits"]


def test_port_from_pth_and_safetensors_files(tmp_path):
    """A DeiT-style .pth ({'model': ...}, 'module.' prefixes) and a .safetensors file both port."""
    spec = get_variant("cait_xxs24_224").with_config(depth=1)
    src = tmp_path / "w.safetensors"
    run_torch_job({"job": "source", "spec": spec.to_dict(), "weights": "random", "seed": 3, "out": str(src)},
                  tmp_path)
    pth = tmp_path / "w.pth"
    subprocess.run([sys.executable, "-c", (
        "import sys, torch; from safetensors.torch import load_file;"
        "sd = load_file(sys.argv[1]); torch.save({'model': {'module.' + k: v for k, v in sd.items()},"
        " 'epoch': 3}, sys.argv[2])"), str(src), str(pth)], check=True, timeout=300)
    for weights in (src, pth):
        report = _port(spec, tmp_path / weights.suffix[1:], weights=str(weights), exports=False)
        assert report["passed"] and report["origin"]["kind"] == "file"
        assert report["origin"]["sha256"] and not report["random_weights"]


def test_unknown_variant_suggests_close_names():
    proc = _cli("port", "cait_xxs24_22", "--weights", "random")
    assert proc.returncode == 2
    assert "Did you mean: cait_xxs24_224" in proc.stderr


def test_pretrained_offline_without_cache_says_what_to_do(tmp_path):
    proc = _cli("port", "cait_xxs24_224", "--out", str(tmp_path / "a"),
                env={"HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf")})
    assert proc.returncode == 2, proc.stderr
    for needle in ("cait_xxs24_224.fb_dist_in1k", "timm/cait_xxs24_224", "--weights random", "--weights /path"):
        assert needle in proc.stderr, needle
    assert not (tmp_path / "a" / "cait_xxs24_224").exists()
    assert not [p for p in (tmp_path / "a").iterdir()] if (tmp_path / "a").exists() else True
