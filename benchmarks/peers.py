"""Serving speed of every artifact of a port against the peers a user could pick instead, in one run.

    make bench-peers VARIANT=cait_xxs24_224 [BATCHES=1,8] [ROUNDS=3]
    .venv/bin/python -m benchmarks.peers VARIANT [--rounds 3] [--skip-port] [--kerashub] [--only a,b]

Ports the variant with random weights and the reduced-precision files (``--reduced-precision``)
into benchmarks/.work/peers/, converts the same weights with nobuco into a SavedModel (in its own
Keras 2 environment, ``benchmarks/nobuco_peer.py``) and, with ``--kerashub``, into KerasHub's ViT
(``benchmarks/kerashub_vit.py``), then times every row at each batch size: each row in its own
process, the rows alternated over ``--rounds`` rounds (the order reversed every other round, so a
burst of load on this shared machine falls on every row), ``--warmup`` untimed calls then
``--repeats`` timed ones per process. A row's figure is the median of its calls over all rounds;
images/s, the ratio to the reference's PyTorch eager (timm's or transformers') and the share of this
machine's GEMM peak (measured in the same run) beside it. Writes
benchmarks/results/peers-<variant>-<machine>.json and prints the table as Markdown. Rows whose
artifact a port did not write, or a peer that cannot convert the model, are reported with their
one-line reason, not dropped.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks import nobuco_peer  # noqa: E402
from benchmarks.bench import machine_name, matmul_peak  # noqa: E402
from benchmarks.kerashub_vit import KERAS_HUB_DIR, _cpu_model  # noqa: E402
from vit_porting.families.registry import get_family, get_variant  # noqa: E402
from vit_porting.pipeline import PortOptions, port  # noqa: E402
from vit_porting.safety import write_text_atomic  # noqa: E402
from vit_porting.workers.protocol import WorkerError, run_worker  # noqa: E402

WORK = ROOT / "benchmarks" / ".work" / "peers"

# row -> (what it is, "{source}" the family's reference library; bench_worker job; artifact path relative to
# the port folder, or None for a peer)
ROWS = {
    "torch_eager": ("{source}, PyTorch eager", {"job": "torch"}, "model.safetensors"),
    "torch_compile": ("{source}, torch.compile (Inductor, CPU)", {"job": "torch", "compile": True},
                      "model.safetensors"),
    "savedmodel": ("ours: SavedModel serving_default", {"job": "savedmodel"}, "saved_model"),
    "keras_xla": ("ours: model.keras, XLA", {"job": "keras", "jit_compile": True}, "model.keras"),
    "onnxruntime": ("ours: model.onnx, ONNX Runtime", {"job": "onnxruntime"}, "model.onnx"),
    "onnxruntime_int8": ("ours: model_int8.onnx", {"job": "onnxruntime"}, "model_int8.onnx"),
    "onnxruntime_fp16": ("ours: model_fp16.onnx", {"job": "onnxruntime"}, "model_fp16.onnx"),
    "litert_fp32": ("ours: model.tflite, LiteRT", {"job": "litert"}, "model.tflite"),
    "litert_fp16": ("ours: model_fp16.tflite", {"job": "litert"}, "model_fp16.tflite"),
    "litert_int8": ("ours: model_int8.tflite", {"job": "litert"}, "model_int8.tflite"),
    "nobuco_savedmodel": ("nobuco SavedModel (Keras 2), serving_default", {"job": "savedmodel"}, None),
    "kerashub_xla": ("KerasHub ViTImageClassifier, XLA", {"job": "time", "which": "kerashub", "jit_compile": True},
                     None),
}
PATH_KEY = {"torch": "safetensors", "savedmodel": "saved_model", "keras": "model", "onnxruntime": "model",
            "litert": "model", "time": "model"}
WORKER = {"time": "benchmarks.kerashub_vit"}


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _one_line(exc: Exception) -> str:
    """The exception line of a worker's traceback, else its last line. Keras wraps an error raised
    inside a layer as "Exception encountered when calling layer ...", puts the cause on the next line
    and an argument list after it: the last line alone says nothing, so the cause is joined on."""
    lines = [line.strip() for line in str(exc).strip().splitlines() if line.strip()] or [type(exc).__name__]
    raised = [i for i, line in enumerate(lines) if re.match(r"[\w.]*(Error|Exception)\b[^:]*: ", line)]
    if not raised:
        return lines[-1][:300]
    at = raised[-1]
    line = lines[at]
    if "Exception encountered when calling layer" in line and at + 1 < len(lines):
        line = f"{line} {lines[at + 1]}"
    return line[:300]


def make_peers(spec, folder: Path, work: Path, kerashub: bool) -> dict[str, dict]:
    """{peer row: {"path": ...} or {"error": one line}}: the same weights converted by each peer."""
    peers: dict[str, dict] = {}
    out = work / "nobuco_saved_model"
    shutil.rmtree(out, ignore_errors=True)  # this run's own work folder
    try:
        info = run_worker("benchmarks.nobuco_peer", {"job": "convert", "spec": spec.to_dict(), "out": str(out),
                                                     "safetensors": str(folder / "model.safetensors")},
                          work, python=str(nobuco_peer.python()))
        peers["nobuco_savedmodel"] = {"path": str(out), "versions": {k: info[k] for k in ("nobuco", "tensorflow")}}
    except WorkerError as exc:
        peers["nobuco_savedmodel"] = {"error": _one_line(exc)}
    if kerashub:
        env = {"PYTHONPATH": str(KERAS_HUB_DIR)} if KERAS_HUB_DIR.is_dir() else None
        model = work / "kerashub.keras"
        try:
            info = run_worker("benchmarks.kerashub_vit", {"job": "kerashub_convert", "spec": spec.to_dict(),
                                                          "safetensors": str(folder / "model.safetensors"),
                                                          "work": str(work), "out": str(model)}, work, env)
            peers["kerashub_xla"] = {"path": str(model), "versions": {"keras_hub": info["keras_hub"]}}
        except WorkerError as exc:
            peers["kerashub_xla"] = {"error": _one_line(exc)}
    return peers


def run(variant: str, batches: list[int], rounds: int, repeats: int, warmup: int, skip_port: bool,
        kerashub: bool, only: list[str] | None) -> dict:
    spec = get_variant(variant)
    folder, work = WORK / variant, WORK / f"{variant}-jobs"
    work.mkdir(parents=True, exist_ok=True)
    result: dict = {"variant": variant, "machine": machine_name(), "cpu": _cpu_model(), "cpu_count": os.cpu_count(),
                    "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                    "load_average_at_start": os.getloadavg(), "batches": batches, "rounds": rounds,
                    "repeats": repeats, "warmup": warmup}
    if not skip_port or not folder.exists():
        _log(f"porting {variant} (random weights, reduced precision) ...")
        report = port(spec, PortOptions(weights="random", out_root=WORK, force=True, reduced_precision=True, log=_log))
        result["port_passed"] = report["passed"]
    manifest = json.loads((folder / "manifest.json").read_text())
    result["serving"] = manifest.get("serving")
    job = {"spec": spec.to_dict(), "image_size": spec.image_size, "batches": batches, "repeats": repeats,
           "warmup": warmup}
    result["matmul_peak"] = matmul_peak(work)
    result["flops_per_image"] = run_worker("benchmarks.bench_worker", {**job, "job": "flops"}, work)["flops_per_image"]
    peers = make_peers(spec, folder, work, kerashub)
    rows: dict[str, dict] = {}
    source = get_family(spec.family).source_label
    for name, (what, row_job, artifact) in ROWS.items():
        what = what.format(source=source)
        if only and name not in only or name == "kerashub_xla" and not kerashub:
            continue
        path = str(folder / artifact) if artifact else peers.get(name, {}).get("path")
        if artifact and not (folder / artifact).exists():
            rows[name] = {"what": what, "error": f"the port wrote no {artifact}"}
        elif path is None:
            rows[name] = {"what": what, "error": peers[name]["error"]}
        else:
            rows[name] = {"what": what, "job": {**job, **row_job, PATH_KEY[row_job["job"]]: path},
                          "runs": [], **({"versions": peers[name]["versions"]} if name in peers else {})}
    env = {"PYTHONPATH": str(KERAS_HUB_DIR)} if KERAS_HUB_DIR.is_dir() else None
    timed = [name for name, row in rows.items() if "job" in row]
    for r in range(rounds):
        for name in timed if r % 2 == 0 else timed[::-1]:
            _log(f"round {r + 1}/{rounds}: {name} ...")
            row = rows[name]
            try:
                row["runs"].append(run_worker(WORKER.get(row["job"]["job"], "benchmarks.bench_worker"), row["job"],
                                              work, env)["batches"])
            except WorkerError as exc:
                row["error"] = _one_line(exc)
                timed = [n for n in timed if n != name]
    for row in rows.values():
        row.pop("job", None)
        runs = row.pop("runs", [])
        if runs and "error" not in row:
            row["batches"] = {str(b): _summary([run_[str(b)] for run_ in runs], b) for b in batches}
    _derive(rows, result["matmul_peak"]["gflops"], result["flops_per_image"])
    result["rows"] = rows
    result["load_average_at_end"] = os.getloadavg()
    return result


def _summary(runs: list[dict], batch: int) -> dict:
    samples = [s for r in runs for s in r["samples_s"]]
    median = statistics.median(samples)
    return {"median_s": median, "images_per_s": batch / median, "per_process_median_s": [r["median_s"] for r in runs],
            "min_s": min(samples)}


def _derive(rows: dict, peak_gflops: float, flops: float) -> None:
    eager = rows.get("torch_eager", {}).get("batches", {})
    nobuco = rows.get("nobuco_savedmodel", {}).get("batches", {})
    for row in rows.values():
        for batch, t in row.get("batches", {}).items():
            t["fraction_of_matmul_peak"] = flops * int(batch) / t["median_s"] / 1e9 / peak_gflops
            for key, other in (("vs_torch", eager), ("vs_nobuco", nobuco)):
                if batch in other:
                    t[key] = other[batch]["median_s"] / t["median_s"]


def _cells(t: dict) -> str:
    ratio = {key: f"{t[key]:.2f}" if key in t else "–" for key in ("vs_torch", "vs_nobuco")}
    return (f"{t['median_s'] * 1000:.1f} | {t['images_per_s']:.1f} | {ratio['vs_torch']} | {ratio['vs_nobuco']} "
            f"| {t['fraction_of_matmul_peak']:.0%}")


def markdown(result: dict) -> str:
    batches = [str(b) for b in result["batches"]]
    cells = "ms | img/s | × PyTorch eager | × nobuco | % peak"
    head = "| runtime | " + " | ".join(f"batch {b}: {cells}" for b in batches) + " |"
    lines = [f"{result['variant']}: {result['cpu']} ({result['cpu_count']} CPUs), {result['date']}, GEMM peak "
             f"{result['matmul_peak']['gflops']:.0f} GFLOP/s, {result['flops_per_image'] / 1e9:.2f} GFLOP/image; "
             f"median of {result['rounds']} alternated processes x {result['repeats']} calls; load average "
             f"{result['load_average_at_start'][0]:.1f} -> {result['load_average_at_end'][0]:.1f}", "",
             head, "|---|" + "---|---|---|---|---|" * len(batches)]
    for row in result["rows"].values():
        if "error" in row:
            lines.append(f"| {row['what']} | not timed: {row['error']} |")
            continue
        cells = [_cells(row["batches"][b]) for b in batches]
        lines.append(f"| {row['what']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("variant")
    parser.add_argument("--batches", default="1,8")
    parser.add_argument("--rounds", type=int, default=3, help="processes per row, alternated (default 3)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--skip-port", action="store_true", help="reuse benchmarks/.work/peers/<variant> if present")
    parser.add_argument("--kerashub", action="store_true", help="also KerasHub's ViT (ViT/DeiT checkpoints only)")
    parser.add_argument("--only", default=None, metavar="A,B", help=f"only these rows of {', '.join(ROWS)}")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    result = run(args.variant, [int(b) for b in args.batches.split(",")], args.rounds, args.repeats, args.warmup,
                 args.skip_port, args.kerashub, args.only.split(",") if args.only else None)
    result["wall_s"] = time.perf_counter() - start
    out = ROOT / "benchmarks" / "results" / f"peers-{args.variant}-{result['machine']}.json"
    write_text_atomic(out, json.dumps(result, indent=1, default=str) + "\n")
    print(markdown(result))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
