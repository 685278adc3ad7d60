"""Keras pieces the model families share: activations, the initialiser switch, the MLP, the class token,
and the training-time regularisers (stochastic depth, dropout) with timm's names and semantics.

One definition each, registered once with Keras (package ``vit_porting``): two classes under
one registered name would have the later import silently replace the earlier one in Keras'
registry.
"""

from __future__ import annotations

import math

import keras
import numpy as np
from keras import layers, ops

PACKAGE = "vit_porting"
ACTIVATIONS = ("gelu", "quick_gelu")


def exact_gelu(x):
    """GELU written with erf rather than ``keras.ops.gelu``.

    ``keras.ops.gelu`` defaults to the tanh approximation (5e-4 from timm), and TensorFlow's
    exact GELU lowers to Erfc, which tf2onnx turns into an invalid ONNX file. erf is exact and
    exports cleanly everywhere.
    """
    return 0.5 * x * (1.0 + ops.erf(x * (1.0 / math.sqrt(2.0))))


def quick_gelu(x):
    """QuickGELU of Microsoft's CvT (and CLIP): ``x * sigmoid(1.702 x)``."""
    return x * ops.sigmoid(1.702 * x)


def activation_fn(name: str):
    if name == "gelu":
        return exact_gelu
    if name == "quick_gelu":
        return quick_gelu
    raise ValueError(f"unknown activation {name!r}; expected one of {ACTIVATIONS}")


def kernel_init(name: str, std: float = 0.02):
    # "zeros" is used when a converter will overwrite every weight anyway: a truncated-normal
    # init of cait_m48_448 costs ~14 s for values that are immediately thrown away.
    if name == "zeros":
        return "zeros"
    return keras.initializers.TruncatedNormal(stddev=std)


def drop_path_rates(drop_path_rate: float, depth: int) -> list[float]:
    """timm's per-block stochastic-depth schedule (``calculate_drop_path_rates``): rising linearly
    from 0 at the first block to ``drop_path_rate`` at the last. timm takes torch's float32
    ``linspace``, whose vectorised kernel rounds some entries one float32 step apart from a plain
    evaluation; these are the exact values, equal to timm's within float32 resolution. A family
    whose timm model uses another schedule (CaiT: one rate for every block) says so in its model."""
    return [float(r) for r in np.linspace(0.0, drop_path_rate, depth)]


def dropout(rate: float, name: str) -> layers.Layer | None:
    """A Dropout layer, or None at rate 0: a Dropout with a rate carries a random-seed state variable,
    which a model that never drops (every port, by default) should not have."""
    return layers.Dropout(rate, name=name) if rate > 0 else None


def apply(layer: layers.Layer | None, x, training=None):
    """``layer(x)``, or ``x`` where the regulariser is off (None)."""
    return x if layer is None else layer(x, training=training)


@keras.saving.register_keras_serializable(package=PACKAGE)
class DropPath(layers.Layer):
    """Stochastic depth per sample, as timm's ``DropPath``: in training, each sample's residual
    branch is zeroed with probability ``rate`` and the kept ones scaled by 1 / (1 - rate); the
    identity at inference. Only build one for a rate above 0 (see ``dropout``)."""

    def __init__(self, rate: float, seed: int | None = None, **kwargs):
        super().__init__(**kwargs)
        if not 0.0 <= rate < 1.0:
            raise ValueError(f"DropPath rate must be in [0, 1), not {rate}")
        self.rate, self.seed = rate, seed
        self.seed_generator = keras.random.SeedGenerator(seed)

    def call(self, x, training=None):
        if not training or self.rate == 0.0:
            return x
        keep = 1.0 - self.rate
        shape = (ops.shape(x)[0],) + (1,) * (len(x.shape) - 1)
        mask = ops.floor(keep + keras.random.uniform(shape, dtype=x.dtype, seed=self.seed_generator))
        return x * mask / keep

    def get_config(self):
        return {**super().get_config(), "rate": self.rate, "seed": self.seed}


def drop_path(rate: float, name: str) -> DropPath | None:
    return DropPath(rate, name=name) if rate > 0 else None


@keras.saving.register_keras_serializable(package=PACKAGE)
class Mlp(layers.Layer):
    """fc1 -> activation (exact GELU, or QuickGELU for Microsoft's CvT) -> dropout -> fc2 -> dropout,
    as timm's ``Mlp(drop=proj_drop_rate)``."""

    def __init__(self, hidden_dim: int, out_dim: int, activation: str = "gelu", initializer: str = "random",
                 drop: float = 0.0, **kwargs):
        super().__init__(**kwargs)
        activation_fn(activation)  # refuse an unknown name at construction
        self.hidden_dim, self.out_dim, self.activation, self.initializer = hidden_dim, out_dim, activation, initializer
        self.drop = drop
        self.fc1 = layers.Dense(hidden_dim, kernel_initializer=kernel_init(initializer), name="fc1")
        self.fc2 = layers.Dense(out_dim, kernel_initializer=kernel_init(initializer), name="fc2")
        self.drop1, self.drop2 = dropout(drop, "drop1"), dropout(drop, "drop2")

    def build(self, input_shape):
        self.fc1.build(input_shape)
        self.fc2.build((*input_shape[:-1], self.hidden_dim))

    def call(self, x, training=None):
        x = apply(self.drop1, activation_fn(self.activation)(self.fc1(x)), training)
        return apply(self.drop2, self.fc2(x), training)

    def get_config(self):
        return {**super().get_config(), "hidden_dim": self.hidden_dim, "out_dim": self.out_dim,
                "activation": self.activation, "initializer": self.initializer, "drop": self.drop}


@keras.saving.register_keras_serializable(package=PACKAGE)
class ClassToken(layers.Layer):
    """Emits the learned class token broadcast to the batch of the input it is given,
    (B, 1, C) in the input's dtype."""

    def __init__(self, embed_dim: int, initializer: str = "random", **kwargs):
        super().__init__(**kwargs)
        self.embed_dim, self.initializer = embed_dim, initializer

    def build(self, input_shape):
        self.cls_token = self.add_weight(name="cls_token", shape=(1, 1, self.embed_dim),
                                         initializer=kernel_init(self.initializer))

    def call(self, x):
        return ops.broadcast_to(ops.cast(self.cls_token, x.dtype), (ops.shape(x)[0], 1, self.embed_dim))

    def get_config(self):
        return {**super().get_config(), "embed_dim": self.embed_dim, "initializer": self.initializer}
