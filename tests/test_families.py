"""Families are plug-ins: the contract every registered family meets, shared code that never
names a family, a fourth family defined only in these tests (``tests/toy_family``) going through
every command, registration by entry point, and the installed wheel porting outside the checkout."""

from __future__ import annotations

import io
import json
import os
import re
import subprocess
import sys
import textwrap
import tokenize
from pathlib import Path

import numpy as np
import pytest

from vit_porting.families.base import Family, KerasSide
from vit_porting.families.registry import BUILTIN, families, get_family
from vit_porting.manifest import verify_manifest
from vit_porting.mapping.engine import family_mapping, family_renames
from vit_porting.workers.protocol import QUIET_ENV

from conftest import ROOT

TESTS = Path(__file__).resolve().parent
TOY = "toy_family:FAMILY"


def _env(**extra: str) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIT_PORTING_FAMILIES")}
    return {**env, **QUIET_ENV, "PYTHONPATH": os.pathsep.join([str(ROOT), str(TESTS)]), **extra}


def _cli(*args: str, cwd: Path = ROOT, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "vit_porting.cli", *args], cwd=cwd, env=env or _env(),
                          capture_output=True, text=True, timeout=600)


# -- the contract ------------------------------------------------------------------------------


def test_every_family_meets_the_contract():
    found = families()
    assert set(found) >= {"cait", "cvt"}
    for family in found.values():
        assert isinstance(family, Family)
        assert family.variants and all(v.family == family.name for v in family.variants)
        assert all(isinstance(v.config, family.config_class) for v in family.variants)
        assert family.resource(family.mapping).is_file(), family.mapping
        assert family_mapping(family).rules
        for layout in family.layouts:
            assert family_renames(family, layout).renames
        # the Keras side imports Keras only (this process never imports torch: conftest checks)
        assert isinstance(family.keras(), KerasSide)
        for spec in family.variants:
            for key in ("input_size", "crop_pct", "interpolation", "mean", "std"):
                assert key in spec.preprocessing, (spec.name, key)


def test_every_reference_module_meets_the_torch_contract():
    code = textwrap.dedent("""
        import json
        from vit_porting.families.registry import add_family, families
        from vit_porting.families.base import TorchSide
        add_family("toy_family:FAMILY")
        print(json.dumps({name: isinstance(f.torch(), TorchSide) for name, f in families().items()}))
    """)
    proc = subprocess.run([sys.executable, "-c", code], env=_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(proc.stdout.splitlines()[-1])
    assert result == {name: True for name in result} and {"cait", "cvt", "toy"} <= set(result)


def _tokens_naming(names: set[str], path: Path) -> list[str]:
    pattern = re.compile(r"\b(" + "|".join(sorted(names)) + r")\b")
    toolkit = re.compile(r"\bvit-port(ing)?\b")  # the toolkit's own name is not the ViT family's
    return [f"{path.relative_to(ROOT)}:{tok.start[0]}: {tok.string[:60]}"
            for tok in tokenize.generate_tokens(io.StringIO(path.read_text()).readline)
            if tok.type in (tokenize.STRING, tokenize.NAME) and pattern.search(toolkit.sub("", tok.string))]


def test_shared_code_names_no_family():
    """Outside a family's folder no name or string names a family, but the registry's lines."""
    names = set(families())
    found = []
    for path in sorted([*ROOT.glob("vit_porting/**/*.py"), *ROOT.glob("benchmarks/*.py")]):
        rel = path.relative_to(ROOT).as_posix()
        if any(rel.startswith(f"vit_porting/families/{name}/") for name in names):
            continue
        if rel.startswith("benchmarks/") and path.stem.rsplit("_", 1)[-1] in names:
            continue  # a benchmark named <peer>_<family>.py compares that family with a peer library
        found += _tokens_naming(names, path)
    registry = [f'vit_porting/families/registry.py:{i}: "{line}"' for i, line in
                enumerate(BUILTIN, start=_registry_line())]
    assert sorted(found) == sorted(registry)


def _registry_line() -> int:
    lines = (ROOT / "vit_porting/families/registry.py").read_text().splitlines()
    return next(i for i, line in enumerate(lines, 1) if BUILTIN[0] in line)


# -- a fourth family from outside the package --------------------------------------------------


@pytest.fixture(scope="module")
def toy_port(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("toy")
    result = _cli("port", "toy_tiny", "--weights", "random", "--out", str(root / "artifacts"), "--family", TOY)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "toy_tiny  onnxruntime    cpu   pass" in result.stdout
    return root


def test_a_test_family_ports_through_every_command(toy_port):
    """port (above), parity, verify, eval, attention, publish and list, each with --family only."""
    folder = toy_port / "artifacts" / "toy_tiny"
    report = json.loads((folder / "parity.json").read_text())
    assert report["passed"] and report["roundtrip"]["bit_exact"]
    assert {r["runtime"] for r in report["runtimes"]} == {"keras_eager", "keras_compiled", "keras_file",
                                                         "savedmodel", "onnxruntime"}
    assert report["source_layout"] == "the tests' own PyTorch module"

    listing = _cli("list", "--family", TOY)
    assert listing.returncode == 0 and re.search(r"^toy_tiny +Toy ViT +32 +0\.0M +no", listing.stdout, re.M)
    only = _cli("list", "--family", TOY, "--only", "toy", "--json")
    assert only.returncode == 0 and [r["variant"] for r in json.loads(only.stdout)] == ["toy_tiny"], only.stderr

    recheck = _cli("parity", "toy_tiny", "--out", str(toy_port / "artifacts"), "--family", TOY)
    assert recheck.returncode == 0, recheck.stderr[-3000:]
    assert verify_manifest(folder) == []
    assert _cli("verify", str(folder), "--family", TOY).returncode == 0

    from PIL import Image

    data = toy_port / "data"
    for name, colour in (("a", (200, 30, 10)), ("b", (10, 30, 200))):
        (data / name).mkdir(parents=True)
        for i in range(2):
            Image.new("RGB", (48, 40), tuple(c + 20 * i for c in colour)).save(data / name / f"{i}.png")
    (data / "map.json").write_text(json.dumps({"a": 0, "b": 1}))
    evaluation = _cli("eval", str(folder), str(data), "--class-map", str(data / "map.json"), "--runtimes",
                      "pytorch,onnxruntime", "--no-progress", "--family", TOY)
    assert evaluation.returncode == 0, evaluation.stderr[-3000:]
    scores = json.loads((folder / "eval" / "eval.json").read_text())
    assert scores["agreement"]["top1_disagreements"] == 0 and scores["dataset"]["num_images"] == 4

    png = toy_port / "attention.png"
    drawn = _cli("attention", str(folder), str(data / "a" / "0.png"), "--png", str(png), "--family", TOY)
    assert drawn.returncode == 0, drawn.stderr[-3000:]
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    stage = toy_port / "stage"
    published = _cli("publish", str(folder), "--target", "hf://tests/toy", "--stage-dir", str(stage), "--family", TOY)
    assert published.returncode == 0, published.stderr[-3000:]
    forms = sorted(p.name for p in stage.iterdir() if p.is_dir())
    assert forms == ["keras", "onnx", "pytorch", "savedmodel"]
    for form in forms:
        assert "Toy ViT (a test-only family)" in (stage / form / "README.md").read_text()
        assert verify_manifest(stage / form) == []

    unknown = _cli("list", "--family", "toy_family:NOPE")
    assert unknown.returncode == 2 and unknown.stderr.count("\n") == 1 and "toy_family:NOPE" in unknown.stderr


def test_a_family_registers_through_an_entry_point(tmp_path):
    """An installed plug-in declares ``[project.entry-points."vit_porting.families"]``; no option needed."""
    dist = tmp_path / "toy_family_plugin-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: toy-family-plugin\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text("[vit_porting.families]\ntoy = toy_family:FAMILY\n")
    env = _env()
    env["PYTHONPATH"] = os.pathsep.join([env["PYTHONPATH"], str(tmp_path)])
    listing = _cli("list", env=env)
    assert listing.returncode == 0, listing.stderr
    assert re.search(r"^toy_tiny +Toy ViT", listing.stdout, re.M)
    assert "toy_tiny" not in _cli("list").stdout  # without the plug-in installed, no toy


def test_the_registry_refuses_clashing_families():
    from vit_porting.families.registry import FamilyError, _register

    cait = get_family("cait")
    with pytest.raises(FamilyError, match="two families are named 'cait'"):
        _register(cait, "elsewhere:FAMILY")


# -- the installed package ---------------------------------------------------------------------


def test_the_installed_wheel_ports_outside_the_checkout(tmp_path):
    """The wheel holds every file the toolkit reads (YAML mappings included): installed into a
    bare folder and run from elsewhere, with nothing of the checkout on the path."""
    wheels, target, work = tmp_path / "dist", tmp_path / "site", tmp_path / "work"
    work.mkdir()
    built = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                            "-w", str(wheels), str(ROOT)], capture_output=True, text=True, timeout=600)
    assert built.returncode == 0, built.stderr[-3000:]
    (wheel,) = wheels.glob("vit_porting-*.whl")
    installed = subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "--no-compile", "-q",
                                "--target", str(target), str(wheel)], capture_output=True, text=True, timeout=600)
    assert installed.returncode == 0, installed.stderr[-3000:]
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIT_PORTING_FAMILIES")}
    env.update(QUIET_ENV, PYTHONPATH=str(target))
    # one import package: nothing generic (porting, parity), no benchmarks or tests
    assert sorted(p.name for p in target.iterdir() if not p.name.endswith(".dist-info") and p.name != "bin") \
        == ["vit_porting"]
    probe = ("import json, sys, vit_porting; print(json.dumps([vit_porting.__file__, "
             "sorted(m for m in ('torch', 'tensorflow', 'keras') if m in sys.modules)]))")
    where = subprocess.run([sys.executable, "-c", probe],
                           cwd=work, env=env, capture_output=True, text=True, timeout=120)
    location, frameworks = json.loads(where.stdout)
    assert location.startswith(str(target)) and frameworks == [], where
    assert sorted(p.name for p in (target / "vit_porting" / "families").glob("*/*.yaml")) == [
        "cait.yaml", "cvt.yaml", "cvt_microsoft.yaml", "vit.yaml"]

    listing = _cli("list", cwd=work, env=env)
    assert listing.returncode == 0 and "cait_xxs24_224" in listing.stdout and "cvt-13-224" in listing.stdout
    ported = _cli("port", "cait_xxs24_224", "--weights", "random", "--no-export", "--out", str(work / "artifacts"),
                  cwd=work, env=env)
    assert ported.returncode == 0, ported.stderr[-3000:]
    assert "cait_xxs24_224  keras_eager    cpu   pass" in ported.stdout
    report = json.loads((work / "artifacts" / "cait_xxs24_224" / "parity.json").read_text())
    assert report["passed"] and report["roundtrip"]["bit_exact"] and report["roundtrip"]["num_tensors"] == 476
    logits = next(o for o in report["runtimes"][0]["outputs"] if o["output"] == "logits")
    assert np.isfinite(logits["max_abs_diff"]) and logits["max_normalized_diff"] <= logits["tolerance"]
