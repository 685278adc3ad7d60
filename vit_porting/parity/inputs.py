"""The inputs every runtime sees: one ``inputs.npz`` written once, read by each process."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def random_images(image_size: int, batch: int = 2, seed: int = 0, channels: int = 3) -> np.ndarray:
    """Seeded N(0, 1) NHWC images: the scale of ImageNet-normalised pixels."""
    rng = np.random.default_rng(seed)
    return rng.standard_normal((batch, image_size, image_size, channels)).astype(np.float32)


def write_inputs(path: Path | str, images: np.ndarray) -> None:
    np.savez(path, images=images)

