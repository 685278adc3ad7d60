"""Every user error is one line naming the input (issue 13, items 6-9): empty checkpoints,
mapping files through --mapping, a full disk, a bad --out, numeric options, mapping rules
that name no Keras variable or match no key, a checkpoint of the other family, and the
pickle refusal without torch's advice to run the pickle anyway."""

from __future__ import annotations

import errno
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import save_file

from vit_porting import cli
from vit_porting.pipeline import runtimes
from vit_porting.families.registry import get_family, get_variant
from vit_porting.mapping.engine import MappingError, MappingFileError, MappingSpec, family_mapping
from vit_porting.workers import protocol as worker

from conftest import ROOT, error_line, run_torch_job

VARIANT = "cait_xxs24_224"


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "vit_porting.cli", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=600)


def _main(capsys, *args: str) -> tuple[int, str]:
    """The CLI in this process (it imports no framework): exit code and stderr."""
    try:
        code = cli.main(list(args))
    except SystemExit as exc:  # argparse
        code = exc.code
    return code, capsys.readouterr().err


# --- item 6: checkpoints, mapping files, the disk, --out ------------------------------------------

@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_empty_checkpoint_is_one_line_naming_it(tmp_path, suffix):
    empty = tmp_path / f"empty{suffix}"
    empty.write_bytes(b"")
    proc = _cli("port", VARIANT, "--weights", str(empty), "--out", str(tmp_path / "out"), "--no-export")
    assert proc.returncode == 2
    line = error_line(proc.stderr)
    assert line == f"error: {empty}: empty file (0 bytes); it may be truncated: download it again"


@pytest.mark.parametrize("text, expected", [
    ("family: cait\nrules:\n  - {from: a, to: b\n", ":3: YAML error: expected ',' or '}'"),
    ("family: cait\nrules:\n  - {from: a, to: b, transform: lnear}\n", ":3: unknown transform 'lnear'"),
    ("family: cait\nrules:\n  - {from: 'a.{i}', to: b}\n", ":3: placeholders differ"),
    (None, ": mapping file not found"),
])
def test_mapping_file_errors_through_the_mapping_option(tmp_path, text, expected):
    """The PyTorch worker reads --mapping first: its errors are the user's, one line with file:line."""
    bad = tmp_path / "bad.yaml"
    if text is not None:
        bad.write_text(text)
    proc = _cli("port", VARIANT, "--weights", "random", "--mapping", str(bad), "--out", str(tmp_path / "out"),
                "--no-export")
    assert proc.returncode == 2
    assert error_line(proc.stderr).startswith(f"error: {bad}{expected}"), proc.stderr
    assert not (tmp_path / "out" / VARIANT).exists()


@pytest.mark.parametrize("text, line", [
    ("family: toy\nrules:\n  - {from: a, to: b\n", 3),  # flow mapping never closed: noticed at the end
    ("family: toy\nrules:\n  - {from: a, to: b\n  - {from: c, to: d}\n", 3),
    ("family: toy\nrules:\n  - {from: 'a, to: b}\n  - {from: c, to: d}\n", 3),  # quote never closed
    ("family: toy\nrules:\n  - {from: a, to: b}\nkey without colon\nx: y\n", 4),  # noticed on line 5
    ("family: toy\nrules: [\n  {from: a, to: b}\n", 2),
    ("family: toy\nrules:\n  - {from: a, to: b}\n bad: x\n", 4),  # where the problem is found, when it is there
    ("family: toy\nrules:\n\t- {from: a, to: b}\n", 3),
])
def test_yaml_syntax_errors_name_the_broken_line(tmp_path, text, line):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(MappingFileError) as info:
        MappingSpec.load(path)
    assert info.value.line == line, str(info.value)
    assert "\n" not in str(info.value)


def test_full_disk_is_one_line_naming_the_folder(tmp_path, capsys, monkeypatch):
    def disk_full(*_args, **_kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")  # what write() raises: no file name

    monkeypatch.setattr(runtimes, "write_parity_inputs", disk_full)
    out = tmp_path / "out"
    code, stderr = _main(capsys, "port", VARIANT, "--weights", "random", "--out", str(out), "--no-export")
    assert code == 2
    line = error_line(stderr)
    assert "No space left on device" in line and str(out) in line and "nothing was replaced" in line
    assert list(out.iterdir()) == []  # no scratch folder, no lock file


def test_worker_full_disk_is_a_user_error_naming_the_output(tmp_path):
    """A worker's write() that fails for lack of space: a one-line user error naming the job's
    output, not a traceback."""
    job = tmp_path / "job.json"
    job.write_text(json.dumps({"job": "write", "result": str(tmp_path / "result.json"), "out": "/data/x.onnx"}))

    def write(_job: dict) -> dict:
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(SystemExit) as info:
        worker.worker_main({"write": write}, (), [str(job)])
    assert info.value.code == worker.USER_ERROR_EXIT
    result = json.loads((tmp_path / "result.json").read_text())
    assert result == {"ok": False, "error": "/data/x.onnx: No space left on device", "user_error": True}


def test_a_torn_result_file_is_the_workers_own_error(tmp_path):
    """A full disk can leave a worker's result file empty (created, never written): the parent
    reports the worker's last stderr line, not a JSONDecodeError (the CaiT collection run lost
    cait_m36_384 and cait_m48_448 that way before results were written under a temporary name)."""
    (tmp_path / "torn_worker.py").write_text(
        "import json, sys\njob = json.load(open(sys.argv[1]))\nopen(job['result'], 'w').close()\n"
        f"print('/data/out: No space left on device', file=sys.stderr)\nsys.exit({worker.USER_ERROR_EXIT})\n")
    with pytest.raises(worker.WorkerError) as info:
        worker.run_worker("torn_worker", {"job": "run"}, tmp_path / "work", env={"PYTHONPATH": str(tmp_path)})
    assert info.value.message == "/data/out: No space left on device" and info.value.user_error


@pytest.mark.parametrize("make, needle", [
    (lambda tmp: tmp.joinpath("a-file").write_text("x") and tmp / "a-file", "is a file, not a folder"),
    (lambda tmp: tmp.joinpath("a-file").write_text("x") and tmp / "a-file" / "sub", "cannot create"),
    (lambda tmp: Path("/proc/vit-porting-test-out"), "cannot create"),
])
def test_bad_out_is_one_line_naming_it(tmp_path, capsys, make, needle):
    out = make(tmp_path)
    code, stderr = _main(capsys, "port", VARIANT, "--weights", "random", "--out", str(out), "--no-export")
    assert code == 2
    line = error_line(stderr)
    assert line.startswith(f"error: {out}: ") and needle in line and "--out" in line


# --- item 8: numeric options ------------------------------------------------------------------------

@pytest.mark.parametrize("args, option", [
    (["port", VARIANT, "--batch", "-1"], "--batch"),
    (["port", VARIANT, "--batch", "0"], "--batch"),
    (["port", VARIANT, "--num-classes", "-1"], "--num-classes"),
    (["port", VARIANT, "--seed", "-3"], "--seed"),
    (["port", VARIANT, "--output-budget-mb", "0"], "--output-budget-mb"),
    (["port", VARIANT, "--output-budget-mb", "nan"], "--output-budget-mb"),
    (["port", VARIANT, "--batch", "two"], "--batch"),
    (["eval", VARIANT, "data", "--batch", "0"], "--batch"),
    (["eval", VARIANT, "data", "--limit", "-5"], "--limit"),
    (["eval", VARIANT, "data", "--worst", "-1"], "--worst"),
    (["attention", VARIANT, "x.jpg", "--dpi", "0"], "--dpi"),
])
def test_numeric_options_are_checked_in_one_line(tmp_path, capsys, args, option):
    # a missing weights file: were the option accepted, the port would stop there, fast
    extra = ["--weights", str(tmp_path / "missing.pth")] if args[0] == "port" else []
    code, stderr = _main(capsys, *args, *extra, "--out", str(tmp_path / "out"))
    assert code == 2
    line = error_line(stderr)
    assert f"argument {option}:" in line, line
    assert not (tmp_path / "out").exists()


# --- item 7: mapping diagnostics --------------------------------------------------------------------

TOY = """family: toy
rules:
  - {from: 'blocks.{i}.fc.weight', to: 'blocks_{i}/fc/kernel', transform: linear}
  - {from: 'blocks.{i}.fc.bias', to: 'blocks_{i}/fc/bias'}
  - {from: head.weight, to: head/kernel, transform: linear}
"""


def _toy(tmp_path: Path, text: str) -> MappingSpec:
    path = tmp_path / "toy.yaml"
    path.write_text(text)
    return MappingSpec.load(path)


def _shapes(blocks: int = 2, head: bool = True) -> tuple[dict, dict]:
    source = {f"blocks.{i}.fc.{leaf}": shape for i in range(blocks)
              for leaf, shape in (("weight", (5, 7)), ("bias", (5,)))}
    target = {f"blocks_{i}/fc/{leaf}": shape for i in range(blocks)
              for leaf, shape in (("kernel", (7, 5)), ("bias", (5,)))}
    if head:
        source["head.weight"], target["head/kernel"] = (3, 5), (5, 3)
    return source, target


def test_rule_naming_no_keras_variable_says_which_rule_and_the_nearest(tmp_path):
    spec = _toy(tmp_path, TOY.replace("'blocks_{i}/fc/kernel'", "'blocks_{i}/fc/kernal'"))
    with pytest.raises(MappingError) as info:
        spec.plan(*_shapes())
    text = str(info.value)
    assert f"{tmp_path / 'toy.yaml'}:3 (blocks.{{i}}.fc.weight -> blocks_{{i}}/fc/kernal)" in text
    assert "'blocks_0/fc/kernal' (for blocks.0.fc.weight) is no Keras variable; nearest: blocks_0/fc/kernel" in text
    assert text.splitlines()[0].endswith("1 rules whose 'to' names no Keras variable; "
                                         "2 Keras variables no rule assigned")


def test_rule_that_matches_nothing_is_refused_naming_its_line(tmp_path):
    spec = _toy(tmp_path, TOY + "  - {from: 'blocks.{i}.fx.weight', to: 'blocks_{i}/fx/kernel'}\n")
    with pytest.raises(MappingError) as info:
        spec.plan(*_shapes())
    assert info.value.unmatched_rules == [
        f"{tmp_path / 'toy.yaml'}:6 (blocks.{{i}}.fx.weight -> blocks_{{i}}/fx/kernel)"]
    assert "rules that match no source key (a typo in 'from'?) (1)" in str(info.value)


def test_only_rules_the_caller_allows_may_match_nothing(tmp_path):
    """A feature extractor has no classifier keys: its rule may find none when the caller says so
    (run_keras passes the family's classifier prefix for num_classes=0); no other rule may."""
    spec = _toy(tmp_path, TOY)
    with pytest.raises(MappingError) as info:
        spec.plan(*_shapes(head=False))
    assert [r.split(" ")[0] for r in info.value.unmatched_rules] == [f"{tmp_path / 'toy.yaml'}:5"]
    assert len(spec.plan(*_shapes(head=False), may_be_absent=("head",))) == 4
    with pytest.raises(MappingError):  # the prefix is a key prefix, not any string start
        spec.plan(*_shapes(head=False), may_be_absent=("hea",))


def test_project_mappings_use_every_rule_at_reduced_depths(tmp_path):
    """The reduced depths the tests port (CaiT depth 1 with one class-attention block, CvT one
    block per stage) still plan with every rule used; their feature extractors plan when the
    classifier prefix is allowed, as run_keras allows it, and not otherwise."""
    from vit_porting.families.cait.model import build_keras as build_cait
    from vit_porting.families.cvt.model import build_keras as build_cvt

    def load_mapping(family: str) -> MappingSpec:
        return family_mapping(get_family(family))

    cases = [(get_variant(VARIANT).with_config(depth=1, depth_token_only=1), "cait", build_cait, "head"),
             (get_variant("cvt-13-224").with_config(depths=(1, 2, 3)), "cvt", build_cvt, "classifier")]
    shapes = run_torch_job({"job": "state_shapes", "specs": [spec.to_dict() for spec, *_ in cases]},
                           tmp_path)["shapes"]
    for spec, mapping, build, classifier in cases:
        for num_classes in (1000, 0):
            config = spec.with_config(num_classes=num_classes).config
            model = build(config, initializer="zeros")
            targets = {w.path: tuple(w.shape) for w in model.weights}
            source = shapes[spec.name] if num_classes else {k: v for k, v in shapes[spec.name].items()
                                                            if not k.startswith(classifier + ".")}
            plan = load_mapping(mapping).plan(source, targets, may_be_absent=() if num_classes else (classifier,))
            assert len(plan) == len(targets)
            if not num_classes:
                with pytest.raises(MappingError, match="rules that match no source key"):
                    load_mapping(mapping).plan(source, targets)


def test_mapping_with_a_bad_target_through_the_cli_names_the_rule(tmp_path):
    text = get_family("cait").resource("cait.yaml").read_text()
    bad = tmp_path / "cait_typo.yaml"
    bad.write_text(text.replace("to: 'blocks_{i}/attn/qkv/kernel'", "to: 'blocks_{i}/attn/qkvv/kernel'"))
    line = next(i for i, row in enumerate(bad.read_text().splitlines(), 1) if "qkvv" in row)
    proc = _cli("port", VARIANT, "--weights", "random", "--mapping", str(bad), "--out", str(tmp_path / "out"),
                "--no-export")
    assert proc.returncode == 2
    first = next(row for row in proc.stderr.splitlines() if row.startswith("error: "))
    assert first.startswith(f"error: {bad} cannot map random initialisation") and "1 rules whose 'to'" in first
    assert f"{bad}:{line} (blocks.{{i}}.attn.qkv.weight -> blocks_{{i}}/attn/qkvv/kernel): " \
           "'blocks_0/attn/qkvv/kernel' (for blocks.0.attn.qkv.weight) is no Keras variable; " \
           "nearest: blocks_0/attn/qkv/kernel" in proc.stderr


# --- item 9: the other family, the pickle refusal --------------------------------------------------

@pytest.fixture(scope="module")
def other_family_checkpoints(tmp_path_factory) -> dict[str, Path]:
    """A small CvT checkpoint (Hugging Face layout) and a small CaiT one (timm layout), random."""
    work = tmp_path_factory.mktemp("families")
    files = {}
    for name, spec in (("cvt", get_variant("cvt-13-224").with_config(depths=(1, 2, 3))),
                       ("cait", get_variant(VARIANT).with_config(depth=1))):
        files[name] = work / f"{name}.safetensors"
        run_torch_job({"job": "source", "spec": spec.to_dict(), "weights": "random", "out": str(files[name])}, work)
    return files


@pytest.mark.parametrize("given, variant, expected", [
    ("cvt", VARIANT, "this looks like a CvT checkpoint ({n} of {n} keys match cvt.yaml), "
                     "not cait_xxs24_224; did you mean cvt-13-224 (vit-port port cvt-13-224)?"),
    ("cait", "cvt-21-384", "this looks like a CaiT checkpoint ({n} of {n} keys match cait.yaml), "
                           "not cvt-21-384; did you mean cait_xxs24_224 (vit-port port cait_xxs24_224)?"),
])
def test_checkpoint_of_the_other_family_is_named_in_one_line(tmp_path, other_family_checkpoints, given, variant,
                                                             expected):
    path = other_family_checkpoints[given]
    keys = len(json.loads(path.read_bytes()[8:8 + int.from_bytes(path.read_bytes()[:8], "little")]))
    proc = _cli("port", variant, "--weights", str(path), "--out", str(tmp_path / "out"), "--no-export")
    assert proc.returncode == 2
    assert error_line(proc.stderr) == f"error: {path}: " + expected.format(n=keys)


def test_a_foreign_checkpoint_of_no_known_family_still_lists_its_keys(tmp_path):
    """Keys no registered family takes: the mapping engine's list, as before (first line counts)."""
    path = tmp_path / "resnet.safetensors"
    save_file({k: np.zeros((4, 4), np.float32) for k in ("conv1.weight", "layer1.0.conv1.weight", "fc.weight")},
              str(path))
    proc = _cli("port", VARIANT, "--weights", str(path), "--out", str(tmp_path / "out"), "--no-export")
    assert proc.returncode == 2
    assert "source keys no rule used (3)" in proc.stderr and "looks like" not in proc.stderr


def test_pickle_refusal_does_not_advise_running_it(tmp_path):
    marker = tmp_path / "payload-ran"
    evil = tmp_path / "evil.pth"
    subprocess.run([sys.executable, "-c", f"""
import os, torch
from vit_porting.mapping.engine import family_mapping
class Evil:
    def __reduce__(self):
        return (os.system, ("touch {marker}",))
torch.save({{"model": {{"w": torch.zeros(2)}}, "evil": Evil()}}, "{evil}")
"""], check=True, timeout=300)
    proc = _cli("port", VARIANT, "--weights", str(evil), "--out", str(tmp_path / "out"), "--no-export")
    assert proc.returncode == 2 and not marker.exists()
    line = error_line(proc.stderr)
    assert line.startswith(f"error: {evil}: refused:") and "it was not executed" in line
    assert "unsupported GLOBAL posix.system" in line  # what the reader stopped at
    assert "weights_only" not in proc.stderr and "likely succeed" not in proc.stderr
