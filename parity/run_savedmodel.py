"""SavedModel worker: load ``saved_model/`` with ``tf.saved_model.load`` and run its
``serving_default`` signature, as TF Serving or a plain TensorFlow user would.

``python -m parity.run_savedmodel JOB.json``; imports TensorFlow only (no Keras model code,
no torch): the artifact has to stand on its own.
"""

from __future__ import annotations

import numpy as np

from parity.images import run_on_inputs
from parity.worker import worker_main


def job_run(job: dict) -> dict:
    import tensorflow as tf

    loaded = tf.saved_model.load(job["saved_model"])
    signature = loaded.signatures[job.get("signature", "serving_default")]
    outputs = sorted(signature.structured_outputs)
    head = next(k for k in outputs if k in ("logits", "features"))

    def run(images: np.ndarray) -> dict[str, np.ndarray]:
        return {k: v.numpy() for k, v in signature(images=tf.constant(images)).items()}

    np.savez(job["outputs"], **run_on_inputs(run, job["inputs"], head))
    return {"tensorflow": tf.__version__, "signature_outputs": outputs,
            "devices": [d.name for d in tf.config.list_logical_devices()]}


def main(argv: list[str] | None = None) -> None:
    worker_main({"run": job_run}, (), argv)


if __name__ == "__main__":
    main()
