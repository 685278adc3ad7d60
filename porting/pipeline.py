"""One port, end to end: weights -> Keras -> artifacts -> parity, in per-runtime processes.

This process imports neither torch nor TensorFlow; it starts the workers, compares their
outputs with numpy, and writes the artifact folder under a temporary name that is renamed
into place only when everything in it is complete.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from parity.compare import compare_outputs, first_divergent_block, load_policy
from parity.inputs import random_images, write_inputs
from parity.report import runtime_summary, write_reports
from parity.worker import run_worker
from porting.mapping import load_mapping
from porting.variants import FAMILIES, VariantSpec

TOOLKIT_VERSION = "0.1.0"
DEFAULT_ARTIFACTS = Path("artifacts")


class PortError(RuntimeError):
    """A port that stopped; the message says why and what to do."""


@dataclass
class PortOptions:
    weights: str = "pretrained"
    seed: int = 0
    batch: int = 2
    input_seed: int = 0
    out_root: Path = DEFAULT_ARTIFACTS
    force: bool = False
    mapping: str | None = None  # override the family mapping (tests, custom checkpoints)
    log: Callable[[str], None] = field(default=lambda msg: print(msg, file=sys.stderr, flush=True))


class _Steps:
    """Numbered progress lines with timings, kept for the report."""

    def __init__(self, total: int, log: Callable[[str], None]):
        self.total, self.log, self.index, self.timings = total, log, 0, {}

    def run(self, name: str, fn: Callable[[], dict]) -> dict:
        self.index += 1
        self.log(f"[{self.index}/{self.total}] {name} ...")
        start = time.perf_counter()
        result = fn()
        seconds = time.perf_counter() - start
        self.timings[name] = {"seconds": round(seconds, 3), "peak_rss_mb": result.get("peak_rss_mb")}
        self.log(f"      done in {seconds:.1f} s" + (f", peak RSS {result['peak_rss_mb']:.0f} MB"
                                                      if result.get("peak_rss_mb") else ""))
        return result


def _load_npz(path: Path) -> dict[str, np.ndarray]:
    with np.load(path) as data:
        return {k: data[k] for k in data.files}


def localise(mapping_path: str | None, spec: VariantSpec, block: str | None, weight_paths: list[str]) -> dict | None:
    """The mapping rules feeding the first diverging block (for the report)."""
    if block is None:
        return None
    mapping = load_mapping(mapping_path or FAMILIES[spec.family]["mapping"])
    paths = [p for p in weight_paths if p.startswith(block + "/")]
    rules = mapping.rules_feeding(paths)
    return {"block": block, "rules": [{"line": r.line, "from": r.source, "to": r.target,
                                       "transform": r.transform} for r in rules]}


def build_report(spec: VariantSpec, origin: dict, runtimes: dict[str, dict[str, np.ndarray]],
                 reference: dict[str, np.ndarray], output_order: list[str], weight_paths: list[str],
                 mapping_path: str | None, device: str = "cpu", extra: dict | None = None) -> dict:
    policy = load_policy()
    summaries = []
    for runtime, outputs in runtimes.items():
        comparisons = compare_outputs(reference, outputs, device, policy)
        summary = runtime_summary(runtime, device, comparisons)
        if not summary["passed"]:
            block = first_divergent_block(comparisons, output_order)
            summary["localisation"] = localise(mapping_path, spec, block, weight_paths)
        summaries.append(summary)
    return {
        "variant": spec.name, "family": spec.family, "config": spec.to_dict()["config"],
        "passed": all(s["passed"] for s in summaries),
        "random_weights": bool(origin.get("random_weights")), "origin": origin,
        "reference": f"PyTorch ({FAMILIES[spec.family]['source_label']}) fp32 on {device}",
        "source_layout": FAMILIES[spec.family]["source_label"],
        "inputs": "seeded N(0,1) images", "runtimes": summaries,
        "time": datetime.now(timezone.utc).isoformat(timespec="seconds"), "toolkit_version": TOOLKIT_VERSION,
        **(extra or {}),
    }


def _replace_folder(tmp: Path, final: Path, force: bool) -> None:
    if final.exists():
        if not force:
            raise PortError(f"{final} already exists; pass --force (FORCE=1) to replace it")
        old = final.with_name(f".{final.name}.old-{os.getpid()}")
        final.rename(old)
        tmp.rename(final)
        shutil.rmtree(old, ignore_errors=True)
    else:
        tmp.rename(final)


def port(spec: VariantSpec, options: PortOptions) -> dict:
    """Port ``spec`` into ``options.out_root/<variant>``; returns the parity report.

    Raises PortError (nothing written) when the weights or the mapping are refused.
    """
    log = options.log
    final = options.out_root / spec.name
    if final.exists() and not options.force:
        raise PortError(f"{final} already exists; pass --force (FORCE=1) to replace it")
    options.out_root.mkdir(parents=True, exist_ok=True)
    tmp = options.out_root / f".{spec.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    work = tmp / "_work"
    work.mkdir(parents=True)
    steps = _Steps(5, log)
    log(f"Porting {spec.name} (weights: {options.weights}) into {final}")
    try:
        inputs = work / "inputs.npz"
        write_inputs(inputs, random_images(spec.image_size, options.batch, options.input_seed,
                                           spec.config.in_channels))
        job = {"spec": spec.to_dict()}
        source = work / "source.safetensors"
        src = steps.run("loading source weights (PyTorch)", lambda: run_worker(
            "parity.run_torch", {**job, "job": "source", "weights": options.weights, "seed": options.seed,
                                 "mapping": options.mapping, "out": str(source)}, work))
        origin = src["origin"]
        if origin.get("random_weights"):
            log("      NOTE: random weights: this port proves the conversion, not accuracy")
        conv = steps.run("converting to Keras and running it", lambda: run_worker(
            "parity.run_keras", {**job, "job": "convert", "source": str(source), "inputs": str(inputs),
                                 "outputs": str(work / "keras_eager.npz"), "mapping": options.mapping,
                                 "source_name": origin["description"],
                                 "safetensors_out": str(tmp / "model.safetensors")}, work))
        steps.run("running the PyTorch reference", lambda: run_worker(
            "parity.run_torch", {**job, "job": "reference", "source": str(source), "inputs": str(inputs),
                                 "out": str(work / "reference.npz"), "intermediates": True}, work))
        roundtrip = steps.run("checking the round trip (Keras -> safetensors -> PyTorch)", lambda: run_worker(
            "parity.run_torch", {**job, "job": "roundtrip", "source": str(source),
                                 "candidate": str(tmp / "model.safetensors")}, work))
        report = steps.run("comparing outputs", lambda: build_report(
            spec, origin, {"keras_eager": _load_npz(work / "keras_eager.npz")},
            _load_npz(work / "reference.npz"), conv["output_order"], conv["weight_paths"], options.mapping,
            extra={"roundtrip": {k: roundtrip[k] for k in ("bit_exact", "strict_load", "num_tensors",
                                                             "mismatched")}}))
        if not roundtrip["bit_exact"]:
            report["passed"] = False
        report["steps"] = steps.timings
        write_reports(report, tmp)
        (tmp / "config.json").write_text(json.dumps({**spec.to_dict(), "origin": origin}, indent=1))
        shutil.rmtree(work)
        _replace_folder(tmp, final, options.force)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    log(f"Parity {'PASSED' if report['passed'] else 'FAILED'}: {final / 'parity.md'}")
    return report
