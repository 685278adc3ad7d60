"""Collections on Ray (issue 17): two small variants ported through a local Ray instance, a second
run that skips both, a folder the collection must not replace, a killed port while the other
finishes (copied to a file:// URL), the memory request against the measurements, the card, and
publishing. One Ray instance serves the module; the ports are depth-1 without exports (the full
pipeline of each runtime is covered in test_runtimes.py and test_publish.py)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import fsspec
import pytest

from vit_porting.collection.driver import (
    MEMORY_FLOOR,
    MEMORY_RATIO,
    TASK_MEMORY,
    CollectionOptions,
    OutputRoot,
    exit_code,
    port_resources,
    ray_session,
    run_collection,
)
from vit_porting.collection.publish import publish_collection
from vit_porting.collection.report import render_collection_card, table
from vit_porting.families.registry import families, get_variant
from vit_porting.manifest import verify_manifest, write_manifest
from vit_porting.publish.upload import PublishError

from conftest import ROOT

SPECS = [get_variant(name).with_config(depth=1) for name in ("cait_xxs24_224", "cait_xxs36_224")]
RESULTS = ROOT / "benchmarks" / "results"


def _options(out: Path | str, **kw) -> CollectionOptions:
    return CollectionOptions(**{"weights": "random", "out": str(out), "exports": False, "progress": False,
                                "log": lambda _msg: None, **kw})


@pytest.fixture(scope="module")
def engine():
    """One local Ray instance for the module (a start costs seconds); run_collection uses it."""
    token = Path.home() / ".ray" / "auth_token"
    existed = token.exists()
    with ray_session(num_cpus=2) as started:
        yield started
    assert token.exists() == existed, "the local Ray instance must not write ~/.ray/auth_token"


@pytest.fixture(scope="module")
def first_run(engine, tmp_path_factory):
    out = tmp_path_factory.mktemp("collection") / "artifacts"
    start = time.perf_counter()
    collection = run_collection(SPECS, _options(out))
    return out, collection, time.perf_counter() - start


def test_two_variants_port_through_ray(first_run, engine):
    out, collection, _ = first_run
    assert exit_code(collection) == 0 and collection["summary"]["passed"] == 2
    assert collection["engine"]["name"] == "ray" and collection["engine"]["address"] == engine["address"]
    for spec in SPECS:
        entry = collection["variants"][spec.name]
        assert entry["status"] == "ported" and entry["verdict"] == "passed"
        assert entry["ported_by"]["address"] == engine["address"]
        assert verify_manifest(out / spec.name) == []
        facts = entry["facts"]
        assert entry["task"]["resources"] == port_resources(facts["weight_bytes"])
        assert entry["worst"]["head"] < 1e-5 and entry["worst"]["attention"] < 5e-5
        assert entry["sizes"]["safetensors"] == (out / spec.name / "model.safetensors").stat().st_size
        assert entry["port_seconds"] > 0 and entry["peak_rss_mb"] > 0 and entry["random_weights"]
        assert (out / "collections" / "cait" / "logs" / f"{spec.name}.log").read_text().startswith("Porting")
    on_disk = json.loads((out / "collections" / "cait" / "collection.json").read_text())
    assert on_disk["variants"].keys() == {s.name for s in SPECS}
    card = (out / "collections" / "cait" / "README.md").read_text()
    assert "RANDOM WEIGHTS" in card and "| `cait_xxs24_224` |" in card and "../../cait_xxs24_224/README.md" in card
    assert sorted(p.name for p in out.iterdir()) == ["cait_xxs24_224", "cait_xxs36_224", "collections"]


def test_a_second_run_skips_both_in_seconds(first_run):
    out, _, _ = first_run
    before = {s.name: (out / s.name / "manifest.json").stat().st_mtime_ns for s in SPECS}
    start = time.perf_counter()
    collection = run_collection(SPECS, _options(out))
    assert time.perf_counter() - start < 20
    assert exit_code(collection) == 0
    assert {e["status"] for e in collection["variants"].values()} == {"skipped"}
    assert collection["engine"]["started"] is False
    assert all(e["ported_by"]["engine"] == "ray" for e in collection["variants"].values())
    assert before == {s.name: (out / s.name / "manifest.json").stat().st_mtime_ns for s in SPECS}


def test_a_folder_it_did_not_make_is_never_replaced(first_run, tmp_path):
    """Another seed than the folder's, and a folder that does not verify: both refused, untouched."""
    out = tmp_path / "artifacts"
    shutil.copytree(first_run[0], out)
    other = get_variant("cait_xxs24_384").with_config(depth=1)
    (out / other.name).mkdir()
    (out / other.name / "notes.txt").write_text("mine")
    collection = run_collection([SPECS[0], other], _options(out, seed=7))
    assert exit_code(collection) == 1 and collection["summary"]["errors"] == 2
    seeded, stranger = collection["variants"][SPECS[0].name], collection["variants"][other.name]
    assert "made with other settings (weights" in seeded["error"] and "--force replaces it" in seeded["error"]
    assert "does not verify against its manifest" in stranger["error"] and "\n" not in stranger["error"]
    assert (out / other.name / "notes.txt").read_text() == "mine"
    assert verify_manifest(out / SPECS[0].name) == []
    card = (out / "collections" / "cait" / "README.md").read_text()
    assert "| **error** |" in card and f"- `{other.name}`: " in card


def _kill_port_of(variant: str, killed: list, stop: threading.Event) -> None:
    """Kill the Ray task porting ``variant`` (and the worker process it started, as the worker's
    death signal does) as soon as its first worker runs."""
    marker = f".{variant}.collect-"
    while not stop.is_set():
        for proc in Path("/proc").iterdir():
            try:
                if marker in (proc / "cmdline").read_bytes().decode(errors="replace"):
                    parent = int((proc / "stat").read_text().rsplit(")", 1)[1].split()[1])
                    for pid in (parent, int(proc.name)):
                        os.kill(pid, signal.SIGKILL)
                    killed.append(parent)
                    return
            except (OSError, ValueError):
                continue
        time.sleep(0.2)


def test_a_killed_port_fails_alone_and_the_other_is_copied_to_a_url(engine, tmp_path):
    specs = [get_variant(name).with_config(depth=1) for name in ("cait_xxs36_384", "cait_s24_224")]
    victim, survivor = specs
    url = f"file://{tmp_path}/remote"
    killed: list[int] = []
    stop = threading.Event()
    killer = threading.Thread(target=_kill_port_of, args=(victim.name, killed, stop), daemon=True)
    killer.start()
    try:
        collection = run_collection(specs, _options(url, retries=0))
    finally:
        stop.set()
        killer.join()
    assert killed, "the victim's port was never seen running"
    assert exit_code(collection) == 1
    dead, alive = collection["variants"][victim.name], collection["variants"][survivor.name]
    assert dead["status"] == "error" and dead["error"].startswith("the Ray task died") and "\n" not in dead["error"]
    assert alive["status"] == "ported" and alive["verdict"] == "passed"
    fs, path = fsspec.core.url_to_fs(url)
    assert verify_manifest(f"{path}/{survivor.name}", fs) == []
    assert sorted(p.name for p in (tmp_path / "remote").iterdir()) == [survivor.name, "collections"]
    # nothing left of either port: the driver removed the killed one's scratch
    parent = OutputRoot(url).scratch_parent()
    assert not list(parent.glob(".*.collect-*"))
    assert json.loads((tmp_path / "remote" / "collections" / "cait" / "collection.json").read_text())[
        "summary"] == {"variants": 2, "passed": 1, "failed": 0, "errors": 1}


def test_memory_request_covers_every_measured_port():
    """The constants of port_resources against every committed measurement: bench results and the
    collections' per-variant peaks (largest worker process of the port)."""
    measured = []
    for path in sorted(RESULTS.glob("*-x86_64-2cpu.json")):
        result = json.loads(path.read_text())
        if "port" not in result:  # another benchmark's result (kerashub_vit.py): no port measured
            continue
        measured.append((result["variant"], result["weight_bytes"], result["port"]["peak_rss_mb"]))
    for path in sorted(RESULTS.glob("collection-*.json")):
        for name, entry in json.loads(path.read_text())["variants"].items():
            if entry.get("peak_rss_mb"):
                measured.append((name, entry["facts"]["weight_bytes"], entry["peak_rss_mb"]))
    assert len(measured) >= 5
    for name, weight_bytes, peak_mb in measured:
        budget = port_resources(weight_bytes)["memory"] - TASK_MEMORY
        assert peak_mb * 2**20 <= budget, (name, peak_mb, budget / 2**20)
    assert port_resources(10**9) == {"num_cpus": 1, "memory": int(TASK_MEMORY + MEMORY_RATIO * 1e9)}
    assert port_resources(10**6, cpus=4) == {"num_cpus": 4, "memory": int(TASK_MEMORY + MEMORY_FLOOR)}


def test_card_table_from_a_collection_json():
    entries = {
        "cait_m48_448": {"variant": "cait_m48_448", "params": 356_460_520, "gflops": 658.22, "image_size": 448,
                         "published_top1": 86.5, "published_top1_source": "authors", "status": "ported",
                         "verdict": "passed", "worst": {"head": 1.2e-6, "attention": 3.4e-5},
                         "sizes": {"safetensors": 1_425_842_080, "savedmodel": 1_428_000_000, "keras": 1_426_000_000,
                                   "onnx": 1_430_000_000}, "random_weights": False},
        "cait_s24_224": {"variant": "cait_s24_224", "params": 46_916_200, "gflops": 18.65, "image_size": 224,
                         "published_top1": 83.442, "published_top1_source": "timm", "status": "ported",
                         "verdict": "failed", "worst": {"head": 4.0e-3, "attention": 1.0e-2}, "sizes": {},
                         "random_weights": False},
        "cait_xxs24_224": {"variant": "cait_xxs24_224", "params": None, "gflops": None, "image_size": 224,
                           "published_top1": None, "published_top1_source": "", "status": "error",
                           "verdict": None, "error": "the Ray task died: WorkerCrashedError"},
    }
    collection = {"family": "cait", "summary": {"variants": 3, "passed": 1, "failed": 1, "errors": 1},
                  "variants": entries, "created": "2026-11-23T00:00:00+00:00",
                  "engine": {"name": "ray", "version": "2.60.0", "address": "10.0.0.1:6379", "mode": "cluster",
                             "nodes": 3, "cpus": 48}}
    rows = table(collection)
    assert rows[2] == ("| `cait_m48_448` | 356.5 M | 658.2 | 448 px | 86.5 %<sup>1</sup> | pass "
                       "| 1.20e-06 / 3.40e-05 | 1425.8 MB | 1428.0 MB | 1426.0 MB | 1430.0 MB "
                       "| [card](../../cait_m48_448/README.md) |")
    assert rows[3].startswith("| `cait_s24_224` | 46.9 M | 18.6 | 224 px | 83.4 %<sup>2</sup> | **FAIL** |")
    assert rows[4].startswith("| `cait_xxs24_224` | — | — | 224 px | — | **error** | — / — |")
    assert rows[4].endswith("| — |") and "<sup>1</sup> authors" in rows and "<sup>2</sup> timm" in rows
    card = render_collection_card(collection, lambda v: f"https://huggingface.co/me/{v}")
    assert "RANDOM WEIGHTS" not in card and "[card](https://huggingface.co/me/cait_m48_448)" in card
    assert "- `cait_xxs24_224`: the Ray task died: WorkerCrashedError" in card
    assert "- `cait_s24_224`: parity failed" in card
    assert "ray 2.60.0 at 10.0.0.1:6379 (cluster), 3 node(s), 48 CPUs" in card
    assert "features_model = keras.Model(model.inputs, model.get_layer(\"head\").input)" in card


def _shallow(spec):
    """The variant with one block (per stage), whatever its config calls depth."""
    fields = spec.config.__dataclass_fields__
    return spec.with_config(depths=(1,) * len(spec.config.depths)) if "depths" in fields else spec.with_config(depth=1)


def test_the_cards_keras_snippet_gives_both_forms(tmp_path):
    """The collection card's Keras block, run as written beside a model.keras of each family: the
    logits and the feature vector (the input of the layer named `head`, which every family has)."""
    import keras

    from vit_porting.publish.card import python_blocks

    for family in families().values():
        spec = _shallow(next(iter(family.variant_map().values())))
        model = family.keras().build_keras(spec.config)
        (tmp_path / spec.name).mkdir()
        model.save(tmp_path / spec.name / "model.keras")
        keras.backend.clear_session()
        entry = {"variant": spec.name, "image_size": spec.image_size, "status": "ported", "verdict": "passed"}
        card = render_collection_card({"family": family.name, "variants": {spec.name: entry}, "created": "now",
                                       "summary": {"variants": 1, "passed": 1, "failed": 0, "errors": 0}})
        code = python_blocks(card)[0]
        proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=300,
                              env={**os.environ, "PYTHONPATH": str(ROOT)})
        assert proc.returncode == 0, proc.stderr[-2000:]
        width = spec.config.embed_dim
        assert "top-5 classes: [" in proc.stdout and f"features: (1, {width})" in proc.stdout, proc.stdout


def test_publish_collection_stages_each_variant_and_refuses_failed_parity(first_run, tmp_path):
    out = tmp_path / "artifacts"
    shutil.copytree(first_run[0], out)
    failed = SPECS[1].name
    report = json.loads((out / failed / "parity.json").read_text())
    (out / failed / "parity.json").write_text(json.dumps({**report, "passed": False}))
    manifest = json.loads((out / failed / "manifest.json").read_text())
    write_manifest(out / failed, failed, "cait", manifest["origin"], False, "0.1.0", versions=manifest["versions"])
    collection_json = out / "collections" / "cait" / "collection.json"
    collection = json.loads(collection_json.read_text())
    collection["variants"][failed]["verdict"] = "failed"
    collection_json.write_text(json.dumps(collection))
    result = publish_collection("cait", out, "hf://vit-porting-tests", log=lambda _m: None)
    assert set(result.staged) == {SPECS[0].name} and "parity did not pass" in result.refused[failed]
    # ported without exports: model.safetensors, staged as the PyTorch form
    assert list(result.staged[SPECS[0].name].forms) == ["pytorch"]
    staged = result.folder / SPECS[0].name / "pytorch"
    assert verify_manifest(staged) == []
    assert json.loads((staged / "manifest.json").read_text())["published"]["target"] == \
        f"hf://vit-porting-tests/{SPECS[0].name}-pytorch"
    card = (result.folder / "README.md").read_text()
    assert f"[card](https://huggingface.co/vit-porting-tests/{SPECS[0].name})" in card
    kaggle = publish_collection("cait", out, "kaggle://someone", stage_dir=tmp_path / "k", log=lambda _m: None)
    slug = SPECS[0].name.replace("_", "-")
    assert json.loads((kaggle.folder / SPECS[0].name / "pytorch" / "manifest.json").read_text())["published"][
        "target"] == f"kaggle://someone/cait/pyTorch/{slug}"
    # a second run re-stages into what the first made; a folder of the user's is refused, untouched
    assert publish_collection("cait", out, "kaggle://someone", stage_dir=tmp_path / "k", log=lambda _m: None).staged
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep")
    with pytest.raises(PublishError, match="no publish-collection staged"):
        publish_collection("cait", out, "kaggle://someone", stage_dir=mine, log=lambda _m: None)
    assert [p.name for p in mine.iterdir()] == ["notes.txt"]
    cli = subprocess.run([sys.executable, "-m", "vit_porting.cli", "publish-collection", "cait", "--target",
                          "hf://vit-porting-tests", "--out", str(out)], cwd=ROOT, capture_output=True, text=True,
                         timeout=300)
    assert cli.returncode == 1 and f"NOT published: {failed}: parity did not pass" in cli.stderr


def test_cli_errors_are_one_line_naming_the_option():
    for args, needle in ((["collection", "cait", "--variants", "cait_xxs24_224,nope"], "--variants nope"),
                         (["collection", "nope"], "unknown family 'nope'"),
                         (["publish-collection", "cait", "--target", "hf://a/b"], "hf://owner or kaggle://owner")):
        proc = subprocess.run([sys.executable, "-m", "vit_porting.cli", *args], cwd=ROOT, capture_output=True,
                              text=True, timeout=120)
        assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and needle in proc.stderr, proc.stderr
