"""Named tensor transforms used by mapping rules.

Each transform is a pair of pure functions (forward: PyTorch layout -> Keras layout, inverse:
back). Both return numpy views where they can, so a plan over a 1.4 GB checkpoint checks
every shape before a byte is copied. Families add their own with ``register_transform``;
the engine only looks names up here.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

ArrayFn = Callable[[np.ndarray], np.ndarray]


@dataclass(frozen=True)
class Transform:
    name: str
    forward: ArrayFn
    inverse: ArrayFn
    doc: str = ""


TRANSFORMS: dict[str, Transform] = {}


def register_transform(name: str, forward: ArrayFn, inverse: ArrayFn, doc: str = "") -> None:
    if name in TRANSFORMS:
        raise ValueError(f"transform {name!r} is already registered")
    TRANSFORMS[name] = Transform(name, forward, inverse, doc)


def get_transform(name: str) -> Transform:
    return TRANSFORMS[name]


def _permute(axes: tuple[int, ...]) -> ArrayFn:
    return lambda x: np.transpose(x, axes)


def _inverse_axes(axes: tuple[int, ...]) -> tuple[int, ...]:
    return tuple(int(i) for i in np.argsort(axes))


def _both_ways(name: str, axes: tuple[int, ...], doc: str) -> None:
    register_transform(name, _permute(axes), _permute(_inverse_axes(axes)), doc)


register_transform("identity", lambda x: x, lambda x: x, "same layout in both frameworks")
_both_ways("linear", (1, 0), "nn.Linear weight (out, in) -> Dense kernel (in, out)")
_both_ways("conv2d", (2, 3, 1, 0), "Conv2d weight OIHW -> Conv2D kernel HWIO")
_both_ways("depthwise_conv2d", (2, 3, 0, 1),
           "depthwise Conv2d weight (C, 1, H, W) -> DepthwiseConv2D kernel (H, W, C, 1)")
