"""Parity across runtimes: Keras eager, Keras compiled, .keras reloaded, SavedModel and ONNX
Runtime (CPU; CUDA where present), each loading its artifact from disk in its own process,
against the PyTorch fp32 reference, on seeded random inputs and on sample photographs.

One pipeline port of a depth-reduced cait_xxs24_224 serves the module; the broken-mapping
port checks conversion only (no exports), which is where a mapping bug shows.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from vit_porting.families.registry import get_family, get_variant
from vit_porting.manifest import verify_manifest
from vit_porting.parity.images import PHOTOS
from vit_porting.pipeline import PortError, PortOptions, port, recheck

ROOT = Path(__file__).resolve().parent.parent
VARIANT = "cait_xxs24_224"
RUNTIMES = {"keras_eager", "keras_compiled", "keras_file", "savedmodel", "onnxruntime"}


def _cuda_present() -> bool:
    return shutil.which("nvidia-smi") is not None and subprocess.run(
        ["nvidia-smi", "-L"], capture_output=True).returncode == 0


@pytest.fixture(scope="module")
def ported(tmp_path_factory):
    out = tmp_path_factory.mktemp("runtimes") / "artifacts"
    report = port(get_variant(VARIANT).with_config(depth=2), PortOptions(weights="random", out_root=out,
                                                                          log=lambda _msg: None))
    return report, out


def test_every_runtime_passes_on_random_inputs_and_photographs(ported):
    report, _ = ported
    cpu = {r["runtime"]: r for r in report["runtimes"] if r["device"] == "cpu"}
    assert set(cpu) == RUNTIMES
    for name, r in cpu.items():
        assert r["passed"], (name, r["failing_outputs"])
        assert r["attention_maps"] == 4, name
        assert r["top1_agreement"] == 1.0 and r["top5_agreement"] == 1.0, name
        photos = r["photos"]
        assert photos["count"] == len(PHOTOS) and photos["passed"], (name, photos)
        assert photos["max_normalized_diff"] <= photos["tolerance"] == 1e-5
        assert photos["top1_agreement"] == 1.0 and photos["top5_agreement"] == 1.0, (name, photos)
        for o in r["outputs"]:
            assert o["max_normalized_diff"] <= o["tolerance"], (name, o)
    # only the port's own model carries the diagnostic block outputs
    assert any(o["output"] == "blocks_0_out" for o in cpu["keras_eager"]["outputs"])
    assert not any(o["output"].endswith("_out") for o in cpu["savedmodel"]["outputs"])
    assert cpu["keras_compiled"]["mode"] in ("xla", "tf.function")
    assert cpu["onnxruntime"]["provider"] == "CPUExecutionProvider" and cpu["onnxruntime"]["opset"] >= 17
    assert report["passed"] and report["inputs_detail"]["photos"]["names"] == list(PHOTOS)


def test_report_is_readable_and_names_devices(ported):
    report, out = ported
    md = (out / VARIANT / "parity.md").read_text()
    for runtime in RUNTIMES:
        assert re.search(rf"^\| {runtime} \| cpu \| pass \|", md, re.M), runtime
    assert "photos top-1" in md and "astronaut" in md and "x the weight bytes" in md
    if not report["devices"]["cuda"]:
        assert "CUDA: not available" in md
        assert not [r for r in report["runtimes"] if r["device"] != "cpu"]
    steps = report["steps"]
    assert all(t["seconds"] > 0 for t in steps.values())
    assert steps["running savedmodel (tf.saved_model.load)"]["peak_rss_mb"] > 0


@pytest.mark.gpu
@pytest.mark.skipif(not _cuda_present(), reason="no CUDA device on this machine")
def test_cuda_runtimes_against_the_cuda_reference(ported):
    report, _ = ported
    assert report["devices"]["cuda"] and report["devices"]["cuda_device_name"]
    cuda = [r for r in report["runtimes"] if r["device"] == "cuda"]
    skipped = [s for s in report.get("skipped", []) if s["device"] == "cuda"]
    assert cuda or skipped
    assert all(r["passed"] for r in cuda)


def test_parity_subcommand_rechecks_without_converting(ported):
    report, out = ported
    folder = out / VARIANT
    before = json.loads((folder / "parity.json").read_text())
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, "-m", "vit_porting.cli", "parity", VARIANT, "--out", str(out),
                           "--backends", "tensorflow,torch,jax"], cwd=ROOT,
                          env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "converting" not in proc.stderr and "on model.safetensors" in proc.stderr
    after = json.loads((folder / "parity.json").read_text())
    assert after["recheck"] and after["passed"]
    # every Keras backend asked for ran model.keras in its own process, or was skipped with the reason
    jax_missing = importlib.util.find_spec("jax") is None
    backends = {"keras_torch"} | (set() if jax_missing else {"keras_jax"})
    assert {r["runtime"] for r in after["runtimes"] if r["device"] == "cpu"} == RUNTIMES - {"keras_eager"} | backends
    by_name = {r["runtime"]: r for r in after["runtimes"]}
    assert by_name["keras_torch"]["passed"] and by_name["keras_torch"]["backend"] == "torch"
    if jax_missing:
        assert [s["runtime"] for s in after["skipped"]] == ["keras_jax"] and "jax" in after["skipped"][0]["reason"]
    else:
        assert by_name["keras_jax"]["passed"] and by_name["keras_jax"]["backend"] == "jax"
    assert after["roundtrip"] == before["roundtrip"] and after["origin"] == before["origin"]
    assert verify_manifest(folder) == []
    assert json.loads((folder / "manifest.json").read_text())["parity"]["passed"] is True
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # its work folder is gone
    # an artifact that no longer matches its manifest is refused before anything runs
    (folder / "model.keras").write_bytes(b"not a model")
    with pytest.raises(PortError, match="model.keras: size"):
        recheck(out / VARIANT, log=lambda _msg: None)


def test_wrong_mapping_is_caught_and_localised(tmp_path):
    """attn.proj.weight without its transpose: square, so the shape check passes, the round trip
    is still bit-exact (the same mistake both ways), and only parity can catch it."""
    text = get_family("cait").resource("cait.yaml").read_text()
    line = "  - {from: 'blocks.{i}.attn.proj.weight', to: 'blocks_{i}/attn/proj/kernel', transform: linear}"
    assert text.count(line) == 1
    broken = tmp_path / "cait_broken.yaml"
    broken.write_text(text.replace(line, line.replace(", transform: linear", "")))
    line_no = text.splitlines().index(line) + 1
    report = port(get_variant(VARIANT).with_config(depth=2),
                  PortOptions(weights="random", out_root=tmp_path / "artifacts", mapping=str(broken), exports=False,
                              photos=False, log=lambda _msg: None))
    assert not report["passed"] and report["roundtrip"]["bit_exact"]
    (eager,) = report["runtimes"]
    assert "logits" in eager["failing_outputs"] and "blocks_0_out" in eager["failing_outputs"]
    loc = eager["localisation"]
    assert loc["block"] == "blocks_0"
    rule = next(r for r in loc["rules"] if r["from"] == "blocks.{i}.attn.proj.weight")
    assert rule["line"] == line_no and rule["transform"] in (None, "", "identity")
    md = (tmp_path / "artifacts" / VARIANT / "parity.md").read_text()
    assert "First diverging block: **blocks_0**" in md and f"line {line_no}: `blocks.{{i}}.attn.proj.weight`" in md
