"""SavedModel worker: load ``saved_model/`` with ``tf.saved_model.load`` and run its
``serving_default`` signature, as TF Serving or a plain TensorFlow user would.

``python -m parity.run_savedmodel JOB.json``; imports TensorFlow only (no Keras model code,
no torch): the artifact has to stand on its own.
"""

from __future__ import annotations

import numpy as np

from parity.outputs import DEFAULT_BUDGET_MB, OutputStore, run_on_inputs, static_shapes
from parity.worker import worker_main


def job_run(job: dict) -> dict:
    """The signature on the parity inputs. A subset of its outputs is fetched through a
    tf.function that calls the signature and returns only those: TensorFlow inlines the call
    and prunes what the subset does not need, so a 448 px model's attention maps are never all
    alive at once (``parity/outputs.py``)."""
    import tensorflow as tf

    loaded = tf.saved_model.load(job["saved_model"])
    signature = loaded.signatures[job.get("signature", "serving_default")]
    outputs = sorted(signature.structured_outputs)
    head = next(k for k in outputs if k in ("logits", "features"))
    subsets: dict[tuple[str, ...], object] = {}

    def fetch(names: tuple[str, ...]):
        if names not in subsets:
            subsets[names] = tf.function(lambda images: {k: signature(images=images)[k] for k in names},
                                         autograph=False)
        return subsets[names]

    def run(images: np.ndarray, names: list[str] | None = None) -> dict[str, np.ndarray]:
        if names is None or sorted(names) == outputs:
            result = signature(images=tf.constant(images))
        else:
            result = fetch(tuple(names))(tf.constant(images))
        return {k: result.pop(k).numpy() for k in list(result)}

    shapes = static_shapes({k: v.shape.as_list() for k, v in signature.structured_outputs.items()})
    calls = run_on_inputs(run, job["inputs"], head, OutputStore(job["outputs"]), shapes,
                          job.get("budget_mb", DEFAULT_BUDGET_MB))
    return {"tensorflow": tf.__version__, "signature_outputs": outputs, "calls": calls,
            "devices": [d.name for d in tf.config.list_logical_devices()]}


def main(argv: list[str] | None = None) -> None:
    worker_main({"run": job_run}, (), argv)


if __name__ == "__main__":
    main()
