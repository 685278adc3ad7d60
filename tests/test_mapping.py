"""The mapping engine: placeholders, transforms, strict errors, backward run, file errors."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from vit_porting.families.registry import get_family
from vit_porting.mapping.engine import MappingError, MappingFileError, MappingSpec, family_mapping
from vit_porting.mapping.transforms import TRANSFORMS, get_transform, register_transform

RULES = """
family: toy
source: test
rename:
  - {pattern: '^module\\.', replace: ''}
rules:
  - {from: 'blocks.{i}.fc.weight', to: 'blocks_{i}/fc/kernel', transform: linear}
  - {from: 'blocks.{i}.fc.bias', to: 'blocks_{i}/fc/bias'}
  - {from: 'stem.weight', to: 'stem/kernel', transform: conv2d}
drop:
  - {key: 'blocks.{i}.bn.num_batches_tracked', reason: 'training counter, not a weight'}
"""


def _spec(tmp_path, text=RULES) -> MappingSpec:
    path = tmp_path / "toy.yaml"
    path.write_text(text)
    return MappingSpec.load(path)


def _source(rng, blocks=12):
    sd = {"stem.weight": rng.standard_normal((8, 3, 4, 4)).astype(np.float32)}
    for i in range(blocks):
        sd[f"blocks.{i}.fc.weight"] = rng.standard_normal((5, 7)).astype(np.float32)
        sd[f"blocks.{i}.fc.bias"] = rng.standard_normal((5,)).astype(np.float32)
    return sd


def _targets(blocks=12):
    shapes = {"stem/kernel": (4, 4, 3, 8)}
    for i in range(blocks):
        shapes[f"blocks_{i}/fc/kernel"] = (7, 5)
        shapes[f"blocks_{i}/fc/bias"] = (5,)
    return shapes


def test_placeholders_and_transforms_map_every_key(tmp_path):
    rng = np.random.default_rng(0)
    sd = _source(rng)
    out = dict(_spec(tmp_path).forward(sd, _targets()))
    assert set(out) == set(_targets())
    np.testing.assert_array_equal(out["blocks_11/fc/kernel"], sd["blocks.11.fc.weight"].T)
    np.testing.assert_array_equal(out["stem/kernel"], sd["stem.weight"].transpose(2, 3, 1, 0))


def test_backward_inverts_forward_bit_exact(tmp_path):
    sd = _source(np.random.default_rng(1))
    spec = _spec(tmp_path)
    back = spec.backward(dict(spec.forward(sd, _targets())))
    assert set(back) == set(sd)
    for key in sd:
        assert back[key].tobytes() == sd[key].tobytes(), key


def test_rename_and_declared_drop(tmp_path):
    sd = {f"module.{k}": v for k, v in _source(np.random.default_rng(2), blocks=2).items()}
    sd["module.blocks.0.bn.num_batches_tracked"] = np.zeros((), np.int64)
    out = dict(_spec(tmp_path).forward(sd, _targets(blocks=2)))
    assert set(out) == set(_targets(blocks=2))


def test_strict_error_lists_every_offender_at_once(tmp_path):
    sd = _source(np.random.default_rng(3), blocks=2)
    sd["extra.thing"] = np.zeros((3,), np.float32)  # unused source key
    sd["blocks.1.fc.weight"] = np.zeros((5, 6), np.float32)  # shape mismatch
    targets = {**_targets(blocks=2), "head/kernel": (7, 10)}  # unassigned Keras variable
    with pytest.raises(MappingError) as info:
        list(_spec(tmp_path).forward(sd, targets))
    err, text = info.value, str(info.value)
    assert set(err.unused_sources) == {"extra.thing"}
    assert set(err.unassigned_targets) == {"head/kernel"}
    assert len(err.shape_mismatches) == 1
    mismatch = err.shape_mismatches[0]
    assert (mismatch.source_shape, mismatch.transformed_shape, mismatch.target_shape) == ((5, 6), (6, 5), (7, 5))
    for needle in ("extra.thing", "head/kernel", "blocks.1.fc.weight", "(5, 6)", "(6, 5)", "(7, 5)",
                   "line 7", "blocks.{i}.fc.weight"):
        assert needle in text, needle


def test_key_matched_by_two_rules_is_an_error(tmp_path):
    text = RULES.replace("drop:", "  - {from: 'blocks.{j}.fc.bias', to: 'other_{j}/bias'}\ndrop:")
    sd = _source(np.random.default_rng(4), blocks=1)
    targets = {**_targets(blocks=1), "other_0/bias": (5,)}
    with pytest.raises(MappingError) as info:
        list(_spec(tmp_path, text).forward(sd, targets))
    assert "blocks.0.fc.bias" in info.value.multiply_matched
    assert "other_0/bias" in info.value.unassigned_targets


def test_two_keys_assigned_to_one_variable_is_an_error(tmp_path):
    spec = _spec(tmp_path, RULES.replace("^module", "^x"))
    sd = _source(np.random.default_rng(5), blocks=1)
    sd["x.stem.weight"] = sd["stem.weight"].copy()
    with pytest.raises(MappingError) as info:
        list(spec.forward(sd, _targets(blocks=1)))
    assert sorted(info.value.assigned_twice["stem/kernel"]) == ["stem.weight", "x.stem.weight"]


def test_refused_plan_assigns_nothing(tmp_path):
    spec = _spec(tmp_path)
    sd = _source(np.random.default_rng(6), blocks=1)
    sd["junk"] = np.zeros(1, np.float32)
    produced = []
    with pytest.raises(MappingError):
        for item in spec.forward(sd, _targets(blocks=1)):
            produced.append(item)
    assert produced == []


def test_a_rule_exists_only_for_the_configs_its_when_names(tmp_path):
    """One file for models with and without a bias: where ``when`` does not hold, the rule is
    left out and its key, if present, is refused as unused; a field the config lacks is refused."""
    from types import SimpleNamespace

    spec = _spec(tmp_path, RULES.replace("to: 'blocks_{i}/fc/bias'}", "to: 'blocks_{i}/fc/bias', when: fc_bias}"))
    sd = _source(np.random.default_rng(7), blocks=2)
    assert set(dict(spec.for_config(SimpleNamespace(fc_bias=True)).forward(sd, _targets(2)))) == set(_targets(2))
    without = spec.for_config(SimpleNamespace(fc_bias=False))
    no_bias = {k: v for k, v in sd.items() if not k.endswith("bias")}
    targets = {k: v for k, v in _targets(2).items() if not k.endswith("bias")}
    assert set(dict(without.forward(no_bias, targets))) == set(targets)
    assert set(without.backward(dict(without.forward(no_bias, targets)))) == set(no_bias)
    with pytest.raises(MappingError) as info:  # the bias is there although the config says none
        list(without.forward(sd, targets))
    assert set(info.value.unused_sources) == {"blocks.0.fc.bias", "blocks.1.fc.bias"}
    with pytest.raises(MappingError) as info:  # the config wants a bias the checkpoint lacks
        list(spec.for_config(SimpleNamespace(fc_bias=True)).forward(no_bias, _targets(2)))
    assert info.value.unmatched_rules
    with pytest.raises(MappingFileError, match=r"toy\.yaml:8: .*has no field 'fc_bias'"):
        spec.for_config(SimpleNamespace(bias=True))


@pytest.mark.parametrize("text, line, needle", [
    ("family: toy\nrules:\n  - {from: a, to: b\n", 3, "YAML error"),  # the unclosed line, not the end
    ("family: toy\nrules:\n  - {from: a, to: b, transform: lnear}\n", 3, "unknown transform 'lnear'"),
    ("family: toy\nrules:\n  - {from: 'a.{1x}', to: 'b_{1x}'}\n", 3, "bad placeholder"),
    ("family: toy\nrules:\n  - {from: 'a.{i}', to: 'b'}\n", 3, "placeholders differ"),
    ("family: toy\nrules:\n  - {from: a, to: b}\n  - {from: c, to: b}\n", 4, "duplicate target"),
    ("family: toy\nrules:\n  - {from: a, to: b, from: c}\n", 3, "duplicate key"),
    ("family: toy\nrules:\n  - {from: 'a.{i', to: 'b'}\n", 3, "unbalanced brace"),
    ("family: toy\nrules:\n  - {from: a}\n", 3, "missing to"),
    ("family: toy\nrules:\n  - {from: a, to: b}\ndrop:\n  - {key: c}\n", 5, "reason"),
    ("family: toy\nrulez: []\n", 1, "unknown top-level"),
    ("family: toy\nrules:\n  - {from: a, to: b, when: 'has bias'}\n", 3, "'when' is a config field name"),
])
def test_malformed_mapping_names_file_and_line(tmp_path, text, line, needle):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(MappingFileError) as info:
        MappingSpec.load(path)
    assert info.value.line == line, str(info.value)
    assert str(info.value).startswith(f"{path}:{line}:")
    assert needle in str(info.value)


def test_transforms_are_inverse_pairs():
    rng = np.random.default_rng(7)
    shapes = {"identity": (3, 4), "linear": (3, 4), "conv2d": (8, 3, 5, 5), "depthwise_conv2d": (6, 1, 3, 3)}
    for name, shape in shapes.items():
        x = rng.standard_normal(shape)
        t = get_transform(name)
        np.testing.assert_array_equal(t.inverse(t.forward(x)), x)
    assert get_transform("conv2d").forward(np.zeros((8, 3, 5, 4))).shape == (5, 4, 3, 8)
    assert get_transform("depthwise_conv2d").forward(np.zeros((6, 1, 3, 2))).shape == (3, 2, 6, 1)


def test_a_family_can_register_a_transform_without_touching_the_engine(tmp_path):
    if "test_flip" not in TRANSFORMS:
        register_transform("test_flip", lambda x: x[::-1], lambda x: x[::-1])
    spec = _spec(tmp_path, "family: toy\nrules:\n  - {from: a, to: b, transform: test_flip}\n")
    out = dict(spec.forward({"a": np.arange(3.0)}, {"b": (3,)}))
    np.testing.assert_array_equal(out["b"], [2.0, 1.0, 0.0])
    with pytest.raises(ValueError, match="already registered"):
        register_transform("test_flip", lambda x: x, lambda x: x)


def test_cait_mapping_file_loads():
    spec = family_mapping(get_family("cait"))
    assert spec.family == "cait" and len(spec.rules) >= 40
    assert {r.transform for r in spec.rules} == {"identity", "linear", "conv2d"}


# -- property-based: random key sets, placeholders and shapes --------------------------------

_names = st.sampled_from(["fc", "proj", "qkv", "norm", "mlp"])


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_random_mappings_map_exactly_or_name_offenders(tmp_path, data):
    layers = data.draw(st.lists(_names, min_size=1, max_size=4, unique=True))
    blocks = data.draw(st.integers(1, 12))
    transforms = {name: data.draw(st.sampled_from(["identity", "linear"])) for name in layers}
    text = "family: toy\nrules:\n" + "".join(
        f"  - {{from: 'b.{{i}}.{n}.w', to: 'b_{{i}}/{n}/w', transform: {transforms[n]}}}\n" for n in layers)
    spec = MappingSpec.from_data(__import__("yaml").safe_load(text), "prop.yaml")
    rng = np.random.default_rng(data.draw(st.integers(0, 2**16)))
    sd, targets = {}, {}
    for i in range(blocks):
        for n in layers:
            a, b = data.draw(st.integers(1, 4)), data.draw(st.integers(1, 4))
            sd[f"b.{i}.{n}.w"] = rng.standard_normal((a, b)).astype(np.float32)
            targets[f"b_{i}/{n}/w"] = (b, a) if transforms[n] == "linear" else (a, b)
    sabotage = data.draw(st.sampled_from(["none", "extra", "missing", "shape"]))
    victim = data.draw(st.sampled_from(sorted(sd)))
    if sabotage == "extra":
        sd["stray.key"] = np.zeros(2, np.float32)
    elif sabotage == "missing":
        del sd[victim]
    elif sabotage == "shape":
        sd[victim] = np.zeros((5, 6), np.float32)
    if sabotage == "none":
        out = dict(spec.forward(sd, targets))
        assert set(out) == set(targets)
        back = spec.backward(out)
        assert all(back[k].tobytes() == sd[k].tobytes() for k in sd)
        return
    with pytest.raises(MappingError) as info:
        dict(spec.forward(sd, targets))
    err = info.value
    if sabotage == "extra":
        assert set(err.unused_sources) == {"stray.key"}
    elif sabotage == "missing":
        target = victim.replace("b.", "b_", 1).replace(".", "/")
        assert set(err.unassigned_targets) == {target}
    else:
        assert [m.source_key for m in err.shape_mismatches] == [victim]
