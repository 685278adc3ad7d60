"""Keras-side exporters: TF SavedModel and ``.keras``. Runs in the Keras worker process only.

SavedModel size. ``model.export(format="tf_saved_model")`` (Keras 3.15) writes every weight
twice: ``ExportArchive.track()`` appends the Keras ``Variable`` wrappers to the archive's
``variables`` lists (``keras/src/backend/tensorflow/export.py:_backend_track_layer``), and
``write_out()`` then also stores the ``tf.Variable`` objects that the traced endpoint
captures under ``_all_variables``
(``keras/src/export/saved_model_export_archive.py:_filter_and_track_resources``). The
checkpoint de-duplicates by trackable object, and the wrapper and the ``tf.Variable`` it
holds are two objects, so both are serialised: 2.08x the weight bytes on cait_xxs24_224.

Here the root object tracks only the ``tf.Variable`` of each weight (``variable.value``),
once, and the serving function closes over the model without tracking it. The saver ops are
kept (``experimental_skip_saver`` would shave 1.5 % but leave TF Serving's C++ loader with
no restore op).
"""

from __future__ import annotations

from pathlib import Path

SIGNATURE_KEY = "serving_default"
INPUT_NAME = "images"


def is_diagnostic(output_name: str) -> bool:
    """Block outputs (``blocks_3_out``) exist only to localise a divergence; exports omit them."""
    return output_name.endswith("_out")


def export_model(model):
    """The user-facing model: same weights (shared, not copied), no diagnostic outputs."""
    import keras

    outputs = {k: v for k, v in model.output.items() if not is_diagnostic(k)}
    if len(outputs) == len(model.output):
        return model
    return keras.Model(model.input, outputs, name=model.name)


def weight_bytes(model) -> int:
    import numpy as np

    return int(sum(int(np.prod(w.shape)) * np.dtype(w.dtype).itemsize for w in model.weights))


def folder_bytes(path: Path | str) -> int:
    return sum(p.stat().st_size for p in Path(path).rglob("*") if p.is_file())


def write_saved_model(model, path: Path | str) -> dict:
    """A SavedModel with one signature, ``serving_default``: ``images`` (float32 NHWC, any
    batch) -> the model's outputs under their Keras names; each variable stored once."""
    import keras
    import tensorflow as tf

    # Same layers and weights; a one-letter model name and tracking list keep the graph's node
    # names and checkpoint keys short (they are ~5 % of a cait_xxs24 SavedModel otherwise).
    model = keras.Model(model.input, export_model(model).output, name="m")
    shape = [None, *model.input.shape[1:]]

    root = tf.Module()
    # one tf.Variable per weight: the objects the traced function captures
    root.v = [w.value for w in model.weights]

    @tf.function(input_signature=[tf.TensorSpec(shape, tf.float32, name=INPUT_NAME)], autograph=False)
    def serve(images):
        return model(images, training=False)

    signature = serve.get_concrete_function()
    tf.saved_model.save(root, str(path), signatures={SIGNATURE_KEY: signature})
    size, weights = folder_bytes(path), weight_bytes(model)
    return {"bytes": size, "weight_bytes": weights, "size_ratio": size / weights,
            "outputs": sorted(signature.structured_outputs)}


def write_keras_file(model, path: Path | str) -> dict:
    """``model.keras`` (config + weights); loading needs the custom layers registered
    (``import porting.families.<family>.model``, package ``vit_porting``)."""
    model = export_model(model)
    model.save(str(path))
    return {"bytes": Path(path).stat().st_size}
