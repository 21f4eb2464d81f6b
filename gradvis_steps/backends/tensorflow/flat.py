"""Flat vectors <-> a Keras model's variables, and the model's ParameterLayout.

Trainable variables are laid out in ``model.trainable_variables`` order under their Keras paths (``"conv1/kernel"``).
Keras keeps the filters (output channels or units) on the last axis of both kinds of kernel: convolutions are
``(kh, kw, in, out)`` (HWIO) and dense kernels ``(in, out)``, so their filter axis is -1 (a transposed convolution,
``(kh, kw, out, in)``, has it at -2). Buffers are the non-trainable variables (batch-norm moving statistics, and any
random-seed state a custom model keeps), stored as one float64 vector as the torch backend stores its buffers.
"""

from __future__ import annotations

import json
from typing import Any

import keras
import numpy as np

from ...core.layout import ParameterLayout

_BATCHNORM = (keras.layers.BatchNormalization,)
_OTHER_NORM = (keras.layers.LayerNormalization, keras.layers.GroupNormalization, keras.layers.UnitNormalization)
_TRANSPOSED = (keras.layers.Conv1DTranspose, keras.layers.Conv2DTranspose, keras.layers.Conv3DTranspose)
_CONV = (keras.layers.Conv1D, keras.layers.Conv2D, keras.layers.Conv3D)


def _owners(model: keras.Model) -> dict[int, keras.layers.Layer]:
    """The innermost layer owning each variable (``id`` of the variable -> layer)."""
    owners: dict[int, keras.layers.Layer] = {}
    # _flatten_layers lists every nested layer, outer before inner: the inner owner overwrites the outer one.
    for layer in model._flatten_layers(include_self=False, recursive=True):
        for variable in layer.weights:
            owners[id(variable)] = layer
    return owners


def _kind(layer: keras.layers.Layer | None, name: str) -> tuple[str, int | None]:
    """Kind and filter axis of the variable ``name`` of ``layer`` (Keras keeps output units on the last axis)."""
    if isinstance(layer, _BATCHNORM):
        return "batchnorm", None
    if isinstance(layer, _OTHER_NORM):
        return "norm", None
    if name == "bias":
        return "bias", None
    if isinstance(layer, _TRANSPOSED) and name == "kernel":
        return "conv", -2
    if isinstance(layer, _CONV) and name == "kernel":
        return "conv", -1
    if isinstance(layer, keras.layers.Dense) and name == "kernel":
        return "linear", -1
    return "other", None


def _check_unique(paths: list[str], what: str) -> None:
    if len(set(paths)) != len(paths):
        duplicates = sorted({p for p in paths if paths.count(p) > 1})
        raise ValueError(f"the model's {what} variables share the paths {duplicates}: give its layers unique names")


def layout_of(model: keras.Model) -> ParameterLayout:
    """The layout of the model's trainable variables in ``model.trainable_variables`` order."""
    owners = _owners(model)
    variables = model.trainable_variables
    _check_unique([v.path for v in variables], "trainable")
    entries = []
    for variable in variables:
        kind, axis = _kind(owners.get(id(variable)), variable.name)
        entries.append((variable.path, tuple(int(d) for d in variable.shape), kind, axis))
    return ParameterLayout.from_shapes(entries)


def buffer_layout(model: keras.Model) -> list[dict]:
    """Paths, shapes and dtypes of the model's non-trainable variables (batch-norm moving statistics)."""
    variables = model.non_trainable_variables
    _check_unique([v.path for v in variables], "non-trainable")
    return [{"name": v.path, "shape": [int(d) for d in v.shape], "dtype": str(v.dtype)} for v in variables]


def flatten_parameters(model: keras.Model) -> np.ndarray:
    """The model's trainable variables as one new flat host vector (in their dtype)."""
    values = [np.asarray(v.numpy()).reshape(-1) for v in model.trainable_variables]
    return np.concatenate(values) if values else np.zeros(0)


def load_flat_parameters(model: keras.Model, theta: np.ndarray) -> None:
    """Write a flat vector into the model's trainable variables (the inverse of :func:`flatten_parameters`)."""
    theta = np.asarray(theta)
    layout = layout_of(model)
    if theta.shape != (layout.size,):
        raise ValueError(f"flat vector has shape {theta.shape}, expected ({layout.size},)")
    for spec, variable in zip(layout, model.trainable_variables, strict=True):
        variable.assign(theta[spec.slice].reshape(spec.shape).astype(variable.dtype))


def flatten_buffers(model: keras.Model) -> np.ndarray:
    """All non-trainable variables as one float64 host vector (integer seed states are exact in float64)."""
    values = [np.asarray(v.numpy(), dtype=np.float64).reshape(-1)
              for v in model.non_trainable_variables]
    return np.concatenate(values) if values else np.zeros(0)


def unflatten_buffers(flat: np.ndarray, layout: list[dict] | str) -> dict[str, np.ndarray]:
    """Inverse of :func:`flatten_buffers`: ``{path: array in the recorded dtype and shape}``."""
    layout = json.loads(layout) if isinstance(layout, str) else layout
    flat = np.asarray(flat)
    out, offset = {}, 0
    for entry in layout:
        count = int(np.prod(entry["shape"], dtype=np.int64))
        if offset + count > len(flat):
            raise ValueError(f"buffer vector has {len(flat)} entries, fewer than its layout describes")
        out[entry["name"]] = flat[offset:offset + count].reshape(entry["shape"]).astype(entry["dtype"])
        offset += count
    if offset != len(flat):
        raise ValueError(f"buffer vector has {len(flat)} entries, layout describes {offset}")
    return out


def load_buffers(model: keras.Model, flat: np.ndarray, layout: list[dict] | str) -> None:
    """Write stored buffers into the model's non-trainable variables, matched by path."""
    values = unflatten_buffers(flat, layout)
    variables = {v.path: v for v in model.non_trainable_variables}
    if set(values) != set(variables):
        raise ValueError(f"stored buffers {sorted(values)} do not match the model's {sorted(variables)}")
    for path, value in values.items():
        variables[path].assign(value.astype(variables[path].dtype))


def assign_like(target: keras.Model, source: keras.Model) -> None:
    """Copy every variable of ``source`` into ``target`` (same architecture, any dtype), cast to the target's; the
    variables are matched by position (automatic layer names differ between two builds in one process)."""
    if len(target.variables) != len(source.variables):
        raise ValueError(f"cannot copy a model of {len(source.variables)} variables into one of "
                         f"{len(target.variables)}")
    pairs: list[tuple[Any, Any]] = list(zip(target.variables, source.variables, strict=True))
    for to, frm in pairs:
        if tuple(to.shape) != tuple(frm.shape):
            raise ValueError(f"cannot copy variable {frm.path} {tuple(frm.shape)} into {to.path} {tuple(to.shape)}")
        to.assign(np.asarray(frm.numpy()).astype(to.dtype))
