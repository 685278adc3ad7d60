"""What a port is asked to do, and the one error it stops with."""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from vit_porting.parity.outputs import DEFAULT_BUDGET_MB

DEFAULT_ARTIFACTS = Path("artifacts")
KERAS_BACKENDS = {"tensorflow": "tensorflow", "torch": "torch", "jax": "jax"}  # backend -> module it needs


class PortError(RuntimeError):
    """A port that stopped; the message says why and what to do."""


def _stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


@dataclass
class PortOptions:
    weights: str = "pretrained"
    seed: int = 0
    batch: int = 2
    input_seed: int = 0
    out_root: Path = DEFAULT_ARTIFACTS
    force: bool = False
    mapping: str | None = None  # override the family mapping (tests, custom checkpoints)
    exports: bool = True  # SavedModel, .keras, ONNX and their runtimes; False: safetensors + Keras eager only
    photos: bool = True  # also compare on scikit-image's sample photographs (top-1/top-5 agreement)
    new_head: bool = False  # the class count was asked for: replace a checkpoint head of another size
    backends: tuple[str, ...] = ("tensorflow",)  # Keras backends to run model.keras on (each its own process)
    output_budget_mb: float = DEFAULT_BUDGET_MB  # outputs a runtime holds at once (vit_porting/parity/outputs.py)
    serving: str = "auto"  # SavedModel serving graph: "auto" (timed), "xla" or "tf.function" (export/saved_model.py)
    reduced_precision: bool = False  # also int8/fp16 ONNX and LiteRT fp32/fp16/int8 files, checked by agreement
    log: Callable[[str], None] = field(default=_stderr)


def parse_backends(text: str | tuple[str, ...] | list[str]) -> tuple[str, ...]:
    names = tuple(b.strip() for b in (text.split(",") if isinstance(text, str) else text) if b.strip())
    unknown = [b for b in names if b not in KERAS_BACKENDS]
    if unknown:
        raise PortError(f"unknown Keras backend(s) {', '.join(unknown)}; known: {', '.join(KERAS_BACKENDS)}")
    return names or ("tensorflow",)


def backend_missing(backend: str) -> str | None:
    """Why a Keras backend cannot run here (its package is not installed), or None."""
    module = KERAS_BACKENDS[backend]
    if importlib.util.find_spec(module) is None:
        extra = " (pip install '.[jax]')" if backend == "jax" else ""
        return f"the {backend} backend needs the {module} package, which is not installed{extra}"
    return None
