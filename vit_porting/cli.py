"""Command line: ``vit-port port|parity|verify|publish|eval|attention|list`` and the collection commands
``collection|collection-card|publish-collection`` (also ``python -m vit_porting.cli``): port vision
transformers from PyTorch to Keras 3, TF SavedModel, ONNX and safetensors, checked for parity.

The CLI process resolves names and orchestrates; frameworks load only in worker processes.
"""

from __future__ import annotations

import argparse
import json
import math
import shlex
import sys
from collections.abc import Callable
from pathlib import Path

from vit_porting import __version__
from vit_porting.families.registry import (
    FamilyError,
    UnknownVariantError,
    add_family,
    all_variants,
    get_family,
    get_variant,
)
from vit_porting.mapping.engine import MappingFileError
from vit_porting.parity.outputs import DEFAULT_BUDGET_MB
from vit_porting.pipeline import (
    DEFAULT_ARTIFACTS,
    PortError,
    PortOptions,
    parse_backends,
    port,
    recheck,
)
from vit_porting.publish.upload import PublishError
from vit_porting.safety import FolderBusyError, describe_os_error
from vit_porting.workers.protocol import WorkerError, run_worker


class _Parser(argparse.ArgumentParser):
    """argparse, with its errors on one line (it prints the whole usage first) and exit code 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        print(f"error: {self.prog}: {message} (see {self.prog} --help)", file=sys.stderr)
        sys.exit(2)


def _number(kind: type, low: float, inclusive: bool = True) -> Callable[[str], float]:
    """An argparse type: a ``kind`` number at least (or above) ``low``, finite."""

    def parse(text: str) -> float:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not {'an integer' if kind is int else 'a number'}") \
                from None
        if not math.isfinite(value) or value < low or (value == low and not inclusive):
            raise argparse.ArgumentTypeError(f"{text} must be {'at least' if inclusive else 'above'} {low:g}")
        return value

    return parse


_COUNT = _number(int, 0)  # class counts, seeds, list lengths
_POSITIVE = _number(int, 1)  # batch sizes, image counts, dpi


def _spec_from_args(args: argparse.Namespace):
    spec = get_variant(args.variant)
    overrides = {}
    if getattr(args, "num_classes", None) is not None:
        overrides["num_classes"] = args.num_classes
    return spec.with_config(**overrides) if overrides else spec


def cmd_port(args: argparse.Namespace) -> int:
    spec = _spec_from_args(args)
    options = PortOptions(weights=args.weights, seed=args.seed, batch=args.batch, out_root=Path(args.out),
                          force=args.force, mapping=args.mapping, new_head=args.num_classes is not None,
                          exports=not args.no_export, backends=parse_backends(args.backends),
                          output_budget_mb=args.output_budget_mb, serving=args.serving_graph,
                          reduced_precision=args.reduced_precision)
    report = port(spec, options)
    _print_summary(report)
    return 0 if report["passed"] else 1


def cmd_parity(args: argparse.Namespace) -> int:
    report = recheck(_artifact_folder(args.folder, args.out), backends=parse_backends(args.backends))
    _print_summary(report)
    return 0 if report["passed"] else 1


def cmd_verify(args: argparse.Namespace) -> int:
    """Recompute every checksum in the folder's manifest.json; non-zero on any difference."""
    from vit_porting.manifest import verify_manifest

    folder = _artifact_folder(args.folder, args.out)
    problems = verify_manifest(folder)
    for problem in problems:
        print(f"{folder}: {problem}", file=sys.stderr)
    if problems:
        print(f"verify FAILED: {len(problems)} problem(s); do not publish this folder", file=sys.stderr)
        return 1
    print(f"{folder}: every file matches manifest.json")
    return 0


def cmd_publish(args: argparse.Namespace) -> int:
    """Stage an artifact folder for hf://owner/name or kaggle://owner/model[/variation], a folder per form
    (dry run), or with --push check it and upload it (vit_porting/publish/upload.py)."""
    from vit_porting.publish.upload import publish

    publish(_artifact_folder(args.folder, args.out), args.target, push=args.push, allow_random=args.allow_random,
            stage_dir=args.stage_dir, private=args.private)
    return 0


def _artifact_folder(name: str, out: str) -> Path:
    """An artifact folder given as a path, or as a variant name under the artifacts root."""
    folder = Path(name)
    if not folder.is_dir():
        folder = Path(out) / name
    if not folder.is_dir():
        get_variant(name)  # a misspelt variant name gets the usual suggestions
        raise PortError(f"{folder}: no artifact folder; run `vit-port port {name}` first")
    return folder


def cmd_eval(args: argparse.Namespace) -> int:
    """Top-1/top-5 of each runtime on an image folder; writes <folder>/eval/eval.json, eval.md."""
    from vit_porting.evaluate import EvalError, EvalOptions, evaluate

    runtimes = [r.strip() for r in args.runtimes.split(",") if r.strip()] if args.runtimes else None
    options = EvalOptions(runtimes=runtimes, batch=args.batch, limit=args.limit, class_map=args.class_map,
                          labels=args.labels, worst=args.worst, progress=not args.no_progress)
    try:
        report = evaluate(_artifact_folder(args.folder, args.out), args.data, options)
    except EvalError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    for name, r in report["runtimes"].items():
        print(f"{report['variant']}  {name:<12} top-1 {100 * r['top1']:6.2f} %  top-5 {100 * r['top5']:6.2f} %  "
              f"({report['dataset']['num_images']} images"
              + (f", {r['images_per_second']} img/s after the first batch)" if r["images_per_second"] else ")"))
    print(f"runtimes disagree about top-1 on {report['agreement']['top1_disagreements']} image(s)")
    if report["random_weights"]:
        print("NOTE: these are RANDOM weights; the accuracy is meaningless.")
    return 0


def cmd_attention(args: argparse.Namespace) -> int:
    """PNG of the class-attention maps (every head) and the head-averaged saliency over an image."""
    from vit_porting.attention import attention_figure
    from vit_porting.evaluate import EvalError

    try:
        result = attention_figure(_artifact_folder(args.folder, args.out), args.image, out=args.png,
                                  source=args.source, blocks=args.blocks, dpi=args.dpi)
    except EvalError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    top5 = ", ".join(f"{i} {name}" for i, name in zip(result["top5"], result["top5_names"], strict=True))
    print(f"{result['png']}: {len(result['panels'])} panels; top-5 classes: {top5 or '(no classifier)'}")
    return 0


def _cached(spec) -> bool:
    """Whether the published weights are in the local Hugging Face cache (WEIGHTS=pretrained works offline)."""
    from huggingface_hub import try_to_load_from_cache

    repo = get_family(spec.family).hub_repo(spec)
    return bool(repo) and any(isinstance(try_to_load_from_cache(repo, name), str)
                              for name in ("model.safetensors", "pytorch_model.bin"))


def cmd_list(args: argparse.Namespace) -> int:
    """Every variant: family, input size, parameters (counted on the reference built on the meta
    device, in one worker process), the published weights' tag and whether they are cached."""
    import tempfile

    chosen = get_family(args.family_name).variant_map() if args.family_name else all_variants()
    variants = dict(sorted(chosen.items()))
    with tempfile.TemporaryDirectory() as work:
        specs = [s.to_dict() for s in variants.values()]
        counts = run_worker("torch", {"job": "state_shapes", "specs": specs}, Path(work))["parameters"]
    rows = [{"variant": name, "family": spec.family, "input": spec.image_size, "parameters": counts[name],
             "weights": spec.pretrained_tag or "", "cached": _cached(spec)} for name, spec in variants.items()]
    if args.json:
        print(json.dumps(rows, indent=1))
        return 0
    print(f"{'variant':24s} {'family':8s} {'input':>5s} {'params':>8s}  {'cached':6s} weights (--weights pretrained)")
    for row in rows:
        print(f"{row['variant']:24s} {get_family(row['family']).title:8s} {row['input']:>5d} "
              f"{row['parameters'] / 1e6:>7.1f}M  {'yes' if row['cached'] else 'no':6s} {row['weights']}")
    return 0


def _command_line() -> str:
    return "vit-port " + " ".join(shlex.quote(a) for a in sys.argv[1:])


def cmd_collection(args: argparse.Namespace) -> int:
    """Port every variant of a family (or --variants) on Ray; collection.json and its card."""
    from vit_porting.collection.driver import CollectionOptions, exit_code, resolve_variants, run_collection

    specs = resolve_variants(args.family_name, [v for v in (args.variants or "").split(",") if v])
    options = CollectionOptions(weights=args.weights, seed=args.seed, force=args.force, out=args.out,
                                address=args.address, num_cpus=args.num_cpus, cpus_per_port=args.cpus_per_port,
                                retries=args.retries, exports=not args.no_export, progress=not args.no_progress,
                                command=_command_line())
    collection = run_collection(specs, options)
    _print_collection(collection)
    return exit_code(collection)


def cmd_collection_card(args: argparse.Namespace) -> int:
    """collection.json and the card of a family from the parity reports under --out (no porting)."""
    from vit_porting.collection.driver import collection_from_reports, exit_code

    collection = collection_from_reports(args.family_name, args.out, command=_command_line())
    _print_collection(collection)
    return exit_code(collection)


def cmd_publish_collection(args: argparse.Namespace) -> int:
    """Stage (dry run) or push every verified, passing variant of a collection and its card."""
    from vit_porting.collection.publish import publish_collection

    result = publish_collection(args.family_name, args.out, args.target, push=args.push, allow_random=args.allow_random,
                                stage_dir=args.stage_dir, private=args.private)
    return 1 if result.refused else 0


def _print_collection(collection: dict) -> None:
    for name, e in collection["variants"].items():
        worst = e.get("worst") or {}
        status = "ERROR" if e.get("status") == "error" else {"passed": "pass", "failed": "FAIL"}.get(e.get("verdict"))
        line = f"{name:20s} {status:5s} {e.get('status', ''):9s}"
        if e.get("error"):
            line += f" {e['error']}"
        elif worst:
            line += f" head {worst.get('head') or 0:.2e}  attention {worst.get('attention') or 0:.2e}"
        print(line)
    s = collection["summary"]
    print(f"{collection['family']}: {s['passed']}/{s['variants']} passed, {s['failed']} failed parity, "
          f"{s['errors']} error(s)")


def _print_summary(report: dict) -> None:
    for r in report["runtimes"]:
        status = "pass" if r["passed"] else "FAIL"
        print(f"{report['variant']}  {r['runtime']:<14} {r['device']:<5} {status}  "
              f"{r['head_output']} max|Δ| {r['head_max_abs_diff']:.2e} (normalised {r['head_max_normalized_diff']:.2e})"
              f"  attention worst {r['attention_worst_normalized_diff'] or 0:.2e}")
        if not r["passed"]:
            print(f"    out of tolerance: {', '.join(r['failing_outputs'][:8])}"
                  + (" ..." if len(r["failing_outputs"]) > 8 else ""))
            if r.get("localisation"):
                print(f"    first diverging block: {r['localisation']['block']}; rules: "
                      + "; ".join(f"line {x['line']} {x['from']}" for x in r["localisation"]["rules"]))
    if report.get("random_weights"):
        print("NOTE: these are RANDOM weights; the port proves the conversion, not accuracy.")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="vit-port", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"vit-port {__version__}")
    # every command takes --family, so a plug-in family works with each of them
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--family", action="append", default=[], metavar="MODULE:OBJECT",
                        help="register a model family from outside the package (a vit_porting.families.base.Family "
                             "object); repeatable")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("port", parents=[common],
                       help="convert a variant, write artifacts, check parity")
    p.add_argument("variant")
    p.add_argument("--weights", default="pretrained",
                   help="'pretrained' (timm, HF hub or its cache), 'random', or a .safetensors/.pth path")
    p.add_argument("--seed", type=_COUNT, default=0, help="seed of --weights random (default 0)")
    p.add_argument("--num-classes", type=_COUNT, default=None,
                   help="classifier size; 0 for a feature extractor (default: the checkpoint's)")
    p.add_argument("--batch", type=_POSITIVE, default=2, help="parity batch size (default 2)")
    p.add_argument("--out", default=str(DEFAULT_ARTIFACTS), help="artifacts root (default artifacts/)")
    p.add_argument("--force", action="store_true", help="replace an existing artifact folder")
    p.add_argument("--mapping", default=None, help="mapping file to use instead of the family's")
    p.add_argument("--backends", default="tensorflow",
                   help="Keras backends to run model.keras on, comma-separated: tensorflow,torch,jax")
    p.add_argument("--no-export", action="store_true",
                   help="write model.safetensors and check Keras eager only (no SavedModel, .keras, ONNX)")
    p.add_argument("--output-budget-mb", type=_number(float, 0, inclusive=False), default=DEFAULT_BUDGET_MB,
                   help=f"outputs one runtime call may hold (default {DEFAULT_BUDGET_MB}); past it a runtime "
                        "computes its attention maps one image and one group of blocks at a time")
    p.add_argument("--serving-graph", choices=("auto", "xla", "tf.function"), default="auto",
                   help="how the SavedModel's serving_default and features run: 'auto' (default) times XLA and a "
                        "plain tf.function at batch 1 and 8 and keeps the faster")
    p.add_argument("--reduced-precision", action="store_true",
                   help="also write model_int8.onnx, model_fp16.onnx and LiteRT model.tflite, model_fp16.tflite, "
                        "model_int8.tflite, each checked by its agreement with the fp32 reference")
    p.set_defaults(func=cmd_port)

    p = sub.add_parser("parity", parents=[common],
                       help="re-check an existing artifact folder (no conversion) and rewrite its reports")
    p.add_argument("folder", help="a variant name (looked up under --out) or an artifact folder path")
    p.add_argument("--out", default=str(DEFAULT_ARTIFACTS), help="artifacts root (default artifacts/)")
    p.add_argument("--backends", default="tensorflow",
                   help="Keras backends to run model.keras on, comma-separated: tensorflow,torch,jax")
    p.set_defaults(func=cmd_parity)

    p = sub.add_parser("verify", parents=[common],
                       help="check an artifact folder's files against its manifest.json checksums")
    p.add_argument("folder", help="a variant name (looked up under --out) or an artifact folder path")
    p.add_argument("--out", default=str(DEFAULT_ARTIFACTS), help="artifacts root (default artifacts/)")
    p.set_defaults(func=cmd_verify)

    p = sub.add_parser("publish", parents=[common],
                       help="stage (dry run) or upload (--push) an artifact folder with its model card")
    p.add_argument("folder", help="a variant name (looked up under --out) or an artifact folder path")
    p.add_argument("--target", required=True,
                   help="hf://owner/name (a repository per form: name, name-savedmodel, name-onnx, name-pytorch) "
                        "or kaggle://owner/model[/variation] (a framework slot per form)")
    p.add_argument("--push", action="store_true", help="upload (default: stage and list the files only)")
    p.add_argument("--allow-random", action="store_true", help="let --push upload a random-weights port")
    p.add_argument("--private", action="store_true", help="create the Hugging Face repo private")
    p.add_argument("--stage-dir", default=None, help="staging folder (default <out>/.staging/<target>)")
    p.add_argument("--out", default=str(DEFAULT_ARTIFACTS), help="artifacts root (default artifacts/)")
    p.set_defaults(func=cmd_publish)

    p = sub.add_parser("eval", parents=[common],
                       help="top-1/top-5 of every runtime on a labelled image folder (writes eval/)")
    p.add_argument("folder", help="a variant name (looked up under --out) or an artifact folder path")
    p.add_argument("data", help="image folder: class subfolders, or flat files with --labels")
    p.add_argument("--runtimes", default=None,
                   help="comma-separated subset of pytorch,keras,savedmodel,onnxruntime (default: all present)")
    p.add_argument("--labels", default=None, help="labels file of a flat folder: '<file> <label>' per line")
    p.add_argument("--class-map", default=None,
                   help="JSON {name: index} or a text file of class names (index = line number)")
    p.add_argument("--batch", type=_POSITIVE, default=32, help="batch size (default 32)")
    p.add_argument("--limit", type=_POSITIVE, default=None, help="evaluate the first N images only")
    p.add_argument("--worst", type=_COUNT, default=10, help="disagreements to list (default 10)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument("--out", default=str(DEFAULT_ARTIFACTS), help="artifacts root (default artifacts/)")
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("attention", parents=[common],
                       help="PNG of the class-attention maps and saliency over one image")
    p.add_argument("folder", help="a variant name (looked up under --out) or an artifact folder path")
    p.add_argument("image", help="an image file")
    p.add_argument("--source", choices=("keras", "savedmodel"), default="keras",
                   help="run model.keras (default) or saved_model/")
    p.add_argument("--png", default=None, help="output PNG (default <folder>/eval/attention_<image>.png)")
    p.add_argument("--blocks", choices=("default", "all"), default="default",
                   help="CvT: 'all' draws every block of the last stage (default: the last block)")
    p.add_argument("--dpi", type=_POSITIVE, default=60, help="PNG resolution (default 60)")
    p.add_argument("--out", default=str(DEFAULT_ARTIFACTS), help="artifacts root (default artifacts/)")
    p.set_defaults(func=cmd_attention)

    p = sub.add_parser("list", parents=[common],
                       help="list the variants: family, input size, parameters, published weights and cache")
    p.add_argument("--json", action="store_true", help="one JSON list instead of the table")
    p.add_argument("--only", dest="family_name", default=None, metavar="FAMILY", help="one family's variants")
    p.set_defaults(func=cmd_list)

    p = sub.add_parser("collection", parents=[common],
                       help="port every variant of a family on Ray; writes collections/<family>/collection.json "
                            "and its card")
    p.add_argument("family_name", metavar="FAMILY", help="a registered family (vit-port list)")
    p.add_argument("--variants", default=None, help="comma-separated subset of the family's variants")
    p.add_argument("--weights", default="pretrained", help="'pretrained' or 'random' (or a file or folder)")
    p.add_argument("--seed", type=int, default=0, help="seed of --weights random (default 0)")
    p.add_argument("--force", action="store_true",
                   help="port every variant again and replace its folder (default: skip a verified folder made "
                        "with the same settings, refuse to replace any other)")
    p.add_argument("--out", default=str(DEFAULT_ARTIFACTS),
                   help="artifacts root: a local path (default artifacts/; on a cluster, one every node mounts) or "
                        "an fsspec URL finished folders are copied to")
    p.add_argument("--address", default=None,
                   help="Ray cluster address (default: $RAY_ADDRESS, else a local Ray instance on this machine)")
    p.add_argument("--num-cpus", type=int, default=None, help="CPUs of the local Ray instance (default: all)")
    p.add_argument("--cpus-per-port", type=int, default=1,
                   help="CPUs each port asks Ray for; its workers use as many threads (default 1)")
    p.add_argument("--retries", type=int, default=1,
                   help="times a port whose process died (killed, out of memory) is run again (default 1)")
    p.add_argument("--no-export", action="store_true", help="safetensors and Keras eager only, as `port --no-export`")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_collection)

    p = sub.add_parser("collection-card", parents=[common],
                       help="collection.json and card of a family from the parity reports under --out (no porting)")
    p.add_argument("family_name", metavar="FAMILY", help="a registered family (vit-port list)")
    p.add_argument("--out", default=str(DEFAULT_ARTIFACTS), help="artifacts root (default artifacts/)")
    p.set_defaults(func=cmd_collection_card)

    p = sub.add_parser("publish-collection", parents=[common],
                       help="stage (dry run) or upload (--push) every verified variant of a collection and its card")
    p.add_argument("family_name", metavar="FAMILY", help="a registered family (vit-port list)")
    p.add_argument("--target", required=True,
                   help="hf://owner (a repository per variant) or kaggle://owner (a model per family, a variation "
                        "per variant)")
    p.add_argument("--push", action="store_true", help="upload (default: stage and list the files only)")
    p.add_argument("--allow-random", action="store_true", help="let --push upload random-weights ports")
    p.add_argument("--private", action="store_true", help="create the Hugging Face repos private")
    p.add_argument("--stage-dir", default=None,
                   help="staging folder (default <out>/.staging/<kind>-<owner>--<family>-collection)")
    p.add_argument("--out", default=str(DEFAULT_ARTIFACTS), help="artifacts root (default artifacts/)")
    p.set_defaults(func=cmd_publish_collection)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        for reference in args.family:
            add_family(reference)
        return args.func(args)
    except (UnknownVariantError, FamilyError, PortError, MappingFileError, PublishError, FolderBusyError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except WorkerError as exc:
        print(f"error: {exc.message}", file=sys.stderr)
        return 2
    except OSError as exc:  # a file system refusing (full, read-only, permissions): one line naming the path
        print(f"error: {describe_os_error(exc)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted; nothing was written", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
