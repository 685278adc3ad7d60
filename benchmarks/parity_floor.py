"""Measure the numbers behind vit_porting/parity/tolerances.yaml.

For each variant: the fp32 floor (timm fp32 vs timm fp64), the port (Keras fp32 vs timm fp32 and
vs fp64), and a known porting bug (LayerNorm eps 1e-5 instead of 1e-6), all as
max|Δ| / max|reference| per output kind. Writes benchmarks/results/parity_floor.json.

    .venv/bin/python benchmarks/parity_floor.py cait_xxs24_224 cait_s24_224 cait_m48_448:8
    .venv/bin/python benchmarks/parity_floor.py cait_xxs24_224 --device cuda   # GPU rows of the policy
(``name:depth`` measures a depth-reduced variant.)
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from vit_porting.families.registry import get_variant  # noqa: E402
from vit_porting.parity.compare import output_kind  # noqa: E402
from vit_porting.parity.inputs import random_images, write_inputs  # noqa: E402
from vit_porting.parity.outputs import load_outputs  # noqa: E402
from vit_porting.workers.protocol import run_worker  # noqa: E402


def _load(path: Path) -> dict[str, np.ndarray]:
    return load_outputs(path)


def _worst(reference: dict, candidate: dict) -> dict[str, float]:
    worst: dict[str, float] = {}
    for name, ref in reference.items():
        if name not in candidate:
            continue
        value = float(np.abs(candidate[name].astype(np.float64) - ref).max() / np.abs(ref).max())
        kind = output_kind(name)
        worst[kind] = max(worst.get(kind, 0.0), value)
    return worst


def measure(name: str, depth: int | None, work: Path, device: str = "cpu") -> dict:
    spec = get_variant(name)
    if depth:
        spec = spec.with_config(depth=depth)
    job = {"spec": spec.to_dict()}
    inputs, source = work / "inputs.npz", work / "source.safetensors"
    write_inputs(inputs, random_images(spec.image_size, 2, 0))
    run_worker("torch", {**job, "job": "source", "weights": "random", "out": str(source)}, work)
    outs = {}
    for dtype in ("float32", "float64"):
        outs[dtype] = work / f"ref-{dtype}"
        run_worker("torch", {**job, "job": "reference", "source": str(source), "inputs": str(inputs),
                                        "out": str(outs[dtype]), "dtype": dtype, "intermediates": True}, work)
    for eps in (1e-6, 1e-5):
        outs[eps] = work / f"keras-{eps}"
        bad = spec.with_config(layer_norm_eps=eps)
        run_worker("keras", {"spec": bad.to_dict(), "job": "convert", "source": str(source),
                                        "inputs": str(inputs), "outputs": str(outs[eps]),
                                        "safetensors_out": str(work / "rt.safetensors")}, work)
    ref32, ref64 = _load(outs["float32"]), _load(outs["float64"])
    keras, keras_bug = _load(outs[1e-6]), _load(outs[1e-5])
    device_rows = {}
    if device != "cpu":  # the GPU floor: PyTorch fp32 on the device (TF32 off) against fp64 on the CPU
        out = work / "ref-device"
        run_worker("torch", {**job, "job": "reference", "source": str(source), "inputs": str(inputs),
                                        "out": str(out), "device": device, "intermediates": True}, work)
        device_rows = {f"timm_fp32_{device}_vs_fp64_cpu": _worst(ref64, _load(out)),
                       f"keras_cpu_vs_timm_fp32_{device}": _worst(_load(out), keras)}
    return {"variant": name, "depth": spec.config.depth, **device_rows,
            "logits_scale": float(np.abs(ref32["logits"]).max()),
            "timm_fp32_vs_fp64": _worst(ref64, ref32),
            "keras_vs_timm_fp32": _worst(ref32, keras),
            "keras_vs_timm_fp64": _worst(ref64, keras),
            "eps_1e-5_bug_vs_timm_fp32": _worst(ref32, keras_bug)}


def main(argv: list[str]) -> None:
    device = "cpu"
    if "--device" in argv:
        index = argv.index("--device")
        device, argv = argv[index + 1], argv[:index] + argv[index + 2:]
    results = []
    for item in argv or ["cait_xxs24_224"]:
        name, _, depth = item.partition(":")
        with tempfile.TemporaryDirectory() as tmp:
            results.append(measure(name, int(depth) if depth else None, Path(tmp), device))
        print(json.dumps(results[-1]), flush=True)
    out = ROOT / "benchmarks" / "results" / ("parity_floor.json" if device == "cpu" else f"parity_floor-{device}.json")
    out.write_text(json.dumps({"metric": "max|candidate - reference| / max|reference|, worst per output kind",
                               "inputs": "2 seeded N(0,1) images", "weights": "random, perturbed (seed 0)",
                               "results": results}, indent=1) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main(sys.argv[1:])
