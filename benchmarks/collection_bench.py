"""A family's whole collection ported on Ray, timed; and Ray's parallelism against the same ports
one after another, on the smallest variants.

    make collection-bench FAMILY=<family> [COMPARE=4]
    .venv/bin/python -m benchmarks.collection_bench FAMILY [--compare 4]
    .venv/bin/python -m benchmarks.collection_bench FAMILY --remeasure A,B --why "what changed"

Ports every variant of the family with random weights through ``vit-port collection`` (local Ray,
``--force``: every variant is ported) into benchmarks/.work/collections/, then, with ``--compare
N``, ports the N smallest variants (by weight bytes) twice more: one after another with
``vit_porting.pipeline.port`` (what a loop of ``vit-port port`` does, each port using every core) and
as one collection on Ray (one CPU per port). Writes benchmarks/results/collection-<family>-<machine>.json:
the collection.json (every variant's parity figures, time, peak memory and Ray request) with a
``bench`` section holding the load averages before and after each run, since this machine is
shared and its load changes what any timing means.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks.bench import machine_name  # noqa: E402
from vit_porting.collection.driver import CollectionOptions, resolve_variants, run_collection  # noqa: E402
from vit_porting.collection.report import build_collection  # noqa: E402
from vit_porting.pipeline import PortOptions, port  # noqa: E402
from vit_porting.safety import write_text_atomic  # noqa: E402

WORK = ROOT / "benchmarks" / ".work" / "collections"


def load() -> dict:
    """The machine's load when a run starts or ends (``uptime``, as a person would read it)."""
    uptime = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    return {"time": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "load_average": [round(x, 2) for x in os.getloadavg()], "uptime": uptime}


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _collection(specs: list, out: Path, command: str) -> tuple[dict, dict]:
    before = load()
    collection = run_collection(specs, CollectionOptions(weights="random", out=str(out), force=True,
                                                         command=command))
    return collection, {"before": before, "after": load(), "wall_s": collection["wall_s"]}


def compare(specs: list, out: Path) -> dict:
    """The same ports one after another (each with every core) and on Ray (one CPU each)."""
    sequential: dict = {"before": load(), "variants": {}}
    start = time.perf_counter()
    for spec in specs:
        t = time.perf_counter()
        report = port(spec, PortOptions(weights="random", out_root=out / "sequential", force=True, log=_log))
        sequential["variants"][spec.name] = {"seconds": round(time.perf_counter() - t, 1), "passed": report["passed"]}
    sequential.update(wall_s=round(time.perf_counter() - start, 1), after=load())
    collection, on_ray = _collection(specs, out / "ray", "benchmarks.collection_bench --compare")
    on_ray["variants"] = {name: {"seconds": e["task"]["seconds"], "passed": e["verdict"] == "passed"}
                          for name, e in collection["variants"].items()}
    return {"variants": [s.name for s in specs], "sequential": sequential, "ray": on_ray,
            "speedup": round(sequential["wall_s"] / on_ray["wall_s"], 2)}


def remeasure(family: str, names: list[str], why: str, result: Path, out: Path) -> int:
    """Replace some variants' entries of a committed result by a new collection run of them; the
    result says which, when and why (``bench.remeasured``), and its summary is counted again."""
    if not why:
        raise SystemExit("--remeasure needs --why (what changed since the committed measurement)")
    previous = json.loads(result.read_text())
    collection, run = _collection(resolve_variants(family, names), out,
                                  f"benchmarks.collection_bench {family} --remeasure {','.join(names)}")
    for name in names:
        previous["variants"][name] = collection["variants"][name]
    previous["bench"].setdefault("remeasured", []).append({**run, "variants": names, "why": why})
    entries = list(previous["variants"].values())
    previous["summary"] = build_collection(family, entries)["summary"]
    write_text_atomic(result, json.dumps(previous, indent=1) + "\n")
    for name in names:
        e = collection["variants"][name]
        print(f"{name}: {e.get('verdict') or e.get('error')}, peak {e.get('peak_rss_mb') or 0:.0f} MB; wrote {result}")
    return 0 if all(collection["variants"][n].get("verdict") == "passed" for n in names) else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("family")
    parser.add_argument("--compare", type=int, default=0, help="also compare Ray with sequential ports on the "
                                                                "N smallest variants (default 0: no comparison)")
    parser.add_argument("--remeasure", default=None, metavar="A,B",
                        help="port only these variants again (after a fix) and replace their entries in the "
                             "committed result, keeping the rest; --why says what changed")
    parser.add_argument("--why", default="", help="with --remeasure: why the entries were measured again")
    args = parser.parse_args(argv)
    out = WORK / args.family
    result = ROOT / "benchmarks" / "results" / f"collection-{args.family}-{machine_name()}.json"
    if args.remeasure:
        return remeasure(args.family, args.remeasure.split(","), args.why, result, out / "remeasured")
    specs = resolve_variants(args.family, None)
    collection, whole = _collection(specs, out / "all", f"benchmarks.collection_bench {args.family}")
    bench: dict = {"machine": machine_name(), "cpu_count": os.cpu_count(), "collection": whole}
    if args.compare:
        smallest = sorted(specs, key=lambda s: collection["variants"][s.name]["facts"]["weight_bytes"])[:args.compare]
        bench["ray_vs_sequential"] = compare(smallest, out / "compare")
    write_text_atomic(result, json.dumps({**collection, "bench": bench}, indent=1) + "\n")
    for name, e in collection["variants"].items():
        task = e.get("task") or {}
        asked = task.get("resources", {}).get("memory", 0) / 1e9
        print(f"{name:20s} {e.get('verdict') or e.get('error')}  {task.get('seconds', 0):7.1f} s  "
              f"peak {e.get('peak_rss_mb') or 0:6.0f} MB (asked {asked:.1f} GB)")
    print(f"{args.family}: {collection['summary']['passed']}/{len(specs)} passed in {whole['wall_s']:.0f} s; "
          f"load {whole['before']['load_average']} -> {whole['after']['load_average']}")
    if args.compare:
        c = bench["ray_vs_sequential"]
        print(f"{', '.join(c['variants'])}: one after another {c['sequential']['wall_s']:.0f} s, on Ray "
              f"{c['ray']['wall_s']:.0f} s ({c['speedup']}x)")
    print(f"wrote {result}")
    return 0 if collection["summary"]["passed"] == len(specs) else 1


if __name__ == "__main__":
    sys.exit(main())
