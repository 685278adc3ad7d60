"""Keras worker: convert the source weights, run the ported model, write artifacts.

``python -m parity.run_keras JOB.json``; never imports torch.
"""

from __future__ import annotations

import time

import numpy as np

from parity.images import run_on_inputs
from parity.worker import worker_main
from porting.mapping import MappingError, MappingFileError, load_mapping
from porting.variants import VariantSpec


def job_convert(job: dict) -> dict:
    """Build, assign, run eagerly, and write the round-trip safetensors (the mapping backwards)."""
    import keras

    from porting.convert import (
        build_keras_model,
        convert_weights,
        export_state_dict,
        family_mapping,
        read_safetensors,
        run_keras,
        write_safetensors,
    )

    spec = VariantSpec.from_dict(job["spec"])
    timings = {}
    mapping = load_mapping(job["mapping"]) if job.get("mapping") else family_mapping(spec)
    t = time.perf_counter()
    state = read_safetensors(job["source"])
    timings["read_source"] = time.perf_counter() - t
    t = time.perf_counter()
    model = build_keras_model(spec, initializer="zeros", intermediates=True)
    timings["build"] = time.perf_counter() - t
    t = time.perf_counter()
    assigned = convert_weights(model, state, mapping, source_name=job.get("source_name", job["source"]))
    del state
    timings["assign"] = time.perf_counter() - t
    t = time.perf_counter()
    head = next(k for k in model.output if k in ("logits", "features"))
    outputs = run_on_inputs(lambda images: run_keras(model, images), job["inputs"], head)
    np.savez(job["outputs"], **outputs)
    timings["run_eager"] = time.perf_counter() - t
    t = time.perf_counter()
    write_safetensors(export_state_dict(model, mapping), job["safetensors_out"], metadata={"format": "pt"})
    timings["write_safetensors"] = time.perf_counter() - t
    exports = {}
    if job.get("saved_model_out"):
        from porting.export import write_saved_model

        t = time.perf_counter()
        exports["saved_model"] = write_saved_model(model, job["saved_model_out"])
        timings["write_saved_model"] = time.perf_counter() - t
    if job.get("keras_out"):
        from porting.export import write_keras_file

        t = time.perf_counter()
        exports["keras"] = write_keras_file(model, job["keras_out"])
        timings["write_keras"] = time.perf_counter() - t
    return {"assigned": assigned, "timings": timings, "keras": keras.__version__,
            "backend": keras.backend.backend(),
            "output_order": list(model.output.keys()),
            "weight_paths": [w.path for w in model.weights], "exports": exports}


def backend_device() -> dict:
    """Where this process's Keras backend computes ("cpu" or "cuda"), and the library version."""
    import keras

    backend = keras.backend.backend()
    if backend == "torch":
        import torch

        device = "cuda" if torch.cuda.is_available() else "cpu"
        info = {"torch": torch.__version__, "torch_tf32": torch.backends.cuda.matmul.allow_tf32}
        if device == "cuda":
            torch.backends.cuda.matmul.allow_tf32 = False  # the CUDA reference runs with TF32 off too
            torch.backends.cudnn.allow_tf32 = False
            info.update(device_name=torch.cuda.get_device_name(0), torch_tf32=False)
        return {"device": device, **info}
    if backend == "jax":
        import jax

        platform = jax.devices()[0].platform
        return {"device": "cuda" if platform == "gpu" else "cpu", "jax": jax.__version__,
                "device_name": str(jax.devices()[0])}
    import tensorflow as tf

    gpus = tf.config.list_logical_devices("GPU")
    return {"device": "cuda" if gpus else "cpu", "tensorflow": tf.__version__}


def job_run_file(job: dict) -> dict:
    """Reload ``model.keras`` from disk and run it: eagerly (``keras_file``) or compiled
    (``keras_compiled``: XLA via ``jit_compile=True``, else a tf.function; which one is recorded)."""
    import keras

    from porting.variants import FAMILIES

    # registers the family's serializable layers (package vit_porting)
    spec = VariantSpec.from_dict(job["spec"])
    __import__(FAMILIES[spec.family]["keras_builder"].split(":")[0])
    from porting.convert import run_keras

    model = keras.saving.load_model(job["model"], compile=False)
    head = next(k for k in model.output if k in ("logits", "features"))
    info: dict = {"keras": keras.__version__, "backend": keras.backend.backend(), **backend_device(),
                  "output_order": list(model.output.keys()), "weight_paths": [w.path for w in model.weights]}
    if not job.get("compiled"):
        outputs = run_on_inputs(lambda images: run_keras(model, images), job["inputs"], head)
        info["mode"] = "eager"
    else:
        try:
            model.compile(jit_compile=True)
            outputs = run_on_inputs(lambda images: run_keras(model, images, compiled=True), job["inputs"], head)
            info["mode"] = "xla"
        except Exception as exc:  # XLA cannot compile some graphs/devices: fall back, say so
            model.compile(jit_compile=False)
            outputs = run_on_inputs(lambda images: run_keras(model, images, compiled=True), job["inputs"], head)
            info["mode"] = "tf.function"
            info["xla_error"] = f"{type(exc).__name__}: {str(exc)[:300]}"
    np.savez(job["outputs"], **outputs)
    return info


def main(argv: list[str] | None = None) -> None:
    worker_main({"convert": job_convert, "run_file": job_run_file}, (MappingError, MappingFileError), argv)


if __name__ == "__main__":
    main()
