"""Keras side of a port: build the model, assign converted weights, read them back.

The contract follows KerasHub's converters (a ``convert_weights`` per port and a loader
that assigns one weight at a time with ``port_weight``), but which tensor goes where is
declared in ``mappings/<family>.yaml``, not written here.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import keras
import numpy as np

from porting.mapping import MappingSpec, load_mapping
from porting.variants import FAMILIES, VariantSpec, load_symbol


def build_keras_model(spec: VariantSpec, initializer: str = "zeros", intermediates: bool = False) -> keras.Model:
    """The Keras model of ``spec``; ``zeros`` skips a random init the converter overwrites."""
    build = load_symbol(spec.family, "keras_builder")
    return build(spec.config, initializer=initializer, name=spec.name, intermediates=intermediates)


def family_mapping(spec: VariantSpec) -> MappingSpec:
    return load_mapping(FAMILIES[spec.family]["mapping"])


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
                    keep_unassigned: tuple[str, ...] = (), source_name: str = "checkpoint") -> int:
    """Assign every Keras variable from ``state_dict`` under ``mapping``; strict (MappingError).

    Returns the number of variables assigned. The whole plan is checked before any
    assignment, so a refused port leaves the model untouched.
    """
    variables = variables_by_path(model)
    shapes = {path: tuple(v.shape) for path, v in variables.items()}
    count = 0
    for path, value in mapping.forward(state_dict, shapes, keep_unassigned, source_name):
        port_weight(variables[path], value)
        count += 1
    return count


def keras_weights(model: keras.Model) -> dict[str, np.ndarray]:
    return {path: keras.ops.convert_to_numpy(v) for path, v in variables_by_path(model).items()}


def export_state_dict(model: keras.Model, mapping: MappingSpec) -> dict[str, np.ndarray]:
    """The mapping run backwards: the model's weights in the source's key layout."""
    return mapping.backward(keras_weights(model))


def read_safetensors(path: str | Path) -> dict[str, np.ndarray]:
    from safetensors.numpy import load_file

    return load_file(str(path))


def write_safetensors(tensors: Mapping[str, np.ndarray], path: str | Path, metadata: dict | None = None) -> None:
    from safetensors.numpy import save_file

    save_file({k: np.ascontiguousarray(v) for k, v in tensors.items()}, str(path), metadata=metadata)


def run_keras(model: keras.Model, images: np.ndarray, compiled: bool = False) -> dict[str, np.ndarray]:
    """Outputs of ``model`` on NHWC ``images`` as numpy (eager call, or ``predict_on_batch``)."""
    outputs = model.predict_on_batch(images) if compiled else model(images, training=False)
    return {k: keras.ops.convert_to_numpy(v) for k, v in outputs.items()}
