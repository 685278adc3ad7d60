"""The Keras CaiT itself: outputs, names, shapes, forms, GELU, and cheap building."""

from __future__ import annotations

import math

import keras
import numpy as np
import pytest

from vit_porting.families.cait import VARIANTS as CAIT_VARIANTS
from vit_porting.families.cait.model import build_keras as build_cait
from vit_porting.families.layers import exact_gelu
from vit_porting.families.registry import get_family, get_variant
from vit_porting.mapping.engine import family_mapping


def _small(**overrides):
    return get_variant("cait_xxs24_224").with_config(depth=2, **overrides).config


def test_outputs_are_logits_and_every_attention_map():
    model = build_cait(_small())
    out = model(np.zeros((3, 224, 224, 3), np.float32))
    assert list(out) == ["logits", "blocks_0_attn", "blocks_1_attn", "blocks_token_only_0_attn",
                         "blocks_token_only_1_attn"]
    assert out["logits"].shape == (3, 1000)
    assert out["blocks_1_attn"].shape == (3, 4, 196, 196)  # (B, heads, N, N)
    assert out["blocks_token_only_0_attn"].shape == (3, 4, 1, 197)  # (B, heads, 1, N + 1)


def test_any_class_count_and_feature_extractor_form():
    assert build_cait(_small(num_classes=7))(np.zeros((1, 224, 224, 3), np.float32))["logits"].shape == (1, 7)
    fe = build_cait(_small(num_classes=0))
    out = fe(np.zeros((2, 224, 224, 3), np.float32))
    assert "logits" not in out and out["features"].shape == (2, 192)
    assert not any(w.path.startswith("head/") for w in fe.weights)


def test_intermediates_are_diagnostic_extras_only():
    out = build_cait(_small(), intermediates=True)(np.zeros((1, 224, 224, 3), np.float32))
    assert out["blocks_1_out"].shape == (1, 196, 192)
    assert out["blocks_token_only_1_out"].shape == (1, 1, 192)


def test_class_attention_rows_are_distributions():
    model = build_cait(_small())
    out = model(np.random.default_rng(0).standard_normal((2, 224, 224, 3)).astype(np.float32))
    np.testing.assert_allclose(keras.ops.convert_to_numpy(out["blocks_token_only_0_attn"]).sum(-1), 1.0, rtol=1e-5)


def test_gelu_is_exact_not_tanh():
    x = np.linspace(-6, 6, 1001).astype(np.float32)
    ours = keras.ops.convert_to_numpy(exact_gelu(x))
    exact = np.array([0.5 * v * (1 + math.erf(v / math.sqrt(2))) for v in x.astype(np.float64)])
    np.testing.assert_allclose(ours, exact, atol=1e-6)
    tanh = keras.ops.convert_to_numpy(keras.ops.gelu(x))  # Keras' default is the tanh approximation
    assert np.abs(tanh - exact).max() > 1e-4


def test_layer_norm_eps_is_the_sources():
    model = build_cait(_small())
    eps = {layer.epsilon for layer in model._flatten_layers() if isinstance(layer, keras.layers.LayerNormalization)}
    assert eps == {1e-6}


def test_zeros_build_skips_random_init():
    model = build_cait(_small(), initializer="zeros")
    # constants only (zeros; LayerNorm's ones): nothing random was drawn
    assert all(np.ptp(keras.ops.convert_to_numpy(w)) == 0 for w in model.weights)
    random = build_cait(_small(), initializer="random")
    assert np.std(keras.ops.convert_to_numpy(random.get_layer("head").kernel)) > 0.01


def test_all_ten_timm_variants_are_registered():
    assert [v.name for v in CAIT_VARIANTS] == [
        "cait_xxs24_224", "cait_xxs24_384", "cait_xxs36_224", "cait_xxs36_384", "cait_xs24_384",
        "cait_s24_224", "cait_s24_384", "cait_s36_384", "cait_m36_384", "cait_m48_448"]


@pytest.mark.parametrize("name", ["cait_xxs24_224", "cait_m48_448"])
def test_variable_paths_are_mapping_targets(name):
    """Every Keras variable path is produced by exactly one rule (readable paths, no strays)."""
    spec = get_variant(name).with_config(depth=1)
    model = build_cait(spec.config, initializer="zeros")
    rules = family_mapping(get_family("cait")).rules
    for w in model.weights:
        assert sum(bool(r.target_regex.match(w.path)) for r in rules) == 1, w.path


def test_cait_keras_file_reloads_exactly_next_to_cvt(tmp_path):
    """Both families live under one Keras package name: a CaiT file must reload as CaiT (exact
    GELU) in a process that has also imported the CvT layers (QuickGELU by default)."""
    import vit_porting.families.cvt.model  # noqa: F401  (registers the CvT layers too)

    model = build_cait(_small())
    images = np.random.default_rng(1).standard_normal((1, 224, 224, 3)).astype(np.float32)
    path = tmp_path / "m.keras"
    model.save(path)
    reloaded = keras.saving.load_model(path, compile=False)
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(reloaded(images)["logits"]),
                                  keras.ops.convert_to_numpy(model(images)["logits"]))


@pytest.mark.parametrize("heads", [4, 16])  # xxs and m widths
def test_head_mix_is_timms_linear_over_heads(heads):
    """``_mix_heads`` (one product on the flattened maps) against timm's form, a Linear over the heads
    of the maps permuted to channels-last and back, here as the same Dense layer: the two sum the same
    products in the same order, so within fp32 rounding of each other (and of a float64 product)."""
    from vit_porting.families.cait.model import TalkingHeadAttention

    layer = TalkingHeadAttention(heads * 48, heads)
    layer.build((None, 10, heads * 48))
    rng = np.random.default_rng(heads)
    for dense in (layer.proj_l, layer.proj_w):
        dense.kernel.assign(rng.standard_normal((heads, heads)).astype(np.float32))
        dense.bias.assign(rng.standard_normal(heads).astype(np.float32))
    attn = rng.standard_normal((2, heads, 37, 37)).astype(np.float32)
    for dense in (layer.proj_l, layer.proj_w):
        ours = keras.ops.convert_to_numpy(layer._mix_heads(dense, attn))
        timm = keras.ops.convert_to_numpy(keras.ops.transpose(dense(keras.ops.transpose(attn, (0, 2, 3, 1))),
                                                              (0, 3, 1, 2)))
        kernel, bias = (keras.ops.convert_to_numpy(w).astype(np.float64) for w in (dense.kernel, dense.bias))
        exact = np.einsum("bhij,hg->bgij", attn.astype(np.float64), kernel) + bias[None, :, None, None]
        assert ours.shape == attn.shape
        np.testing.assert_allclose(ours, timm, rtol=0, atol=1e-5)
        np.testing.assert_allclose(ours, exact, rtol=0, atol=1e-5)
        assert np.abs(ours - timm).max() <= 2 * np.abs(timm - exact).max() + 1e-6  # no worse than timm's form
