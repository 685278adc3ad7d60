"""Keras pieces the model families share: activations, the initialiser switch, the MLP, the class token.

One definition each, registered once with Keras (package ``vit_porting``): two classes under
one registered name would have the later import silently replace the earlier one in Keras'
registry.
"""

from __future__ import annotations

import math

import keras
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


@keras.saving.register_keras_serializable(package=PACKAGE)
class Mlp(layers.Layer):
    """fc1 -> activation (exact GELU, or QuickGELU for Microsoft's CvT) -> fc2."""

    def __init__(self, hidden_dim: int, out_dim: int, activation: str = "gelu", initializer: str = "random",
                 **kwargs):
        super().__init__(**kwargs)
        activation_fn(activation)  # refuse an unknown name at construction
        self.hidden_dim, self.out_dim, self.activation, self.initializer = hidden_dim, out_dim, activation, initializer
        self.fc1 = layers.Dense(hidden_dim, kernel_initializer=kernel_init(initializer), name="fc1")
        self.fc2 = layers.Dense(out_dim, kernel_initializer=kernel_init(initializer), name="fc2")

    def build(self, input_shape):
        self.fc1.build(input_shape)
        self.fc2.build((*input_shape[:-1], self.hidden_dim))

    def call(self, x):
        return self.fc2(activation_fn(self.activation)(self.fc1(x)))

    def get_config(self):
        return {**super().get_config(), "hidden_dim": self.hidden_dim, "out_dim": self.out_dim,
                "activation": self.activation, "initializer": self.initializer}


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
