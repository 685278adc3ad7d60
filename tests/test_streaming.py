"""Memory-bounded plumbing: streamed safetensors, output stores, call planning, the eager walker.

These are what keep a cait_m48_448 port near its weight bytes (issue 6); the benchmark
measures the memory, these check that the arithmetic and the files are unchanged by it.
"""

from __future__ import annotations

import json
import struct

import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from vit_porting.mapping.engine import MappingSpec
from vit_porting.mapping.tensor_io import LazyArray, SafetensorsReader, UnsupportedDtype, write_safetensors
from vit_porting.parity.outputs import OutputStore, load_outputs, plan_calls, read_outputs, run_on_inputs, static_shapes

from test_mapping import RULES, _source, _targets


def _tensors(rng) -> dict[str, np.ndarray]:
    return {"a.weight": rng.standard_normal((3, 5)).astype(np.float32),
            "b.bias": rng.standard_normal(7).astype(np.float64),
            "c.count": np.array(4, dtype=np.int64),  # a 0-d tensor (BatchNorm's num_batches_tracked)
            "d.mask": rng.integers(0, 2, (2, 2)).astype(np.bool_),
            "e.half": rng.standard_normal((4, 1)).astype(np.float16),
            "f.empty": np.zeros((0, 3), np.float32)}


def test_streamed_file_loads_in_safetensors_and_back(tmp_path):
    tensors = _tensors(np.random.default_rng(0))
    path = tmp_path / "ours.safetensors"
    size = write_safetensors(tensors, path, metadata={"format": "pt"})
    assert size == path.stat().st_size
    theirs = load_file(str(path))
    assert set(theirs) == set(tensors)
    for key, value in tensors.items():
        assert theirs[key].dtype == value.dtype and theirs[key].shape == value.shape, key
        assert theirs[key].tobytes() == value.tobytes(), key
    from safetensors import safe_open

    with safe_open(str(path), "np") as handle:
        assert handle.metadata() == {"format": "pt"}
    # and a file written by safetensors reads back here, bit for bit
    save_file(tensors, str(tmp_path / "theirs.safetensors"))
    reader = SafetensorsReader(tmp_path / "theirs.safetensors")
    for key, value in tensors.items():
        assert reader[key].shape == value.shape and reader[key].tobytes() == value.tobytes(), key


def test_lazy_tensors_are_produced_one_at_a_time(tmp_path):
    """The writer asks for each tensor when it writes it: at most one is alive at a time."""
    alive, peak, order = [0], [0], []

    class Tracked(np.ndarray):
        def __del__(self):
            alive[0] -= 1

    def produce(name, shape):
        def read():
            alive[0] += 1
            peak[0] = max(peak[0], alive[0])
            order.append(name)
            return np.ones(shape, np.float32).view(Tracked)
        return read

    lazy = {f"t{i}": LazyArray((100, 10), np.float32, produce(f"t{i}", (100, 10))) for i in range(6)}
    write_safetensors(lazy, tmp_path / "lazy.safetensors")
    assert order == sorted(lazy) and peak[0] == 1
    assert all(v.shape == (100, 10) for v in load_file(str(tmp_path / "lazy.safetensors")).values())


def test_reader_refuses_truncated_and_foreign_files(tmp_path):
    path = tmp_path / "t.safetensors"
    write_safetensors({"w": np.arange(1000, dtype=np.float32)}, path)
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(ValueError, match="truncated or corrupt"):
        SafetensorsReader(path)["w"]
    (tmp_path / "x.safetensors").write_bytes(struct.pack("<Q", 10**9) + b"{}")
    with pytest.raises(ValueError, match="not a safetensors file"):
        SafetensorsReader(tmp_path / "x.safetensors")
    header = json.dumps({"w": {"dtype": "BF16", "shape": [2], "data_offsets": [0, 4]}}).encode()
    (tmp_path / "bf16.safetensors").write_bytes(struct.pack("<Q", len(header)) + header + b"\0" * 4)
    with pytest.raises(UnsupportedDtype, match="BF16"):
        SafetensorsReader(tmp_path / "bf16.safetensors")["w"]


def test_lazy_backward_mapping_writes_the_same_file(tmp_path):
    """The mapping run backwards on lazy weights gives the bytes the eager run gives."""
    (tmp_path / "toy.yaml").write_text(RULES)
    spec = MappingSpec.load(tmp_path / "toy.yaml")
    keras_side = dict(spec.forward(_source(np.random.default_rng(2)), _targets()))
    eager = spec.backward(keras_side)
    lazy = spec.backward({k: LazyArray(v.shape, v.dtype, lambda v=v: v) for k, v in keras_side.items()})
    assert all(isinstance(v, LazyArray) for v in lazy.values())
    write_safetensors(lazy, tmp_path / "lazy.safetensors")
    back = load_file(str(tmp_path / "lazy.safetensors"))
    assert set(back) == set(eager)
    for key in eager:
        assert back[key].tobytes() == eager[key].tobytes(), key
    # and the forward plan reads lazy sources by shape alone
    reader = SafetensorsReader(tmp_path / "lazy.safetensors")
    again = dict(spec.forward(reader.lazy(), _targets()))
    for key, value in keras_side.items():
        np.testing.assert_array_equal(again[key], value)


def test_plan_fits_the_budget_and_covers_every_output():
    shapes = {"logits": (10,), **{f"blocks_{i}_attn": (4, 50, 50) for i in range(10)}}
    per_map = 4 * 50 * 50 * 4
    assert plan_calls(shapes, batch=2, budget_bytes=10**9) == [(list(shapes), False)]
    plan = plan_calls(shapes, batch=2, budget_bytes=3 * per_map + 40)
    assert all(per_image for _, per_image in plan)
    assert [n for names, _ in plan for n in names] == list(shapes)  # each once, in model order
    assert all(sum(4 * np.prod(shapes[n]) for n in names) <= 3 * per_map + 40 for names, _ in plan)
    assert plan_calls(shapes, batch=2, budget_bytes=per_map, split_outputs=False) == [(list(shapes), True)]
    # an output larger than the budget is a call of its own
    assert plan_calls({"big": (1000,), "small": (1,)}, 1, 100) == [(["big"], True), (["small"], True)]
    assert static_shapes({"a": (None, 3, 4)}) == {"a": (3, 4)}
    assert static_shapes({"a": ("batch", None, 4)}) is None


def test_run_on_inputs_splits_calls_and_writes_the_same_outputs(tmp_path):
    """Per-image, per-group calls write exactly what one whole-batch call writes."""
    rng = np.random.default_rng(3)
    images = rng.standard_normal((3, 4, 4, 1)).astype(np.float32)
    photos = rng.standard_normal((2, 4, 4, 1)).astype(np.float32)
    np.savez(tmp_path / "inputs.npz", images=images, photos=photos, photo_names=np.asarray(["p", "q"]))
    calls = []

    def run(x, names=None):
        calls.append((len(x), None if names is None else tuple(names)))
        everything = {"logits": x.reshape(len(x), -1)[:, :3] * 2,
                      **{f"blocks_{i}_attn": np.repeat(x, i + 1, axis=-1) for i in range(4)}}
        return {k: v for k, v in everything.items() if names is None or k in names}

    shapes = {"logits": (3,), **{f"blocks_{i}_attn": (4, 4, i + 1) for i in range(4)}}
    whole = run_on_inputs(run, tmp_path / "inputs.npz", "logits", OutputStore(tmp_path / "whole"), shapes)
    assert whole["per_image"] is False and calls == [(3, tuple(shapes)), (2, ("logits",))]
    calls.clear()
    split = run_on_inputs(run, tmp_path / "inputs.npz", "logits", OutputStore(tmp_path / "split"), shapes,
                          budget_mb=200 / 2**20)
    assert split["per_image"] is True and len(split["groups"]) > 1
    assert all(n == 1 for n, _ in calls)  # one image (or one photograph) per call
    a, b = load_outputs(tmp_path / "whole"), load_outputs(tmp_path / "split")
    assert list(a) == list(b) and "photos:logits" in a
    for key in a:
        assert a[key].tobytes() == b[key].tobytes(), key
    stored = read_outputs(tmp_path / "split")
    assert isinstance(stored["blocks_3_attn"], np.memmap) and stored["blocks_3_attn"].shape == (3, 4, 4, 4)
    # a logits-only graph after its attention twin was split: the same one image per call
    calls.clear()
    head_only = run_on_inputs(lambda x, names=None: {"logits": run(x, ["logits"])["logits"]}, tmp_path / "inputs.npz",
                              "logits", OutputStore(tmp_path / "head"), {"logits": (3,)}, one_image=True)
    assert head_only["per_image"] is True and calls == [(1, ("logits",))] * 5
    assert load_outputs(tmp_path / "head")["logits"].tobytes() == a["logits"].tobytes()


def test_store_refuses_a_slice_of_another_shape(tmp_path):
    store = OutputStore(tmp_path)
    store.write("x", np.zeros((1, 3), np.float32), start=0, total=2)
    with pytest.raises(ValueError, match="differs"):
        store.write("x", np.zeros((1, 4), np.float32), start=1, total=2)


@pytest.mark.parametrize("family", ["cait", "cvt"])
def test_eager_walker_equals_keras_call(family):
    """``call_functional`` runs the same ops as ``model(x)``: identical results, all or some outputs."""
    import keras

    from vit_porting.families.registry import get_variant
    from vit_porting.mapping.convert import KerasRunner, build_keras_model, call_functional

    spec = (get_variant("cait_xxs24_224").with_config(depth=2, image_size=64, num_classes=7) if family == "cait"
            else get_variant("cvt-13-224").with_config(depths=(1, 2, 3), image_size=64, num_classes=7))
    keras.utils.set_random_seed(0)
    model = build_keras_model(spec, initializer="random", intermediates=True)
    x = np.random.default_rng(4).standard_normal((2, 64, 64, 3)).astype(np.float32)
    expected = {k: keras.ops.convert_to_numpy(v) for k, v in model(x, training=False).items()}
    got = {k: keras.ops.convert_to_numpy(v) for k, v in call_functional(model, x).items()}
    assert set(got) == set(expected)
    for key in expected:
        assert got[key].tobytes() == expected[key].tobytes(), key
    some = [k for k in expected if k.endswith("_attn")][1:3] + ["logits"]
    subset = KerasRunner(model)(x, some)
    assert set(subset) == set(some)
    for key in some:
        assert subset[key].tobytes() == expected[key].tobytes(), key
    compiled = KerasRunner(model, compiled=True)(x, some)
    for key in some:
        np.testing.assert_allclose(compiled[key], expected[key], atol=1e-5, rtol=1e-5)
    shapes = KerasRunner(model).output_shapes()
    assert all(shapes[k][1:] == expected[k].shape[1:] for k in expected)


def test_port_within_a_tiny_output_budget_splits_every_runtime_and_passes(tmp_path, quiet_log):
    """End to end with outputs far over the budget: every runtime computes one image and one group
    of outputs per call (the reference streams its hooks), and parity still holds."""
    from vit_porting.families.registry import get_variant
    from vit_porting.pipeline import PortOptions, port

    spec = get_variant("cait_xxs24_224").with_config(depth=2, image_size=64, num_classes=10)
    report = port(spec, PortOptions(weights="random", out_root=tmp_path, photos=False, output_budget_mb=0.005,
                                    log=quiet_log))
    assert report["passed"], [r for r in report["runtimes"] if not r["passed"]]
    runtimes = {r["runtime"]: r for r in report["runtimes"]}
    assert set(runtimes) == {"keras_eager", "keras_compiled", "keras_file", "savedmodel", "onnxruntime"}
    for name, summary in runtimes.items():
        assert summary["calls"]["per_image"] is True, name
        # the SavedModel computes every output in each call (a subset costs it as much memory)
        assert (len(summary["calls"]["groups"]) == 1) == (name == "savedmodel"), name
    assert report["options"]["output_budget_mb"] == 0.005
