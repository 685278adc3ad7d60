"""CvT family: Keras port vs Hugging Face transformers' CvtForImageClassification, both key
layouts (Hugging Face and Microsoft's original), both activations (QuickGELU and GELU), and the
mapping-engine features CvT added (restored drops, rename files, layout detection).

torch never loads in the pytest process: ports go through vit_porting.pipeline.port (one worker
process per runtime), and PyTorch-side checks run in their own subprocess.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from vit_porting.families.cvt import VARIANTS as CVT_VARIANTS
from vit_porting.families.cvt import CvTConfig
from vit_porting.families.registry import get_family, get_variant, variant_from_dict
from vit_porting.mapping.engine import (
    MappingFileError,
    MappingSpec,
    RenameError,
    RenameSpec,
    family_mapping,
    family_renames,
)
from vit_porting.pipeline import PortOptions, port
from vit_porting.workers.protocol import QUIET_ENV, WorkerError

ROOT = Path(__file__).resolve().parent.parent
TOLERANCE = 1e-5  # vit_porting/parity/tolerances.yaml, cpu logits row: the tightest bound in the policy


def _port(spec, out_root: Path, **options) -> dict:
    """A port through the pipeline; exports and sample photographs only where a test asks."""
    defaults = {"weights": "random", "exports": False, "photos": False}
    return port(spec, PortOptions(out_root=out_root, log=lambda _msg: None, **{**defaults, **options}))


def _outputs(report: dict) -> dict[str, dict]:
    (eager,) = [r for r in report["runtimes"] if r["runtime"] == "keras_eager"]
    return {o["output"]: o for o in eager["outputs"]}


def _python(code: str, cwd: Path) -> dict:
    """Run ``code`` in a fresh interpreter (torch or Keras, never both); it prints JSON last."""
    env = {**os.environ, **QUIET_ENV, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _small(name: str, **overrides):
    """A variant with reduced depth (transformers' CvT needs depth > stage index per stage)."""
    return get_variant(name).with_config(**overrides)


# -- variants -----------------------------------------------------------------------------------


def test_seven_released_checkpoints_are_registered():
    tags = {v.name: v.pretrained_tag for v in CVT_VARIANTS}
    assert tags == {
        "cvt-13-224": "microsoft/cvt-13", "cvt-13-384": "microsoft/cvt-13-384",
        "cvt-13-384-22k": "microsoft/cvt-13-384-22k", "cvt-21-224": "microsoft/cvt-21",
        "cvt-21-384": "microsoft/cvt-21-384", "cvt-21-384-22k": "microsoft/cvt-21-384-22k",
        "cvt-w24-384-22k": "microsoft/cvt-w24-384-22k"}
    for spec in CVT_VARIANTS:
        c = spec.config
        assert spec.family == "cvt" and c.activation == "quick_gelu"
        assert c.layer_norm_eps == 1e-5 and c.batch_norm_eps == 1e-5 and c.cls_token == (False, False, True)
        assert spec.preprocessing["input_size"] == c.image_size
        assert spec.preprocessing["interpolation"] == "bicubic" and len(spec.preprocessing["mean"]) == 3
    assert get_variant("cvt-21-384").config.depths == (1, 4, 16)
    assert get_variant("cvt-w24-384-22k").config.embed_dims == (192, 768, 1024)
    assert get_variant("cvt-13-224").preprocessing["crop_pct"] == 0.875
    assert get_family("cvt").config_class is CvTConfig and get_family("cvt").variants == CVT_VARIANTS


def test_config_refuses_bad_values_and_survives_json():
    with pytest.raises(ValueError, match="activation"):
        CvTConfig(activation="relu")
    with pytest.raises(ValueError, match="3 stages"):
        CvTConfig(depths=(1, 2, 3), num_heads=(1, 3))
    spec = get_variant("cvt-13-384")

    assert variant_from_dict(json.loads(json.dumps(spec.to_dict()))) == spec


# -- mapping engine features (no framework) ----------------------------------------------------

_ENGINE_YAML = {
    "family": "t", "rules": [{"from": "b.{i}.bn.running_mean", "to": "b_{i}/bn/moving_mean"}],
    "drop": [{"key": "b.{i}.bn.num_batches_tracked", "reason": "training counter",
              "restore": {"value": 0, "dtype": "int64", "beside": "b.{i}.bn.running_mean"}}],
}


def test_restored_drop_is_written_back_once_per_sibling():
    mapping = MappingSpec.from_data(_ENGINE_YAML)
    state = {"b.0.bn.running_mean": np.ones(3, np.float32), "b.0.bn.num_batches_tracked": np.array(7),
             "b.1.bn.running_mean": np.zeros(3, np.float32), "b.1.bn.num_batches_tracked": np.array(7)}
    forward = dict(mapping.forward(state, {"b_0/bn/moving_mean": (3,), "b_1/bn/moving_mean": (3,)}))
    assert set(forward) == {"b_0/bn/moving_mean", "b_1/bn/moving_mean"}
    back = mapping.backward(forward)
    assert set(back) == set(state)
    assert back["b.1.bn.num_batches_tracked"].dtype == np.int64 and back["b.1.bn.num_batches_tracked"] == 0
    assert mapping.dropped(state) == {"b.0.bn.num_batches_tracked": "training counter",
                                      "b.1.bn.num_batches_tracked": "training counter"}


@pytest.mark.parametrize("restore, message", [
    ({"value": 0, "dtype": "int64"}, "needs 'value', 'dtype' and 'beside'"),
    ({"value": 0, "dtype": "int64", "beside": "running_mean"}, "every placeholder"),
    ({"value": 0, "dtype": "nonsense", "beside": "b.{i}.x"}, "not a numpy dtype"),
])
def test_restore_is_validated(restore, message):
    data = {**_ENGINE_YAML, "drop": [{**_ENGINE_YAML["drop"][0], "restore": restore}]}
    with pytest.raises(MappingFileError, match=message):
        MappingSpec.from_data(data)


def test_rename_file_is_strict(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text("family: t\nrename:\n  - {pattern: '^old\\.(\\d+)\\.', replace: 'new.\\1.'}\n"
                    "  - {pattern: '^legacy\\.', replace: 'new.0.'}\n")
    renames = RenameSpec.load(path)
    assert renames.apply({"old.3.w": 1, "legacy.b": 2}) == {"new.3.w": 1, "new.0.b": 2}
    with pytest.raises(RenameError, match="no rename applies to.*other.w"):
        renames.apply({"old.3.w": 1, "other.w": 2})
    with pytest.raises(RenameError, match="renamed to one name.*old.0.w and legacy.w"):
        renames.apply({"old.0.w": 1, "legacy.w": 2})
    path.write_text("family: t\nrules: []\n")
    with pytest.raises(MappingFileError, match="non-empty 'rename'"):
        RenameSpec.load(path)


# Microsoft's names (lib/models/cls_cvt.py), written independently of vit_porting/families/cvt/cvt_microsoft.yaml:
# the port from an original-layout file below proves the rename file is their exact inverse.
_TO_MICROSOFT = [
    (r"^cvt\.encoder\.stages\.(\d+)\.embedding\.convolution_embeddings\.projection\.", r"stage\1.patch_embed.proj."),
    (r"^cvt\.encoder\.stages\.(\d+)\.embedding\.convolution_embeddings\.normalization\.", r"stage\1.patch_embed.norm."),
    (r"^cvt\.encoder\.stages\.(\d+)\.cls_token$", r"stage\1.cls_token"),
    (r"^cvt\.encoder\.stages\.(\d+)\.layers\.(\d+)\.", r"stage\1.blocks.\2."),
    (r"\.layernorm_before\.", ".norm1."), (r"\.layernorm_after\.", ".norm2."),
    (r"\.attention\.attention\.convolution_projection_query\.convolution_projection\.convolution\.",
     ".attn.conv_proj_q.conv."),
    (r"\.attention\.attention\.convolution_projection_query\.convolution_projection\.normalization\.",
     ".attn.conv_proj_q.bn."),
    (r"\.attention\.attention\.convolution_projection_key\.convolution_projection\.convolution\.",
     ".attn.conv_proj_k.conv."),
    (r"\.attention\.attention\.convolution_projection_key\.convolution_projection\.normalization\.",
     ".attn.conv_proj_k.bn."),
    (r"\.attention\.attention\.convolution_projection_value\.convolution_projection\.convolution\.",
     ".attn.conv_proj_v.conv."),
    (r"\.attention\.attention\.convolution_projection_value\.convolution_projection\.normalization\.",
     ".attn.conv_proj_v.bn."),
    (r"\.attention\.attention\.projection_query\.", ".attn.proj_q."),
    (r"\.attention\.attention\.projection_key\.", ".attn.proj_k."),
    (r"\.attention\.attention\.projection_value\.", ".attn.proj_v."),
    (r"\.attention\.output\.dense\.", ".attn.proj."),
    (r"\.intermediate\.dense\.", ".mlp.fc1."), (r"\.output\.dense\.", ".mlp.fc2."),
    (r"^layernorm\.", "norm."), (r"^classifier\.", "head."),
]


def test_microsoft_rename_file_names():
    cvt = get_family("cvt")
    renames = family_renames(cvt, cvt.layouts[0])
    assert renames.rename_key("stage2.blocks.9.attn.conv_proj_v.bn.running_var") == (
        "cvt.encoder.stages.2.layers.9.attention.attention.convolution_projection_value."
        "convolution_projection.normalization.running_var")
    assert renames.rename_key("module.stage2.cls_token") == "cvt.encoder.stages.2.cls_token"
    assert renames.rename_key("stage1.blocks.0.attn.proj.bias") == (
        "cvt.encoder.stages.1.layers.0.attention.output.dense.bias")
    assert renames.rename_key("head.weight") == "classifier.weight"
    mapping = family_mapping(get_family("cvt"))
    assert all(d.restore is not None for d in mapping.drops)


# -- Keras model (Keras only in this process) ---------------------------------------------------


def test_mapping_covers_full_size_state_dicts_of_all_variants(tmp_path):
    """Full-size transformers state_dicts (meta device, no memory) against full-size Keras shapes:
    every key is mapped or dropped with a reason, every Keras variable is assigned."""
    import keras

    from vit_porting.families.cvt.model import build_keras as build_cvt
    from vit_porting.workers.protocol import run_worker

    mapping = family_mapping(get_family("cvt"))
    # weight shapes depend on the architecture only (no position embedding): one variant of each
    specs = [get_variant(name) for name in ("cvt-13-224", "cvt-21-384-22k", "cvt-w24-384-22k")]
    all_shapes = run_worker("torch", {"job": "state_shapes", "specs": [s.to_dict() for s in specs]},
                            tmp_path)["shapes"]
    for spec in specs:
        shapes = all_shapes[spec.name]
        model = build_cvt(spec.config, initializer="zeros")
        plan = mapping.plan(shapes, {w.path: tuple(w.shape) for w in model.weights})
        dropped = mapping.dropped(shapes)
        assert len(plan) == len(model.weights) == len(shapes) - len(dropped), spec.name
        assert len(dropped) == 3 * spec.config.depth and all(k.endswith("num_batches_tracked") for k in dropped)
        del model
        keras.backend.clear_session()


def test_keras_layers_serialise_and_activations_differ():
    import keras

    from vit_porting.families.cvt.model import build_keras as build_cvt

    config = CvTConfig(image_size=64, depths=(1, 1, 1), num_classes=5)
    model = build_cvt(config, name="cvt_tiny")
    images = np.random.default_rng(0).standard_normal((2, 64, 64, 3)).astype(np.float32)
    out = {k: keras.ops.convert_to_numpy(v) for k, v in model(images).items()}
    # 64 px: 16x16 grid in stage 0, k/v downsampled to 8x8; 4x4 + class token in stage 2
    assert out["stage0_blocks_0_attn"].shape == (2, 1, 256, 64)
    assert out["stage2_blocks_0_attn"].shape == (2, 6, 17, 5)
    assert out["cls_token"].shape == (2, 1, 384) and out["logits"].shape == (2, 5)
    np.testing.assert_allclose(out["stage2_blocks_0_attn"].sum(-1), 1.0, atol=1e-5)

    clone = keras.Model.from_config(model.get_config())
    clone.set_weights(model.get_weights())
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(clone(images)["logits"]), out["logits"])

    gelu = build_cvt(CvTConfig(image_size=64, depths=(1, 1, 1), num_classes=5, activation="gelu"))
    gelu.set_weights(model.get_weights())
    diff = np.abs(keras.ops.convert_to_numpy(gelu(images)["logits"]) - out["logits"]).max()
    assert diff / np.abs(out["logits"]).max() > 100 * TOLERANCE


# -- ports against transformers (one process per runtime) ---------------------------------------


def _check_port(report: dict, spec, batch: int) -> dict[str, dict]:
    assert report["passed"], json.dumps(report["runtimes"][0]["failing_outputs"])
    assert report["random_weights"] and report["roundtrip"]["bit_exact"] and report["roundtrip"]["strict_load"]
    outputs = _outputs(report)
    c = spec.config
    attention = [name for name in outputs if name.endswith("_attn")]
    assert len(attention) == c.depth
    for name in ("logits" if c.num_classes else "features", *attention):
        assert outputs[name]["max_normalized_diff"] <= outputs[name]["tolerance"], name
    side = [c.image_size // 4, c.image_size // 8, c.image_size // 16]
    kv = [(n + 2 * 1 - 3) // 2 + 1 for n in side]  # k/v: 3x3 depthwise, stride 2, padding 1
    assert outputs["stage0_blocks_0_attn"]["shape"] == [batch, c.num_heads[0], side[0] ** 2, kv[0] ** 2]
    last = f"stage2_blocks_{c.depths[2] - 1}"
    assert outputs[f"{last}_attn"]["shape"] == [batch, c.num_heads[2], side[2] ** 2 + 1, kv[2] ** 2 + 1]
    assert outputs[f"{last}_out"]["shape"] == [batch, side[2] ** 2 + 1, c.embed_dims[2]]
    return outputs


# every export of a CvT runs at reduced depth in test_publish.py (cvt_ported); the full-depth one is slow
@pytest.mark.parametrize("name, exports", [pytest.param("cvt-13-224", True, marks=pytest.mark.slow),
                                           ("cvt-13-384", False)])
def test_full_cvt13_port_matches_transformers(name, exports, tmp_path):
    """Full-depth CvT-13; at 224 px with every export (SavedModel, .keras, ONNX) and its runtime."""
    spec = get_variant(name)
    batch = 2 if spec.image_size == 224 else 1
    report = _port(spec, tmp_path, batch=batch, exports=exports)
    outputs = _check_port(report, spec, batch)
    folder = tmp_path / name
    assert (folder / "model.safetensors").is_file() and (folder / "parity.md").is_file()
    if exports:
        runtimes = {r["runtime"]: r for r in report["runtimes"]}
        assert {"keras_eager", "keras_file", "savedmodel", "onnxruntime"} <= set(runtimes)
        for runtime in runtimes.values():
            assert runtime["passed"] and runtime["attention_maps"] == spec.config.depth, runtime["runtime"]
        assert (folder / "model.keras").is_file() and (folder / "model.onnx").is_file()
    record = json.loads((folder / "vit_porting.json").read_text())
    assert record["pretrained_tag"] == spec.pretrained_tag and record["config"]["activation"] == "quick_gelu"
    assert record["labels"]["set"] == "imagenet-1k" and len(record["labels"]["names"]) == 1000
    assert not (folder / "config.json").exists()  # transformers' loader would compute exact GELU on these weights
    # perturbed random weights give peaked, not uniform, attention in the class-token stage
    assert outputs["stage2_blocks_0_attn"]["reference_scale"] > 0.5


@pytest.mark.parametrize("name, overrides", [
    # exact GELU on both sides: transformers' CvT unpatched
    ("cvt-21-224", {"depths": (1, 4, 3), "activation": "gelu"}),
    # feature extractor (no classifier), wide stages
    ("cvt-w24-384-22k", {"depths": (2, 2, 3), "image_size": 224, "num_classes": 0}),
])
def test_reduced_depth_ports(name, overrides, tmp_path):
    spec = _small(name, **overrides)
    report = _port(spec, tmp_path, batch=1)
    outputs = _check_port(report, spec, 1)
    if spec.config.num_classes == 0:
        assert outputs["features"]["shape"] == [1, spec.config.embed_dims[-1]]


def test_quick_gelu_reference_differs_from_gelu(tmp_path):
    """The QuickGELU patch of the reference is not a no-op: same weights, different logits."""
    result = _python("""
        import json, torch
        from vit_porting.parity.inputs import random_images
        from vit_porting.families.torch_reference import call_hf_image_classifier, run_reference
        from vit_porting.families.registry import get_family, get_variant
        from vit_porting.families.cvt.reference import build_reference as build_hf_cvt
        from vit_porting.families.cvt.reference import reference_taps as hf_cvt_taps
        from vit_porting.weights.random import perturb_
        spec = get_variant("cvt-13-224").with_config(depths=(1, 2, 3), image_size=64)
        quick = build_hf_cvt(spec)
        perturb_(quick, 0, get_family("cvt").perturbation)
        gelu = build_hf_cvt(spec.with_config(activation="gelu"))
        gelu.load_state_dict(quick.state_dict(), strict=True)
        acts = sorted({type(m).__name__ for n, m in quick.named_modules() if n.endswith("intermediate.activation")})
        images = random_images(64, 2)
        a = run_reference(quick, images, hf_cvt_taps(quick), call_hf_image_classifier)["logits"]
        b = run_reference(gelu, images, hf_cvt_taps(gelu), call_hf_image_classifier)["logits"]
        print(json.dumps({"acts": acts, "diff": float(abs(a - b).max() / abs(a).max())}))
    """, tmp_path)
    assert result["acts"] == ["QuickGELUActivation"]
    assert result["diff"] > 100 * TOLERANCE


def test_microsoft_layout_checkpoint_ports(tmp_path):
    """A checkpoint in Microsoft's original naming (.pth) is detected, renamed, ported, and its
    exported model.safetensors equals the Hugging Face-layout weights it was written from."""
    spec = _small("cvt-13-224", depths=(1, 2, 3), image_size=112)
    result = _python(f"""
        import json, re, torch
        from safetensors.torch import save_file
        from vit_porting.families.registry import get_family, variant_from_dict
        from vit_porting.families.cvt.reference import build_reference as build_hf_cvt
        from vit_porting.weights.random import perturb_
        spec = variant_from_dict(json.loads({json.dumps(json.dumps(spec.to_dict()))}))
        model = build_hf_cvt(spec)
        perturb_(model, 3, get_family("cvt").perturbation)
        state = {{k: v.detach().clone() for k, v in model.state_dict().items()}}
        save_file(state, "hf.safetensors")
        renames = {json.dumps(_TO_MICROSOFT)}
        original = {{}}
        for key, value in state.items():
            for pattern, replace in renames:
                key = re.sub(pattern, replace, key)
            original[key] = value
        torch.save(original, "cvt13_original.pth")
        print(json.dumps(sorted(original)))
    """, tmp_path)
    assert "stage2.blocks.0.attn.conv_proj_q.bn.num_batches_tracked" in result
    assert "stage2.cls_token" in result and "head.weight" in result and "norm.weight" in result
    assert not any(k.startswith(("cvt.", "classifier", "layernorm")) for k in result)

    report = _port(spec, tmp_path / "artifacts", weights=str(tmp_path / "cvt13_original.pth"), batch=1)
    assert report["passed"] and report["roundtrip"]["bit_exact"] and not report["random_weights"]
    assert any("microsoft key layout" in note for note in report["origin"]["notes"])
    from safetensors.numpy import load_file

    exported = load_file(str(tmp_path / "artifacts" / spec.name / "model.safetensors"))
    expected = load_file(str(tmp_path / "hf.safetensors"))
    assert set(exported) == set(expected)
    for key, value in expected.items():
        np.testing.assert_array_equal(exported[key], value, err_msg=key)


def test_mixed_layout_checkpoint_is_refused(tmp_path):
    _python("""
        import torch
        torch.save({"stage0.patch_embed.proj.weight": torch.zeros(64, 3, 7, 7),
                    "something.else": torch.zeros(1)}, "mixed.pth")
        print("{}")
    """, tmp_path)
    with pytest.raises(WorkerError, match="something.else") as info:
        _port(_small("cvt-13-224", depths=(1, 2, 3)), tmp_path / "a", weights=str(tmp_path / "mixed.pth"))
    assert info.value.user_error and "microsoft layout" in info.value.message


def test_pretrained_offline_names_alternatives(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-empty"))
    with pytest.raises(WorkerError) as info:
        _port(get_variant("cvt-13-384-22k"), tmp_path / "a", weights="pretrained")
    message = info.value.message
    assert info.value.user_error and "microsoft/cvt-13-384-22k" in message
    assert "--weights random" in message and "HF_HUB_OFFLINE" in message
