"""ViT ports through the real pipeline (one process per runtime) against timm, the variants
against timm's own registry, checkpoint files of the DeiT repository, and the rollout picture.

Ports run at depth 1 (each block kind once): every conversion path of the family, and every
exported runtime once (a distilled DeiT, the most outputs and heads). The full-size check builds
every variant's timm model on the meta device (no memory) and maps its state_dict onto the
full-size Keras model.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest

from vit_porting.families.registry import get_family, get_variant
from vit_porting.families.vit import VARIANTS
from vit_porting.mapping.engine import family_mapping
from vit_porting.parity.compare import load_policy
from vit_porting.pipeline import PortOptions, port
from vit_porting.workers.protocol import QUIET_ENV

from conftest import ROOT, run_torch_job

RUNTIMES = {"keras_eager", "keras_compiled", "keras_file", "savedmodel", "onnxruntime"}


def _port(spec, out_root: Path, **options) -> dict:
    return port(spec, PortOptions(out_root=out_root, log=lambda _msg: None, **{"weights": "random", **options}))


def _assert_within_policy(report: dict) -> None:
    policy = load_policy()["cpu"]
    assert report["passed"], [(r["runtime"], r["failing_outputs"]) for r in report["runtimes"]]
    assert report["roundtrip"]["bit_exact"]
    for runtime in report["runtimes"]:
        for o in runtime["outputs"]:
            assert o["tolerance"] == policy[o["kind"]]["max_normalized_diff"]
            assert o["max_normalized_diff"] <= o["tolerance"], (runtime["runtime"], o)


@pytest.mark.parametrize("name, overrides", [
    ("deit_small_patch16_224", {}),
    # no registered variant pools by average; the config can (fc_norm, pre-norm without patch bias, no qkv bias)
    ("vit_small_patch16_224", {"global_pool": "avg", "class_token": False, "pre_norm": True, "qkv_bias": False}),
])
def test_reduced_depth_ports_match_timm(tmp_path, name, overrides):
    report = _port(get_variant(name).with_config(depth=1, **overrides), tmp_path, exports=False, photos=False)
    _assert_within_policy(report)
    (eager,) = report["runtimes"]
    assert {o["output"] for o in eager["outputs"]} == {"logits", "blocks_0_attn", "blocks_0_out"}


@pytest.fixture(scope="module")
def distilled_port(tmp_path_factory) -> tuple[dict, Path]:
    out = tmp_path_factory.mktemp("vit") / "artifacts"
    spec = get_variant("deit_tiny_distilled_patch16_224").with_config(depth=2)
    return _port(spec, out), out / spec.name


def test_distilled_deit_passes_on_every_runtime(distilled_port):
    report, folder = distilled_port
    _assert_within_policy(report)
    cpu = {r["runtime"]: r for r in report["runtimes"] if r["device"] == "cpu"}
    assert set(cpu) == RUNTIMES
    for name, r in cpu.items():
        assert r["attention_maps"] == 2 and r["photos"]["passed"], name
        assert r["top1_agreement"] == 1.0 and r["photos"]["top1_agreement"] == 1.0, name
    # 12 per block; patch embedding 2, cls, dist and position 3, final norm 2, two heads 4
    assert report["roundtrip"]["num_tensors"] == 2 * 12 + 11
    # timm opens the folder by itself (config.json: architecture, depth=2, class names) as the card says
    assert 'timm.create_model("local-dir:.", pretrained=True)' in (folder / "README.md").read_text()
    script = textwrap.dedent(f"""
        import timm, torch
        from safetensors.torch import load_file
        ours = timm.create_model("local-dir:{folder}", pretrained=True).eval()
        theirs = timm.create_model("deit_tiny_distilled_patch16_224", depth=2).eval()
        theirs.load_state_dict(load_file("{folder}/model.safetensors"))
        x = torch.randn(2, 3, 224, 224)
        with torch.no_grad():
            print(type(ours).__name__, torch.equal(ours(x), theirs(x)), ours.pretrained_cfg["label_names"][281])
    """)
    proc = subprocess.run([sys.executable, "-c", script], env={**os.environ, **QUIET_ENV, "HF_HUB_OFFLINE": "1"},
                          capture_output=True, text=True, timeout=300)
    assert proc.stdout.split() == ["VisionTransformerDistilled", "True", "n02123045"], proc.stderr[-2000:]


def test_rollout_picture_is_the_models_own_rollout(distilled_port, tmp_path):
    """The drawn rollout and head maps equal a numpy computation from model.keras's outputs."""
    import keras
    import skimage.data
    from PIL import Image

    import vit_porting.families.vit.model  # noqa: F401  (registers the layers for load_model)
    from vit_porting.attention import attention_figure

    _, folder = distilled_port
    image = tmp_path / "chelsea.png"
    Image.fromarray(skimage.data.chelsea()).save(image)
    res = attention_figure(folder, image, out=tmp_path / "a.png", log=lambda _m: None)
    model = keras.saving.load_model(folder / "model.keras", compile=False)
    outputs = {k: keras.ops.convert_to_numpy(v) for k, v in model(res["input"][None], training=False).items()}
    rollout = np.eye(198)
    for block in ("blocks_0_attn", "blocks_1_attn"):
        mixed = outputs[block][0].astype(np.float64).mean(axis=0) + np.eye(198)
        rollout = (mixed / mixed.sum(axis=1, keepdims=True)) @ rollout
    np.testing.assert_allclose(res["rollout"], rollout[0, 2:].reshape(14, 14), rtol=1e-5, atol=1e-7)
    assert res["rollout_blocks"] == ["blocks_0_attn", "blocks_1_attn"]
    # the last block's class-token attention, each head, keys past the class and distillation tokens
    assert list(res["maps"]) == ["blocks_1_attn"]
    np.testing.assert_allclose(res["maps"]["blocks_1_attn"], outputs["blocks_1_attn"][0, :, 0, 2:].reshape(3, 14, 14),
                               atol=1e-6)
    kinds = [p["kind"] for p in res["panels"]]
    assert kinds == ["input", "saliency", "rollout", "head", "head", "head"]
    with Image.open(res["png"]) as png:
        assert png.format == "PNG"


def _write_deit_repo_pth(source: Path, pth: Path) -> None:
    """The DeiT repository's checkpoint layout: {'model': ...} with 'module.' prefixes (a
    DistributedDataParallel save) and DeiT III's LayerScale as blocks.N.gamma_1 / gamma_2."""
    code = ("import re, sys, torch; from safetensors.torch import load_file; sd = load_file(sys.argv[1]);"
            "sd = {'module.' + re.sub(r'\\.ls([12])\\.gamma$', r'.gamma_\\1', k): v for k, v in sd.items()};"
            "torch.save({'model': sd, 'optimizer': {}, 'epoch': 299}, sys.argv[2])")
    subprocess.run([sys.executable, "-c", code, str(source), str(pth)], check=True, timeout=300)


def test_deit3_from_a_deit_repository_checkpoint(tmp_path):
    """DeiT III (LayerScale, position embedding over the patches only), its perturbed random
    weights saved as the DeiT repository writes a .pth: ports, and the round trip gives timm's keys."""
    spec = get_variant("deit3_small_patch16_224").with_config(depth=1)
    source = tmp_path / "w.safetensors"
    run_torch_job({"job": "source", "spec": spec.to_dict(), "weights": "random", "seed": 5, "out": str(source)},
                  tmp_path)
    pth = tmp_path / "deit3" / "checkpoint.pth"
    pth.parent.mkdir()
    _write_deit_repo_pth(source, pth)
    report = _port(spec, tmp_path / "out", weights=str(pth), exports=False, photos=False)
    _assert_within_policy(report)
    assert report["origin"]["kind"] == "file" and not report["random_weights"]


def test_distilled_checkpoint_as_feature_extractor_and_with_a_new_head(tmp_path):
    """Both of a distilled DeiT's classifiers (head, head_dist) are dropped, or replaced, together."""
    spec = get_variant("deit_tiny_distilled_patch16_224").with_config(depth=1)
    source = tmp_path / "w.safetensors"
    run_torch_job({"job": "source", "spec": spec.to_dict(), "weights": "random", "out": str(source)}, tmp_path)
    for num_classes, head, note in ((0, "features", "dropped"), (10, "logits", "replaced")):
        report = _port(spec.with_config(num_classes=num_classes), tmp_path / head, weights=str(source),
                       exports=False, new_head=True, photos=False)
        _assert_within_policy(report)
        assert report["runtimes"][0]["head_output"] == head
        assert any(f"classifier {note}" in n for n in report["origin"]["notes"]), report["origin"]["notes"]


# -- the variants against timm's registry --------------------------------------------------------

_TIMM_FACTS = textwrap.dedent("""
    import json, sys
    import timm, torch
    from timm.layers import LayerScale
    from timm.models.deit import VisionTransformerDistilled
    from vit_porting.families.registry import get_family

    facts = {}
    for spec in get_family("vit").variants:
        cfg = timm.models.get_pretrained_cfg(spec.timm_name)
        with torch.device("meta"):
            model = timm.create_model(spec.timm_name, pretrained=False)  # timm's own model args
        block = model.blocks[0]
        facts[spec.name] = {
            "tag": f"{spec.timm_name}.{cfg.tag}",
            "num_classes": cfg.num_classes,
            "preprocessing": {"input_size": cfg.input_size[-1], "crop_pct": cfg.crop_pct, "crop_mode": cfg.crop_mode,
                              "interpolation": cfg.interpolation, "mean": list(cfg.mean), "std": list(cfg.std)},
            "config": {"image_size": model.patch_embed.img_size[0], "patch_size": model.patch_embed.patch_size[0],
                       "in_channels": model.patch_embed.proj.in_channels, "num_classes": model.num_classes,
                       "embed_dim": model.embed_dim, "depth": len(model.blocks), "num_heads": block.attn.num_heads,
                       "mlp_ratio": block.mlp.fc1.out_features / model.embed_dim,
                       "qkv_bias": block.attn.qkv.bias is not None, "class_token": model.has_class_token,
                       "distilled": isinstance(model, VisionTransformerDistilled),
                       "no_embed_class": model.no_embed_class,
                       "init_values": block.ls1.init_values if isinstance(block.ls1, LayerScale) else None,
                       "pre_norm": not isinstance(model.norm_pre, torch.nn.Identity),
                       "global_pool": model.global_pool,
                       "use_fc_norm": not isinstance(model.fc_norm, torch.nn.Identity),
                       "layer_norm_eps": block.norm1.eps},
            "shapes": {k: list(v.shape) for k, v in model.state_dict().items()},
        }
    json.dump(facts, open(sys.argv[1], "w"))
""")


@pytest.fixture(scope="module")
def timm_facts(tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("timm") / "facts.json"
    env = {**QUIET_ENV, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, "-c", _TIMM_FACTS, str(out)], capture_output=True, text=True,
                          timeout=600, env={**os.environ, **env})
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(out.read_text())


def test_variants_are_timms(timm_facts):
    """Pretrained tag, preprocessing and architecture of every variant equal timm's defaults."""
    assert set(timm_facts) == {v.name for v in VARIANTS}
    for spec in VARIANTS:
        facts = timm_facts[spec.name]
        assert spec.pretrained_tag == facts["tag"] and facts["num_classes"] == 1000, spec.name
        assert spec.preprocessing == facts["preprocessing"], spec.name
        ours = {**asdict(spec.config), "use_fc_norm": spec.config.use_fc_norm}
        del ours["fc_norm"]
        assert ours == facts["config"], spec.name
        assert get_family("vit").hub_repo(spec) == f"timm/{facts['tag']}"


def test_mapping_covers_full_size_state_dicts_of_all_variants(timm_facts, tmp_path):
    """timm's full-size state_dicts (meta device) against full-size Keras shapes, and the
    reference the parity harness builds from our config has the same state_dict."""
    import keras

    from vit_porting.families.vit.model import build_keras

    ours = run_torch_job({"job": "state_shapes", "specs": [s.to_dict() for s in VARIANTS]}, tmp_path)["shapes"]
    mapping = family_mapping(get_family("vit"))
    keras_shapes: dict = {}  # DeiT and AugReg ViT of one size share a config
    for spec in VARIANTS:
        shapes = timm_facts[spec.name]["shapes"]
        assert ours[spec.name] == shapes, spec.name
        if spec.config not in keras_shapes:
            with keras.StatelessScope():  # variables with shapes but no values: nothing allocated
                model = build_keras(spec.config, initializer="zeros")
            keras_shapes[spec.config] = {w.path: tuple(w.shape) for w in model.weights}
            del model
            keras.backend.clear_session()
        plan = mapping.for_config(spec.config).plan(shapes, keras_shapes[spec.config])
        assert len(plan) == len(shapes) == len(keras_shapes[spec.config]), spec.name
