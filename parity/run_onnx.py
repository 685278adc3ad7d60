"""ONNX Runtime worker: check ``model.onnx`` and ``model_attention.onnx`` and run them on one
execution provider: every output from the attention file, then the head output again from
``model.onnx``, which serving users load, written over the first.

``python -m parity.run_onnx JOB.json``; imports onnx and onnxruntime only.
"""

from __future__ import annotations

import numpy as np

from parity.outputs import DEFAULT_BUDGET_MB, OutputStore, run_on_inputs, static_shapes
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


def _session(path: str, provider: str):
    import onnxruntime as ort

    options = ort.SessionOptions()
    # Memory, not speed (benchmarks/ time ONNX Runtime with its defaults): the arena would keep the
    # largest call's buffers for the life of the session, and pre-packed MatMul weights are a
    # second copy of them (0.4 GB of cait_m48_448's 1.4 GB). Measured on cait_m48_448, one image:
    # 5.0 GB peak with the defaults, 3.5 GB without either.
    options.enable_cpu_mem_arena = False
    options.add_session_config_entry("session.disable_prepacking", "1")
    return ort.InferenceSession(path, options, providers=[provider])


def _runner(session):
    input_name = session.get_inputs()[0].name
    names = [o.name for o in session.get_outputs()]

    def run(images: np.ndarray, wanted: list[str] | None = None) -> dict[str, np.ndarray]:
        # ONNX Runtime holds every graph output until a run returns, fetched or not, so a subset
        # saves only the copies handed back
        wanted = wanted or names
        return dict(zip(wanted, session.run(wanted, {input_name: np.ascontiguousarray(images)}), strict=True))

    return run, {o.name: o.shape for o in session.get_outputs()}


def job_run(job: dict) -> dict:
    import onnxruntime as ort

    device = job.get("device", "cpu")
    provider = PROVIDERS["cuda" if device.startswith("cuda") else "cpu"]
    if provider not in ort.get_available_providers():
        raise ProviderUnavailable(f"onnxruntime {ort.__version__} has no {provider}")
    info = describe(job["model"])
    head = info["outputs"][0]
    budget = job.get("budget_mb", DEFAULT_BUDGET_MB)
    store = OutputStore(job["outputs"])
    # one session at a time: two would hold the weights twice
    session = _session(job["attention_model"], provider)
    run, shapes = _runner(session)
    calls = run_on_inputs(run, job["inputs"], head, store, static_shapes(shapes), budget)
    del session, run
    session = _session(job["model"], provider)
    run, shapes = _runner(session)
    # the same images per call: the logits file computes the maps the attention file returned, and
    # the whole batch at once took cvt-w24-384-22k's worker from 2.7 to 6.3 GB
    run_on_inputs(run, job["inputs"], head, store, static_shapes(shapes), budget, one_image=calls["per_image"])
    return {**info, "attention_outputs": describe(job["attention_model"])["outputs"], "onnxruntime": ort.__version__,
            "provider": session.get_providers()[0], "calls": calls}


def main(argv: list[str] | None = None) -> None:
    worker_main({"run": job_run}, (ProviderUnavailable,), argv)


if __name__ == "__main__":
    main()
