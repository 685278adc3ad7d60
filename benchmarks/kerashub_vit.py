"""Our Keras ViT beside KerasHub's, on the same random timm checkpoint: max |Δlogits| against timm
and batch-1 / batch-8 speed, each model in its own process, alternated.

    .venv/bin/python -m benchmarks.kerashub_vit vit_small_patch16_224 [--rounds 3] [--skip-port]

KerasHub (``pip install 'vit-porting[bench]'``; where the environment is shared and its pins must
not move: ``pip install --no-deps --target benchmarks/.work/kerashub keras-hub==0.32.0``, which
this script puts on the workers' path) builds a ``ViTBackbone`` and converts checkpoints itself.
The checkpoint is our port's model.safetensors (timm's layout, perturbed random weights). KerasHub
is first asked to load it as the timm checkpoint it is (what its timm loader says is recorded),
then in Hugging Face transformers' layout (its ViT converter), the same tensors with the fused
qkv split. Writes benchmarks/results/kerashub-<variant>-<machine>.json and prints a table.

The same module is the worker (``python -m benchmarks.kerashub_vit JOB.job.json``): keras_hub,
torch and TensorFlow are imported only there, one framework per process.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks.bench import machine_name  # noqa: E402
from benchmarks.bench_worker import _batches  # noqa: E402
from vit_porting.families.registry import variant_from_dict  # noqa: E402
from vit_porting.workers.protocol import run_worker, worker_main  # noqa: E402

KERAS_HUB_DIR = ROOT / "benchmarks" / ".work" / "kerashub"  # a --target install, when not in the environment


def _spec(job: dict):

    return variant_from_dict(job["spec"])


def job_timm_logits(job: dict) -> dict:
    """timm's model holding the port's model.safetensors (strict): the logits both Keras models are held to."""
    import torch
    from safetensors.torch import load_file

    from vit_porting.families.registry import get_family

    spec = _spec(job)
    reference = get_family(spec.family).torch()
    model = reference.build_reference(spec).eval()
    model.load_state_dict(load_file(job["safetensors"]), strict=True)
    images = np.load(job["inputs"])
    with torch.inference_mode():
        logits = reference.call_reference(model, torch.from_numpy(images.transpose(0, 3, 1, 2).copy()))
    np.save(job["out"], logits.numpy())
    return {"torch": torch.__version__}


def _keras_call(model, jit_compile: bool):
    import tensorflow as tf

    call = tf.function(lambda images: model(images, training=False), jit_compile=jit_compile)
    return lambda images: call(tf.constant(images))


def _head(outputs):
    return outputs["logits"] if isinstance(outputs, dict) else outputs


def job_keras_logits(job: dict) -> dict:
    """Our model.keras (logits and every attention map; the logits are compared)."""
    import keras

    from vit_porting.families.registry import get_family

    get_family(job["spec"]["family"]).keras()  # registers the layers
    model = keras.saving.load_model(job["model"], compile=False)
    np.save(job["out"], keras.ops.convert_to_numpy(_head(model(np.load(job["inputs"]), training=False))))
    return {"keras": keras.__version__}


def _timm_hub_folder(spec, safetensors: str, folder: Path) -> None:
    """What a timm checkpoint on the Hugging Face Hub holds: config.json (timm's keys) and model.safetensors."""
    folder.mkdir(parents=True, exist_ok=True)
    c = spec.config
    pre = spec.preprocessing
    config = {"architecture": spec.timm_name, "num_classes": c.num_classes, "num_features": c.embed_dim,
              "global_pool": "token",
              "pretrained_cfg": {"tag": (spec.pretrained_tag or ".").split(".", 1)[1], "custom_load": False,
                                 "input_size": [3, c.image_size, c.image_size], "fixed_input_size": True,
                                 "interpolation": pre["interpolation"], "crop_pct": pre["crop_pct"],
                                 "crop_mode": pre["crop_mode"], "mean": pre["mean"], "std": pre["std"],
                                 "num_classes": c.num_classes, "pool_size": None, "first_conv": "patch_embed.proj",
                                 "classifier": "head"}}
    (folder / "config.json").write_text(json.dumps(config, indent=1))
    shutil.copyfile(safetensors, folder / "model.safetensors")


def _transformers_folder(spec, safetensors: str, folder: Path) -> None:
    """The same weights in Hugging Face transformers' ViTForImageClassification layout (the fused
    qkv split into query, key and value, as transformers' own timm conversion script does)."""
    from safetensors.numpy import load_file, save_file

    c = spec.config
    if c.distilled or c.init_values or c.no_embed_class or c.pre_norm or c.global_pool != "token":
        raise ValueError(f"{spec.name}: KerasHub's ViTBackbone has no distillation token, LayerScale, "
                         "patch-only position embedding, pre-norm or average pooling; pick a DeiT or AugReg ViT")
    timm = load_file(safetensors)
    hf = {"vit.embeddings.cls_token": timm["cls_token"], "vit.embeddings.position_embeddings": timm["pos_embed"],
          "vit.embeddings.patch_embeddings.projection.weight": timm["patch_embed.proj.weight"],
          "vit.embeddings.patch_embeddings.projection.bias": timm["patch_embed.proj.bias"],
          "vit.layernorm.weight": timm["norm.weight"], "vit.layernorm.bias": timm["norm.bias"],
          "classifier.weight": timm["head.weight"], "classifier.bias": timm["head.bias"]}
    for i in range(c.depth):
        src, dst = f"blocks.{i}", f"vit.encoder.layer.{i}"
        for kind in ("weight", "bias"):
            q, k, v = np.split(timm[f"{src}.attn.qkv.{kind}"], 3, axis=0)
            hf.update({f"{dst}.attention.attention.query.{kind}": q, f"{dst}.attention.attention.key.{kind}": k,
                       f"{dst}.attention.attention.value.{kind}": v,
                       f"{dst}.attention.output.dense.{kind}": timm[f"{src}.attn.proj.{kind}"],
                       f"{dst}.layernorm_before.{kind}": timm[f"{src}.norm1.{kind}"],
                       f"{dst}.layernorm_after.{kind}": timm[f"{src}.norm2.{kind}"],
                       f"{dst}.intermediate.dense.{kind}": timm[f"{src}.mlp.fc1.{kind}"],
                       f"{dst}.output.dense.{kind}": timm[f"{src}.mlp.fc2.{kind}"]})
    config = {"model_type": "vit", "architectures": ["ViTForImageClassification"],
              "image_size": c.image_size, "patch_size": c.patch_size, "num_channels": c.in_channels,
              "hidden_size": c.embed_dim, "num_hidden_layers": c.depth, "num_attention_heads": c.num_heads,
              "intermediate_size": int(c.embed_dim * c.mlp_ratio), "hidden_act": "gelu", "qkv_bias": c.qkv_bias,
              "hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0, "layer_norm_eps": c.layer_norm_eps,
              "id2label": {str(i): f"LABEL_{i}" for i in range(c.num_classes)}}
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(config, indent=1))
    save_file({k: np.ascontiguousarray(v) for k, v in hf.items()}, str(folder / "model.safetensors"))


def job_kerashub_convert(job: dict) -> dict:
    """KerasHub's own loaders on the port's model.safetensors, offline from local folders: first as
    the timm checkpoint it is, then in transformers' layout; the model that loads is saved as
    kerashub.keras for the timing and logits jobs."""
    import keras
    import keras_hub

    spec, work = _spec(job), Path(job["work"])
    result = {"keras_hub": keras_hub.__version__}
    timm_folder = work / "timm_layout"
    _timm_hub_folder(spec, job["safetensors"], timm_folder)
    try:
        keras_hub.models.ImageClassifier.from_preset(str(timm_folder))
        result["timm_route"] = "loaded"
    except Exception as exc:  # noqa: BLE001 - what KerasHub says is the result
        result["timm_route"] = f"{type(exc).__name__}: {exc}"
    hf_folder = work / "transformers_layout"
    _transformers_folder(spec, job["safetensors"], hf_folder)
    classifier = keras_hub.models.ViTImageClassifier.from_preset(str(hf_folder))
    classifier.save(job["out"])
    backbone = classifier.backbone
    result.update(transformers_route="loaded (keras_hub.models.ViTImageClassifier.from_preset)",
                  backbone_config={k: v for k, v in backbone.get_config().items() if not isinstance(v, dict)},
                  num_weights=len(classifier.weights),
                  num_parameters=int(sum(np.prod(w.shape) for w in classifier.weights)),
                  keras=keras.__version__)
    return result


def _load_kerashub(path: str):
    import keras
    import keras_hub  # noqa: F401  (registers KerasHub's classes for load_model)

    return keras.saving.load_model(path, compile=False)


def job_kerashub_logits(job: dict) -> dict:
    import keras

    model = _load_kerashub(job["model"])
    np.save(job["out"], keras.ops.convert_to_numpy(model(np.load(job["inputs"]), training=False)))
    return {}


def job_time(job: dict) -> dict:
    """Median time per batch of one Keras model (ours: model.keras; KerasHub's: kerashub.keras),
    compiled as the job says (a tf.function, or XLA), after warm-up (bench_worker's timing)."""
    import keras

    if job["which"] == "kerashub":
        model = _load_kerashub(job["model"])
    else:
        from vit_porting.families.registry import get_family

        get_family(job["spec"]["family"]).keras()
        model = keras.saving.load_model(job["model"], compile=False)
    jit = job.get("jit_compile", False)
    return {"batches": _batches(job, _keras_call(model, jit)), "mode": "xla" if jit else "tf.function"}


JOBS = {"timm_logits": job_timm_logits, "keras_logits": job_keras_logits, "kerashub_convert": job_kerashub_convert,
        "kerashub_logits": job_kerashub_logits, "time": job_time}


# -- the orchestrating process (no framework) --------------------------------------------------------


def _cpu_model() -> str:
    try:
        return next(line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                    if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor()


def _diff(reference: np.ndarray, candidate: np.ndarray) -> dict:
    delta = np.abs(candidate.astype(np.float64) - reference.astype(np.float64))
    return {"max_abs_diff": float(delta.max()), "max_normalized_diff": float(delta.max() / np.abs(reference).max()),
            "top1_agreement": float((reference.argmax(-1) == candidate.argmax(-1)).mean())}


def run(variant: str, batches: list[int], rounds: int, repeats: int, warmup: int, modes: list[str],
        skip_port: bool, images: int) -> dict:
    from vit_porting.families.registry import get_variant
    from vit_porting.parity.inputs import random_images
    from vit_porting.pipeline import PortOptions, port

    spec = get_variant(variant)
    out_root = ROOT / "benchmarks" / ".work"
    folder, work = out_root / variant, out_root / f"kerashub-{variant}"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    env = {"PYTHONPATH": os.pathsep.join(filter(None, [str(KERAS_HUB_DIR) if KERAS_HUB_DIR.is_dir() else "",
                                                       os.environ.get("PYTHONPATH", "")]))}

    def worker(job: dict) -> dict:
        return run_worker("benchmarks.kerashub_vit", {"spec": spec.to_dict(), **job}, work, env)

    result: dict = {"variant": variant, "machine": machine_name(), "cpu": _cpu_model(), "cpu_count": os.cpu_count(),
                    "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                    "load_average_at_start": os.getloadavg(), "batches": batches, "rounds": rounds,
                    "repeats": repeats, "warmup": warmup,
                    "checkpoint": "our port's model.safetensors: timm layout, timm's init perturbed (WEIGHTS=random)"}
    if not skip_port or not folder.exists():
        report = port(spec, PortOptions(weights="random", out_root=out_root, force=True))
        result["port_passed"] = report["passed"]
    safetensors = str(folder / "model.safetensors")
    inputs = work / "inputs.npy"
    np.save(inputs, random_images(spec.image_size, images, 0))
    logits = {}
    for name, job in (("timm", {"job": "timm_logits", "safetensors": safetensors}),
                      ("ours", {"job": "keras_logits", "model": str(folder / "model.keras")})):
        worker({**job, "inputs": str(inputs), "out": str(work / f"{name}.npy")})
        logits[name] = np.load(work / f"{name}.npy")
    kerashub_model = work / "kerashub.keras"
    result["kerashub"] = worker({"job": "kerashub_convert", "safetensors": safetensors, "work": str(work),
                                 "out": str(kerashub_model)})
    worker({"job": "kerashub_logits", "model": str(kerashub_model), "inputs": str(inputs),
            "out": str(work / "kerashub.npy")})
    logits["kerashub"] = np.load(work / "kerashub.npy")
    result["logits_vs_timm"] = {"images": f"{images} seeded N(0,1) images",
                                **{name: _diff(logits["timm"], logits[name]) for name in ("ours", "kerashub")}}
    models = {"ours": str(folder / "model.keras"), "kerashub": str(kerashub_model)}
    timings: dict = {mode: {name: [] for name in models} for mode in modes}
    for r in range(rounds):
        order = list(models) if r % 2 == 0 else list(models)[::-1]  # alternate who goes first
        for mode in modes:
            for name in order:
                print(f"round {r + 1}/{rounds}: {name} ({mode}) ...", file=sys.stderr, flush=True)
                timings[mode][name].append(worker({"job": "time", "which": name, "model": models[name],
                                                   "jit_compile": mode == "xla", "image_size": spec.image_size,
                                                   "batches": batches, "repeats": repeats,
                                                   "warmup": warmup})["batches"])
    result["speed"] = {mode: {name: {str(b): _summary([run_[str(b)] for run_ in runs], b) for b in batches}
                              for name, runs in per_model.items()} for mode, per_model in timings.items()}
    result["load_average_at_end"] = os.getloadavg()
    return result


def _summary(runs: list[dict], batch: int) -> dict:
    medians = [r["median_s"] for r in runs]
    median = statistics.median(medians)
    return {"median_s": median, "images_per_s": batch / median, "per_process_median_s": medians,
            "min_s": min(r["min_s"] for r in runs)}


def table(result: dict) -> str:
    lines = [f"{result['variant']} on {result['cpu']} ({result['cpu_count']} CPUs), {result['date']}; "
             f"load average {result['load_average_at_start'][0]:.1f} at start, "
             f"{result['load_average_at_end'][0]:.1f} at end",
             f"KerasHub {result['kerashub']['keras_hub']}: timm checkpoint -> {result['kerashub']['timm_route']}",
             f"  transformers layout -> {result['kerashub']['transformers_route']}"]
    for name, d in result["logits_vs_timm"].items():
        if isinstance(d, dict):
            lines.append(f"{name:<9} max|Δlogits| vs timm {d['max_abs_diff']:.2e} (normalised "
                         f"{d['max_normalized_diff']:.2e}), top-1 agreement {d['top1_agreement']:.2f}")
    for mode, per_model in result["speed"].items():
        for name, per_batch in per_model.items():
            cells = "  ".join(f"batch {b}: {t['median_s'] * 1000:7.1f} ms ({t['images_per_s']:.1f} img/s)"
                              for b, t in per_batch.items())
            lines.append(f"{mode:<12} {name:<9} {cells}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0].endswith(".job.json"):  # started by run_worker
        worker_main(JOBS, (), argv)
        return 0
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("variant", nargs="?", default="vit_small_patch16_224")
    parser.add_argument("--batches", default="1,8")
    parser.add_argument("--rounds", type=int, default=3, help="processes per model and mode, alternated")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--modes", default="tf.function,xla")
    parser.add_argument("--images", type=int, default=8, help="seeded images the logits are compared on")
    parser.add_argument("--skip-port", action="store_true", help="reuse benchmarks/.work/<variant> if present")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    result = run(args.variant, [int(b) for b in args.batches.split(",")], args.rounds, args.repeats, args.warmup,
                 args.modes.split(","), args.skip_port, args.images)
    result["wall_s"] = time.perf_counter() - start
    out = ROOT / "benchmarks" / "results" / f"kerashub-{args.variant}-{result['machine']}.json"
    out.write_text(json.dumps(result, indent=1, default=str) + "\n")
    print(table(result))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
