"""LiteRT worker: ``convert`` the SavedModel's serving signature to ``.tflite`` files (TensorFlow's
converter, ``vit_porting/export/litert.py``), and ``run`` them with ``ai-edge-litert``'s interpreter on the
parity inputs (head output and photographs), as an on-device or a server LiteRT user would.

``python -m vit_porting.workers.run_litert JOB.json``; ``convert`` imports TensorFlow, ``run`` only ai-edge-litert
(a ``.tflite`` file has to stand without TensorFlow).
"""

from __future__ import annotations

import numpy as np

from vit_porting.export.saved_model import SIGNATURE_KEY
from vit_porting.parity.outputs import OutputStore, run_on_inputs
from vit_porting.workers.jobs import LiteRTConvertJob, LiteRTRunJob, VariantsResult
from vit_porting.workers.protocol import worker_main


def job_convert(job: LiteRTConvertJob) -> VariantsResult:
    import tensorflow as tf

    from vit_porting.export.litert import convert

    return VariantsResult(variants=convert(job.saved_model, job.folder), tensorflow=tf.__version__)


def job_run(job: LiteRTRunJob) -> VariantsResult:
    """Each of ``files`` ({variant: path}) through its ``serving_default`` signature runner, into
    ``outputs/<variant>``; CPU, as many threads as the machine has cores (XNNPACK where it applies)."""
    import os
    from importlib import metadata

    from ai_edge_litert.interpreter import Interpreter

    info = {}
    for variant, path in job.files.items():
        interpreter = Interpreter(model_path=path, num_threads=os.cpu_count())
        runner = interpreter.get_signature_runner(SIGNATURE_KEY)
        (head,) = runner.get_output_details()

        def run(images: np.ndarray, _names=None, runner=runner, head=head) -> dict:
            return {head: runner(images=np.ascontiguousarray(images))[head]}

        run_on_inputs(run, job.inputs, head, OutputStore(f"{job.outputs}/{variant}"), None, job.budget_mb)
        info[variant] = {"runtime": f"ai-edge-litert {metadata.version('ai-edge-litert')}", "head": head}
        del runner, interpreter
    return VariantsResult(variants=info)


def main(argv: list[str] | None = None) -> None:
    worker_main({LiteRTConvertJob: job_convert, LiteRTRunJob: job_run}, (), argv)


if __name__ == "__main__":
    main()
