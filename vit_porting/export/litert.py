"""LiteRT (``.tflite``) files converted from the SavedModel's ``serving_default``: fp32, fp16 weights,
and dynamic-range int8. Runs in a TensorFlow worker (``tf.lite.TFLiteConverter``); the files run in
``ai-edge-litert``'s interpreter, which needs no TensorFlow (``vit_porting/workers/run_litert.py``).

The input keeps the SavedModel's free batch dimension (``images`` [-1, H, W, 3]; the signature runner
resizes it per call) and the signature's output names, so a LiteRT user calls
``interpreter.get_signature_runner("serving_default")(images=...)["logits"]`` as a TensorFlow user
calls the SavedModel.
"""

from __future__ import annotations

from pathlib import Path

from vit_porting.export.saved_model import SIGNATURE_KEY

# variant -> (file, what the converter is asked for)
LITERT_FILES = {"litert_fp32": "model.tflite", "litert_fp16": "model_fp16.tflite", "litert_int8": "model_int8.tflite"}
METHODS = {"litert_fp32": "TFLiteConverter, no optimisation: fp32 weights and compute",
           "litert_fp16": "TFLiteConverter, Optimize.DEFAULT with float16 weights (dequantised to fp32 on CPU)",
           "litert_int8": "TFLiteConverter, Optimize.DEFAULT (dynamic range: int8 weights, fp32 activations "
                          "quantised per call)"}


def convert(saved_model: Path | str, folder: Path | str) -> dict[str, dict]:
    """Write the three LiteRT files of ``saved_model``'s serving signature into ``folder``."""
    import tensorflow as tf

    written = {}
    for variant, file in LITERT_FILES.items():
        converter = tf.lite.TFLiteConverter.from_saved_model(str(saved_model), signature_keys=[SIGNATURE_KEY])
        if variant != "litert_fp32":
            converter.optimizations = [tf.lite.Optimize.DEFAULT]
        if variant == "litert_fp16":
            converter.target_spec.supported_types = [tf.float16]
        data = converter.convert()
        path = Path(folder) / file
        with open(path, "xb") as handle:  # never over a file this port did not write
            handle.write(data)
        written[variant] = {"file": file, "bytes": len(data), "method": METHODS[variant]}
        del data, converter
    return written
