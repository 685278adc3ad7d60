"""Evaluation worker: one runtime's logits on an image folder, attention outputs on one image,
and timm's own preprocessing (to check ours against it).

``python -m vit_porting.workers.run_eval JOB.json``. Each job imports one framework only, lazily: a
``predict`` job for ``pytorch`` imports torch, for ``keras``/``savedmodel`` TensorFlow, for
``onnxruntime`` ONNX Runtime; the process runs one job, so two never meet.

``predict`` reads the uint8 pixels the orchestrator prepared once (``resize_and_crop``, an
``.npy`` of (N, H, W, 3)), normalises each batch with ``vit_porting.parity.images.normalize`` and writes
(N, classes) float32 logits; after each batch it writes the count done to ``progress`` so
the orchestrator can draw the progress bar (worker stderr is captured).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from vit_porting.export.saved_model import ATTENTION_SIGNATURE
from vit_porting.families.base import VariantSpec
from vit_porting.families.registry import get_family, variant_from_dict
from vit_porting.parity.images import normalize
from vit_porting.workers.jobs import (
    AttentionJob,
    AttentionResult,
    PredictJob,
    PredictResult,
    TimmPreprocessJob,
    TimmPreprocessResult,
)
from vit_porting.workers.protocol import worker_main

RUNTIMES = ("pytorch", "keras", "savedmodel", "onnxruntime")


class EvalJobError(RuntimeError):
    """An artifact this job cannot run (missing file, no head output)."""


def _torch_predictor(spec: VariantSpec, model_path: str) -> tuple[Callable, dict]:
    import torch

    from vit_porting.workers.run_torch import _reference_model

    model = _reference_model(spec, model_path).eval()  # strict load of model.safetensors
    call = get_family(spec.family).torch().call_reference

    def run(images: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            out = call(model, torch.from_numpy(np.ascontiguousarray(images.transpose(0, 3, 1, 2))))
        return out.float().numpy()

    return run, {"torch": torch.__version__, "threads": torch.get_num_threads()}


def _keras_predictor(spec: VariantSpec, model_path: str) -> tuple[Callable, dict]:
    import keras

    get_family(spec.family).keras()  # registers the layers
    model = keras.saving.load_model(model_path, compile=False)
    head = next(k for k in model.output if k in ("logits", "features"))
    head_only = keras.Model(model.input, model.output[head])  # same layers, no attention outputs kept
    head_only.compile(jit_compile=False)

    def run(images: np.ndarray) -> np.ndarray:
        return np.asarray(head_only.predict_on_batch(images), dtype=np.float32)

    return run, {"keras": keras.__version__, "backend": keras.backend.backend(), "mode": "tf.function"}


def _savedmodel_predictor(spec: VariantSpec, model_path: str) -> tuple[Callable, dict]:
    import tensorflow as tf

    signature = tf.saved_model.load(model_path).signatures["serving_default"]
    head = next(k for k in signature.structured_outputs if k in ("logits", "features"))

    def run(images: np.ndarray) -> np.ndarray:
        return signature(images=tf.constant(images))[head].numpy().astype(np.float32)

    return run, {"tensorflow": tf.__version__, "signature": "serving_default"}


def _onnx_predictor(spec: VariantSpec, model_path: str) -> tuple[Callable, dict]:
    import onnxruntime as ort

    session = ort.InferenceSession(model_path, providers=["CPUExecutionProvider"])
    head = next(o.name for o in session.get_outputs() if o.name in ("logits", "features"))
    input_name = session.get_inputs()[0].name

    def run(images: np.ndarray) -> np.ndarray:
        return session.run([head], {input_name: np.ascontiguousarray(images)})[0].astype(np.float32)

    return run, {"onnxruntime": ort.__version__, "provider": session.get_providers()[0]}


PREDICTORS = {"pytorch": _torch_predictor, "keras": _keras_predictor, "savedmodel": _savedmodel_predictor,
              "onnxruntime": _onnx_predictor}


def job_predict(job: PredictJob) -> PredictResult:
    spec = variant_from_dict(job.spec)
    runtime = job.runtime
    if not Path(job.model).exists():
        raise EvalJobError(f"{job.model}: missing; {runtime} cannot run (port with exports first)")
    start = time.perf_counter()
    run, info = PREDICTORS[runtime](spec, job.model)
    info["load_seconds"] = time.perf_counter() - start
    run_start = time.perf_counter()
    pixels = np.load(job.pixels, mmap_mode="r")
    batch, n = int(job.batch), len(pixels)
    logits = None
    progress = Path(job.progress) if job.progress else None
    for start in range(0, n, batch):
        images = normalize(pixels[start:start + batch], job.mean, job.std)
        out = run(images)
        if start == 0:  # the first call traces or compiles: speed is timed from the second batch on
            info["warmup_seconds"] = time.perf_counter() - run_start
            timed_start = time.perf_counter()
        if logits is None:
            logits = np.lib.format.open_memmap(job.out, mode="w+", dtype=np.float32, shape=(n, out.shape[-1]))
        logits[start:start + len(out)] = out
        if progress is not None:
            tmp = progress.with_suffix(".tmp")
            tmp.write_text(str(start + len(out)))
            os.replace(tmp, progress)
    if logits is None:
        raise EvalJobError("no images to evaluate")
    logits.flush()
    info["run_seconds"] = time.perf_counter() - run_start
    info["timed_images"], info["timed_seconds"] = n - min(batch, n), time.perf_counter() - timed_start
    return PredictResult(runtime=runtime, images=n, classes=int(logits.shape[-1]), info=info)


def job_attention(job: AttentionJob) -> AttentionResult:
    """Every output of the model (``keras``: model.keras; ``savedmodel``: saved_model/) on one
    preprocessed image (float32 (1, H, W, 3) in ``image``), written to ``out`` (.npz)."""
    spec = variant_from_dict(job.spec)
    image = np.load(job.image)
    if job.source == "keras":
        import keras

        get_family(spec.family).keras()  # registers the layers
        model = keras.saving.load_model(job.model, compile=False)
        outputs = {k: keras.ops.convert_to_numpy(v) for k, v in model(image, training=False).items()}
    elif job.source == "savedmodel":
        import tensorflow as tf

        signature = tf.saved_model.load(job.model).signatures[ATTENTION_SIGNATURE]
        outputs = {k: v.numpy() for k, v in signature(images=tf.constant(image)).items()}
    else:
        raise EvalJobError(f"unknown attention source {job.source!r} (keras, savedmodel)")
    np.savez(job.out, **outputs)
    return AttentionResult(outputs=sorted(outputs))


def job_timm_preprocess(job: TimmPreprocessJob) -> TimmPreprocessResult:
    """timm's eval transform on image files -> float32 NHWC (``out`` .npy), and the data config.

    ``timm_model``: resolve the config from that model's pretrained_cfg (no weights are
    downloaded); else ``config`` is passed to ``create_transform`` as is."""
    import timm
    from PIL import Image
    from timm.data import create_transform, resolve_data_config

    if job.timm_model:
        model = timm.create_model(job.timm_model, pretrained=False)
        config = resolve_data_config({}, model=model)
    else:
        config = dict(job.config)
        config["input_size"] = tuple(config["input_size"])
    transform = create_transform(**config, is_training=False)
    arrays = []
    for path in job.images:
        with Image.open(path) as handle:
            arrays.append(transform(handle.convert("RGB")).numpy().transpose(1, 2, 0))
    np.save(job.out, np.stack(arrays).astype(np.float32))
    return TimmPreprocessResult(config={k: (list(v) if isinstance(v, tuple) else v) for k, v in config.items()},
                                transform=repr(transform), timm=timm.__version__)


def main(argv: list[str] | None = None) -> None:
    worker_main({PredictJob: job_predict, AttentionJob: job_attention, TimmPreprocessJob: job_timm_preprocess},
                (EvalJobError,), argv)


if __name__ == "__main__":
    main()
