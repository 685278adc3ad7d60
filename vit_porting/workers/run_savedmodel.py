"""SavedModel worker: load ``saved_model/`` with ``tf.saved_model.load`` and run its signatures,
as TF Serving or a plain TensorFlow user would: the head output from ``serving_default``, the
attention maps from ``attention``.

``python -m vit_porting.workers.run_savedmodel JOB.json``; imports TensorFlow only (no Keras model code,
no torch): the artifact has to stand on its own.
"""

from __future__ import annotations

import numpy as np

from vit_porting.export.saved_model import ATTENTION_SIGNATURE, SIGNATURE_KEY
from vit_porting.parity.outputs import OutputStore, run_on_inputs, static_shapes
from vit_porting.workers.jobs import SavedModelJob, SavedModelResult
from vit_porting.workers.protocol import worker_main


def job_run(job: SavedModelJob) -> SavedModelResult:
    """The signature on the parity inputs, one image per call when their outputs pass the budget.

    Every output in each call: a tf.function that calls the signature and returns a subset
    does free the rest, but building one costs 20 s on cait_m48_448 and runs 2.3-2.6x slower than
    the signature, for little memory (a 10-map subset: 3.9 GB peak, all 50 maps: 5.2 GB before
    their numpy copies). The outputs are handed back as TensorFlow tensors and converted one at
    a time as they are written (``OutputStore.write_all``), so no second copy of them is held.
    """
    import tensorflow as tf

    loaded = tf.saved_model.load(job.saved_model)
    serve, maps = loaded.signatures[SIGNATURE_KEY], loaded.signatures[ATTENTION_SIGNATURE]
    (head,) = serve.structured_outputs
    outputs = sorted(maps.structured_outputs)

    def run(images: np.ndarray, names: list[str] | None = None) -> dict:
        names = names or outputs
        result = {head: serve(images=tf.constant(images))[head]} if head in names else {}
        rest = [k for k in names if k != head]
        if rest:
            everything = maps(images=tf.constant(images))
            result.update({k: everything[k] for k in rest})
        return result

    shapes = static_shapes({k: v.shape.as_list() for k, v in maps.structured_outputs.items()})
    calls = run_on_inputs(run, job.inputs, head, OutputStore(job.outputs), shapes, job.budget_mb,
                          split_outputs=False)
    return SavedModelResult(tensorflow=tf.__version__, calls=calls,
                            signature_outputs={k: sorted(fn.structured_outputs) for k, fn in loaded.signatures.items()},
                            devices=[d.name for d in tf.config.list_logical_devices()])


def main(argv: list[str] | None = None) -> None:
    worker_main({SavedModelJob: job_run}, (), argv)


if __name__ == "__main__":
    main()
