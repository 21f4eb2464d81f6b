"""A built-in regression dataset: scikit-learn's diabetes set (442 patients, 10 features, no download).

Read in its standard form (``load_diabetes(scaled=False)``: the raw features and the disease-progression target,
25 to 346). Features and target are standardized with the training split's per-column mean and standard deviation
(the target too, so a mean squared error of 1 means predicting the training mean); ``meta`` keeps those statistics
to map predictions back. Features are float32 (as every dataset's inputs), the target float64 ``(n,)``: one output,
``num_classes`` 1, for a regression loss such as ``mse``.
"""

from __future__ import annotations

import numpy as np

from .base import ArrayDataset

#: The set has no official split; the last ``TEST_SIZE`` samples form a fixed test split.
TEST_SIZE = 42
#: What a run needs to know of the dataset before loading it (the workflow's pre-flight check).
SAMPLES = 442
INPUT_SHAPE = (10,)
NUM_CLASSES = 1  # the model's output width: one regression target


def load_diabetes() -> ArrayDataset:
    """Diabetes as (N, 10) float32 features and (N,) float64 targets, both standardized with the training split."""
    from sklearn.datasets import load_diabetes as sklearn_diabetes

    bunch = sklearn_diabetes(scaled=False)
    features, target = np.asarray(bunch.data, dtype=np.float64), np.asarray(bunch.target, dtype=np.float64)
    train = slice(0, SAMPLES - TEST_SIZE)
    mean, std = features[train].mean(axis=0), features[train].std(axis=0)
    y_mean, y_std = float(target[train].mean()), float(target[train].std())
    x = ((features - mean) / std).astype(np.float32)
    y = (target - y_mean) / y_std
    return ArrayDataset(
        name="diabetes",
        x_train=x[:-TEST_SIZE],
        y_train=y[:-TEST_SIZE],
        num_classes=NUM_CLASSES,
        x_test=x[-TEST_SIZE:],
        y_test=y[-TEST_SIZE:],
        meta={"source": "sklearn.datasets.load_diabetes(scaled=False)", "feature_mean": mean.tolist(),
              "feature_std": std.tolist(), "target_mean": y_mean, "target_std": y_std},
    )
