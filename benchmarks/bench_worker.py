"""Timing jobs, one runtime per process (same rule as the parity workers, same plumbing).

``python -m benchmarks.bench_worker JOB.json``. Each inference job loads its artifact from
disk, warms up, then times ``repeats`` calls per batch size and reports the median.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from vit_porting.export.timing import time_calls
from vit_porting.families.registry import variant_from_dict
from vit_porting.workers.protocol import worker_main


def _batches(job: dict, fn: Callable[[np.ndarray], object]) -> dict:
    rng = np.random.default_rng(0)
    size = job["image_size"]
    results = {}
    for batch in job["batches"]:
        images = rng.standard_normal((batch, size, size, 3)).astype(np.float32)
        results[str(batch)] = time_calls(fn, images, job.get("warmup", 2), job.get("repeats", 5))
    return results


def job_matmul_peak(job: dict) -> dict:
    """fp32 GEMM throughput of this machine with one framework's BLAS (all default threads).

    The yardstick is the best of torch (MKL) and TensorFlow (oneDNN): on AMD CPUs MKL leaves
    AVX-512 partly unused, so torch alone understates what the hardware does.
    """
    n = job.get("n", 4096)
    if job.get("framework", "torch") == "tensorflow":
        import tensorflow as tf

        a, b = tf.random.normal((n, n)), tf.random.normal((n, n))
        fn = lambda _x: tf.matmul(a, b).numpy()  # noqa: E731  (.numpy() waits for the result)
        threads = None
    else:
        import torch

        a, b = torch.randn(n, n), torch.randn(n, n)
        fn = lambda _x: torch.mm(a, b)  # noqa: E731
        threads = torch.get_num_threads()
    timing = time_calls(fn, np.zeros(1), 3, job.get("repeats", 10))
    return {"gflops": 2 * n**3 / timing["min_s"] / 1e9, "n": n, "threads": threads,
            "framework": job.get("framework", "torch"), **timing}


def job_flops(job: dict) -> dict:
    """FLOPs (2 x multiply-adds of matmuls and convolutions) of one image through the reference."""
    from vit_porting.workers.run_torch import model_facts

    return {"flops_per_image": model_facts(variant_from_dict(job["spec"]))["flops_per_image"]}


def job_gemm_shapes(job: dict) -> dict:
    """Every matrix product of one image through the reference, as PyTorch dispatches it
    (aten mm / addmm / bmm / baddbmm), recorded on the meta device: no weights, no arithmetic.
    Fused attention is switched off (the taps do it), so attention's two products are seen."""
    import torch
    from torch.utils._python_dispatch import TorchDispatchMode

    from vit_porting.families.registry import get_family

    aten = torch.ops.aten
    spec = variant_from_dict(job["spec"])
    reference = get_family(spec.family).torch()
    products: dict[tuple, int] = {}

    class Record(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            packet = func._overloadpacket
            if packet in (aten.mm, aten.bmm, aten.addmm, aten.baddbmm):
                a, b = (args[0], args[1]) if packet in (aten.mm, aten.bmm) else (args[1], args[2])
                key = (tuple(a.shape), tuple(b.shape))
                products[key] = products.get(key, 0) + 1
            return func(*args, **(kwargs or {}))

    with torch.device("meta"):
        model = reference.build_reference(spec).eval()
        reference.reference_taps(model)
        x = torch.zeros(1, 3, spec.image_size, spec.image_size)
    with torch.no_grad(), Record():
        reference.call_reference(model, x)
    return {"products": [{"a": list(a), "b": list(b), "count": n} for (a, b), n in products.items()]}


def job_gemm_time(job: dict) -> dict:
    """The model's matrix products alone, at ``batch`` images, in TensorFlow (oneDNN): the time
    they take when nothing else runs, against the whole compiled model's time. What is left is
    the rest of the model (softmax, LayerNorm, GELU, transposes, convolutions)."""
    import tensorflow as tf

    batch = job["batch"]
    total_s, flops, rows = 0.0, 0, []
    for product in job["products"]:
        a, b = list(product["a"]), list(product["b"])
        a[0] *= batch  # rows of a linear layer (B*N) or the batch of a bmm (B*heads) scale with the images
        if len(b) == 3:
            b[0] *= batch
        x, y = tf.random.normal(a), tf.random.normal(b)
        fn = tf.function(lambda x=x, y=y: tf.matmul(x, y))
        timing = time_calls(lambda _i, fn=fn: fn().numpy(), np.zeros(1), 2, job.get("repeats", 5))
        product_flops = 2 * a[-2] * a[-1] * b[-1] * (a[0] if len(a) == 3 else 1)
        total_s += timing["min_s"] * product["count"]
        flops += product_flops * product["count"]
        rows.append({"a": a, "b": b, "count": product["count"], "seconds": timing["min_s"],
                     "gflops": product_flops / timing["min_s"] / 1e9})
    # ("seconds" of a worker result is its wall time, set by worker_main)
    return {"batch": batch, "gemm_seconds": total_s, "flops": flops, "gflops": flops / total_s / 1e9,
            "products": sorted(rows, key=lambda r: -r["seconds"] * r["count"])}


def job_torch(job: dict) -> dict:
    """PyTorch eager as users run it (fused attention left on), weights from model.safetensors; with
    ``compile``, the same model through ``torch.compile`` (Inductor's C++ code on CPU), whose first
    call at each batch size compiles: the warm-up calls absorb it."""
    import torch
    from safetensors.torch import load_file

    from vit_porting.families.registry import get_family

    spec = variant_from_dict(job["spec"])
    reference = get_family(spec.family).torch()
    model = reference.build_reference(spec).eval()
    model.load_state_dict(load_file(job["safetensors"]), strict=True)
    call = reference.call_reference
    if job.get("compile"):
        call = torch.compile(reference.call_reference)

    def run(images: np.ndarray):
        with torch.inference_mode():
            return call(model, torch.from_numpy(images.transpose(0, 3, 1, 2).copy()))

    return {"batches": _batches(job, run), "torch": torch.__version__, "threads": torch.get_num_threads(),
            "mode": "torch.compile" if job.get("compile") else "eager"}


def job_keras(job: dict) -> dict:
    """model.keras compiled: XLA (jit_compile=True) or a tf.function, as the job says."""
    import keras
    import tensorflow as tf

    from vit_porting.families.registry import get_family

    get_family(job["spec"]["family"]).keras()  # registers the layers

    model = keras.saving.load_model(job["model"], compile=False)
    # A compiled call returning tensors, as TF users serve a Keras model; predict_on_batch would
    # add a numpy copy of every attention map to each call (the SavedModel and torch runs have none).
    jit = job.get("jit_compile", True)
    call = tf.function(lambda images: model(images, training=False), jit_compile=jit)
    return {"batches": _batches(job, lambda images: call(tf.constant(images))), "keras": keras.__version__,
            "mode": "xla" if jit else "tf.function"}


def job_savedmodel(job: dict) -> dict:
    """A SavedModel's ``serving_default`` called by its one input's name (ours: ``images``; a peer's
    may differ), as TF-Hub and TF Serving users call it."""
    import tensorflow as tf

    signature = tf.saved_model.load(job["saved_model"]).signatures["serving_default"]
    (name,) = signature.structured_input_signature[1]
    return {"batches": _batches(job, lambda images: signature(**{name: tf.constant(images)})),
            "tensorflow": tf.__version__, "outputs": sorted(signature.structured_outputs)}


def job_litert(job: dict) -> dict:
    """A ``.tflite`` file's ``serving_default`` signature in ai-edge-litert's interpreter (XNNPACK,
    one thread per core), as a LiteRT user runs it; no TensorFlow in the process."""
    import os
    from importlib import metadata

    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_path=job["model"], num_threads=os.cpu_count())
    runner = interpreter.get_signature_runner("serving_default")
    return {"batches": _batches(job, lambda images: runner(images=images)),
            "ai_edge_litert": metadata.version("ai-edge-litert")}


def job_onnxruntime(job: dict) -> dict:
    import onnx
    import onnxruntime as ort

    graph = onnx.load(job["model"], load_external_data=False).graph
    ops: dict[str, int] = {}
    for node in graph.node:
        ops[node.op_type] = ops.get(node.op_type, 0) + 1
    session = ort.InferenceSession(job["model"], providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    return {"batches": _batches(job, lambda images: session.run(None, {name: images})),
            "onnxruntime": ort.__version__, "nodes": len(graph.node),
            "node_counts": dict(sorted(ops.items(), key=lambda kv: -kv[1]))}


def main(argv: list[str] | None = None) -> None:
    worker_main({"matmul_peak": job_matmul_peak, "flops": job_flops, "gemm_shapes": job_gemm_shapes,
                 "gemm_time": job_gemm_time, "torch": job_torch, "keras": job_keras,
                 "savedmodel": job_savedmodel, "onnxruntime": job_onnxruntime,
                 "litert": job_litert}, (), argv)


if __name__ == "__main__":
    main()
