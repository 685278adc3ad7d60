"""ViT (timm's ``VisionTransformer`` and ``VisionTransformerDistilled``) in Keras 3: the family's Keras side.

Mirrors timm's ``models/vision_transformer.py`` and ``models/deit.py`` part for part, so a
mapping rule can be read off both models side by side: ``blocks.3.attn.qkv.weight`` in timm is
``blocks_3/attn/qkv/kernel`` here. Every attention layer also returns its attention map.

Numerics that matter:

* GELU is exact (``vit_porting.families.layers.Mlp``); LayerNorm eps is timm's 1e-6;
* the order of the position embedding and the prefix tokens follows the checkpoint:
  ``no_embed_class`` (DeiT III) adds it to the patches and prepends the tokens afterwards,
  otherwise the tokens are prepended first and the embedding covers them too;
* a distilled model returns the mean of its two heads, ``(head(x[:, 0]) + head_dist(x[:, 1])) / 2``,
  as timm does in eval (and the mean of the two normalised tokens as its features).

Written with ``keras.ops`` only, so it runs on every Keras backend; imports Keras and nothing
else of the porting stack (see the CaiT model).
"""

from __future__ import annotations

import keras
from keras import layers, ops

from vit_porting.families.layers import PACKAGE, Mlp, kernel_init
from vit_porting.families.vit import ViTConfig


@keras.saving.register_keras_serializable(package=PACKAGE)
class TokenEmbedding(layers.Layer):
    """timm's ``_pos_embed``: prepends the class (and distillation) token to the patch tokens and
    adds the learned position embedding, before the tokens (``no_embed_class``) or after."""

    def __init__(self, num_patches: int, embed_dim: int, class_token: bool = True, distilled: bool = False,
                 no_embed_class: bool = False, initializer: str = "random", **kwargs):
        super().__init__(**kwargs)
        self.num_patches, self.embed_dim, self.initializer = num_patches, embed_dim, initializer
        self.class_token, self.distilled, self.no_embed_class = class_token, distilled, no_embed_class
        self.num_prefix_tokens = int(class_token) + int(distilled)

    def build(self, input_shape):
        init = kernel_init(self.initializer)
        if self.class_token:
            self.cls_token = self.add_weight(name="cls_token", shape=(1, 1, self.embed_dim), initializer=init)
        if self.distilled:
            self.dist_token = self.add_weight(name="dist_token", shape=(1, 1, self.embed_dim), initializer=init)
        positions = self.num_patches + (0 if self.no_embed_class else self.num_prefix_tokens)
        self.pos_embed = self.add_weight(name="pos_embed", shape=(1, positions, self.embed_dim), initializer=init)

    def _prepend(self, patches):
        tokens = ([self.cls_token] if self.class_token else []) + ([self.dist_token] if self.distilled else [])
        if not tokens:
            return patches
        batch = ops.shape(patches)[0]
        prefix = [ops.broadcast_to(ops.cast(t, patches.dtype), (batch, 1, self.embed_dim)) for t in tokens]
        return ops.concatenate([*prefix, patches], axis=1)

    def call(self, patches):
        if self.no_embed_class:
            return self._prepend(patches + self.pos_embed)
        return self._prepend(patches) + self.pos_embed

    def get_config(self):
        return {**super().get_config(), "num_patches": self.num_patches, "embed_dim": self.embed_dim,
                "class_token": self.class_token, "distilled": self.distilled, "no_embed_class": self.no_embed_class,
                "initializer": self.initializer}


@keras.saving.register_keras_serializable(package=PACKAGE)
class SelfAttention(layers.Layer):
    """timm's ``Attention`` (its unfused path: q scaled, then q @ k^T, softmax).

    Returns ``(output, attention)`` with attention of shape (B, heads, N, N).
    """

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool = True, initializer: str = "random", **kwargs):
        super().__init__(**kwargs)
        self.dim, self.num_heads, self.qkv_bias, self.initializer = dim, num_heads, qkv_bias, initializer
        self.head_dim = dim // num_heads
        self.scale = self.head_dim**-0.5
        init = kernel_init(initializer)
        self.qkv = layers.Dense(dim * 3, use_bias=qkv_bias, kernel_initializer=init, name="qkv")
        self.proj = layers.Dense(dim, kernel_initializer=init, name="proj")

    def build(self, input_shape):
        self.qkv.build(input_shape)
        self.proj.build(input_shape)

    def call(self, x):
        batch, tokens = ops.shape(x)[0], ops.shape(x)[1]
        qkv = ops.reshape(self.qkv(x), (batch, tokens, 3, self.num_heads, self.head_dim))
        qkv = ops.transpose(qkv, (2, 0, 3, 1, 4))
        q, k, v = qkv[0] * self.scale, qkv[1], qkv[2]
        attn = ops.softmax(ops.matmul(q, ops.transpose(k, (0, 1, 3, 2))), axis=-1)
        out = ops.reshape(ops.transpose(ops.matmul(attn, v), (0, 2, 1, 3)), (batch, tokens, self.dim))
        return self.proj(out), attn

    def get_config(self):
        return {**super().get_config(), "dim": self.dim, "num_heads": self.num_heads, "qkv_bias": self.qkv_bias,
                "initializer": self.initializer}


@keras.saving.register_keras_serializable(package=PACKAGE)
class LayerScale(layers.Layer):
    """Per-channel scale of a residual branch (DeiT III; timm's ``ls1``/``ls2``)."""

    def __init__(self, dim: int, init_values: float = 1e-5, initializer: str = "random", **kwargs):
        super().__init__(**kwargs)
        self.dim, self.init_values, self.initializer = dim, init_values, initializer

    def build(self, input_shape):
        init = "zeros" if self.initializer == "zeros" else keras.initializers.Constant(self.init_values)
        self.gamma = self.add_weight(name="gamma", shape=(self.dim,), initializer=init)

    def call(self, x):
        return x * self.gamma

    def get_config(self):
        return {**super().get_config(), "dim": self.dim, "init_values": self.init_values,
                "initializer": self.initializer}


@keras.saving.register_keras_serializable(package=PACKAGE)
class ViTBlock(layers.Layer):
    """Pre-norm transformer block, with LayerScale when ``init_values`` is set: returns ``(tokens, attention)``."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0, qkv_bias: bool = True,
                 init_values: float | None = None, layer_norm_eps: float = 1e-6, initializer: str = "random",
                 **kwargs):
        super().__init__(**kwargs)
        self.dim, self.num_heads, self.mlp_ratio, self.qkv_bias = dim, num_heads, mlp_ratio, qkv_bias
        self.init_values, self.layer_norm_eps, self.initializer = init_values, layer_norm_eps, initializer
        self.norm1 = layers.LayerNormalization(epsilon=layer_norm_eps, name="norm1")
        self.attn = SelfAttention(dim, num_heads, qkv_bias, initializer, name="attn")
        self.norm2 = layers.LayerNormalization(epsilon=layer_norm_eps, name="norm2")
        self.mlp = Mlp(int(dim * mlp_ratio), dim, initializer=initializer, name="mlp")
        # timm: LayerScale only when init_values is truthy, nn.Identity otherwise
        self.ls1 = LayerScale(dim, init_values, initializer, name="ls1") if init_values else None
        self.ls2 = LayerScale(dim, init_values, initializer, name="ls2") if init_values else None

    def build(self, input_shape):
        shape = (None, None, self.dim)
        for sub in (self.norm1, self.attn, self.norm2, self.mlp, self.ls1, self.ls2):
            if sub is not None:
                sub.build(shape)

    def call(self, x):
        attn_out, attn = self.attn(self.norm1(x))
        x = x + (self.ls1(attn_out) if self.ls1 is not None else attn_out)
        mlp_out = self.mlp(self.norm2(x))
        x = x + (self.ls2(mlp_out) if self.ls2 is not None else mlp_out)
        return x, attn

    def get_config(self):
        return {**super().get_config(), "dim": self.dim, "num_heads": self.num_heads, "mlp_ratio": self.mlp_ratio,
                "qkv_bias": self.qkv_bias, "init_values": self.init_values, "layer_norm_eps": self.layer_norm_eps,
                "initializer": self.initializer}


def build_keras(config: ViTConfig, initializer: str = "random", name: str = "vit",
                intermediates: bool = False) -> keras.Model:
    """Functional ViT returning a dict: ``logits`` (or ``features`` when ``num_classes == 0``)
    and one attention map per block (``blocks_0_attn`` ...: (B, heads, N, N) over
    [class token, distillation token, patches]).

    ``initializer="zeros"`` skips random initialisation for models whose weights are loaded next.
    ``intermediates=True`` also returns each block's output (``blocks_0_out`` ...), which the
    parity harness uses to find the first block that diverges; exported models leave them out.
    """
    c = config
    images = keras.Input((c.image_size, c.image_size, c.in_channels), name="images")
    # timm's PatchEmbed: a patch-size convolution (no bias under pre-norm, as in CLIP), flattened row-major
    x = layers.Conv2D(c.embed_dim, c.patch_size, strides=c.patch_size, padding="valid", use_bias=not c.pre_norm,
                      kernel_initializer=kernel_init(initializer), name="patch_embed")(images)
    x = layers.Reshape((c.num_patches, c.embed_dim), name="patch_tokens")(x)
    x = TokenEmbedding(c.num_patches, c.embed_dim, c.class_token, c.distilled, c.no_embed_class, initializer,
                       name="embed")(x)
    if c.pre_norm:
        x = layers.LayerNormalization(epsilon=c.layer_norm_eps, name="norm_pre")(x)
    outputs = {}
    for i in range(c.depth):
        x, attn = ViTBlock(c.embed_dim, c.num_heads, c.mlp_ratio, c.qkv_bias, c.init_values, c.layer_norm_eps,
                           initializer, name=f"blocks_{i}")(x)
        outputs[f"blocks_{i}_attn"] = attn
        if intermediates:
            outputs[f"blocks_{i}_out"] = x
    if not c.use_fc_norm:
        x = layers.LayerNormalization(epsilon=c.layer_norm_eps, name="norm")(x)
    head = None
    if c.num_classes > 0:
        head = layers.Dense(c.num_classes, kernel_initializer=kernel_init(initializer), name="head")
    if c.distilled:
        # timm's VisionTransformerDistilled.forward_head in eval: the mean of both heads (of both
        # tokens when there is no classifier); no pooling, no fc_norm
        cls, dist = x[:, 0], x[:, 1]
        if head is not None:
            head_dist = layers.Dense(c.num_classes, kernel_initializer=kernel_init(initializer), name="head_dist")
            cls, dist = head(cls), head_dist(dist)
        result = layers.Average(name="mean_of_heads")([cls, dist])
    else:
        pooled = x[:, 0] if c.global_pool == "token" else \
            layers.GlobalAveragePooling1D(name="pool")(x[:, c.num_prefix_tokens:])
        if c.use_fc_norm:
            pooled = layers.LayerNormalization(epsilon=c.layer_norm_eps, name="fc_norm")(pooled)
        result = head(pooled) if head is not None else pooled
    return keras.Model(images, {"logits" if head is not None else "features": result, **outputs}, name=name)
