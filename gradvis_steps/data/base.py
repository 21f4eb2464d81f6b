"""Framework-neutral datasets: numpy arrays plus a deterministic evaluation subset.

Datasets are plain arrays (images NCHW float32; targets int64 class labels, or floats for regression, kept in the
dtype the loader gives) so every backend can share them; a backend converts them to its own tensors once, on its
device.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass(frozen=True)
class ArrayDataset:
    """A dataset held in memory: training split, optional test split, and the model's output width.

    Targets are either integer class labels ``(n,)`` in ``[0, num_classes)`` (with ``num_classes == 1``, a single
    output for binary labels 0/1), integer 0/1 label vectors ``(n, d)`` (multi-label), or float regression targets
    ``(n,)`` or ``(n, d)``. ``num_classes`` is the width of the model's output layer: the number of classes for
    class labels, ``d`` for ``(n, d)`` targets and 1 for float ``(n,)`` targets. Targets are never cast: float
    targets stay float (a classification loss refuses them, :func:`gradvis_steps.losses.check_targets`).
    """

    name: str
    x_train: np.ndarray
    y_train: np.ndarray
    num_classes: int
    x_test: np.ndarray | None = None
    y_test: np.ndarray | None = None
    meta: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if len(self.x_train) != len(self.y_train):
            raise ValueError(
                f"dataset {self.name!r}: {len(self.x_train)} training inputs but {len(self.y_train)} labels"
            )
        if len(self.x_train) == 0:
            raise ValueError(f"dataset {self.name!r} has no training samples")
        for split, y in (("training", self.y_train), ("test", self.y_test)):
            if y is not None:
                self._check_targets(split, np.asarray(y))

    def _check_targets(self, split: str, y: np.ndarray) -> None:
        """A ValueError where the targets do not fit ``num_classes`` (the docstring's rules)."""
        integer = np.issubdtype(y.dtype, np.integer) or y.dtype == np.bool_
        if not integer and not np.issubdtype(y.dtype, np.floating):
            raise ValueError(f"dataset {self.name!r}: {split} targets must be integers or floats, got {y.dtype}")
        if y.ndim not in (1, 2):
            raise ValueError(f"dataset {self.name!r}: {split} targets must be (n,) or (n, d), got shape {y.shape}")
        if integer and y.ndim == 1 and self.num_classes > 1:
            if y.min() < 0 or y.max() >= self.num_classes:
                raise ValueError(f"dataset {self.name!r}: labels must lie in [0, {self.num_classes}), "
                                 f"got [{y.min()}, {y.max()}]")
            return
        width = 1 if y.ndim == 1 else y.shape[1]
        if width != self.num_classes:
            raise ValueError(f"dataset {self.name!r}: {split} targets of shape {y.shape} need num_classes (the "
                             f"model's output width) {width}, got {self.num_classes}")
        if integer and not np.isin(y, (0, 1)).all():
            raise ValueError(f"dataset {self.name!r}: integer {split} targets of shape {y.shape} with one output per "
                             f"column must be 0/1 labels, got values in [{y.min()}, {y.max()}]")

    @property
    def is_regression(self) -> bool:
        """Whether the targets are floats (regression), not class labels."""
        return not (np.issubdtype(self.y_train.dtype, np.integer) or self.y_train.dtype == np.bool_)

    @property
    def input_shape(self) -> tuple[int, ...]:
        """Shape of one input sample, e.g. (1, 8, 8) or (3, 32, 32)."""
        return tuple(self.x_train.shape[1:])

    def evaluation_subset(self, fraction: float = 0.2, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
        """Deterministic subset of the *training* set used to evaluate losses and Hessians.

        The paper evaluates on 20% of the training samples. The subset depends only on
        (dataset size, fraction, seed), never on the training run, so every step sees the same samples.
        """
        indices = evaluation_indices(len(self.x_train), fraction, seed)
        return self.x_train[indices], self.y_train[indices]


def evaluation_indices(n: int, fraction: float, seed: int) -> np.ndarray:
    """Sorted indices of ``round(fraction * n)`` (at least 1) samples drawn without replacement."""
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"evaluation fraction must be in (0, 1], got {fraction!r}")
    count = max(1, int(round(fraction * n)))
    if count == n:
        return np.arange(n)
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), 0x6576616C]))  # "eval"
    return np.sort(rng.choice(n, size=count, replace=False))
