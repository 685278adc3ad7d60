"""No command deletes or overwrites a path it did not create (issue 13, items 1-5).

Every command that writes (port --out, parity, publish --stage-dir, eval, attention --png,
verify) runs with its outputs next to a user's sentinel file, on one random-weights port of
cait_xxs24_224 at depth 1; each test compares the whole tree before and after. Then: staging
folders publish did not make, manifest paths outside their folder, dry runs of a tampered
folder, push failures at the network boundary, a port killed with SIGKILL (its workers die
with it and the next port removes its folder), and two ports of one destination at once.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import huggingface_hub
import kagglehub
import numpy as np
import pytest

from vit_porting import cli
from vit_porting.families.registry import get_variant
from vit_porting.manifest import sha256_file, verify_manifest
from vit_porting.pipeline import PortOptions, port
from vit_porting.publish.upload import parse_target
from vit_porting.safety import (
    OWNER_NAME,
    STAGING_MARKER,
    FolderBusyError,
    FolderLock,
    UnsafePathError,
    inside,
    make_scratch,
    process_identity,
    remove_stale_scratch,
    write_text_atomic,
)

from conftest import ROOT, error_line

SPEC = get_variant("cait_xxs24_224").with_config(depth=1)
NAME = SPEC.name
SENTINEL = "sentinel.txt"
HF = "hf://vit-porting-tests/cait-depth1"
KAGGLE = "kaggle://vit-porting-tests/cait"
TOKENS = {"HF_TOKEN": "hf_FAKEtokenFORsafetyTests0123456789", "KAGGLE_USERNAME": "vit-porting-tests",
          "KAGGLE_KEY": "fakekagglekeyFORsafety0123456789", "HF_HUB_OFFLINE": "1"}


def _sentinel(folder: Path, name: str = SENTINEL) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_text(f"the user's own file in {folder.name}\n")
    return path


def _tree(root: Path) -> dict[str, tuple]:
    """Every path under ``root`` with what it is: what a command must not change unasked."""
    tree = {}
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root).as_posix()
        if path.is_symlink():
            tree[rel] = ("link", os.readlink(path))
        elif path.is_dir():
            tree[rel] = ("dir",)
        else:
            tree[rel] = ("file", path.stat().st_size, sha256_file(path))
    return tree


def _changed(before: dict, after: dict) -> set[str]:
    return {rel for rel in before.keys() | after.keys() if before.get(rel) != after.get(rel)}


def _main(capsys, *args: str) -> tuple[int, str]:
    try:
        code = cli.main(list(args))
    except SystemExit as exc:
        code = exc.code
    captured = capsys.readouterr()
    return code, captured.err + captured.out


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    """An artifacts root holding the user's sentinel, and a port (every export) written into it."""
    root = tmp_path_factory.mktemp("sentinel") / "artifacts"
    _sentinel(root)
    port(SPEC, PortOptions(weights="random", out_root=root, photos=False, log=lambda _m: None))
    return root


@pytest.fixture
def copy(root, tmp_path) -> Path:
    """A copy of the port to tamper with: tmp/arts/<variant>."""
    folder = tmp_path / "arts" / NAME
    shutil.copytree(root / NAME, folder)
    return folder


# --- every command, beside a sentinel -------------------------------------------------------------

def test_port_writes_only_its_folder(root):
    assert sorted(p.name for p in root.iterdir()) == [NAME, SENTINEL]  # no scratch folder, no lock file
    assert (root / SENTINEL).read_text() == f"the user's own file in {root.name}\n"
    assert verify_manifest(root / NAME) == []


def test_force_replaces_only_a_folder_a_port_made(tmp_path, capsys):
    out = tmp_path / "out"
    _sentinel(out / NAME)  # a folder of the user's where the port would go
    before = _tree(out)
    for extra in ([], ["--force"]):
        code, stderr = _main(capsys, "port", NAME, "--weights", "random", "--out", str(out), "--no-export", *extra)
        assert code == 2
        line = error_line(stderr)
        assert str(out / NAME) in line and "--force" in line
        assert ("not an artifact folder" in line) == bool(extra)
    assert _tree(out) == before


def test_parity_rewrites_only_its_reports(root, capsys):
    before = _tree(root)
    code, output = _main(capsys, "parity", NAME, "--out", str(root))
    assert code == 0, output
    assert _changed(before, _tree(root)) <= {f"{NAME}/{n}" for n in ("parity.json", "parity.md", "README.md",
                                                                      "manifest.json")}
    assert verify_manifest(root / NAME) == []


def test_verify_changes_nothing(root, capsys):
    before = _tree(root)
    code, _ = _main(capsys, "verify", str(root / NAME))
    assert code == 0 and _tree(root) == before


def test_eval_writes_only_its_reports(root, tmp_path, capsys):
    from PIL import Image

    data = tmp_path / "data"
    for label in ("tabby", "espresso"):  # folders named as ImageNet names the classes
        (data / label).mkdir(parents=True)
        pixels = np.random.default_rng(len(label)).integers(0, 255, (40, 48, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(data / label / "a.png")
    _sentinel(data)
    _sentinel(root / NAME / "eval", "notes.txt")  # eval/ is the command's, but not every file in it
    before, data_before = _tree(root), _tree(data)
    code, output = _main(capsys, "eval", str(root / NAME), str(data), "--runtimes", "onnxruntime", "--no-progress")
    assert code == 0, output
    assert _changed(before, _tree(root)) == {f"{NAME}/eval/eval.json", f"{NAME}/eval/eval.md"}
    assert _tree(data) == data_before


def test_attention_png_never_overwrites_a_file(root, tmp_path, capsys):
    from PIL import Image

    image = tmp_path / "photo.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (50, 50, 3), dtype=np.uint8)).save(image)
    pictures = tmp_path / "pictures"
    _sentinel(pictures, "mine.png")
    before, pictures_before = _tree(root), _tree(pictures)
    code, output = _main(capsys, "attention", str(root / NAME), str(image), "--png", str(pictures / "mine.png"))
    assert code == 2 and f"{pictures / 'mine.png'}: exists" in error_line(output)
    assert _tree(pictures) == pictures_before
    code, output = _main(capsys, "attention", str(root / NAME), str(image), "--png", str(pictures / "new.png"))
    assert code == 0, output
    assert _changed(pictures_before, _tree(pictures)) == {"new.png"}
    assert _tree(root) == before


# --- item 1: staging folders -----------------------------------------------------------------------

def _forms_verify(staging: Path) -> bool:
    """Every staged form (a folder each: keras/, savedmodel/, onnx/, pytorch/) matches its manifest."""
    forms = sorted(p for p in staging.iterdir() if p.is_dir())
    return [p.name for p in forms] == ["keras", "onnx", "pytorch", "savedmodel"] and \
        all(verify_manifest(p) == [] for p in forms)


def test_publish_refuses_a_staging_folder_it_did_not_make(root, copy, capsys):
    """The issue's case: --stage-dir the artifacts root (the folder published and a file beside
    it); then a user's folder, a file, and a staging folder with a user's file added."""
    arts = copy.parent
    _sentinel(arts)
    user = _sentinel(arts.parent / "mine").parent
    cases = [(arts, "must not contain the artifact folder"), (user, "was not made by a publish"),
             (user / SENTINEL, "is not a folder"), (copy / "saved_model", "outside the artifact folder")]
    for stage_dir, needle in cases:
        before = _tree(arts.parent)
        code, output = _main(capsys, "publish", str(copy), "--target", HF, "--stage-dir", str(stage_dir))
        assert code == 2, output
        line = error_line(output)
        assert line.startswith(f"error: {stage_dir} (--stage-dir): ") and needle in line, line
        assert _tree(arts.parent) == before, stage_dir

    staging = arts.parent / "staging"
    for _ in range(2):  # a folder publish made: it may replace what it staged there
        code, output = _main(capsys, "publish", str(copy), "--target", HF, "--stage-dir", str(staging))
        assert code == 0, output
        assert _forms_verify(staging) and (staging / STAGING_MARKER).is_file()
    added = _sentinel(staging, "notes.txt")
    before = _tree(arts.parent)
    code, output = _main(capsys, "publish", str(copy), "--target", HF, "--stage-dir", str(staging))
    assert code == 2 and "holds files no publish staged (notes.txt)" in error_line(output)
    assert _tree(arts.parent) == before and added.is_file()


def test_default_staging_folder_stays_beside_the_sentinel(copy, capsys):
    arts = copy.parent
    sentinel = _sentinel(arts)
    code, output = _main(capsys, "publish", str(copy), "--target", KAGGLE)
    assert code == 0, output
    staged = arts / ".staging" / parse_target(KAGGLE).slug
    assert _forms_verify(staged) and sentinel.read_text().startswith("the user's own file")
    assert sorted(p.name for p in arts.iterdir()) == [".staging", NAME, SENTINEL]


def test_collection_commands_beside_the_sentinel(copy, capsys, tmp_path):
    """collection refuses to replace a folder made with other settings (here a depth-1 port) and
    writes only its own collection files; publish-collection refuses a user's staging folder."""
    arts = copy.parent
    _sentinel(arts)
    before = _tree(arts)
    code, output = _main(capsys, "collection", "cait", "--variants", NAME, "--weights", "random", "--out", str(arts),
                         "--no-progress")
    assert code == 1 and "was made with other settings (architecture: depth differ" in output, output
    changed = _changed(before, _tree(arts))
    assert changed and all(rel.startswith("collections") for rel in changed), changed
    user = _sentinel(tmp_path / "mine").parent
    before = _tree(tmp_path)
    code, output = _main(capsys, "publish-collection", "cait", "--target", "hf://vit-porting-tests", "--out",
                         str(arts), "--stage-dir", str(user))
    assert code == 2 and "holds files no publish-collection staged (sentinel.txt)" in error_line(output), output
    assert _tree(tmp_path) == before


# --- item 2: paths from metadata -------------------------------------------------------------------

@pytest.mark.parametrize("entry", ["../../victim.txt", "/tmp/victim.txt", "a/../../../victim.txt"])
def test_manifest_paths_outside_the_folder_are_refused(copy, capsys, entry):
    """A crafted manifest entry must not make a dry run write outside the staging folder: here it
    would overwrite arts/victim.txt with the file two levels above the artifact folder."""
    arts = copy.parent
    precious = arts / "victim.txt"
    precious.write_text("precious")
    (arts.parent / "victim.txt").write_text("attacker")
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest["files"][entry] = {"size": 8, "sha256": sha256_file(arts.parent / "victim.txt")}
    (copy / "manifest.json").write_text(json.dumps(manifest))
    before = _tree(arts.parent)
    code, output = _main(capsys, "publish", str(copy), "--target", HF)
    assert code == 2
    line = error_line(output)
    assert "does not match its manifest, nothing staged" in line and repr(entry) in line
    assert precious.read_text() == "precious" and _tree(arts.parent) == before


def test_inside_keeps_relative_paths_in_their_folder(tmp_path):
    (tmp_path / "folder" / "sub").mkdir(parents=True)
    (tmp_path / "folder" / "out").symlink_to(tmp_path)
    folder = tmp_path / "folder"
    assert inside(folder, "sub/model.onnx") == folder / "sub" / "model.onnx"
    for bad in ("../x", "/etc/passwd", "sub/../../x", "sub//x", "./x", "sub\\..\\x", "", "out/x", "a\x00b"):
        with pytest.raises(UnsafePathError):
            inside(folder, bad)


# --- item 3: a dry run of a tampered folder -----------------------------------------------------------

def test_dry_run_of_a_tampered_folder_fails_and_stages_nothing(copy, capsys):
    data = bytearray((copy / "model.safetensors").read_bytes())
    data[-1] ^= 1
    (copy / "model.safetensors").write_bytes(bytes(data))
    staging = copy.parent / "staging"
    code, output = _main(capsys, "publish", str(copy), "--target", HF, "--stage-dir", str(staging))
    assert code == 2
    line = error_line(output)
    assert line.startswith(f"error: {copy} does not match its manifest, nothing staged (1 problem(s), first: "
                           "model.safetensors: sha256")
    assert not staging.exists()


# --- item 6: push failures at the network boundary ---------------------------------------------------

@pytest.mark.parametrize("target", [HF, KAGGLE])
def test_push_failures_are_one_line(copy, tmp_path, capsys, monkeypatch, target):
    for key, value in TOKENS.items():
        monkeypatch.setenv(key, value)

    def unreachable(*_args, **_kwargs):
        raise ConnectionError(
            "HTTPSConnectionPool(host='huggingface.co', port=443): Max retries exceeded\n"
            + "\n".join(f"  frame {i}" for i in range(100)))

    monkeypatch.setattr(huggingface_hub.HfApi, "create_repo", unreachable)
    monkeypatch.setattr(kagglehub, "model_upload", unreachable)
    code, output = _main(capsys, "publish", str(copy), "--target", target, "--push", "--allow-random",
                         "--stage-dir", str(tmp_path / "staging"))
    assert code == 2
    first = "hf://vit-porting-tests/cait-depth1" if target == HF else "kaggle://vit-porting-tests/cait/keras/cait-xxs24-224"
    assert error_line(output) == (f"error: upload of {tmp_path / 'staging' / 'keras'} to {first} failed: "
                                  "ConnectionError: HTTPSConnectionPool(host='huggingface.co', port=443): "
                                  "Max retries exceeded")
    assert all(token not in output for token in TOKENS.values() if len(token) > 20)


# --- item 4: a port killed with SIGKILL ------------------------------------------------------------

def _children(pid: int) -> list[int]:
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            found.append(int(stat.parent.name))
    return found


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def _wait_for(condition, timeout: float, what: str):
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def _port_process(out: Path, depth: int | None = 1) -> subprocess.Popen:
    """A port without exports in a process of its own (the one a test kills); ``depth`` None:
    full depth, whose Keras worker runs for many seconds."""
    spec = f"get_variant({NAME!r})" + (f".with_config(depth={depth})" if depth else "")
    code = ("import sys; from pathlib import Path; from vit_porting.pipeline import PortOptions, port; "
            "from vit_porting.families.registry import get_variant; "
            f"report = port({spec}, PortOptions(weights='random', out_root=Path({str(out)!r}), force=True, "
            "exports=False, photos=False)); sys.exit(0 if report['passed'] else 1)")
    return subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)


def test_sigkill_takes_the_workers_along_and_the_next_port_removes_the_leftovers(tmp_path):
    out = tmp_path / "out"
    parent = _port_process(out, depth=None)
    try:
        keras_worker = _wait_for(lambda: next((c for c in _children(parent.pid) if "vit_porting.workers.run_keras"
                                               in _cmdline(c)), None), 300, "the Keras worker")
        time.sleep(1.0)  # importing TensorFlow; converting and running 24 blocks would take it many seconds more
        workers = _children(parent.pid)
        assert keras_worker in workers
        parent.send_signal(signal.SIGKILL)
        killed = time.monotonic()
        parent.wait(timeout=30)
    finally:
        if parent.poll() is None:
            parent.kill()
    # a worker is gone, or a zombie nobody reaps (it has finished): either way it runs no more
    _wait_for(lambda: all(process_identity(w) is None for w in workers), 120, "the workers to end")
    assert time.monotonic() - killed < 3, "the workers outlived their parent"
    assert not list(out.rglob("run_keras-convert-*.result.json")), "the Keras worker finished its job orphaned"
    left = [p.name for p in out.iterdir() if p.name.startswith(f".{NAME}.tmp-")]
    assert len(left) == 1  # the killed port's scratch folder
    assert (out / left[0] / OWNER_NAME).is_file()

    lines: list[str] = []
    report = port(SPEC, PortOptions(weights="random", out_root=out, exports=False, photos=False, log=lines.append))
    assert report["passed"]
    assert f"Removed {out / left[0]}: left by a port that was killed" in lines
    assert sorted(p.name for p in out.iterdir()) == [NAME]


def test_worker_polls_for_its_parent_where_the_kernel_cannot_end_it(tmp_path):
    """The fallback off Linux (no PR_SET_PDEATHSIG), exercised here: a worker whose parent exits
    is adopted, notices within a second and exits."""
    pid_file = tmp_path / "pid"
    child = ("import os, time; from vit_porting.workers.protocol import _poll_parent; "
             f"_poll_parent(os.getppid()); open({str(pid_file)!r}, 'w').write(str(os.getpid())); time.sleep(60)")
    parent = f"""
import os, subprocess, sys, time
subprocess.Popen([sys.executable, "-c", {child!r}])
while not os.path.exists({str(pid_file)!r}):
    time.sleep(0.05)
"""
    subprocess.run([sys.executable, "-c", parent], cwd=ROOT, timeout=60, check=True,
                   env={**os.environ, "PYTHONPATH": str(ROOT)})
    pid = int(_wait_for(lambda: pid_file.exists() and pid_file.read_text(), 10, "the child's pid"))
    _wait_for(lambda: process_identity(pid) is None, 5, "the adopted child to exit")


# --- item 5: two ports of one destination ----------------------------------------------------------

def test_second_port_of_a_destination_is_refused_naming_the_first(tmp_path):
    out = tmp_path / "out"
    first = _port_process(out)
    try:
        lock = out / f".{NAME}.lock"
        _wait_for(lambda: lock.exists() and f'"pid": {first.pid},' in lock.read_text(), 300, "the first port's lock")
        second = subprocess.run([sys.executable, "-m", "vit_porting.cli", "port", NAME, "--weights", "random",
                                 "--force", "--no-export", "--out", str(out)], cwd=ROOT, capture_output=True, text=True,
                                timeout=300)
        assert second.returncode == 2
        assert error_line(second.stderr) == (f"error: {out / NAME} is in use by process {first.pid} (vit-port port "
                                             f"{NAME}; lock {lock}); wait for it to finish")
        _, stderr = first.communicate(timeout=600)
    finally:
        if first.poll() is None:
            first.kill()
    assert first.returncode == 0, stderr[-3000:]
    assert json.loads((out / NAME / "parity.json").read_text())["passed"]
    assert sorted(p.name for p in out.iterdir()) == [NAME]  # the lock is gone with the port


# --- the helpers' own promises -----------------------------------------------------------------------

def test_stale_scratch_is_removed_only_when_its_owner_is_gone(tmp_path):
    mine = make_scratch(tmp_path, "alive")
    other = tmp_path / ".git"
    other.mkdir()
    (other / "HEAD").write_text("a hidden folder of someone else's")
    reused = make_scratch(tmp_path, "reused")  # same PID, another start time: the PID was reused
    owner = json.loads((reused / OWNER_NAME).read_text())
    write_text_atomic(reused / OWNER_NAME, json.dumps({**owner, "start": "1"}))
    torn = make_scratch(tmp_path, "torn")
    (torn / OWNER_NAME).write_text("{")  # an owner file being written: left alone
    remote = make_scratch(tmp_path, "remote")  # another node's port on a shared folder: its PID means nothing here
    write_text_atomic(remote / OWNER_NAME, json.dumps({**owner, "pid": 2**22 + 1, "host": "another-node"}))
    assert remove_stale_scratch(tmp_path) == [reused]
    assert mine.is_dir() and other.is_dir() and torn.is_dir() and remote.is_dir() and not reused.exists()


def test_a_lock_is_refused_while_held_and_leaves_nothing(tmp_path):
    folder = tmp_path / "cait"
    with FolderLock(folder, "first"):
        with pytest.raises(FolderBusyError, match=f"in use by process {os.getpid()} \\(first; lock "):
            FolderLock(folder, "second").__enter__()
    assert list(tmp_path.iterdir()) == []
    foreign = tmp_path / ".cait.lock"
    foreign.write_text("someone else's file")
    with pytest.raises(FolderBusyError, match="not a lock file of this toolkit"):
        FolderLock(folder).__enter__()
    assert foreign.read_text() == "someone else's file"


def test_atomic_write_does_not_write_through_a_hard_link(tmp_path):
    original = tmp_path / "parity.json"
    original.write_text("port")
    staged = tmp_path / "staged.json"
    os.link(original, staged)
    write_text_atomic(original, "re-check")
    assert original.read_text() == "re-check" and staged.read_text() == "port"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["parity.json", "staged.json"]
