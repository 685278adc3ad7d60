"""The Keras ViT itself (DeiT, distilled DeiT, DeiT III, AugReg): outputs, token order, heads,
forms, numerics, the variants, and attention rollout as the shared drawing code computes it.
Keras and numpy only (this process never imports torch)."""

from __future__ import annotations

import keras
import numpy as np
import pytest

from vit_porting.attention import attention_rollout, class_attention_maps
from vit_porting.evaluate import EvalError
from vit_porting.families.layers import Mlp
from vit_porting.families.registry import get_family, get_variant
from vit_porting.families.vit import VARIANTS, ViTConfig
from vit_porting.families.vit.model import build_keras
from vit_porting.mapping.engine import family_mapping

IMAGES = np.random.default_rng(0).standard_normal((2, 224, 224, 3)).astype(np.float32)


def _config(name: str, **overrides) -> ViTConfig:
    return get_variant(name).with_config(**{"depth": 1, **overrides}).config


def _numpy(x) -> np.ndarray:
    return keras.ops.convert_to_numpy(x)


@pytest.mark.parametrize("name, tokens, heads", [
    ("deit_small_patch16_224", 197, 6), ("deit_tiny_distilled_patch16_224", 198, 3),
    ("deit3_small_patch16_224", 197, 6), ("vit_base_patch32_224", 50, 12),
])
def test_outputs_are_logits_and_every_attention_map(name, tokens, heads):
    out = build_keras(_config(name, depth=2), intermediates=True)(IMAGES)
    assert list(out) == ["logits", "blocks_0_attn", "blocks_0_out", "blocks_1_attn", "blocks_1_out"]
    assert out["logits"].shape == (2, 1000)
    assert out["blocks_1_attn"].shape == (2, heads, tokens, tokens)  # [class, (distillation,) patches]
    assert out["blocks_1_out"].shape[:2] == (2, tokens)
    np.testing.assert_allclose(_numpy(out["blocks_0_attn"]).sum(-1), 1.0, rtol=1e-5)


def test_position_embedding_covers_the_tokens_or_only_the_patches():
    """DeiT adds the position embedding after prepending the tokens; DeiT III (no_embed_class)
    before, so its class token enters the first block as it is."""
    for name, positions in (("deit_small_patch16_224", 197), ("deit3_small_patch16_224", 196),
                            ("deit_small_distilled_patch16_224", 198)):
        model = build_keras(_config(name))
        embed = model.get_layer("embed")
        assert tuple(embed.pos_embed.shape) == (1, positions, 384), name
        tokens = _numpy(keras.Model(model.input, embed.output)(IMAGES[:1]))[0]
        cls, pos = _numpy(embed.cls_token)[0, 0], _numpy(embed.pos_embed)[0]
        if positions == 196:
            np.testing.assert_array_equal(tokens[0], cls)
        else:
            np.testing.assert_allclose(tokens[0], cls + pos[0], atol=1e-7)
        if name.startswith("deit_small_distilled"):
            np.testing.assert_allclose(tokens[1], _numpy(embed.dist_token)[0, 0] + pos[1], atol=1e-7)


def test_distilled_logits_are_the_mean_of_both_heads():
    """timm's VisionTransformerDistilled in eval: (head(x[:, 0]) + head_dist(x[:, 1])) / 2."""
    model = build_keras(_config("deit_tiny_distilled_patch16_224"))
    for layer in ("head", "head_dist"):  # two different heads, so a swap would show
        w = model.get_layer(layer)
        w.bias.assign(np.random.default_rng(len(layer)).standard_normal(w.bias.shape).astype(np.float32))
    normed = _numpy(keras.Model(model.input, model.get_layer("norm").output)(IMAGES))
    head, dist = model.get_layer("head"), model.get_layer("head_dist")
    expected = (normed[:, 0] @ _numpy(head.kernel) + _numpy(head.bias)
                + normed[:, 1] @ _numpy(dist.kernel) + _numpy(dist.bias)) / 2
    np.testing.assert_allclose(_numpy(model(IMAGES)["logits"]), expected, rtol=1e-5, atol=1e-5)
    # without a classifier timm returns the mean of the two normalised tokens
    features = build_keras(_config("deit_tiny_distilled_patch16_224", num_classes=0))
    weights = {w.path: w for w in model.weights}
    for w in features.weights:  # the same weights but the two heads
        w.assign(weights[w.path])
    np.testing.assert_allclose(_numpy(features(IMAGES)["features"]), (normed[:, 0] + normed[:, 1]) / 2, atol=1e-6)


def test_any_class_count_and_feature_extractor_form():
    for name in ("deit_small_patch16_224", "deit_tiny_distilled_patch16_224"):
        assert build_keras(_config(name, num_classes=7))(IMAGES)["logits"].shape == (2, 7)
        fe = build_keras(_config(name, num_classes=0))
        out = fe(IMAGES)
        assert "logits" not in out and out["features"].shape[0] == 2
        assert not any(w.path.startswith("head") for w in fe.weights)


def test_average_pooling_moves_the_final_norm_after_the_pool():
    """timm: global_pool='avg' turns fc_norm on (norm after the mean of the patch tokens)."""
    config = _config("vit_small_patch16_224", global_pool="avg", class_token=False, pre_norm=True, qkv_bias=False)
    model = build_keras(config)
    paths = {w.path for w in model.weights}
    assert {"fc_norm/gamma", "norm_pre/gamma"} <= paths and "norm/gamma" not in paths
    assert "embed/cls_token" not in paths and "patch_embed/bias" not in paths  # pre-norm: no patch bias (CLIP)
    assert "blocks_0/attn/qkv/bias" not in paths
    assert model(IMAGES)["blocks_0_attn"].shape == (2, 6, 196, 196)


def test_layer_scale_only_where_the_checkpoint_has_it():
    deit3 = build_keras(_config("deit3_small_patch16_224"))
    gammas = [w for w in deit3.weights if w.path.endswith(("ls1/gamma", "ls2/gamma"))]
    assert len(gammas) == 2 and all(np.all(_numpy(g) == np.float32(1e-6)) for g in gammas)
    assert not any("/ls" in w.path for w in build_keras(_config("deit_small_patch16_224")).weights)


def test_numerics_are_the_checkpoints():
    model = build_keras(_config("deit3_small_patch16_224", depth=2))
    layers = list(model._flatten_layers())
    eps = {layer.epsilon for layer in layers if isinstance(layer, keras.layers.LayerNormalization)}
    assert eps == {1e-6}
    assert {layer.activation for layer in layers if isinstance(layer, Mlp)} == {"gelu"}  # exact (erf), not tanh


def test_zeros_build_skips_random_init():
    model = build_keras(_config("deit_tiny_distilled_patch16_224"), initializer="zeros")
    assert all(np.ptp(_numpy(w)) == 0 for w in model.weights)


@pytest.mark.parametrize("name, overrides", [
    ("deit_tiny_distilled_patch16_224", {}), ("deit3_huge_patch14_224", {}),
    ("vit_small_patch16_224", {"global_pool": "avg", "pre_norm": True}),
])
def test_variable_paths_are_mapping_targets(name, overrides):
    """Every Keras variable path is produced by exactly one rule (readable paths, no strays)."""
    model = build_keras(_config(name, **overrides), initializer="zeros")
    rules = family_mapping(get_family("vit")).rules
    for w in model.weights:
        assert sum(bool(r.target_regex.match(w.path)) for r in rules) == 1, w.path


def test_keras_file_reloads_exactly(tmp_path):
    model = build_keras(_config("deit_tiny_distilled_patch16_224"))
    path = tmp_path / "m.keras"
    model.save(path)
    reloaded = keras.saving.load_model(path, compile=False)
    for key, value in model(IMAGES).items():
        np.testing.assert_array_equal(_numpy(reloaded(IMAGES)[key]), _numpy(value), err_msg=key)


def test_the_variants():
    names = [v.name for v in VARIANTS]
    assert {f"deit_{w}_patch16_224" for w in ("tiny", "small", "base")} | {"deit_base_patch16_384"} <= set(names)
    assert {f"deit_{w}_distilled_patch16_224" for w in ("tiny", "small", "base")} <= set(names)
    assert {"deit3_small_patch16_224", "deit3_small_patch16_384", "deit3_medium_patch16_224",
            "deit3_base_patch16_224", "deit3_base_patch16_384", "deit3_large_patch16_224",
            "deit3_large_patch16_384", "deit3_huge_patch14_224"} <= set(names)
    assert {"vit_tiny_patch16_224", "vit_small_patch16_224", "vit_small_patch16_384", "vit_base_patch16_224",
            "vit_base_patch16_384", "vit_base_patch32_224", "vit_large_patch16_224"} <= set(names)
    for v in VARIANTS:
        assert v.config.distilled == ("distilled" in v.name), v.name
        assert (v.config.init_values is not None) == v.config.no_embed_class == v.name.startswith("deit3"), v.name
        assert v.preprocessing["mean"] == ([0.5] * 3 if v.name.startswith("vit_") else [0.485, 0.456, 0.406])
        assert v.config.num_classes == 1000 and v.config.layer_norm_eps == 1e-6


def test_config_refuses_what_timm_cannot_build():
    with pytest.raises(ValueError, match="token pooling needs the class token"):
        ViTConfig(class_token=False)
    with pytest.raises(ValueError, match="distilled"):
        ViTConfig(distilled=True, global_pool="avg")
    with pytest.raises(ValueError, match="global_pool"):
        ViTConfig(global_pool="max")


# -- what `vit-port attention` draws --------------------------------------------------------


def _random_maps(blocks: int, heads: int, tokens: int, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    maps = {}
    for i in range(blocks):
        logits = rng.standard_normal((1, heads, tokens, tokens)) * 3
        maps[f"blocks_{i}_attn"] = (np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)).astype(np.float32)
    return maps


def test_rollout_is_the_product_of_the_head_mean_maps_plus_identity():
    """Abnar & Zuidema: per block 0.5 * (head mean) + 0.5 * I (rows of a softmax map sum to 1),
    multiplied from the first block to the last, read at the class token (row 0), patches only."""
    spec = get_variant("deit_tiny_distilled_patch16_224")  # two prefix tokens
    outputs = _random_maps(3, 3, 2 + 16)
    outputs["logits"] = np.zeros((1, 1000), np.float32)
    rollout, blocks = attention_rollout(spec, outputs)
    assert blocks == ["blocks_0_attn", "blocks_1_attn", "blocks_2_attn"]
    a = [0.5 * outputs[b][0].astype(np.float64).mean(0) + 0.5 * np.eye(18) for b in blocks]
    np.testing.assert_allclose(rollout, (a[2] @ a[1] @ a[0])[0, 2:].reshape(4, 4), rtol=1e-6)
    # the last block's class-token attention per head, without both prefix tokens
    maps, last = class_attention_maps(spec, outputs)
    assert list(maps) == ["blocks_2_attn"] and last == "blocks_2_attn"
    np.testing.assert_array_equal(maps[last], outputs[last][0, :, 0, 2:].reshape(3, 4, 4))


def test_rollout_only_where_every_block_attends_over_the_same_tokens():
    assert attention_rollout(get_variant("cait_xxs24_224"), {}) is None  # class attention: its own picture
    cvt = get_variant("cvt-13-224")
    assert attention_rollout(cvt, {}) is None
    # says why in the picture
    assert "no attention rollout" in get_family("cvt").presentation.class_attention(cvt).title
    broken = {"blocks_0_attn": np.ones((1, 2, 197, 50), np.float32) / 50}
    with pytest.raises(EvalError, match="square maps"):
        attention_rollout(get_variant("deit_small_patch16_224"), broken)
