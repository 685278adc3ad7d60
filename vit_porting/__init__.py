"""vit-porting: vision transformers ported from PyTorch to Keras 3, SavedModel, ONNX and safetensors, with
parity checked against the PyTorch reference. The command line is ``vit-port`` (``vit_porting.cli``).

Importing this package loads no framework: the orchestrating process never holds torch and TensorFlow
together (importing TensorFlow before torch aborts a process).
"""

from importlib import metadata

try:  # one version, the distribution's: pyproject.toml
    __version__ = metadata.version("vit-porting")
except metadata.PackageNotFoundError:  # a checkout on PYTHONPATH, never installed
    __version__ = "0+unknown"
