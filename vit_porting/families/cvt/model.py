"""CvT (Wu et al., "CvT: Introducing Convolutions to Vision Transformers") in Keras 3.

Mirrors Microsoft's original ``lib/models/cls_cvt.py`` part for part (convolutional token
embedding, convolutional projection of q/k/v, pre-norm blocks, class token in the last stage
only, no position embedding), with names a mapping rule can be read off: the original's
``stage2.blocks.3.attn.conv_proj_k.conv.weight`` is ``stage2_blocks_3/attn/conv_proj_k/conv/kernel``
here. Every attention layer also returns its attention map.

Numerics that matter (each measured as a real porting bug, see docs/cvt.md):

* the MLP activation of Microsoft's checkpoints is QuickGELU, ``x * sigmoid(1.702 x)``;
  Hugging Face's ``CvtForImageClassification`` uses exact GELU. ``CvTConfig.activation``
  chooses; the released checkpoints are ported with ``"quick_gelu"``.
* attention is scaled by ``embed_dim ** -0.5`` (not the head dimension).
* the class token is split off before the depthwise convolutional projection and joined
  back before the linear q/k/v projections.
* PyTorch pads convolutions symmetrically; Keras ``padding="same"`` pads a stride-4, 7x7
  convolution (and the stride-2 k/v projections) asymmetrically, so padding is explicit.
* BatchNorm in the projections runs in inference mode on the checkpoint's running statistics.

Written with ``keras.ops`` only, so it runs on every Keras backend; imports Keras and nothing
else of the porting stack (see the CaiT model).
"""

from __future__ import annotations

import keras
from keras import layers, ops

from vit_porting.families.cvt import CvTConfig
from vit_porting.families.layers import PACKAGE, ClassToken, Mlp, kernel_init


def conv_output_size(size: int, kernel: int, stride: int, padding: int) -> int:
    """Spatial size after a PyTorch-style convolution with symmetric zero padding."""
    return (size + 2 * padding - kernel) // stride + 1


def _pad(x, padding: int):
    if padding == 0:
        return x
    return ops.pad(x, ((0, 0), (padding, padding), (padding, padding), (0, 0)))


def _tokens(grid, channels: int):
    """(B, H, W, C) -> (B, H * W, C). With H and W static the token count stays in the graph's
    shapes, so the SavedModel signature and the parity planner see every output's size."""
    height, width = grid.shape[1], grid.shape[2]
    if height is None or width is None:
        return ops.reshape(grid, (ops.shape(grid)[0], -1, channels))
    return ops.reshape(grid, (-1, height * width, channels))


@keras.saving.register_keras_serializable(package=PACKAGE)
class ConvEmbedding(layers.Layer):
    """Convolutional token embedding: zero-pad, strided convolution, LayerNorm over channels.

    Takes an NHWC grid and returns the tokens, flattened row-major: (B, H' * W', C).
    """

    def __init__(self, embed_dim: int, patch_size: int, stride: int, padding: int,
                 layer_norm_eps: float = 1e-5, initializer: str = "random", **kwargs):
        super().__init__(**kwargs)
        self.embed_dim, self.patch_size, self.stride, self.padding = embed_dim, patch_size, stride, padding
        self.layer_norm_eps, self.initializer = layer_norm_eps, initializer
        self.proj = layers.Conv2D(embed_dim, patch_size, strides=stride, padding="valid",
                                  kernel_initializer=kernel_init(initializer), name="proj")
        self.norm = layers.LayerNormalization(epsilon=layer_norm_eps, name="norm")

    def build(self, input_shape):
        height, width, channels = input_shape[1], input_shape[2], input_shape[3]
        pad = 2 * self.padding
        self.proj.build((None, None if height is None else height + pad, None if width is None else width + pad,
                         channels))
        self.norm.build((None, None, self.embed_dim))

    def call(self, grid):
        x = self.proj(_pad(grid, self.padding))
        return self.norm(_tokens(x, self.embed_dim))

    def get_config(self):
        return {**super().get_config(), "embed_dim": self.embed_dim, "patch_size": self.patch_size,
                "stride": self.stride, "padding": self.padding, "layer_norm_eps": self.layer_norm_eps,
                "initializer": self.initializer}


@keras.saving.register_keras_serializable(package=PACKAGE)
class ConvProjection(layers.Layer):
    """Depthwise convolution (no bias) + BatchNorm, on an NHWC grid; returns flattened tokens.

    BatchNorm uses its moving statistics unless called with ``training=True``.
    """

    def __init__(self, dim: int, kernel_size: int, stride: int, padding: int, batch_norm_eps: float = 1e-5,
                 initializer: str = "random", **kwargs):
        super().__init__(**kwargs)
        self.dim, self.kernel_size, self.stride, self.padding = dim, kernel_size, stride, padding
        self.batch_norm_eps, self.initializer = batch_norm_eps, initializer
        self.conv = layers.DepthwiseConv2D(kernel_size, strides=stride, padding="valid", use_bias=False,
                                           depthwise_initializer=kernel_init(initializer), name="conv")
        # PyTorch's momentum 0.1 is Keras's 0.9 (they weight the old statistic and the new one oppositely).
        self.bn = layers.BatchNormalization(epsilon=batch_norm_eps, momentum=0.9, name="bn")

    def build(self, input_shape):
        self.conv.build((None, None, None, self.dim))
        self.bn.build((None, None, None, self.dim))

    def call(self, grid, training=None):
        x = self.bn(self.conv(_pad(grid, self.padding)), training=training)
        return _tokens(x, self.dim)

    def get_config(self):
        return {**super().get_config(), "dim": self.dim, "kernel_size": self.kernel_size, "stride": self.stride,
                "padding": self.padding, "batch_norm_eps": self.batch_norm_eps, "initializer": self.initializer}


@keras.saving.register_keras_serializable(package=PACKAGE)
class ConvAttention(layers.Layer):
    """Multi-head attention whose q, k, v come from depthwise-convolved token grids.

    Input: tokens (B, [1 +] H * W, C) of an H x W grid (the class token first when present).
    Returns ``(output, attention)`` with attention of shape (B, heads, Nq, Nkv), where
    Nq = [1 +] Hq * Wq and Nkv = [1 +] Hkv * Wkv (k/v are usually downsampled by 2).
    """

    def __init__(self, dim: int, num_heads: int, grid_size: tuple[int, int], with_cls_token: bool = False,
                 qkv_bias: bool = True, kernel_size: int = 3, stride_q: int = 1, padding_q: int = 1,
                 stride_kv: int = 2, padding_kv: int = 1, batch_norm_eps: float = 1e-5,
                 initializer: str = "random", **kwargs):
        super().__init__(**kwargs)
        self.dim, self.num_heads, self.grid_size = dim, num_heads, tuple(grid_size)
        self.with_cls_token, self.qkv_bias, self.kernel_size = with_cls_token, qkv_bias, kernel_size
        self.stride_q, self.padding_q, self.stride_kv, self.padding_kv = stride_q, padding_q, stride_kv, padding_kv
        self.batch_norm_eps, self.initializer = batch_norm_eps, initializer
        self.head_dim = dim // num_heads
        # CvT scales by the full embedding width, not the head width (cls_cvt.py: dim_out ** -0.5).
        self.scale = dim**-0.5
        init = kernel_init(initializer)

        def projection(name, stride, padding):
            return ConvProjection(dim, kernel_size, stride, padding, batch_norm_eps, initializer, name=name)

        self.conv_proj_q = projection("conv_proj_q", stride_q, padding_q)
        self.conv_proj_k = projection("conv_proj_k", stride_kv, padding_kv)
        self.conv_proj_v = projection("conv_proj_v", stride_kv, padding_kv)
        self.proj_q = layers.Dense(dim, use_bias=qkv_bias, kernel_initializer=init, name="proj_q")
        self.proj_k = layers.Dense(dim, use_bias=qkv_bias, kernel_initializer=init, name="proj_k")
        self.proj_v = layers.Dense(dim, use_bias=qkv_bias, kernel_initializer=init, name="proj_v")
        self.proj = layers.Dense(dim, kernel_initializer=init, name="proj")

    def build(self, input_shape):
        grid = (None, self.grid_size[0], self.grid_size[1], self.dim)
        for sub in (self.conv_proj_q, self.conv_proj_k, self.conv_proj_v):
            sub.build(grid)
        for dense in (self.proj_q, self.proj_k, self.proj_v, self.proj):
            dense.build((None, None, self.dim))

    def _heads(self, x):
        x = ops.reshape(x, (-1, x.shape[1], self.num_heads, self.head_dim) if x.shape[1] is not None
                        else (ops.shape(x)[0], -1, self.num_heads, self.head_dim))
        return ops.transpose(x, (0, 2, 1, 3))

    def call(self, x, training=None):
        height, width = self.grid_size
        if self.with_cls_token:
            cls_token, x = x[:, :1], x[:, 1:]
        grid = ops.reshape(x, (-1, height, width, self.dim))
        q = self.conv_proj_q(grid, training=training)
        k = self.conv_proj_k(grid, training=training)
        v = self.conv_proj_v(grid, training=training)
        if self.with_cls_token:
            q, k, v = (ops.concatenate([cls_token, t], axis=1) for t in (q, k, v))
        q, k, v = self._heads(self.proj_q(q)), self._heads(self.proj_k(k)), self._heads(self.proj_v(v))
        attn = ops.softmax(ops.matmul(q, ops.transpose(k, (0, 1, 3, 2))) * self.scale, axis=-1)
        out = ops.transpose(ops.matmul(attn, v), (0, 2, 1, 3))  # (B, Nq, heads, head_dim)
        out = ops.reshape(out, (-1, out.shape[1], self.dim) if out.shape[1] is not None
                          else (ops.shape(out)[0], -1, self.dim))
        return self.proj(out), attn

    def get_config(self):
        return {**super().get_config(), "dim": self.dim, "num_heads": self.num_heads,
                "grid_size": list(self.grid_size), "with_cls_token": self.with_cls_token,
                "qkv_bias": self.qkv_bias, "kernel_size": self.kernel_size, "stride_q": self.stride_q,
                "padding_q": self.padding_q, "stride_kv": self.stride_kv, "padding_kv": self.padding_kv,
                "batch_norm_eps": self.batch_norm_eps, "initializer": self.initializer}


@keras.saving.register_keras_serializable(package=PACKAGE)
class CvTBlock(layers.Layer):
    """Pre-norm transformer block with convolutional attention: returns ``(tokens, attention)``."""

    def __init__(self, dim: int, num_heads: int, grid_size: tuple[int, int], with_cls_token: bool = False,
                 mlp_ratio: float = 4.0, qkv_bias: bool = True, kernel_size: int = 3, stride_q: int = 1,
                 padding_q: int = 1, stride_kv: int = 2, padding_kv: int = 1, activation: str = "quick_gelu",
                 layer_norm_eps: float = 1e-5, batch_norm_eps: float = 1e-5, initializer: str = "random",
                 **kwargs):
        super().__init__(**kwargs)
        self.dim, self.num_heads, self.grid_size, self.with_cls_token = dim, num_heads, tuple(grid_size), with_cls_token
        self.mlp_ratio, self.qkv_bias, self.kernel_size = mlp_ratio, qkv_bias, kernel_size
        self.stride_q, self.padding_q, self.stride_kv, self.padding_kv = stride_q, padding_q, stride_kv, padding_kv
        self.activation, self.layer_norm_eps, self.batch_norm_eps = activation, layer_norm_eps, batch_norm_eps
        self.initializer = initializer
        self.norm1 = layers.LayerNormalization(epsilon=layer_norm_eps, name="norm1")
        self.attn = ConvAttention(dim, num_heads, grid_size, with_cls_token, qkv_bias, kernel_size, stride_q,
                                  padding_q, stride_kv, padding_kv, batch_norm_eps, initializer, name="attn")
        self.norm2 = layers.LayerNormalization(epsilon=layer_norm_eps, name="norm2")
        self.mlp = Mlp(int(dim * mlp_ratio), dim, activation, initializer, name="mlp")

    def build(self, input_shape):
        shape = (None, None, self.dim)
        for sub in (self.norm1, self.attn, self.norm2, self.mlp):
            sub.build(shape)

    def call(self, x, training=None):
        attn_out, attn = self.attn(self.norm1(x), training=training)
        x = x + attn_out
        x = x + self.mlp(self.norm2(x))
        return x, attn

    def get_config(self):
        return {**super().get_config(), "dim": self.dim, "num_heads": self.num_heads,
                "grid_size": list(self.grid_size), "with_cls_token": self.with_cls_token,
                "mlp_ratio": self.mlp_ratio, "qkv_bias": self.qkv_bias, "kernel_size": self.kernel_size,
                "stride_q": self.stride_q, "padding_q": self.padding_q, "stride_kv": self.stride_kv,
                "padding_kv": self.padding_kv, "activation": self.activation,
                "layer_norm_eps": self.layer_norm_eps, "batch_norm_eps": self.batch_norm_eps,
                "initializer": self.initializer}


@keras.saving.register_keras_serializable(package=PACKAGE)
class TokensToGrid(layers.Layer):
    """Splits off the class token (if any) and folds the other tokens back into an NHWC grid.

    Returns ``(cls (B, 1, C), grid)`` with a class token, the grid alone without one.
    """

    def __init__(self, grid_size: tuple[int, int], with_cls_token: bool = False, **kwargs):
        super().__init__(**kwargs)
        self.grid_size, self.with_cls_token = tuple(grid_size), with_cls_token

    def call(self, x):
        height, width = self.grid_size
        tokens = x[:, 1:] if self.with_cls_token else x
        grid = ops.reshape(tokens, (-1, height, width, x.shape[-1]))
        return (x[:, :1], grid) if self.with_cls_token else grid

    def get_config(self):
        return {**super().get_config(), "grid_size": list(self.grid_size), "with_cls_token": self.with_cls_token}


@keras.saving.register_keras_serializable(package=PACKAGE)
class TakeFirstToken(layers.Layer):
    """(B, N, C) -> (B, C): the (normalised) class token as the feature vector."""

    def call(self, x):
        return x[:, 0]


@keras.saving.register_keras_serializable(package=PACKAGE)
class MeanTokens(layers.Layer):
    """(B, N, C) -> (B, C): mean over tokens (CvT variants without a final class token)."""

    def call(self, x):
        return ops.mean(x, axis=1)


def stage_grid_sizes(config: CvTConfig) -> list[int]:
    """The side of each stage's token grid (square images)."""
    sizes, size = [], config.image_size
    for s in range(config.num_stages):
        size = conv_output_size(size, config.patch_sizes[s], config.patch_strides[s], config.patch_paddings[s])
        sizes.append(size)
    return sizes


def build_keras(config: CvTConfig, initializer: str = "random", name: str = "cvt",
              intermediates: bool = False) -> keras.Model:
    """Functional CvT returning a dict: ``logits`` (or ``features`` when ``num_classes == 0``),
    ``cls_token`` (the last stage's class token before the final norm, (B, 1, C)), and one
    attention map per block, named after the block (``stage0_blocks_0_attn`` ...).

    ``initializer="zeros"`` skips random initialisation for models whose weights are loaded next.
    ``intermediates=True`` also returns each block's output (``stage2_blocks_0_out`` ...,
    class token first), used by the parity harness to find the first diverging block.
    """
    c = config
    images = keras.Input((c.image_size, c.image_size, c.in_channels), name="images")
    grid, outputs, cls_token, x = images, {}, None, None
    for s, side in enumerate(stage_grid_sizes(c)):
        with_cls = c.cls_token[s]
        x = ConvEmbedding(c.embed_dims[s], c.patch_sizes[s], c.patch_strides[s], c.patch_paddings[s],
                          c.layer_norm_eps, initializer, name=f"stage{s}_embedding")(grid)
        if with_cls:
            cls = ClassToken(c.embed_dims[s], initializer, name=f"stage{s}_cls_token")(x)
            x = layers.Concatenate(axis=1, name=f"stage{s}_prepend_cls")([cls, x])
        for j in range(c.depths[s]):
            block = f"stage{s}_blocks_{j}"
            x, attn = CvTBlock(c.embed_dims[s], c.num_heads[s], (side, side), with_cls, c.mlp_ratios[s],
                               c.qkv_bias[s], c.kernel_qkv[s], c.stride_q[s], c.padding_q[s], c.stride_kv[s],
                               c.padding_kv[s], c.activation, c.layer_norm_eps, c.batch_norm_eps, initializer,
                               name=block)(x)
            outputs[f"{block}_attn"] = attn
            if intermediates:
                outputs[f"{block}_out"] = x
        if s < c.num_stages - 1:
            split = TokensToGrid((side, side), with_cls, name=f"stage{s}_to_grid")(x)
            grid = split[1] if with_cls else split
        elif with_cls:
            cls_token, _ = TokensToGrid((side, side), True, name=f"stage{s}_to_grid")(x)
    norm = layers.LayerNormalization(epsilon=c.layer_norm_eps, name="norm")
    if cls_token is not None:
        features = TakeFirstToken(name="pool")(norm(cls_token))
        outputs = {"cls_token": cls_token, **outputs}
    else:
        features = MeanTokens(name="pool")(norm(x))
    if c.num_classes > 0:
        head = layers.Dense(c.num_classes, kernel_initializer=kernel_init(initializer), name="head")
        outputs = {"logits": head(features), **outputs}
    else:
        outputs = {"features": features, **outputs}
    return keras.Model(images, outputs, name=name)
