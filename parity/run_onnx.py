"""ONNX Runtime worker: check ``model.onnx`` and run it on one execution provider.

``python -m parity.run_onnx JOB.json``; imports onnx and onnxruntime only.
"""

from __future__ import annotations

import numpy as np

from parity.images import run_on_inputs
from parity.worker import worker_main

PROVIDERS = {"cpu": "CPUExecutionProvider", "cuda": "CUDAExecutionProvider"}


class ProviderUnavailable(RuntimeError):
    pass


def describe(path: str) -> dict:
    """Checker verdict (path-based, so external data is followed), opset, and I/O shapes."""
    import onnx

    onnx.checker.check_model(path, full_check=False)
    model = onnx.load(path, load_external_data=False)

    def dims(value) -> list:
        return [d.dim_param or d.dim_value for d in value.type.tensor_type.shape.dim]

    return {"checker": "passed",
            "opset": max(o.version for o in model.opset_import if o.domain in ("", "ai.onnx")),
            "nodes": len(model.graph.node),
            "inputs": {i.name: dims(i) for i in model.graph.input},
            "outputs": [o.name for o in model.graph.output]}


def job_run(job: dict) -> dict:
    import onnxruntime as ort

    device = job.get("device", "cpu")
    provider = PROVIDERS["cuda" if device.startswith("cuda") else "cpu"]
    if provider not in ort.get_available_providers():
        raise ProviderUnavailable(f"onnxruntime {ort.__version__} has no {provider}")
    info = describe(job["model"])
    options = ort.SessionOptions()
    if job.get("threads"):
        options.intra_op_num_threads = int(job["threads"])
    session = ort.InferenceSession(job["model"], options, providers=[provider])
    names = [o.name for o in session.get_outputs()]
    head = next(k for k in names if k in ("logits", "features"))
    input_name = session.get_inputs()[0].name

    def run(images: np.ndarray) -> dict[str, np.ndarray]:
        return dict(zip(names, session.run(names, {input_name: np.ascontiguousarray(images)}), strict=True))

    np.savez(job["outputs"], **run_on_inputs(run, job["inputs"], head))
    return {**info, "onnxruntime": ort.__version__, "provider": session.get_providers()[0]}


def main(argv: list[str] | None = None) -> None:
    worker_main({"run": job_run}, (ProviderUnavailable,), argv)


if __name__ == "__main__":
    main()
