"""Datasets behind one interface: ``load_dataset(spec) -> ArrayDataset``.

``spec`` is a dict from the config: ``{"name": "digits"}``, ``{"name": "cifar10", "root": "data"}``,
``{"name": "synthetic", "n_train": 2048}``, ``{"name": "diabetes"}`` (regression), or a user's own loader
``{"name": "custom", "entry_point": "my_module:load", ...kwargs}``. Targets are never cast: a custom loader's float
targets stay float (regression), its integer ones are class labels.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..entry_points import check_options, load_entry_point
from ..losses import target_width
from . import cifar10, diabetes, digits
from .base import ArrayDataset, evaluation_indices
from .cifar10 import DatasetNotFoundError, download_cifar10, load_cifar10
from .diabetes import load_diabetes
from .digits import load_digits
from .synthetic import load_synthetic

LOADERS: dict[str, Callable[..., ArrayDataset]] = {
    "digits": load_digits,
    "cifar10": load_cifar10,
    "synthetic": load_synthetic,
    "diabetes": load_diabetes,
}

__all__ = [
    "ArrayDataset",
    "DatasetFacts",
    "DatasetNotFoundError",
    "LOADERS",
    "dataset_facts",
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


@dataclass(frozen=True)
class DatasetFacts:
    """What a run needs to know of its dataset before training: the model's input and output width
    (``num_classes``), the iterations per epoch, and whether the targets are floats (a regression set)."""

    input_shape: tuple[int, ...]
    num_classes: int
    n_train: int
    regression: bool = False


def dataset_facts(spec: dict[str, Any] | str) -> DatasetFacts | None:
    """Check a dataset spec without loading it, and say its shape and size: names, option names and types, the
    CIFAR-10 files (unless ``download: true``), a custom entry point's import. The built-in sets' facts are known
    (synthetic: from its options); None for a custom loader, whose data only its call would tell."""
    spec = {"name": spec} if isinstance(spec, str) else dict(spec)
    name = spec.pop("name", None)
    if name == "custom":
        entry = spec.pop("entry_point", None)
        if not entry:
            raise ValueError("dataset 'custom' needs entry_point: 'module:function'")
        check_options(load_entry_point(entry), spec, what=f"dataset {entry!r}")
        return None
    if name not in LOADERS:
        raise ValueError(f"unknown dataset {name!r}; accepted: {sorted(LOADERS) + ['custom']}")
    check_options(LOADERS[name], spec, what=f"dataset {name!r}")
    if name == "cifar10":
        if not spec.get("download", False):
            cifar10.require_files(spec.get("root", "data"))
        return DatasetFacts(cifar10.INPUT_SHAPE, cifar10.NUM_CLASSES, cifar10.TRAIN_SIZE)
    if name == "synthetic":
        options = {**_defaults(load_synthetic), **spec}
        return DatasetFacts(tuple(options["shape"]), int(options["num_classes"]), int(options["n_train"]))
    if name == "diabetes":
        return DatasetFacts(diabetes.INPUT_SHAPE, diabetes.NUM_CLASSES, diabetes.SAMPLES - diabetes.TEST_SIZE,
                            regression=True)
    return DatasetFacts(digits.INPUT_SHAPE, digits.NUM_CLASSES, digits.SAMPLES - digits.TEST_SIZE)


def _defaults(function: Callable[..., Any]) -> dict[str, Any]:
    return {k: p.default for k, p in inspect.signature(function).parameters.items() if p.default is not p.empty}


def _load_custom(spec: dict[str, Any]) -> ArrayDataset:
    """A user's loader ``module:function(**kwargs)`` returning an ArrayDataset, dict or tuple. Targets keep their
    dtype (float targets are regression targets); ``num_classes`` defaults to ``max + 1`` for integer labels and to
    the target width (1 or ``d``) for float targets."""
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
    y_train = np.asarray(fields["y_train"])
    x_test = fields.get("x_test")
    y_test = fields.get("y_test")
    integer = np.issubdtype(y_train.dtype, np.integer) or y_train.dtype == np.bool_
    default_classes = int(y_train.max()) + 1 if integer and y_train.ndim == 1 else target_width(y_train)
    return ArrayDataset(
        name=fields.get("name", entry),
        x_train=x_train,
        y_train=y_train,
        num_classes=int(fields.get("num_classes", default_classes)),
        x_test=None if x_test is None else np.asarray(x_test, dtype=np.float32),
        y_test=None if y_test is None else np.asarray(y_test),
        meta={"entry_point": entry},
    )
