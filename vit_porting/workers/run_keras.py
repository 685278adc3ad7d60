"""Keras worker: convert the source weights, run the ported model, write artifacts.

``python -m vit_porting.workers.run_keras JOB.json``; never imports torch.
"""

from __future__ import annotations

import shutil
import time

from vit_porting.families.registry import get_family, variant_from_dict
from vit_porting.mapping.engine import MappingError, MappingFileError, family_mapping
from vit_porting.parity.outputs import OutputStore, run_on_inputs, static_shapes
from vit_porting.workers.jobs import ConvertJob, ConvertResult, RunFileJob, RunFileResult
from vit_porting.workers.protocol import worker_main


def _run_parity_inputs(runner, job: ConvertJob | RunFileJob) -> dict:
    """The runner on the parity inputs, into the job's output folder, within its memory budget."""
    head = next(k for k in runner.model.output if k in ("logits", "features"))
    return run_on_inputs(runner, job.inputs, head, OutputStore(job.outputs), static_shapes(runner.output_shapes()),
                         job.budget_mb)


def job_convert(job: ConvertJob) -> ConvertResult:
    """Build, assign, run eagerly, and write the round-trip safetensors (the mapping backwards).

    Memory: the source is read one tensor at a time and each is released once assigned; the
    round-trip file is written tensor by tensor; so the process holds about one copy of the
    weights (the model's) plus one tensor.
    """
    import keras

    from vit_porting.mapping.convert import (
        KerasRunner,
        build_keras_model,
        convert_weights,
        export_state_dict,
        read_safetensors,
    )
    from vit_porting.mapping.tensor_io import write_safetensors

    spec = variant_from_dict(job.spec)
    timings = {}
    mapping = family_mapping(get_family(spec.family), job.mapping, spec.config)
    t = time.perf_counter()
    state = read_safetensors(job.source, lazy=True)
    timings["read_source"] = time.perf_counter() - t
    t = time.perf_counter()
    model = build_keras_model(spec, initializer="zeros", intermediates=True)
    timings["build"] = time.perf_counter() - t
    t = time.perf_counter()
    # a feature extractor (num_classes=0) has no classifier: its rules find no key, on purpose
    classifier = get_family(spec.family).classifier
    heads = (classifier,) if isinstance(classifier, str) else classifier
    assigned = convert_weights(model, state, mapping, source_name=job.source_name or job.source,
                               may_be_absent=heads if spec.config.num_classes == 0 else ())
    del state
    timings["assign"] = time.perf_counter() - t
    t = time.perf_counter()
    calls = _run_parity_inputs(KerasRunner(model), job)
    timings["run_eager"] = time.perf_counter() - t
    t = time.perf_counter()
    write_safetensors(export_state_dict(model, mapping, lazy=True), job.safetensors_out, metadata={"format": "pt"})
    timings["write_safetensors"] = time.perf_counter() - t
    exports = {}
    if job.saved_model_out:
        from vit_porting.export.saved_model import write_saved_model

        t = time.perf_counter()
        exports["saved_model"] = write_saved_model(model, job.saved_model_out, get_family(spec.family).keras_heads,
                                                   serving=job.serving)
        timings["write_saved_model"] = time.perf_counter() - t
    if job.keras_out:
        from vit_porting.export.saved_model import write_keras_file

        t = time.perf_counter()
        exports["keras"] = write_keras_file(model, job.keras_out)
        timings["write_keras"] = time.perf_counter() - t
    return ConvertResult(assigned=assigned, timings=timings, keras=keras.__version__, backend=keras.backend.backend(),
                         calls=calls, output_order=list(model.output.keys()),
                         weight_paths=[w.path for w in model.weights], exports=exports)


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


def job_run_file(job: RunFileJob) -> RunFileResult:
    """Reload ``model.keras`` from disk and run it: eagerly (``keras_file``) or compiled
    (``keras_compiled``: XLA via ``jit_compile=True``, else a tf.function; which one is recorded)."""
    import keras

    from vit_porting.mapping.convert import KerasRunner

    get_family(job.spec["family"]).keras()  # registers the family's serializable layers (package vit_porting)

    model = keras.saving.load_model(job.model, compile=False)
    versions = backend_device()
    device, device_name = versions.pop("device"), versions.pop("device_name", None)
    xla_error = None
    if not job.compiled:
        calls, mode = _run_parity_inputs(KerasRunner(model), job), "eager"
    else:
        try:
            calls, mode = _run_parity_inputs(KerasRunner(model, compiled=True, jit_compile=True), job), "xla"
        except Exception as exc:  # XLA cannot compile some graphs/devices: fall back, say so
            shutil.rmtree(job.outputs, ignore_errors=True)
            calls, mode = _run_parity_inputs(KerasRunner(model, compiled=True), job), "tf.function"
            xla_error = f"{type(exc).__name__}: {str(exc)[:300]}"
    return RunFileResult(keras=keras.__version__, backend=keras.backend.backend(), device=device,
                         device_name=device_name, versions=versions, output_order=list(model.output.keys()),
                         weight_paths=[w.path for w in model.weights], calls=calls, mode=mode, xla_error=xla_error)


def main(argv: list[str] | None = None) -> None:
    worker_main({ConvertJob: job_convert, RunFileJob: job_run_file}, (MappingError, MappingFileError), argv)


if __name__ == "__main__":
    main()
