"""Keras worker: convert the source weights, run the ported model, write artifacts.

``python -m parity.run_keras JOB.json``; never imports torch.
"""

from __future__ import annotations

import time

import numpy as np

from parity.inputs import read_inputs
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
    outputs = run_keras(model, read_inputs(job["inputs"]))
    np.savez(job["outputs"], **outputs)
    timings["run_eager"] = time.perf_counter() - t
    t = time.perf_counter()
    write_safetensors(export_state_dict(model, mapping), job["safetensors_out"], metadata={"format": "pt"})
    timings["write_safetensors"] = time.perf_counter() - t
    return {"assigned": assigned, "timings": timings, "keras": keras.__version__,
            "backend": keras.backend.backend(),
            "output_order": list(model.output.keys()),
            "weight_paths": [w.path for w in model.weights]}


def main(argv: list[str] | None = None) -> None:
    worker_main({"convert": job_convert}, (MappingError, MappingFileError), argv)


if __name__ == "__main__":
    main()
