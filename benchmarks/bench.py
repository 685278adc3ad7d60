"""Port cost and inference speed of one variant, every runtime side by side, in one run.

    make bench VARIANT=cait_xxs24_224            # or: .venv/bin/python -m benchmarks.bench VARIANT
    make bench VARIANT=cait_m48_448 BATCHES=1    # the largest: batch 1 only

Ports the variant with random weights into benchmarks/.work/ (timing every step and its peak
RSS), then times PyTorch eager, Keras compiled (XLA and tf.function), the reloaded SavedModel and
ONNX Runtime at each batch size, each in its own process, and writes
benchmarks/results/<variant>-<machine>.json and prints a table. Targets (issue 6) are checked
here and the results say by how much each is met or missed; no unit test times anything.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from vit_porting.families.registry import get_variant  # noqa: E402
from vit_porting.pipeline import PortOptions, port  # noqa: E402
from vit_porting.workers.protocol import run_worker  # noqa: E402

TARGETS = {
    "keras_fraction_of_matmul_peak_batch8": 0.80,
    "keras_speedup_vs_torch": 1.5,
    "onnxruntime_speedup_vs_torch": 1.2,
    "port_minutes_cait_m48_448": 10.0,
    "port_peak_rss_over_weight_bytes": 2.5,
    "saved_model_over_weight_bytes": 1.05,
}


def matmul_peak(work: Path) -> dict:
    """This machine's fp32 GEMM throughput, the best of torch and TensorFlow (each in its own
    process), with both figures: the share of the peak is reported against the better one."""
    peaks = [run_worker("benchmarks.bench_worker", {"job": "matmul_peak", "framework": f}, work)
             for f in ("torch", "tensorflow")]
    return {**max(peaks, key=lambda p: p["gflops"]), "by_framework": {p["framework"]: p["gflops"] for p in peaks}}


def machine_name() -> str:
    return f"{platform.machine()}-{os.cpu_count()}cpu"


def _folder_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) if path.is_dir() else path.stat().st_size


def run(variant: str, batches: list[int], repeats: int, warmup: int, skip_port: bool) -> dict:
    spec = get_variant(variant)
    out_root = ROOT / "benchmarks" / ".work"
    work = out_root / f"{variant}-jobs"
    folder = out_root / variant
    result: dict = {"variant": variant, "machine": machine_name(), "cpu_count": os.cpu_count(),
                    "date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "batches": batches,
                    "repeats": repeats, "warmup": warmup}
    if not skip_port or not folder.exists():
        start = time.perf_counter()
        report = port(spec, PortOptions(weights="random", out_root=out_root, force=True))
        result["port"] = {"wall_s": time.perf_counter() - start, "passed": report["passed"],
                          "steps": report.get("steps", {})}
        peaks = [s.get("peak_rss_mb") or 0 for s in report.get("steps", {}).values()]
        result["port"]["peak_rss_mb"] = max(peaks) if peaks else None
        # this process compared the outputs (memory-mapped, one at a time)
        result["port"]["orchestrator_peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    weight_bytes = (folder / "model.safetensors").stat().st_size
    result["weight_bytes"] = weight_bytes
    result["saved_model_bytes"] = _folder_bytes(folder / "saved_model")
    onnx_files = [p for p in folder.iterdir() if p.name.startswith("model.onnx")]
    result["onnx_bytes"] = sum(p.stat().st_size for p in onnx_files)

    job = {"spec": spec.to_dict(), "image_size": spec.image_size, "batches": batches, "repeats": repeats,
           "warmup": warmup}
    result["matmul_peak"] = matmul_peak(work)
    result["flops_per_image"] = run_worker("benchmarks.bench_worker", {**job, "job": "flops"}, work)[
        "flops_per_image"]
    # where the compiled Keras model's time goes: its matrix products run alone (see _derive)
    products = run_worker("benchmarks.bench_worker", {**job, "job": "gemm_shapes"}, work)["products"]
    result["gemm_alone"] = run_worker("benchmarks.bench_worker", {**job, "job": "gemm_time", "batch": max(batches),
                                                                  "products": products}, work)
    runtimes = {
        "torch_eager": {"job": "torch", "safetensors": str(folder / "model.safetensors")},
        "keras_xla": {"job": "keras", "model": str(folder / "model.keras"), "jit_compile": True},
        "keras_tf_function": {"job": "keras", "model": str(folder / "model.keras"), "jit_compile": False},
        "savedmodel": {"job": "savedmodel", "saved_model": str(folder / "saved_model")},
        "onnxruntime": {"job": "onnxruntime", "model": str(folder / "model.onnx")},
    }
    result["runtimes"] = {}
    for name, extra in runtimes.items():
        print(f"timing {name} ...", file=sys.stderr, flush=True)
        try:
            result["runtimes"][name] = run_worker("benchmarks.bench_worker", {**job, **extra}, work)
        except Exception as exc:  # noqa: BLE001 - a runtime that fails is reported, the others still run
            result["runtimes"][name] = {"error": str(exc)[:2000]}
    _derive(result)
    return result


def _derive(result: dict) -> None:
    peak = result["matmul_peak"]["gflops"]
    flops = result["flops_per_image"]
    torch_runs = result["runtimes"].get("torch_eager", {}).get("batches", {})
    for runtime in result["runtimes"].values():
        for batch, timing in runtime.get("batches", {}).items():
            timing["images_per_s"] = int(batch) / timing["median_s"]
            timing["gflops"] = flops * int(batch) / timing["median_s"] / 1e9
            timing["fraction_of_matmul_peak"] = timing["gflops"] / peak
            if batch in torch_runs:
                timing["speedup_vs_torch"] = torch_runs[batch]["median_s"] / timing["median_s"]
    checks = {}
    best_keras = {}
    for name in ("keras_xla", "keras_tf_function"):
        for batch, timing in result["runtimes"].get(name, {}).get("batches", {}).items():
            if batch not in best_keras or timing["median_s"] < best_keras[batch]["median_s"]:
                best_keras[batch] = {**timing, "runtime": name}
    if "8" in best_keras:
        checks["keras_fraction_of_matmul_peak_batch8"] = best_keras["8"]["fraction_of_matmul_peak"]
    for batch, timing in best_keras.items():
        if "speedup_vs_torch" in timing:
            checks[f"keras_speedup_vs_torch_batch{batch}"] = timing["speedup_vs_torch"]
    for batch, timing in result["runtimes"].get("onnxruntime", {}).get("batches", {}).items():
        if "speedup_vs_torch" in timing:
            checks[f"onnxruntime_speedup_vs_torch_batch{batch}"] = timing["speedup_vs_torch"]
    if result.get("port"):
        # the memory and time targets are set for the largest variant; on a small one the frameworks'
        # own footprint (~1 GB per process) dwarfs the weights and the ratio says nothing
        if result["variant"] == "cait_m48_448":
            checks["port_peak_rss_over_weight_bytes"] = result["port"]["peak_rss_mb"] * 2**20 / result["weight_bytes"]
            checks["port_minutes_cait_m48_448"] = result["port"]["wall_s"] / 60
    gemm = result.get("gemm_alone")
    if gemm and str(gemm["batch"]) in best_keras:
        model_s = best_keras[str(gemm["batch"])]["median_s"]
        gemm.update(model_seconds=model_s, share_of_model_time=gemm["gemm_seconds"] / model_s,
                    fraction_of_matmul_peak=gemm["gflops"] / peak, rest_seconds=model_s - gemm["gemm_seconds"])
    checks["saved_model_over_weight_bytes"] = result["saved_model_bytes"] / result["weight_bytes"]
    verdicts = {}
    for key, value in checks.items():
        target_key = next(t for t in TARGETS if key.startswith(t.split("_batch")[0]))
        target = TARGETS[target_key]
        lower_is_better = target_key.startswith(("port_", "saved_model"))
        met = value <= target if lower_is_better else value >= target
        verdicts[key] = {"value": value, "target": target, "met": met,
                         "by": (target / value if lower_is_better else value / target)}
    result["targets"] = verdicts


def table(result: dict) -> str:
    lines = [f"{result['variant']} on {result['machine']} ({result['date']}); matmul peak "
             f"{result['matmul_peak']['gflops']:.0f} GFLOP/s; {result['flops_per_image'] / 1e9:.2f} GFLOP/image",
             f"{'runtime':<18} {'batch':>5} {'median ms':>10} {'img/s':>8} {'GFLOP/s':>8} {'% peak':>7} "
             f"{'vs torch':>8}"]
    for name, runtime in result["runtimes"].items():
        if "error" in runtime:
            lines.append(f"{name:<18} error: {runtime['error'][:80]}")
            continue
        for batch, t in runtime["batches"].items():
            lines.append(f"{name:<18} {batch:>5} {t['median_s'] * 1000:>10.1f} {t['images_per_s']:>8.2f} "
                         f"{t['gflops']:>8.1f} {t['fraction_of_matmul_peak']:>7.0%} "
                         f"{t.get('speedup_vs_torch', float('nan')):>7.2f}x")
    if result.get("port"):
        lines.append(f"port: {result['port']['wall_s']:.0f} s wall, peak RSS {result['port']['peak_rss_mb']:.0f} MB "
                     f"({result['weight_bytes'] / 2**20:.0f} MB of weights)")
    gemm = result.get("gemm_alone", {})
    if "model_seconds" in gemm:
        lines.append(f"matrix products alone at batch {gemm['batch']}: {gemm['gemm_seconds'] * 1000:.1f} ms at "
                     f"{gemm['gflops']:.0f} GFLOP/s ({gemm['fraction_of_matmul_peak']:.0%} of peak) = "
                     f"{gemm['share_of_model_time']:.0%} of the best Keras time; the rest "
                     f"{gemm['rest_seconds'] * 1000:.1f} ms")
    for key, v in result["targets"].items():
        lines.append(f"target {key}: {v['value']:.3f} vs {v['target']} -> {'met' if v['met'] else 'MISSED'}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("variant")
    parser.add_argument("--batches", default="1,8")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--skip-port", action="store_true", help="reuse benchmarks/.work/<variant> if present")
    args = parser.parse_args(argv)
    result = run(args.variant, [int(b) for b in args.batches.split(",")], args.repeats, args.warmup, args.skip_port)
    out = ROOT / "benchmarks" / "results" / f"{args.variant}-{result['machine']}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1) + "\n")
    print(table(result))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
