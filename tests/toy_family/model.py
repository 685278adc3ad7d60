"""Keras side of the test family: Keras, numpy and the toolkit's shared Keras layers only."""

from __future__ import annotations

import keras
from keras import layers, ops

from toy_family import ToyConfig
from vit_porting.families.layers import ClassToken, Mlp, kernel_init

PACKAGE = "toy_family"


@keras.saving.register_keras_serializable(package=PACKAGE)
class ToyAttention(layers.Layer):
    def __init__(self, dim: int, num_heads: int, initializer: str = "random", **kwargs):
        super().__init__(**kwargs)
        self.dim, self.num_heads, self.initializer = dim, num_heads, initializer
        self.head_dim = dim // num_heads
        self.qkv = layers.Dense(3 * dim, kernel_initializer=kernel_init(initializer), name="qkv")
        self.proj = layers.Dense(dim, kernel_initializer=kernel_init(initializer), name="proj")

    def build(self, input_shape):
        self.qkv.build(input_shape)
        self.proj.build(input_shape)

    def call(self, x):
        batch, tokens = ops.shape(x)[0], ops.shape(x)[1]
        qkv = ops.transpose(ops.reshape(self.qkv(x), (batch, tokens, 3, self.num_heads, self.head_dim)),
                            (2, 0, 3, 1, 4))
        attn = ops.softmax(ops.matmul(qkv[0] * self.head_dim**-0.5, ops.transpose(qkv[1], (0, 1, 3, 2))), axis=-1)
        out = ops.reshape(ops.transpose(ops.matmul(attn, qkv[2]), (0, 2, 1, 3)), (batch, tokens, self.dim))
        return self.proj(out), attn

    def get_config(self):
        return {**super().get_config(), "dim": self.dim, "num_heads": self.num_heads, "initializer": self.initializer}


@keras.saving.register_keras_serializable(package=PACKAGE)
class ToyBlock(layers.Layer):
    def __init__(self, dim: int, num_heads: int, mlp_ratio: float, eps: float, initializer: str = "random", **kwargs):
        super().__init__(**kwargs)
        self.dim, self.num_heads, self.mlp_ratio = dim, num_heads, mlp_ratio
        self.eps, self.initializer = eps, initializer
        self.norm1 = layers.LayerNormalization(epsilon=eps, name="norm1")
        self.attn = ToyAttention(dim, num_heads, initializer, name="attn")
        self.norm2 = layers.LayerNormalization(epsilon=eps, name="norm2")
        self.mlp = Mlp(int(dim * mlp_ratio), dim, initializer=initializer, name="mlp")

    def build(self, input_shape):
        for sub in (self.norm1, self.attn, self.norm2, self.mlp):
            sub.build(input_shape)

    def call(self, x):
        out, attn = self.attn(self.norm1(x))
        x = x + out
        return x + self.mlp(self.norm2(x)), attn

    def get_config(self):
        return {**super().get_config(), "dim": self.dim, "num_heads": self.num_heads, "mlp_ratio": self.mlp_ratio,
                "eps": self.eps, "initializer": self.initializer}


@keras.saving.register_keras_serializable(package=PACKAGE)
class ToyPositions(layers.Layer):
    def __init__(self, tokens: int, dim: int, initializer: str = "random", **kwargs):
        super().__init__(**kwargs)
        self.tokens, self.dim, self.initializer = tokens, dim, initializer

    def build(self, input_shape):
        self.pos_embed = self.add_weight(name="pos_embed", shape=(1, self.tokens, self.dim),
                                         initializer=kernel_init(self.initializer))

    def call(self, x):
        return x + self.pos_embed

    def get_config(self):
        return {**super().get_config(), "tokens": self.tokens, "dim": self.dim, "initializer": self.initializer}


def build_keras(config: ToyConfig, initializer: str = "random", name: str = "toy",
                intermediates: bool = False) -> keras.Model:
    c = config
    images = keras.Input((c.image_size, c.image_size, c.in_channels), name="images")
    x = layers.Conv2D(c.embed_dim, c.patch_size, strides=c.patch_size, kernel_initializer=kernel_init(initializer),
                      name="patch_embed")(images)
    x = layers.Reshape((c.num_patches, c.embed_dim), name="flatten")(x)
    x = layers.Concatenate(axis=1, name="prepend_cls")([ClassToken(c.embed_dim, initializer, name="cls_token")(x), x])
    x = ToyPositions(c.num_patches + 1, c.embed_dim, initializer, name="pos_embed")(x)
    outputs = {}
    for i in range(c.depth):
        x, attn = ToyBlock(c.embed_dim, c.num_heads, c.mlp_ratio, c.layer_norm_eps, initializer, name=f"blocks_{i}")(x)
        outputs[f"blocks_{i}_attn"] = attn
        if intermediates:
            outputs[f"blocks_{i}_out"] = x
    features = layers.LayerNormalization(epsilon=c.layer_norm_eps, name="norm")(x)[:, 0]
    if c.num_classes > 0:
        head = layers.Dense(c.num_classes, kernel_initializer=kernel_init(initializer), name="head")
        return keras.Model(images, {"logits": head(features), **outputs}, name=name)
    return keras.Model(images, {"features": features, **outputs}, name=name)
