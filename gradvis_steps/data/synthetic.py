"""Synthetic CIFAR-shaped data for benchmarks: Gaussian images labelled by a random linear teacher."""

from __future__ import annotations

import numpy as np

from .base import ArrayDataset


def load_synthetic(
    n_train: int = 2048,
    n_test: int = 512,
    shape: tuple[int, ...] = (3, 32, 32),
    num_classes: int = 10,
    seed: int = 0,
) -> ArrayDataset:
    """Seeded standard-normal inputs; labels = argmax of a fixed random linear map (learnable)."""
    for key, value in (("n_train", n_train), ("num_classes", num_classes)):
        if int(value) < 1:
            raise ValueError(f"synthetic dataset: {key} must be >= 1, got {value!r}")
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), 0x73796E]))
    shape = tuple(int(d) for d in shape)
    x = rng.standard_normal((n_train + n_test, *shape), dtype=np.float32)
    teacher = rng.standard_normal((int(np.prod(shape)), num_classes)).astype(np.float32)
    y = np.argmax(x.reshape(len(x), -1) @ teacher, axis=1).astype(np.int64)
    return ArrayDataset(
        name="synthetic",
        x_train=x[:n_train],
        y_train=y[:n_train],
        num_classes=num_classes,
        x_test=x[n_train:],
        y_test=y[n_train:],
        meta={"seed": int(seed)},
    )
