"""Datasets behind one interface: ``load_dataset(spec) -> ArrayDataset``.

``spec`` is a dict from the config: ``{"name": "digits"}``, ``{"name": "cifar10", "root": "data"}``,
``{"name": "synthetic", "n_train": 2048}``, or a user's own loader ``{"name": "custom",
"entry_point": "my_module:load", ...kwargs}``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from ..entry_points import load_entry_point
from .base import ArrayDataset, evaluation_indices
from .cifar10 import DatasetNotFoundError, download_cifar10, load_cifar10
from .digits import load_digits
from .synthetic import load_synthetic

LOADERS: dict[str, Callable[..., ArrayDataset]] = {
    "digits": load_digits,
    "cifar10": load_cifar10,
    "synthetic": load_synthetic,
}

__all__ = [
    "ArrayDataset",
    "DatasetNotFoundError",
    "LOADERS",
    "download_cifar10",
    "evaluation_indices",
    "load_dataset",
]


def load_dataset(spec: dict[str, Any] | str) -> ArrayDataset:
    """Load the dataset a config names; unknown names get an error listing what is accepted."""
    spec = {"name": spec} if isinstance(spec, str) else dict(spec)
    name = spec.pop("name", None)
    if name == "custom":
        return _load_custom(spec)
    if name not in LOADERS:
        raise ValueError(f"unknown dataset {name!r}; accepted: {sorted(LOADERS) + ['custom']}")
    try:
        return LOADERS[name](**spec)
    except TypeError as error:
        raise ValueError(f"dataset {name!r}: bad options {spec}: {error}") from None


def _load_custom(spec: dict[str, Any]) -> ArrayDataset:
    """A user's loader ``module:function(**kwargs)`` returning an ArrayDataset, dict or tuple."""
    entry = spec.pop("entry_point", None)
    if not entry:
        raise ValueError("dataset 'custom' needs entry_point: 'module:function'")
    result = load_entry_point(entry)(**spec)
    if isinstance(result, ArrayDataset):
        return result
    if isinstance(result, dict):
        fields = dict(result)
    elif isinstance(result, (tuple, list)) and len(result) in (2, 4):
        keys = ("x_train", "y_train", "x_test", "y_test")
        fields = dict(zip(keys, result, strict=False))
    else:
        raise ValueError(
            f"custom dataset {entry!r} returned {type(result).__name__}; expected an ArrayDataset, a dict "
            "with x_train/y_train[/x_test/y_test/num_classes], or a tuple (x_train, y_train[, x_test, y_test])"
        )
    x_train = np.asarray(fields["x_train"], dtype=np.float32)
    y_train = np.asarray(fields["y_train"], dtype=np.int64)
    x_test = fields.get("x_test")
    y_test = fields.get("y_test")
    return ArrayDataset(
        name=fields.get("name", entry),
        x_train=x_train,
        y_train=y_train,
        num_classes=int(fields.get("num_classes", int(y_train.max()) + 1)),
        x_test=None if x_test is None else np.asarray(x_test, dtype=np.float32),
        y_test=None if y_test is None else np.asarray(y_test, dtype=np.int64),
        meta={"entry_point": entry},
    )
