"""The nobuco peer: the same PyTorch weights converted by nobuco (a generic PyTorch-to-Keras-2
converter) into a SavedModel, for the serving benchmark (``benchmarks/peers.py``).

nobuco needs Keras 2 (TensorFlow 2.15, numpy < 2), which cannot share an environment with Keras 3,
so it gets a virtual environment of its own (``benchmarks/.work/nobuco-venv``, made on first use
with the pins below) and this module runs there as a worker:
``benchmarks/.work/nobuco-venv/bin/python -m benchmarks.nobuco_peer JOB.job.json``. It imports the
family's PyTorch side only (``vit_porting.families.registry``'s torch modules import no Keras), traces the
reference with ``trace_shape=True`` (without it the batch dimension is frozen at the tracing
input's) and saves the Keras 2 model as a SavedModel that takes NHWC images, as ours does.
"""

from __future__ import annotations

import contextlib
import io
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

from vit_porting.families.registry import variant_from_dict

ROOT = Path(__file__).resolve().parent.parent
VENV = ROOT / "benchmarks" / ".work" / "nobuco-venv"
# torch before TensorFlow in the process, as everywhere here; the versions of the measured run
PINS = ("torch===2.13.0", "tensorflow-cpu==2.15.1", "numpy<2", "nobuco==0.17.0", "timm==1.0.29",
        "transformers==5.17.0", "safetensors")


def python() -> Path:
    """The nobuco environment's interpreter, made (a few minutes, once) if it does not exist."""
    interpreter = VENV / "bin" / "python"
    if not interpreter.exists():
        print(f"making {VENV} for nobuco (Keras 2: TensorFlow 2.15) ...", file=sys.stderr, flush=True)
        subprocess.run([sys.executable, "-m", "venv", str(VENV)], check=True)
        subprocess.run([str(interpreter), "-m", "pip", "install", "-q", *PINS], check=True)
    return interpreter


def job_convert(job: dict) -> dict:
    """Trace the reference holding the port's model.safetensors and save nobuco's Keras model."""
    import torch  # before TensorFlow (nobuco imports it)
    from safetensors.torch import load_file

    from vit_porting.families.registry import get_family

    spec = variant_from_dict(job["spec"])
    reference = get_family(spec.family).torch()
    model = reference.build_reference(spec).eval()
    model.load_state_dict(load_file(job["safetensors"]), strict=True)

    class Head(torch.nn.Module):
        """The family's head output as one tensor (a transformers model returns an output object)."""

        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, images: torch.Tensor) -> torch.Tensor:
            return reference.call_reference(self.model, images)

    import nobuco
    import tensorflow as tf
    from nobuco import ChannelOrder

    size = spec.image_size
    images = torch.randn(1, 3, size, size)
    with contextlib.redirect_stdout(io.StringIO()):  # nobuco prints its whole trace
        keras_model = nobuco.pytorch_to_keras(Head().eval(), args=[images],
                                              input_shapes={images: (None, 3, size, size)},
                                              inputs_channel_order=ChannelOrder.TENSORFLOW, trace_shape=True,
                                              full_validation=False)
    keras_model.save(job["out"])
    # the peer is held to the same reference as ours: its logits on seeded images at batch 2
    check = torch.from_numpy(np.random.default_rng(0).standard_normal((2, 3, size, size)).astype(np.float32))
    with torch.inference_mode():
        expected = Head()(check).numpy()
    got = keras_model(tf.constant(check.numpy().transpose(0, 2, 3, 1))).numpy()
    return {"nobuco": _version("nobuco"), "tensorflow": tf.__version__, "torch": torch.__version__,
            "max_normalized_diff_vs_reference": float(np.abs(got - expected).max() / np.abs(expected).max())}


def _version(package: str) -> str:
    from importlib import metadata

    return metadata.version(package)


def main(argv: list[str] | None = None) -> None:
    sys.path.insert(0, str(ROOT))
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    from vit_porting.workers.protocol import worker_main

    worker_main({"convert": job_convert}, (), argv)


if __name__ == "__main__":
    main()
