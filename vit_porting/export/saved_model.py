"""Keras-side exporters: TF SavedModel and ``.keras``, and the artifacts' file and signature
names (imported by every process: Keras and TensorFlow load inside the functions only).

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

SIGNATURE_KEY = "serving_default"  # the head output alone, as TF-Hub classifiers serve
FEATURES_SIGNATURE = "features"  # the pooled feature vector, as TF-Hub's feature-vector models
ATTENTION_SIGNATURE = "attention"  # the head output and every attention map
INPUT_NAME = "images"
# ONNX: the head output alone (what serving loads), and the same graph with every attention map;
# past the external-data threshold both read their weights from one data file
ONNX_FILE, ONNX_ATTENTION_FILE = "model.onnx", "model_attention.onnx"
ONNX_DATA_FILE = ONNX_FILE + ".data"


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


def pooled_features(model, heads: tuple[str, ...]):
    """The feature vector the classifier reads: the ``features`` output of a feature extractor,
    else the input of the head layer (the mean of the heads' inputs where the model has two, as timm
    pools a distilled DeiT's class and distillation tokens)."""
    import keras

    if "features" in model.output:
        return model.output["features"]
    present = {layer.name for layer in model.layers}
    inputs = [model.get_layer(name).input for name in heads if name in present]
    return inputs[0] if len(inputs) == 1 else keras.layers.Average(name="pre_logits")(inputs)


# serving_default and features compiled with XLA or as a plain tf.function, chosen per port by timing
# both (``vit_porting/export/timing.py:choose_fastest``); XLA is the second candidate, so it must win by this much
SERVING_GRAPHS = ("tf.function", "xla")
SERVING_MARGIN = 0.03
SERVING_BATCHES = (1, 8)


def write_saved_model(model, path: Path | str, heads: tuple[str, ...] = ("head",), serving: str = "auto") -> dict:
    """A SavedModel with three signatures, each taking ``images`` (float32 NHWC, any batch):
    ``serving_default`` the head output (``logits``, or ``features``), ``features`` the pooled
    feature vector, ``attention`` the head output and every attention map under their Keras names.
    Each variable is stored once; the signatures share it.

    ``serving``: how ``serving_default`` and ``features`` run: ``"xla"`` (``jit_compile=True``),
    ``"tf.function"``, or ``"auto"``: both timed on this machine at batch 1 and 8 and the faster kept
    (XLA fuses the small element-wise ops of a small model and wins there, but lowers matrix products to
    Eigen, about half of oneDNN's speed on this AMD CPU, and loses on the large and the convolutional
    models). ``attention`` is always the plain function, the exact graph."""
    import keras
    import numpy as np
    import tensorflow as tf

    from vit_porting.export.timing import choose_fastest

    # Same layers and weights; a one-letter model name and tracking list keep the graph's node
    # names and checkpoint keys short (they are ~5 % of a cait_xxs24 SavedModel otherwise).
    model = keras.Model(model.input, export_model(model).output, name="m")
    head = "logits" if "logits" in model.output else "features"
    outputs = {**model.output, "pre_logits": pooled_features(model, heads)}
    everything = keras.Model(model.input, outputs, name="m")
    spec = tf.TensorSpec([None, *model.input.shape[1:]], tf.float32, name=INPUT_NAME)

    root = tf.Module()
    # one tf.Variable per weight: the objects the traced functions capture
    root.v = [w.value for w in model.weights]

    # The graph is traced once; each signature calls it and returns its part, so the SavedModel
    # stores it once (three traced graphs made it 1.11x the weight bytes of cait_xxs24_224, 1.05x
    # with one). The maps are intermediates of the logits, so serving_default computes no extra op.
    # An XLA serving function calls the same traced graph: XLA compiles the call's body and drops the
    # outputs nobody reads (measured identical to a logits-only trace, and no second graph stored).
    full = tf.function(lambda images: everything(images, training=False), input_signature=[spec], autograph=False)
    serve = {graph: tf.function(lambda images: {k: v for k, v in full(images).items() if k in (head, "pre_logits")},
                                input_signature=[spec], autograph=False, jit_compile=graph == "xla")
             for graph in SERVING_GRAPHS}
    record: dict = {"graph": serving, "chosen_by": "asked for"}
    if serving == "auto":
        shape = tuple(model.input.shape[1:])
        batches = [np.random.default_rng(0).standard_normal((b, *shape)).astype(np.float32) for b in SERVING_BATCHES]
        fns = {graph: (lambda x, fn=fn: fn(tf.constant(x))[head].numpy()) for graph, fn in serve.items()}
        try:
            timing = choose_fastest(fns, batches, margin=SERVING_MARGIN)
            record = {"graph": timing["chosen"], "timing": timing,
                      "chosen_by": f"the faster, timed on this machine; XLA must win by {SERVING_MARGIN:.0%}"}
        except Exception as exc:  # noqa: BLE001 - XLA cannot compile some graphs: the plain function serves
            record = {"graph": "tf.function", "chosen_by": "XLA failed", "xla_error": f"{type(exc).__name__}: "
                                                                                    f"{str(exc)[:300]}"}
    chosen = serve[record["graph"]]
    parts = {SIGNATURE_KEY: (chosen, lambda out: {head: out[head]}),
             FEATURES_SIGNATURE: (chosen, lambda out: {"features": out["pre_logits"]}),
             ATTENTION_SIGNATURE: (full, lambda out: {k: out[k] for k in model.output})}
    signatures = {key: tf.function(lambda images, fn=fn, part=part: part(fn(images)), input_signature=[spec],
                                   autograph=False).get_concrete_function()
                  for key, (fn, part) in parts.items()}
    tf.saved_model.save(root, str(path), signatures=signatures)
    size, weights = folder_bytes(path), weight_bytes(model)
    return {"bytes": size, "weight_bytes": weights, "size_ratio": size / weights,
            "signatures": {key: sorted(fn.structured_outputs) for key, fn in signatures.items()},
            "serving": record}


def write_keras_file(model, path: Path | str) -> dict:
    """``model.keras`` (config + weights); loading needs the custom layers registered
    (``import vit_porting.families.registry.<family>.model``, package ``vit_porting``)."""
    model = export_model(model)
    model.save(str(path))
    return {"bytes": Path(path).stat().st_size}
