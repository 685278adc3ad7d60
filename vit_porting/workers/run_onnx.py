"""ONNX Runtime worker: check ``model.onnx`` and ``model_attention.onnx`` and run them on one
execution provider: every output from the attention file, then the head output again from
``model.onnx``, which serving users load, written over the first. Also makes and runs the candidate
serving graphs of ``model.onnx`` (``optimise``) and the reduced-precision variants (``variants``),
``vit_porting/export/onnx_serving.py``.

``python -m vit_porting.workers.run_onnx JOB.json``; imports onnx and onnxruntime only.
"""

from __future__ import annotations

import numpy as np

from vit_porting.parity.outputs import OutputStore, run_on_inputs, static_shapes
from vit_porting.workers.jobs import (
    OnnxRunJob,
    OnnxRunResult,
    OnnxVariantsJob,
    OptimiseJob,
    OptimiseResult,
    VariantsResult,
    WriteVariantsJob,
)
from vit_porting.workers.protocol import worker_main

PROVIDERS = {"cpu": "CPUExecutionProvider", "cuda": "CUDAExecutionProvider"}


class ProviderUnavailable(RuntimeError):
    pass


def _dims(value) -> list:
    """A graph input's or output's shape: a named dimension by its name, the others by size."""
    return [d.dim_param or d.dim_value for d in value.type.tensor_type.shape.dim]


def describe(path: str) -> dict:
    """Checker verdict (path-based, so external data is followed), opset, and I/O shapes."""
    import onnx

    onnx.checker.check_model(path, full_check=False)
    model = onnx.load(path, load_external_data=False)
    return {"checker": "passed",
            "opset": max(o.version for o in model.opset_import if o.domain in ("", "ai.onnx")),
            "nodes": len(model.graph.node),
            "inputs": {i.name: _dims(i) for i in model.graph.input},
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


def _serving_session(path: str, external: bool):
    """A session as a serving user opens one (ONNX Runtime's defaults), but without pre-packed weights
    for a model whose weights are external data: those are the large ones, where the copy would count."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    if external:
        options.add_session_config_entry("session.disable_prepacking", "1")
    return ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])


def _head_runner(session):
    """``run(images, names)`` of a logits-only session, and its per-image output shapes."""
    run, shapes = _runner(session)
    return (lambda images, _names=None: run(images)), static_shapes(shapes)


def job_optimise(job: OptimiseJob) -> OptimiseResult:
    """The candidate serving graphs of ``model.onnx`` (``vit_porting.export.onnx_serving.write_graphs``), each
    checked and loaded in a plain session, timed against each other at batch 1 and 8, and run on the
    parity inputs (head output and photographs) into ``outputs/<graph>``, for the port to choose from.

    The timing sessions are a serving user's (ONNX Runtime's defaults) and are closed before the
    parity inputs run: those run one candidate at a time in the harness's own session (no arena, no
    pre-packed weights), one image per call where the attention file's outputs would not fit the
    budget, as ``job_run`` does (a logits-only graph's intermediates are as large as those outputs)."""
    import onnx

    from vit_porting.export.onnx_serving import GRAPH_MARGIN, non_standard_ops, uses_external_data, write_graphs
    from vit_porting.export.timing import choose_fastest
    from vit_porting.parity.outputs import plan_calls

    graphs = write_graphs(job.folder, job.model)
    external = uses_external_data(onnx.load(job.model, load_external_data=False))
    sessions = {}
    for name, graph in graphs.items():
        if "path" not in graph:
            continue
        try:
            graph["checker"] = describe(graph["path"])["checker"]
        except onnx.checker.ValidationError as exc:  # not a candidate: model.onnx must pass the checker
            graph["checker"] = f"failed: {str(exc).strip().splitlines()[0][:300]}"
            continue
        graph["non_standard_ops"] = non_standard_ops(onnx.load(graph["path"], load_external_data=False))
        sessions[name] = _serving_session(graph["path"], external)
    first = next(iter(sessions.values()))
    input_name = first.get_inputs()[0].name
    shape = first.get_inputs()[0].shape[1:]
    head = first.get_outputs()[0].name
    rng = np.random.default_rng(0)
    batches = [rng.standard_normal((b, *shape)).astype(np.float32) for b in (1, 8)]
    fns = {name: (lambda x, s=s: s.run(None, {input_name: x})) for name, s in sessions.items()}
    timing = choose_fastest(fns, batches, margin=GRAPH_MARGIN)
    timed = list(sessions)
    del fns, first, sessions

    budget = job.budget_mb
    maps = onnx.load(job.attention_model, load_external_data=False).graph.output
    maps_shapes = static_shapes({o.name: _dims(o) for o in maps})
    with np.load(job.inputs) as data:
        batch = len(data["images"])
    one_image = maps_shapes is not None and any(
        one for _, one in plan_calls(maps_shapes, batch, int(budget * 2**20)))
    for name in timed:
        session = _session(graphs[name]["path"], "CPUExecutionProvider")
        run, shapes = _head_runner(session)
        run_on_inputs(run, job.inputs, head, OutputStore(f"{job.outputs}/{name}"), shapes, budget,
                      one_image=one_image)
        del session, run
    return OptimiseResult(graphs=graphs, timing=timing, head=head)


def job_write_variants(job: WriteVariantsJob) -> VariantsResult:
    """The reduced-precision variants of ``source`` (the fp32 serving graph in standard ops) written into
    ``folder`` (``vit_porting.export.onnx_serving.VARIANT_FILES``); what each is."""
    import onnx

    from vit_porting.export.onnx_serving import VARIANT_FILES, non_standard_ops, write_fp16, write_int8

    writers = {"onnx_int8": write_int8, "onnx_fp16": write_fp16}
    made = {}
    for name, file in VARIANT_FILES.items():
        path = f"{job.folder}/{file}"
        info = writers[name](job.source, path)
        model = onnx.load(path, load_external_data=False)
        made[name] = {**info, "file": file, "checker": describe(path)["checker"], "nodes": len(model.graph.node),
                      "non_standard_ops": non_standard_ops(model)}
    return VariantsResult(variants=made)


def job_variants(job: OnnxVariantsJob) -> VariantsResult:
    """Each of ``files`` ({variant: path}) loaded in a plain session (ONNX Runtime's defaults) and run
    on the parity inputs (head output and photographs) into ``outputs/<variant>``."""
    import onnxruntime as ort

    info = {}
    for name, path in job.files.items():
        session = _serving_session(path, external=False)
        run, shapes = _head_runner(session)
        run_on_inputs(run, job.inputs, session.get_outputs()[0].name, OutputStore(f"{job.outputs}/{name}"),
                      shapes, job.budget_mb)
        info[name] = {"runtime": f"onnxruntime {ort.__version__}", "provider": session.get_providers()[0]}
        del session, run
    return VariantsResult(variants=info)


def job_run(job: OnnxRunJob) -> OnnxRunResult:
    import onnxruntime as ort

    provider = PROVIDERS["cuda" if job.device.startswith("cuda") else "cpu"]
    if provider not in ort.get_available_providers():
        raise ProviderUnavailable(f"onnxruntime {ort.__version__} has no {provider}")
    info = describe(job.model)
    head = info["outputs"][0]
    store = OutputStore(job.outputs)
    # one session at a time: two would hold the weights twice
    session = _session(job.attention_model, provider)
    run, shapes = _runner(session)
    calls = run_on_inputs(run, job.inputs, head, store, static_shapes(shapes), job.budget_mb)
    del session, run
    session = _session(job.model, provider)
    run, shapes = _runner(session)
    # the same images per call: the logits file computes the maps the attention file returned, and
    # the whole batch at once took cvt-w24-384-22k's worker from 2.7 to 6.3 GB
    run_on_inputs(run, job.inputs, head, store, static_shapes(shapes), job.budget_mb, one_image=calls["per_image"])
    return OnnxRunResult(**info, attention_outputs=describe(job.attention_model)["outputs"],
                         onnxruntime=ort.__version__, provider=session.get_providers()[0], calls=calls)


def main(argv: list[str] | None = None) -> None:
    worker_main({OnnxRunJob: job_run, OptimiseJob: job_optimise, WriteVariantsJob: job_write_variants,
                 OnnxVariantsJob: job_variants}, (ProviderUnavailable,), argv)


if __name__ == "__main__":
    main()
