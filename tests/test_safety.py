"""Bad and unsafe input: refused clearly, nothing run, nothing half-written."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from importlib import import_module
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from vit_porting import __version__
from vit_porting.families.registry import get_variant
from vit_porting.manifest import verify_manifest, write_manifest
from vit_porting.pipeline import PortError, PortOptions, port

from conftest import ROOT, run_torch_job

SPEC = get_variant("cait_xxs24_224").with_config(depth=1)
VARIANT_ARGS = ["cait_xxs24_224"]


def _cli(*args: str, out: Path, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "vit_porting.cli", "port", *VARIANT_ARGS, "--out", str(out), *args],
                          cwd=ROOT, capture_output=True, text=True, env={**os.environ, **(env or {})}, timeout=600)


@pytest.fixture(scope="module")
def good_weights(tmp_path_factory) -> dict[str, np.ndarray]:
    """Random full-depth cait_xxs24_224 weights in timm layout (a real checkpoint's keys)."""
    work = tmp_path_factory.mktemp("weights")
    path = work / "source.safetensors"
    spec = get_variant("cait_xxs24_224")
    run_torch_job({"job": "source", "spec": spec.to_dict(), "weights": "random", "out": str(path)}, work)
    return load_file(str(path))


@pytest.fixture(scope="module")
def small_weights(tmp_path_factory) -> dict[str, np.ndarray]:
    """Random weights of the depth-1 SPEC, for the cases that port all the way through."""
    work = tmp_path_factory.mktemp("small")
    path = work / "source.safetensors"
    run_torch_job({"job": "source", "spec": SPEC.to_dict(), "weights": "random", "out": str(path)}, work)
    return load_file(str(path))


@pytest.fixture
def previous(tmp_path) -> Path:
    """A previous good artifact folder (a port's manifest: what --force may replace) that a
    failed port must leave exactly as it was."""
    folder = tmp_path / "out" / "cait_xxs24_224"
    folder.mkdir(parents=True)
    (folder / "previous.txt").write_text("good port")
    write_manifest(folder, "cait_xxs24_224", "cait", {"kind": "random"}, True, __version__)
    return folder


def _assert_untouched(previous: Path) -> None:
    assert sorted(p.name for p in previous.iterdir()) == ["manifest.json", "previous.txt"]
    assert verify_manifest(previous) == []
    assert sorted(p.name for p in previous.parent.iterdir()) == ["cait_xxs24_224"]  # no temp folders, no lock


def _write_evil_pickles(tmp_path: Path) -> tuple[list[Path], Path]:
    marker = tmp_path / "payload-ran"
    script = f"""
import os, pickle, torch
class Evil:
    def __reduce__(self):
        return (os.system, ("touch {marker}",))
torch.save({{"model": {{"w": torch.zeros(2)}}, "evil": Evil()}}, "{tmp_path / 'evil_zip.pth'}")
with open("{tmp_path / 'evil_legacy.pt'}", "wb") as f:
    pickle.dump({{"w": Evil()}}, f)
"""
    subprocess.run([sys.executable, "-c", script], check=True, timeout=300)
    assert not marker.exists()
    return [tmp_path / "evil_zip.pth", tmp_path / "evil_legacy.pt"], marker


def test_pickle_with_code_is_refused_and_never_runs(tmp_path, previous):
    evil_files, marker = _write_evil_pickles(tmp_path)
    for evil in evil_files:
        proc = _cli("--weights", str(evil), "--force", out=previous.parent)
        assert proc.returncode == 2, proc.stderr
        assert str(evil) in proc.stderr and "refused" in proc.stderr and "was not executed" in proc.stderr
        assert not marker.exists(), "the pickle's payload ran"
        _assert_untouched(previous)


def test_safetensors_preferred_over_a_pickle_twin(tmp_path, small_weights):
    evil_files, marker = _write_evil_pickles(tmp_path)
    pth = tmp_path / "evil_zip.pth"
    save_file(small_weights, str(pth.with_suffix(".safetensors")))
    report = port(SPEC, PortOptions(weights=str(pth), out_root=tmp_path / "out", exports=False, log=lambda _m: None))
    assert report["passed"] and not marker.exists()
    assert report["origin"]["file"].endswith("evil_zip.safetensors")
    assert any("safetensors cannot carry code" in n for n in report["origin"]["notes"])


@pytest.mark.parametrize("suffix", [".safetensors", ".pth"])
def test_truncated_checkpoint(tmp_path, previous, good_weights, suffix):
    full = tmp_path / "full.safetensors"
    save_file(good_weights, str(full))
    path = tmp_path / f"broken{suffix}"
    if suffix == ".pth":
        subprocess.run([sys.executable, "-c", "import sys, torch; from safetensors.torch import load_file;"
                        "torch.save(load_file(sys.argv[1]), sys.argv[2])", str(full), str(path)],
                       check=True, timeout=300)
    else:
        path.write_bytes(full.read_bytes())
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    proc = _cli("--weights", str(path), "--force", out=previous.parent)
    assert proc.returncode == 2, proc.stderr
    assert str(path) in proc.stderr and "truncated or corrupt" in proc.stderr
    _assert_untouched(previous)


def _edited(tmp_path: Path, weights: dict, edit) -> Path:
    state = dict(weights)
    edit(state)
    path = tmp_path / "edited.safetensors"
    save_file(state, str(path))
    return path


@pytest.mark.parametrize("case, needles", [
    ("extra", ["source keys no rule used (1)", "blocks.0.surprise"]),
    ("missing", ["Keras variables no rule assigned (1)", "blocks_3/attn/proj_l/kernel"]),
    ("shape", ["shape mismatches (1)", "blocks.2.mlp.fc1.weight", "(768, 100)", "(100, 768)", "(192, 768)"]),
    ("wrong_family", ["source keys no rule used (4)", "layer1.0.conv1.weight", "Keras variables no rule assigned",
                      "... and"]),
    ("class_count", ["head.weight has shape (10, 192)", "--num-classes 10"]),
])
def test_checkpoint_that_does_not_fit_is_refused_by_name(tmp_path, previous, good_weights, case, needles):
    def edit(state):
        if case == "extra":
            state["blocks.0.surprise"] = np.zeros(3, np.float32)
        elif case == "missing":
            del state["blocks.3.attn.proj_l.weight"]
        elif case == "shape":
            state["blocks.2.mlp.fc1.weight"] = np.zeros((768, 100), np.float32)
        elif case == "wrong_family":
            state.clear()
            state.update({k: np.zeros((4, 4), np.float32) for k in
                          ("conv1.weight", "layer1.0.conv1.weight", "layer1.0.bn1.weight", "fc.weight")})
        elif case == "class_count":
            state["head.weight"] = np.zeros((10, 192), np.float32)
            state["head.bias"] = np.zeros(10, np.float32)

    path = _edited(tmp_path, good_weights, edit)
    proc = _cli("--weights", str(path), "--force", out=previous.parent)
    assert proc.returncode == 2, proc.stderr
    assert str(path) in proc.stderr
    for needle in needles:
        assert needle in proc.stderr, (needle, proc.stderr)
    _assert_untouched(previous)


def test_asking_for_the_class_count_ports_a_fine_tuned_head(tmp_path, small_weights):
    def edit(state):
        state["head.weight"] = np.ones((10, 192), np.float32)
        state["head.bias"] = np.zeros(10, np.float32)

    path = _edited(tmp_path, small_weights, edit)
    report = port(SPEC.with_config(num_classes=10), PortOptions(weights=str(path), out_root=tmp_path / "out",
                                                                new_head=True, exports=False, log=lambda _m: None))
    assert report["passed"]
    head = load_file(str(tmp_path / "out" / "cait_xxs24_224" / "model.safetensors"))["head.weight"]
    assert head.shape == (10, 192) and np.all(head == 1.0)  # the checkpoint's head, not a new one


def test_malformed_mapping_fails_with_file_and_line(tmp_path, previous):
    bad = tmp_path / "bad.yaml"
    bad.write_text("family: cait\nrules:\n  - {from: a, to: b, transform: lnear}\n")
    proc = _cli("--weights", "random", "--mapping", str(bad), "--force", out=previous.parent)
    assert proc.returncode == 2
    assert f"{bad}:3: unknown transform 'lnear'" in proc.stderr
    _assert_untouched(previous)


def test_failing_writer_leaves_previous_folder(tmp_path, previous, monkeypatch):
    def disk_full(*_args, **_kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(import_module("vit_porting.pipeline.port"), "write_reports", disk_full)
    with pytest.raises(PortError, match="No space left on device") as info:
        port(SPEC, PortOptions(weights="random", out_root=previous.parent, force=True, exports=False,
                               log=lambda _m: None))
    assert str(previous.parent) in str(info.value) and "\n" not in str(info.value)
    _assert_untouched(previous)


def test_sigint_mid_port_leaves_previous_folder(tmp_path, previous):
    proc = subprocess.Popen([sys.executable, "-m", "vit_porting.cli", "port", "cait_xxs24_224", "--weights", "random",
                             "--force", "--out", str(previous.parent)], cwd=ROOT, stderr=subprocess.PIPE, text=True,
                            # as from a terminal: a test process may ignore SIGINT (pytest-xdist's workers do),
                            # and Python keeps an inherited SIG_IGN
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.time() + 120
    while time.time() < deadline and not any(p.name.startswith(".") for p in previous.parent.iterdir()):
        time.sleep(0.05)
    time.sleep(1.0)  # inside a worker by now
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130, stderr
    assert "interrupted" in stderr
    _assert_untouched(previous)


def test_force_replaces_whole_folder_atomically(tmp_path, previous):
    report = port(SPEC, PortOptions(weights="random", out_root=previous.parent, force=True, log=lambda _m: None))
    assert report["passed"]
    names = {p.name for p in previous.iterdir()}
    assert "previous.txt" not in names and "parity.json" in names  # no mix of old and new
    assert sorted(p.name for p in previous.parent.iterdir()) == ["cait_xxs24_224"]


def test_verify_detects_files_changed_since_the_port(tmp_path):
    port(SPEC, PortOptions(weights="random", out_root=tmp_path, exports=False, log=lambda _m: None))
    folder = tmp_path / "cait_xxs24_224"

    def verify() -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "vit_porting.cli", "verify", str(folder)], cwd=ROOT,
                              capture_output=True, text=True, timeout=120)

    assert verify().returncode == 0
    weights = folder / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 1  # one flipped bit, same size
    weights.write_bytes(bytes(data))
    (folder / "notes.txt").write_text("added later")
    proc = verify()
    assert proc.returncode == 1
    assert "model.safetensors: sha256" in proc.stderr and "notes.txt: present but not in the manifest" in proc.stderr
