"""Framework-neutral datasets: numpy arrays plus a deterministic evaluation subset.

Datasets are plain arrays (images NCHW float32, labels int64) so every backend can share them; a
backend converts them to its own tensors once, on its device.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass(frozen=True)
class ArrayDataset:
    """A classification dataset held in memory: training split, optional test split, class count."""

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
        if self.y_train.min() < 0 or self.y_train.max() >= self.num_classes:
            raise ValueError(
                f"dataset {self.name!r}: labels must lie in [0, {self.num_classes}), "
                f"got [{self.y_train.min()}, {self.y_train.max()}]"
            )

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
