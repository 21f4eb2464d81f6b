"""The embedded default dataset: scikit-learn's handwritten digits (1,797 8x8 images, no download)."""

from __future__ import annotations

import numpy as np

from .base import ArrayDataset

#: The digits set has no official split; the last ``TEST_SIZE`` samples form a fixed test split.
TEST_SIZE = 297
#: What a run needs to know of the dataset before loading it (the workflow's pre-flight check).
SAMPLES = 1797
INPUT_SHAPE = (1, 8, 8)
NUM_CLASSES = 10


def load_digits() -> ArrayDataset:
    """Digits as (N, 1, 8, 8) float32 images, standardized with the training split's mean and std."""
    from sklearn.datasets import load_digits as sklearn_digits

    bunch = sklearn_digits()
    images = (bunch.images.astype(np.float32) / 16.0)[:, None, :, :]
    labels = bunch.target.astype(np.int64)
    x_train, y_train = images[:-TEST_SIZE], labels[:-TEST_SIZE]
    # Standardize with the training split's global mean/std (one channel), as for CIFAR-10.
    mean, std = float(x_train.mean()), float(x_train.std())
    normalize = lambda x: ((x - mean) / std).astype(np.float32)  # noqa: E731
    return ArrayDataset(
        name="digits",
        x_train=normalize(x_train),
        y_train=y_train,
        num_classes=NUM_CLASSES,
        x_test=normalize(images[-TEST_SIZE:]),
        y_test=labels[-TEST_SIZE:],
        meta={"source": "sklearn.datasets.load_digits", "mean": mean, "std": std},
    )
