"""Keras side of a port: build the model, assign converted weights, read them back.

The contract follows KerasHub's converters (a ``convert_weights`` per port and a loader
that assigns one weight at a time with ``port_weight``), but which tensor goes where is
declared in the family's YAML mapping, not written here.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import keras
import numpy as np

from vit_porting.families.base import VariantSpec
from vit_porting.families.registry import get_family
from vit_porting.mapping.engine import MappingSpec
from vit_porting.mapping.tensor_io import LazyArray, SafetensorsReader


def build_keras_model(spec: VariantSpec, initializer: str = "zeros", intermediates: bool = False) -> keras.Model:
    """The Keras model of ``spec``; ``zeros`` skips a random init the converter overwrites."""
    return get_family(spec.family).keras().build_keras(spec.config, initializer=initializer, name=spec.name,
                                                       intermediates=intermediates)


def variables_by_path(model: keras.Model) -> dict[str, keras.Variable]:
    variables = {}
    for variable in model.weights:
        if variable.path in variables:
            raise ValueError(f"two Keras variables share the path {variable.path!r}; rename a layer")
        variables[variable.path] = variable
    return variables


def port_weight(variable: keras.Variable, value: np.ndarray) -> None:
    """Assign one converted tensor; dtype follows the variable (no silent up/down-casting)."""
    value = np.asarray(value)
    if tuple(value.shape) != tuple(variable.shape):
        raise ValueError(f"{variable.path}: shape {tuple(value.shape)} != {tuple(variable.shape)}")
    variable.assign(np.ascontiguousarray(value, dtype=variable.dtype))


def convert_weights(model: keras.Model, state_dict: Mapping[str, np.ndarray], mapping: MappingSpec,
                    keep_unassigned: tuple[str, ...] = (), source_name: str = "checkpoint",
                    may_be_absent: tuple[str, ...] = ()) -> int:
    """Assign every Keras variable from ``state_dict`` under ``mapping``; strict (MappingError).

    Returns the number of variables assigned. The whole plan is checked before any
    assignment, so a refused port leaves the model untouched. ``may_be_absent``: source key
    prefixes whose rules may match nothing (``MappingSpec.plan``).
    """
    variables = variables_by_path(model)
    shapes = {path: tuple(v.shape) for path, v in variables.items()}
    count = 0
    for path, value in mapping.forward(state_dict, shapes, keep_unassigned, source_name, may_be_absent):
        port_weight(variables[path], value)
        count += 1
    return count


def keras_weights(model: keras.Model, lazy: bool = False) -> dict[str, np.ndarray | LazyArray]:
    """Each variable as numpy; ``lazy``: read only when the consumer asks (one at a time)."""
    variables = variables_by_path(model)
    if lazy:
        return {path: LazyArray(tuple(v.shape), np.dtype(v.dtype), lambda v=v: keras.ops.convert_to_numpy(v))
                for path, v in variables.items()}
    return {path: keras.ops.convert_to_numpy(v) for path, v in variables.items()}


def export_state_dict(model: keras.Model, mapping: MappingSpec, lazy: bool = False) -> dict:
    """The mapping run backwards: the model's weights in the source's key layout."""
    return mapping.backward(keras_weights(model, lazy=lazy))


def read_safetensors(path: str | Path, lazy: bool = False) -> Mapping[str, np.ndarray]:
    """A safetensors file as numpy; ``lazy``: ``LazyArray`` values read one at a time on demand."""
    reader = SafetensorsReader(path)
    return reader.lazy() if lazy else dict(reader.items())


def call_functional(model: keras.Model, images, names: list[str] | None = None) -> dict:
    """``model(images, training=False)`` op by op, the way Keras' functional call runs it, but
    keeping only the outputs named and dropping every other tensor after its last use.

    Keras' own eager call keeps every layer's output until it returns: for cait_m48_448 that
    is all 50 attention maps (1.9 GB per image) whichever outputs are wanted. The same
    operations run in the same order on the same values (tests check the results are
    identical to ``model(images)``); only the bookkeeping differs. Uses Keras' graph
    internals (``_nodes_by_depth``, ``node.arguments``), pinned with Keras in pyproject.toml.
    """
    from keras import tree
    from keras.src.models.functional import operation_fn

    outputs = model.output if isinstance(model.output, dict) else {"output": model.output}
    wanted = {id(outputs[n]): n for n in (names if names is not None else list(outputs))}
    nodes = [node for depth in sorted(model._nodes_by_depth, reverse=True) for node in model._nodes_by_depth[depth]
             if node.operation is not None and not node.is_input]
    last_use: dict[int, int] = {}
    for i, node in enumerate(nodes):
        for x in node.input_tensors:
            last_use[id(x)] = i
    values = {id(x): y for x, y in zip(model.inputs, tree.flatten(model._standardize_inputs(images)), strict=True)}
    result = {}
    for i, node in enumerate(nodes):
        args, kwargs = node.arguments.fill_in(values)
        produced = operation_fn(model._get_operation_for_node(node), training=False)(*args, **kwargs)
        for x, y in zip(node.outputs, tree.flatten(produced), strict=True):
            if id(x) in wanted:
                result[wanted[id(x)]] = y
            if last_use.get(id(x), -1) > i:
                values[id(x)] = y
        for x in node.input_tensors:
            if last_use[id(x)] == i:
                values.pop(id(x), None)
        del produced, args, kwargs
    missing = set(wanted.values()) - set(result)
    if missing:
        raise RuntimeError(f"{model.name}: outputs {sorted(missing)} were not produced by its graph")
    return result


class KerasRunner:
    """Runs a Keras model for all or some of its outputs, as numpy: eagerly, or compiled
    (``predict_on_batch`` of a submodel per subset of outputs, sharing the model's layers and
    weights, compiled with ``jit_compile``; XLA frees what the subset does not need)."""

    def __init__(self, model: keras.Model, compiled: bool = False, jit_compile: bool = False):
        self.model, self.compiled, self.jit_compile = model, compiled, jit_compile
        self._submodels: dict[tuple[str, ...], keras.Model] = {}

    def output_shapes(self) -> dict[str, tuple]:
        """Symbolic output shapes (batch axis None); an axis a layer leaves unknown makes the
        planner run every output in one call (``vit_porting.parity.outputs.static_shapes``)."""
        return {name: tuple(t.shape) for name, t in self.model.output.items()}

    def _submodel(self, names: list[str] | None) -> keras.Model:
        key = tuple(names) if names is not None else tuple(self.model.output)
        if key not in self._submodels:
            sub = (self.model if key == tuple(self.model.output)
                   else keras.Model(self.model.input, {n: self.model.output[n] for n in key}, name=self.model.name))
            sub.compile(jit_compile=self.jit_compile)
            self._submodels[key] = sub
        return self._submodels[key]

    def __call__(self, images: np.ndarray, names: list[str] | None = None) -> dict[str, np.ndarray]:
        if self.compiled:
            outputs = self._submodel(names).predict_on_batch(images)
        else:
            outputs = call_functional(self.model, images, names)
        return {k: keras.ops.convert_to_numpy(outputs.pop(k)) for k in list(outputs)}
