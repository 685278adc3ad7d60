"""Which files make each published form of a port, and where each form goes.

One Hugging Face repository cannot hold two ``config.json``: timm reads its own config from the
repository root (``timm.create_model("hf-hub:owner/name")``) and ``keras.saving.load_model("hf://...")``
downloads the whole repository and reads Keras' ``config.json`` from its root. So each form is a
repository of its own, named from the target (``owner/name`` the Keras model, ``owner/name-savedmodel``,
``owner/name-onnx``, ``owner/name-pytorch``), and each card links the others. On Kaggle Models a
model has a slot per framework: ``owner/model/<framework>/<variation>``.

Every repository also carries the port's record, parity reports and a manifest of its own files.

Standard library only (the orchestrating process imports no framework).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from vit_porting.export.litert import LITERT_FILES
from vit_porting.export.onnx_serving import VARIANT_FILES
from vit_porting.export.saved_model import ONNX_ATTENTION_FILE, ONNX_DATA_FILE, ONNX_FILE
from vit_porting.manifest import METADATA_NAME

KERAS_FILE = "model.keras"
SAFETENSORS_FILE = "model.safetensors"
SAVED_MODEL_DIR = "saved_model"
HUB_CONFIG = "config.json"  # the reference library's own config (timm), where the family writes one
REPORTS = (METADATA_NAME, "parity.json", "parity.md")  # in every published repository


@dataclass(frozen=True)
class Format:
    key: str
    title: str
    hf_suffix: str  # appended to hf://owner/name
    kaggle_framework: str  # Kaggle Models' framework slot
    files: tuple[str, ...]  # artifact-folder paths (a folder means everything under it); absent ones are skipped
    tags: tuple[str, ...]


FORMATS = {
    "keras": Format("keras", "Keras 3", "", "keras", (KERAS_FILE,), ("keras",)),
    "savedmodel": Format("savedmodel", "TensorFlow SavedModel", "-savedmodel", "tensorFlow2", (SAVED_MODEL_DIR,),
                         ("tensorflow", "saved_model")),
    "onnx": Format("onnx", "ONNX", "-onnx", "onnx",
                   (ONNX_FILE, ONNX_ATTENTION_FILE, ONNX_DATA_FILE, *VARIANT_FILES.values()), ("onnx",)),
    "pytorch": Format("pytorch", "PyTorch (safetensors)", "-pytorch", "pyTorch", (SAFETENSORS_FILE, HUB_CONFIG),
                      ("pytorch", "safetensors")),
    "litert": Format("litert", "LiteRT (TFLite)", "-litert", "tfLite", tuple(LITERT_FILES.values()),
                     ("tflite", "litert")),
}


def withheld_files(report: dict, files: Iterable[str] = ()) -> dict[str, str]:
    """{file: why} of the reduced-precision and LiteRT variants that must not be published from a port
    of trained weights: those below the publish floor (``vit_porting/parity/tolerances.yaml``), and those of
    ``files`` (the folder's) that the report does not measure at all, since a file with no agreement
    row has shown nothing. A random-weights port withholds none: agreement on near-tie scores says
    nothing either way, and publishing it needs --allow-random while its card says so."""
    if report.get("random_weights"):
        return {}
    rows = report.get("variants") or []
    withheld = {row["file"]: (f"{row['variant']} is below the publish floor "
                              f"(photos top-1 agreement {(row.get('photos') or {}).get('top1_agreement')})")
                for row in rows if not row.get("meets_publish_floor")}
    measured = {row["file"] for row in rows}
    variant_files = {*VARIANT_FILES.values(), *LITERT_FILES.values()}
    withheld.update({file: "no agreement with the fp32 reference was measured (vit-port parity measures it)"
                     for file in files if file in variant_files and file not in measured})
    return withheld
