"""CaiT (Touvron et al., "Going deeper with Image Transformers") in Keras 3: the family's Keras side.

Mirrors timm's ``models/cait.py`` block for block, so that a mapping rule can be read off
both models side by side: ``blocks.3.attn.qkv.weight`` in timm is ``blocks_3/attn/qkv/kernel``
here. Every attention layer also returns its attention map, because ported models are
checked (and explained) through them.

Written with ``keras.ops`` only, so it runs on every Keras backend; imports Keras and nothing
else of the porting stack, so opening a ``model.keras`` needs this package's base install only.
"""

from __future__ import annotations

import keras
from keras import layers, ops

from vit_porting.families.cait import CaiTConfig
from vit_porting.families.layers import PACKAGE, ClassToken, Mlp, kernel_init


@keras.saving.register_keras_serializable(package=PACKAGE)
class TalkingHeadAttention(layers.Layer):
    """Self-attention whose heads are mixed before (proj_l) and after (proj_w) the softmax.

    Returns ``(output, attention)``; the attention map is the post-``proj_w`` one, the tensor
    that multiplies the values.
    """

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool = True, initializer: str = "random",
                 **kwargs):
        super().__init__(**kwargs)
        self.dim, self.num_heads, self.qkv_bias, self.initializer = dim, num_heads, qkv_bias, initializer
        self.head_dim = dim // num_heads
        self.scale = self.head_dim**-0.5
        init = kernel_init(initializer)
        self.qkv = layers.Dense(dim * 3, use_bias=qkv_bias, kernel_initializer=init, name="qkv")
        self.proj = layers.Dense(dim, kernel_initializer=init, name="proj")
        self.proj_l = layers.Dense(num_heads, kernel_initializer=init, name="proj_l")
        self.proj_w = layers.Dense(num_heads, kernel_initializer=init, name="proj_w")

    def build(self, input_shape):
        self.qkv.build(input_shape)
        self.proj.build(input_shape)
        self.proj_l.build((None, None, None, self.num_heads))
        self.proj_w.build((None, None, None, self.num_heads))

    def call(self, x):
        batch, tokens = ops.shape(x)[0], ops.shape(x)[1]
        qkv = ops.reshape(self.qkv(x), (batch, tokens, 3, self.num_heads, self.head_dim))
        qkv = ops.transpose(qkv, (2, 0, 3, 1, 4))
        q, k, v = qkv[0] * self.scale, qkv[1], qkv[2]
        attn = ops.matmul(q, ops.transpose(k, (0, 1, 3, 2)))  # (B, heads, N, N)
        attn = ops.softmax(self._mix_heads(self.proj_l, attn), axis=-1)
        attn = self._mix_heads(self.proj_w, attn)
        out = ops.matmul(attn, v)  # (B, heads, N, head_dim)
        out = ops.reshape(ops.transpose(out, (0, 2, 1, 3)), (batch, tokens, self.dim))
        return self.proj(out), attn

    def _mix_heads(self, dense: layers.Dense, attn):
        """timm's ``proj_l``/``proj_w``: a Linear over the heads of (B, heads, N, N), which timm applies
        as ``proj(attn.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)``. Here one product from the left on
        the maps flattened to (B, heads, N²): the same products summed in the same order (identical
        results on TensorFlow), without the two transposes of a 4-wide last axis and with the bias
        added along the long one, which is about twice as fast (docs/exports.md)."""
        flat = ops.reshape(attn, (ops.shape(attn)[0], self.num_heads, -1))
        mixed = ops.matmul(ops.transpose(dense.kernel), flat) + ops.expand_dims(dense.bias, -1)
        return ops.reshape(mixed, ops.shape(attn))

    def get_config(self):
        return {**super().get_config(), "dim": self.dim, "num_heads": self.num_heads,
                "qkv_bias": self.qkv_bias, "initializer": self.initializer}


@keras.saving.register_keras_serializable(package=PACKAGE)
class ClassAttention(layers.Layer):
    """Attention of the class token alone over [class token, patches].

    Returns ``(class_token_update, attention)`` with attention of shape (B, heads, 1, N + 1).
    """

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool = True, initializer: str = "random",
                 **kwargs):
        super().__init__(**kwargs)
        self.dim, self.num_heads, self.qkv_bias, self.initializer = dim, num_heads, qkv_bias, initializer
        self.head_dim = dim // num_heads
        self.scale = self.head_dim**-0.5
        init = kernel_init(initializer)
        self.q = layers.Dense(dim, use_bias=qkv_bias, kernel_initializer=init, name="q")
        self.k = layers.Dense(dim, use_bias=qkv_bias, kernel_initializer=init, name="k")
        self.v = layers.Dense(dim, use_bias=qkv_bias, kernel_initializer=init, name="v")
        self.proj = layers.Dense(dim, kernel_initializer=init, name="proj")

    def build(self, input_shape):
        for dense in (self.q, self.k, self.v, self.proj):
            dense.build(input_shape)

    def _heads(self, x, batch, tokens):
        return ops.transpose(ops.reshape(x, (batch, tokens, self.num_heads, self.head_dim)), (0, 2, 1, 3))

    def call(self, x):
        batch, tokens = ops.shape(x)[0], ops.shape(x)[1]
        q = self._heads(self.q(x[:, :1]), batch, 1) * self.scale
        k = self._heads(self.k(x), batch, tokens)
        v = self._heads(self.v(x), batch, tokens)
        attn = ops.softmax(ops.matmul(q, ops.transpose(k, (0, 1, 3, 2))), axis=-1)  # (B, heads, 1, N)
        out = ops.reshape(ops.transpose(ops.matmul(attn, v), (0, 2, 1, 3)), (batch, 1, self.dim))
        return self.proj(out), attn

    def get_config(self):
        return {**super().get_config(), "dim": self.dim, "num_heads": self.num_heads,
                "qkv_bias": self.qkv_bias, "initializer": self.initializer}


class _LayerScaleBase(layers.Layer):
    """Shared parts of both block kinds: pre-norm, attention, MLP, and LayerScale gammas."""

    attention_class: type[layers.Layer]

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0, qkv_bias: bool = True,
                 init_values: float = 1e-5, layer_norm_eps: float = 1e-6, initializer: str = "random",
                 **kwargs):
        super().__init__(**kwargs)
        self.dim, self.num_heads, self.mlp_ratio, self.qkv_bias = dim, num_heads, mlp_ratio, qkv_bias
        self.init_values, self.layer_norm_eps, self.initializer = init_values, layer_norm_eps, initializer
        self.norm1 = layers.LayerNormalization(epsilon=layer_norm_eps, name="norm1")
        self.attn = self.attention_class(dim, num_heads, qkv_bias, initializer, name="attn")
        self.norm2 = layers.LayerNormalization(epsilon=layer_norm_eps, name="norm2")
        self.mlp = Mlp(int(dim * mlp_ratio), dim, initializer=initializer, name="mlp")

    def build(self, input_shape):
        shape = (None, None, self.dim)
        for sub in (self.norm1, self.attn, self.norm2, self.mlp):
            sub.build(shape)
        gamma_init = "zeros" if self.initializer == "zeros" else keras.initializers.Constant(self.init_values)
        self.gamma_1 = self.add_weight(name="gamma_1", shape=(self.dim,), initializer=gamma_init)
        self.gamma_2 = self.add_weight(name="gamma_2", shape=(self.dim,), initializer=gamma_init)

    def get_config(self):
        return {**super().get_config(), "dim": self.dim, "num_heads": self.num_heads,
                "mlp_ratio": self.mlp_ratio, "qkv_bias": self.qkv_bias, "init_values": self.init_values,
                "layer_norm_eps": self.layer_norm_eps, "initializer": self.initializer}


@keras.saving.register_keras_serializable(package=PACKAGE)
class LayerScaleBlock(_LayerScaleBase):
    """Self-attention block over the patch tokens (the class token is not there yet)."""

    attention_class = TalkingHeadAttention

    def call(self, x):
        attn_out, attn = self.attn(self.norm1(x))
        x = x + self.gamma_1 * attn_out
        x = x + self.gamma_2 * self.mlp(self.norm2(x))
        return x, attn


@keras.saving.register_keras_serializable(package=PACKAGE)
class LayerScaleBlockClassAttention(_LayerScaleBase):
    """Class-attention block: only the class token is updated, patches are read-only."""

    attention_class = ClassAttention

    def build(self, input_shape):
        super().build(input_shape[0] if isinstance(input_shape[0], (list, tuple)) else input_shape)

    def call(self, x, cls_token):
        u = ops.concatenate([cls_token, x], axis=1)
        attn_out, attn = self.attn(self.norm1(u))
        cls_token = cls_token + self.gamma_1 * attn_out
        cls_token = cls_token + self.gamma_2 * self.mlp(self.norm2(cls_token))
        return cls_token, attn


@keras.saving.register_keras_serializable(package=PACKAGE)
class PatchEmbed(layers.Layer):
    """Non-overlapping patches, flattened row-major, like timm's PatchEmbed (NHWC here)."""

    def __init__(self, patch_size: int, embed_dim: int, initializer: str = "random", **kwargs):
        super().__init__(**kwargs)
        self.patch_size, self.embed_dim, self.initializer = patch_size, embed_dim, initializer
        self.proj = layers.Conv2D(embed_dim, patch_size, strides=patch_size, padding="valid",
                                  kernel_initializer=kernel_init(initializer), name="proj")

    def build(self, input_shape):
        self.proj.build(input_shape)

    def call(self, images):
        x = self.proj(images)
        return ops.reshape(x, (ops.shape(x)[0], -1, self.embed_dim))

    def get_config(self):
        return {**super().get_config(), "patch_size": self.patch_size, "embed_dim": self.embed_dim,
                "initializer": self.initializer}


@keras.saving.register_keras_serializable(package=PACKAGE)
class AddPositionEmbedding(layers.Layer):
    def __init__(self, num_patches: int, embed_dim: int, initializer: str = "random", **kwargs):
        super().__init__(**kwargs)
        self.num_patches, self.embed_dim, self.initializer = num_patches, embed_dim, initializer

    def build(self, input_shape):
        self.pos_embed = self.add_weight(name="pos_embed", shape=(1, self.num_patches, self.embed_dim),
                                         initializer=kernel_init(self.initializer))

    def call(self, x):
        return x + self.pos_embed

    def get_config(self):
        return {**super().get_config(), "num_patches": self.num_patches, "embed_dim": self.embed_dim,
                "initializer": self.initializer}


def build_keras(config: CaiTConfig, initializer: str = "random", name: str = "cait",
               intermediates: bool = False) -> keras.Model:
    """Functional CaiT returning a dict: ``logits`` (or ``features`` when ``num_classes == 0``)
    and one attention map per block, named after the block (``blocks_0_attn`` ...,
    ``blocks_token_only_0_attn`` ...).

    ``initializer="zeros"`` skips random initialisation for models whose weights are loaded next.
    ``intermediates=True`` also returns each block's output (``blocks_0_out`` ...), which the
    parity harness uses to find the first block that diverges; exported models leave them out.
    """
    c = config
    images = keras.Input((c.image_size, c.image_size, c.in_channels), name="images")
    x = PatchEmbed(c.patch_size, c.embed_dim, initializer, name="patch_embed")(images)
    x = AddPositionEmbedding(c.num_patches, c.embed_dim, initializer, name="pos_embed")(x)
    outputs = {}
    for i in range(c.depth):
        x, attn = LayerScaleBlock(c.embed_dim, c.num_heads, c.mlp_ratio, c.qkv_bias, c.init_values,
                                  c.layer_norm_eps, initializer, name=f"blocks_{i}")(x)
        outputs[f"blocks_{i}_attn"] = attn
        if intermediates:
            outputs[f"blocks_{i}_out"] = x
    cls_token = ClassToken(c.embed_dim, initializer, name="cls_token")(x)
    for i in range(c.depth_token_only):
        cls_token, attn = LayerScaleBlockClassAttention(
            c.embed_dim, c.num_heads, c.mlp_ratio_token_only, c.qkv_bias, c.init_values,
            c.layer_norm_eps, initializer, name=f"blocks_token_only_{i}")(x, cls_token)
        outputs[f"blocks_token_only_{i}_attn"] = attn
        if intermediates:
            outputs[f"blocks_token_only_{i}_out"] = cls_token
    # timm normalises [cls, patches] and keeps the class token; LayerNorm is per token, so
    # normalising the class token alone gives the same numbers without the wasted work.
    features = layers.LayerNormalization(epsilon=c.layer_norm_eps, name="norm")(cls_token)[:, 0]
    if c.num_classes > 0:
        head = layers.Dense(c.num_classes, kernel_initializer=kernel_init(initializer), name="head")
        outputs = {"logits": head(features), **outputs}
    else:
        outputs = {"features": features, **outputs}
    return keras.Model(images, outputs, name=name)
